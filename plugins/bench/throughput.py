"""``pegboard bench throughput``: offline throughput of pegboard vs HF transformers on the same prompts.

Every request is greedy with ``ignore_eos``, so each backend produces exactly the requested
number of tokens. HF generates in fixed batches and makes every row as long as the batch's
longest request; only each request's own output tokens count as useful output.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pegboard.core.config import DEFAULT_MODEL
from pegboard.plugins.bench.data import (BenchRequest, mixed_requests, ordinary_token_ids, random_requests,
                                         tokenizer_special_ids)

BACKENDS = ("pegboard", "hf")
DATASET_DEFAULTS = {"mixed": 64, "random": 1000}  # default --num-prompts per dataset


# ---- arguments ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine flags (shared with ``serve``) plus the benchmark's own."""
    from pegboard.core.cli_args import add_engine_arguments

    add_engine_arguments(parser)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name, path or hub id (default: {DEFAULT_MODEL})")
    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--backend", choices=("pegboard", "hf", "both"), default="both",
                       help="what to time (default: both, and their ratio)")
    bench.add_argument("--dataset", choices=("mixed", "random"), default=None,
                       help="mixed: lengths drawn from ranges (default on CPU); random: fixed lengths "
                            "(default on GPU)")
    bench.add_argument("--num-prompts", type=int, default=None,
                       help="number of requests (default: 64 for mixed, 1000 for random)")
    bench.add_argument("--prompt-seed", type=int, default=0, help="seed of the random prompts and lengths")
    bench.add_argument("--min-input-len", type=int, default=32)
    bench.add_argument("--max-input-len", type=int, default=512)
    bench.add_argument("--min-output-len", type=int, default=32)
    bench.add_argument("--max-output-len", type=int, default=256)
    bench.add_argument("--input-len", type=int, default=1024, help="prompt length of the random dataset")
    bench.add_argument("--output-len", type=int, default=128, help="output length of the random dataset")
    bench.add_argument("--hf-batch-size", type=int, default=16, help="batch size of the HF backend")
    bench.add_argument("--output-json", default=None, metavar="PATH", help="write all figures and settings here")


# ---- results -----------------------------------------------------------------------------------


@dataclass
class BackendResult:
    """One backend's timing over all requests; ``generated_tokens`` counts padding rows' tokens too."""

    backend: str
    startup_s: float
    elapsed_s: float
    num_requests: int
    prompt_tokens: int
    output_tokens: int
    generated_tokens: int

    def rates(self) -> dict[str, float]:
        return {"requests_per_s": self.num_requests / self.elapsed_s,
                "output_tok_per_s": self.output_tokens / self.elapsed_s,
                "total_tok_per_s": (self.prompt_tokens + self.output_tokens) / self.elapsed_s,
                "generated_tok_per_s": self.generated_tokens / self.elapsed_s}


@dataclass
class ModelInfo:
    """What both backends need to know about the model: its files, HF config, tokenizer, dtype, device."""

    files: Any
    hf_config: Any
    tokenizer: Any
    dtype: Any
    device: Any


def model_info(files: Any, hf_config: Any, tokenizer: Any, config: Any) -> ModelInfo:
    from pegboard.core.devices import resolve_device, resolve_dtype

    device = resolve_device(config.device)
    return ModelInfo(files, hf_config, tokenizer, resolve_dtype(config.dtype, hf_config, device), device)


def resolve_model_info(engine_kwargs: dict) -> ModelInfo:
    """The model's files, config and tokenizer without starting an engine (for ``--backend hf``)."""
    from pegboard.core.config import EngineConfig
    from pegboard.core.load_settings import loading_with
    from pegboard.core.model_files import pick_loader, resolve_model
    from pegboard.core.plugins import load_board
    from pegboard.core.tokenizer_loading import load_tokenizer

    config = EngineConfig(**engine_kwargs)
    board = load_board(config.plugins)
    with loading_with(config):
        files = resolve_model(board.model_sources, config.model, revision=config.revision)
        _, loader = pick_loader(board.model_loaders, files, config.load_format)
        hf_config = loader.load_config(files)
    tokenizer = None if config.skip_tokenizer_init else load_tokenizer(config, board, files)
    return model_info(files, hf_config, tokenizer, config)


# ---- prompts -----------------------------------------------------------------------------------


def dataset_name(args: argparse.Namespace, info: ModelInfo) -> str:
    return args.dataset or ("random" if info.device.type == "cuda" else "mixed")


def build_requests(args: argparse.Namespace, info: ModelInfo) -> list[BenchRequest]:
    """The benchmark's prompts, from ordinary (non-special) token ids of the model's vocabulary."""
    vocab_size = info.hf_config.vocab_size
    if info.tokenizer is not None:
        vocab_size = min(vocab_size, len(info.tokenizer))
        special = tokenizer_special_ids(info.tokenizer)
    else:
        special = {getattr(info.hf_config, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    vocab = ordinary_token_ids(vocab_size, special)
    dataset = dataset_name(args, info)
    num_prompts = args.num_prompts or DATASET_DEFAULTS[dataset]
    if dataset == "random":
        return random_requests(vocab, num_prompts, input_len=args.input_len, output_len=args.output_len,
                               seed=args.prompt_seed)
    return mixed_requests(vocab, num_prompts, min_input_len=args.min_input_len, max_input_len=args.max_input_len,
                          min_output_len=args.min_output_len, max_output_len=args.max_output_len,
                          seed=args.prompt_seed)


def check_fits(requests: list[BenchRequest], max_model_len: int) -> None:
    longest = max(r.input_len + r.output_len for r in requests)
    if longest > max_model_len:
        raise SystemExit(f"a request needs {longest} tokens (prompt + output) but max_model_len is "
                         f"{max_model_len}: raise --max-model-len or shorten the requests")


# ---- pegboard backend --------------------------------------------------------------------------


def start_pegboard(engine_kwargs: dict) -> tuple[Any, float]:
    """An LLM and its start-up time in seconds."""
    from pegboard.core.llm import LLM

    started = time.perf_counter()
    llm = LLM(**engine_kwargs)
    return llm, time.perf_counter() - started


def run_pegboard(llm: Any, requests: list[BenchRequest], startup_s: float) -> BackendResult:
    """Time one ``LLM.generate`` over every request (after a tiny warm-up generate)."""
    from pegboard.core.sampling_params import SamplingParams

    def params(max_tokens: int) -> SamplingParams:
        return SamplingParams(temperature=0.0, ignore_eos=True, max_tokens=max_tokens)

    llm.generate([{"prompt_token_ids": requests[0].prompt_token_ids[:8]}], params(4), use_tqdm=False)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    started = time.perf_counter()
    outputs = llm.generate(prompts, [params(r.output_len) for r in requests], use_tqdm=False)
    elapsed = time.perf_counter() - started
    produced = sum(len(o.outputs[0].token_ids) for o in outputs)
    return BackendResult("pegboard", startup_s, elapsed, len(requests), _prompt_tokens(requests),
                         produced, produced)


# ---- HF transformers backend -------------------------------------------------------------------


def load_hf_model(info: ModelInfo, load_format: str) -> Any:
    """The same model in transformers: the very same GGUF file, HF directory, or random weights."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=info.dtype, attn_implementation="sdpa")
    if load_format == "dummy":  # random init straight on the device: minutes faster than on the CPU for 8B
        with torch.device(info.device):
            config = info.hf_config  # a GGUF file's is a plain record (plugins/gguf_model_config.py)
            config = config.to_transformers() if hasattr(config, "to_transformers") else config
            model = AutoModelForCausalLM.from_config(config, **kwargs)
    elif info.files.format == "gguf":
        path = Path(info.files.path)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(info.files.path, **kwargs)
    return model.to(info.device).eval()


def hf_pad_token_id(info: ModelInfo) -> int:
    for source in (info.tokenizer, info.hf_config):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(source, name, None)
            value = value[0] if isinstance(value, list) else value
            if value is not None:
                return value
    return 0


def hf_generate_batch(model: Any, batch: list[BenchRequest], pad_id: int, device: Any) -> int:
    """Greedy-generate a left-padded batch to its longest output length; returns tokens generated."""
    import torch

    width = max(r.input_len for r in batch)
    new_tokens = max(r.output_len for r in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, request in enumerate(batch):
        input_ids[row, width - request.input_len:] = torch.tensor(request.prompt_token_ids)
        mask[row, width - request.input_len:] = 1
    out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id)
    _sync(device)
    return out.shape[0] * (out.shape[1] - width)


def run_hf(info: ModelInfo, requests: list[BenchRequest], batch_size: int, load_format: str) -> BackendResult:
    """Time HF ``generate`` over the requests in batches of ``batch_size`` (after a tiny warm-up)."""
    started = time.perf_counter()
    model = load_hf_model(info, load_format)
    startup_s = time.perf_counter() - started
    pad_id = hf_pad_token_id(info)
    hf_generate_batch(model, [BenchRequest(requests[0].prompt_token_ids[:8], 4)], pad_id, info.device)
    started = time.perf_counter()
    generated = sum(hf_generate_batch(model, requests[i:i + batch_size], pad_id, info.device)
                    for i in range(0, len(requests), batch_size))
    elapsed = time.perf_counter() - started
    return BackendResult("hf", startup_s, elapsed, len(requests), _prompt_tokens(requests),
                         sum(r.output_len for r in requests), generated)


def _release_device_memory(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _sync(device: Any) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _prompt_tokens(requests: list[BenchRequest]) -> int:
    return sum(r.input_len for r in requests)


# ---- report ------------------------------------------------------------------------------------


def describe_requests(requests: list[BenchRequest], dataset: str) -> dict[str, Any]:
    inputs = [r.input_len for r in requests]
    outputs = [r.output_len for r in requests]
    return {"dataset": dataset, "num_requests": len(requests), "prompt_tokens": sum(inputs),
            "output_tokens": sum(outputs), "input_len_range": [min(inputs), max(inputs)],
            "output_len_range": [min(outputs), max(outputs)]}


def output_ratio(results: list[BackendResult]) -> float | None:
    rates = {r.backend: r.rates()["output_tok_per_s"] for r in results}
    return rates["pegboard"] / rates["hf"] if len(rates) == 2 else None


def print_report(results: list[BackendResult], summary: dict[str, Any], env: dict[str, Any],
                 hf_batch_size: int) -> None:
    print(f"\nThroughput: {summary['num_requests']} requests ({summary['dataset']}: input "
          f"{_span(summary['input_len_range'])}, output {_span(summary['output_len_range'])} tokens; "
          f"{summary['prompt_tokens']} prompt + {summary['output_tokens']} output tokens), greedy, ignore_eos")
    load = f", load average {env['load_average_1m']}" if env.get("load_average_1m") is not None else ""
    print(f"model {env['model']} ({env['model_file']}), {env['dtype']} on {env['device_name']}{load}\n")
    header = f"{'backend':<10} {'startup s':>10} {'elapsed s':>10} {'req/s':>8} {'output tok/s':>13} " \
             f"{'total tok/s':>12}"
    print(header)
    print("-" * len(header))
    for result in results:
        rates = result.rates()
        print(f"{result.backend:<10} {result.startup_s:>10.1f} {result.elapsed_s:>10.1f} "
              f"{rates['requests_per_s']:>8.2f} {rates['output_tok_per_s']:>13.1f} {rates['total_tok_per_s']:>12.1f}")
    for result in results:
        if result.backend == "hf":
            print(f"\nhf: batches of {hf_batch_size}, every row generates its batch's longest output; only each "
                  f"request's own {result.output_tokens} output tokens count above. Raw: "
                  f"{result.generated_tokens} tokens generated, {result.rates()['generated_tok_per_s']:.1f} tok/s.")
        elif result.output_tokens != summary["output_tokens"]:
            print(f"\nwarning: {result.backend} produced {result.output_tokens} output tokens, "
                  f"{summary['output_tokens']} were asked for")
    ratio = output_ratio(results)
    if ratio is not None:
        print(f"\npegboard / hf output tok/s: {ratio:.2f}x")


def _span(values: list[int]) -> str:
    return str(values[0]) if values[0] == values[1] else f"{values[0]}-{values[1]}"


def environment(info: ModelInfo, model: str) -> dict[str, Any]:
    import torch
    import transformers

    return {"model": model, "model_file": Path(info.files.path).name, "model_format": info.files.format,
            "dtype": str(info.dtype).removeprefix("torch."), "device": str(info.device),
            "device_name": device_name(info.device), "torch": torch.__version__,
            "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_average_1m": _load_average(), **git_state()}


def _load_average() -> float | None:
    """The 1-minute load average at the end of the run: other work on the host skews CPU figures."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def device_name(device: Any) -> str:
    """The GPU's name, or the CPU model and core count."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {len(os.sched_getaffinity(0))} cores, {model}"


def git_state() -> dict[str, Any]:
    """The checkout's commit and whether it has uncommitted changes, when it is a git checkout."""
    root = Path(__file__).resolve().parents[2]  # the repository (plugins/bench/ -> .)

    def git(*argv: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *argv], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def write_json(path: str, args: argparse.Namespace, summary: dict[str, Any], env: dict[str, Any],
               results: list[BackendResult]) -> None:
    settings = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    report = {"settings": settings, "environment": env, "requests": summary,
              "results": {r.backend: {**asdict(r), **r.rates()} for r in results},
              "pegboard_over_hf_output_tok_per_s": output_ratio(results)}
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}")


# ---- main --------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    from pegboard.core.cli_args import engine_kwargs_from_args

    engine_kwargs = {**engine_kwargs_from_args(args), "model": args.model}
    backends = BACKENDS if args.backend == "both" else (args.backend,)
    results: list[BackendResult] = []
    if "pegboard" in backends:
        llm, startup_s = start_pegboard(engine_kwargs)
        engine = llm.engine
        info = model_info(engine.files, engine.core.hf_config, engine.tokenizer, engine.config)
        requests = build_requests(args, info)
        check_fits(requests, engine.max_model_len)
        results.append(run_pegboard(llm, requests, startup_s))
        del llm, engine
        gc.collect()  # free the KV cache before HF loads its copy of the model
        _release_device_memory(info.device)
    else:
        info = resolve_model_info(engine_kwargs)
        requests = build_requests(args, info)
    if "hf" in backends:
        results.append(run_hf(info, requests, args.hf_batch_size, engine_kwargs.get("load_format", "auto")))
    summary = describe_requests(requests, dataset_name(args, info))
    env = environment(info, args.model)
    print_report(results, summary, env, args.hf_batch_size)
    if args.output_json:
        write_json(args.output_json, args, summary, env, results)
    return 0
