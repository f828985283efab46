"""``vllm serve`` flags of features Pegboard does not have: each stops ``pegboard serve`` at once, in one line that
names it and says why, instead of argparse's bare "unrecognized arguments"."""

from __future__ import annotations

import argparse
from typing import Any

NOT_IMPLEMENTED = "is not implemented in Pegboard"
REFUSED: dict[tuple[str, ...], str] = {
    ("--enable-log-requests", "--max-log-len"): "Pegboard never logs request contents (prompts, parameters)",
    ("--enable-lora", "--lora-modules", "--max-loras", "--max-lora-rank"): f"LoRA serving {NOT_IMPLEMENTED}",
    ("--tool-parser-plugin",): "tool parsers are plugins: load one with --plugin (hook register_tool_parsers)",
    ("--reasoning-parser",): f"reasoning-content parsing {NOT_IMPLEMENTED}",
    ("--data-parallel-size", "-dp"): f"data parallelism {NOT_IMPLEMENTED}: run one server per GPU",
    ("--distributed-executor-backend",): "the executor is a plugin: name it with --executor",
    ("--swap-space", "--cpu-offload-gb"): f"offloading to CPU memory {NOT_IMPLEMENTED}",
    ("--compilation-config", "-O", "--max-seq-len-to-capture", "--cuda-graph-sizes"):
        "CUDA graphs are captured for decode batches up to --max-num-seqs and prefill token counts up to "
        "--max-num-batched-tokens; choose them with --cudagraph-mode, or none with --enforce-eager",
    ("--disable-custom-all-reduce",): f"multi-GPU all-reduce {NOT_IMPLEMENTED}",
    ("--override-generation-config",): "a model's generation config is not applied (--generation-config vllm)",
    ("--hf-overrides",): f"overriding the model's config {NOT_IMPLEMENTED}",
    ("--limit-mm-per-prompt", "--mm-processor-kwargs"): "multimodal inputs are not supported (text only)",
    ("--api-server-count", "-asc"): "one HTTP front-end process serves every request (the engine core runs in its "
                                    "own process); more front ends are not implemented in Pegboard",
    ("--uds",): f"serving on a Unix socket {NOT_IMPLEMENTED}: use --host and --port",
    ("--ssl-ca-certs", "--ssl-cert-reqs"): f"client-certificate TLS {NOT_IMPLEMENTED}",
    ("--middleware",): "add routes and middleware with a plugin (register_routes) instead",
    ("--enable-request-id-headers",): f"the X-Request-Id header {NOT_IMPLEMENTED}",
    ("--tokenizer-mode",): "the tokenizer is always transformers' fast tokenizer (vLLM's auto/hf)",
    ("--long-prefill-token-threshold", "--max-num-partial-prefills"):
        f"limits on concurrent partial prefills are {NOT_IMPLEMENTED.removeprefix('is ')}",
}


class _Refuse(argparse.Action):
    """Stops the parse naming the flag and the reason (``refusal``, which a --config file's key meets too)."""

    def __init__(self, option_strings: list[str], dest: str, reason: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs="*", help=argparse.SUPPRESS, **kwargs)
        self.refusal = reason

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} (a vllm serve flag): {self.refusal}")


def add_refused_vllm_flags(parser: argparse.ArgumentParser) -> None:
    """Add each flag of REFUSED, hidden from --help, refusing itself when given."""
    for flags, reason in REFUSED.items():
        parser.add_argument(*flags, action=_Refuse, reason=reason, dest=f"refused_{flags[0].lstrip('-')}")


def refused_flags() -> list[str]:
    return [flag for flags in REFUSED for flag in flags]
