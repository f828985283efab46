"""CPU decode, prefill and start-up on the packaged SmolLM2 Q4_1 GGUF (or ``--model``): the exact float32 path
against the packed GGUF-block path (``--settings``: ``cpu_weights`` values), the engines in this one process, runs
alternating.

    python tests/cpu/bench_cpu_decode.py [--repeat 3] [--threads N] [--tokens 128] [--prompt-tokens 512]
    python tests/cpu/bench_cpu_decode.py --model ~/.cache/pegboard/reference/smollm2-hf --settings fp32,int8,int4

Figures (best of ``--repeat`` after one untimed warm-up each; the 1-minute load average beside each):
- decode tok/s: one request alone, ``--tokens`` greedy tokens (ignore_eos) after a short chat prompt, timed
  from its first token to its last (the prefill excluded);
- prefill tok/s: one ``--prompt-tokens`` prompt, time to its first token;
- start-up s: ``LLM(...)`` construction (load, packing, KV cache), the C++ kernels already built; the first
  build of the kernels is timed separately (torch's extension cache is emptied only with ``--cold-build``).
Also printed: the memory-bandwidth bound of one request's decode, the weights a step reads at the bandwidth of
a large copy (bytes read plus written per second, measured here unless ``--bandwidth-gbs`` is given).
"""

from __future__ import annotations

import argparse
import os
import time

MESSAGES = [{"role": "user", "content": "Tell me about the history of Paris in a few paragraphs."}]


def load_average() -> str:
    return open("/proc/loadavg").read().split()[0]


def copy_bandwidth_gbs() -> float:
    """Bytes read plus written per second by a 256 MB float32 copy (best of 5)."""
    import torch

    src = torch.ones(64 << 20)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - started)
    return 2 * src.numel() * 4 / best / 1e9


def start(model: str, setting: str, threads: int | None):
    from pegboard import LLM

    started = time.perf_counter()
    llm = LLM(model, dtype="float32", max_model_len=2048, device="cpu", cpu_weights=setting,
              cpu_threads=threads, disable_progress_bar=True)
    return llm, time.perf_counter() - started


def decode_rate(llm, tokens: int) -> float:
    """Tokens after the first per second, one request alone."""
    from pegboard import SamplingParams

    engine = llm.engine
    prompt = llm.apply_chat_template(MESSAGES)
    engine.add_request("decode", prompt, SamplingParams(temperature=0, max_tokens=tokens + 1, ignore_eos=True))
    first = None
    while engine.has_unfinished_requests():
        for output in engine.step():
            if first is None and output.outputs and output.outputs[0].token_ids:
                first = time.perf_counter()
    return tokens / (time.perf_counter() - first)


def prefill_rate(llm, prompt_tokens: int) -> float:
    """Prompt tokens per second to the first token of one prompt of ``prompt_tokens`` tokens."""
    from pegboard import SamplingParams

    tokenizer = llm.get_tokenizer()
    text = " ".join(f"Sentence {i} says that the weather in town number {i} was fine." for i in range(200))
    ids = tokenizer(text).input_ids[:prompt_tokens]
    started = time.perf_counter()
    llm.generate([{"prompt_token_ids": ids}], SamplingParams(temperature=0, max_tokens=1), use_tqdm=False)
    return len(ids) / (time.perf_counter() - started)


def weight_bytes_per_token(llm) -> int:
    """Bytes of weights one decode step reads: each linear layer's and the LM head's, packed where packed."""
    from pegboard.core.cpu_weights import PackedCPUScheme
    from pegboard.core.linear import LinearBase

    model = llm.engine.executor.runner.model
    total = 0
    for module in [m for m in model.modules() if isinstance(m, LinearBase)] + [model.lm_head]:
        scheme = getattr(module, "scheme", None)
        packed = scheme.weight if isinstance(scheme, PackedCPUScheme) else getattr(module, "packed", None)
        total += packed.read_bytes() if packed is not None else module.weight.numel() * module.weight.element_size()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--bandwidth-gbs", type=float, default=None)
    parser.add_argument("--cold-build", action="store_true", help="time a first build of the C++ kernels")
    parser.add_argument("--model", default="smollm2", help="the checkpoint (default: the packaged GGUF)")
    parser.add_argument("--settings", default="fp32,packed", help="cpu_weights settings to compare, comma-separated")
    args = parser.parse_args()

    import torch

    from pegboard.kernels import cpu_build

    if args.cold_build:
        os.environ["TORCH_EXTENSIONS_DIR"] = f"/tmp/pegboard-bench-ext-{os.getpid()}"
    started = time.perf_counter()
    cpu_build.compiled_ops()
    print(f"C++ kernels {'built' if args.cold_build else 'loaded'} in {time.perf_counter() - started:.1f} s "
          f"(load {load_average()})")
    bandwidth = args.bandwidth_gbs or copy_bandwidth_gbs()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads by default, copy bandwidth "
          f"{bandwidth:.1f} GB/s (read + write)")

    settings = tuple(args.settings.split(","))
    engines, startup = {}, {s: [] for s in settings}
    for _ in range(2):  # start each twice, alternating (the first start also parses the GGUF file)
        for setting in settings:
            engines.pop(setting, None)
            engines[setting], seconds = start(args.model, setting, args.threads)
            startup[setting].append((seconds, load_average()))
    decode = {s: [] for s in settings}
    prefill = {s: [] for s in settings}
    for setting in settings:  # warm-up
        decode_rate(engines[setting], 8)
        prefill_rate(engines[setting], args.prompt_tokens)
    for _ in range(args.repeat):
        for setting in settings:
            decode[setting].append((decode_rate(engines[setting], args.tokens), load_average()))
            prefill[setting].append((prefill_rate(engines[setting], args.prompt_tokens), load_average()))
    print(f"\n| path | start-up s (first / second in this process) | decode tok/s ({args.tokens} tokens, 1 request) | "
          f"prefill tok/s ({args.prompt_tokens} tokens) | weights read per decode step | bandwidth bound tok/s |")
    print("|---|---|---|---|---|---|")
    for setting in settings:
        (first, _), (seconds, load_s) = startup[setting]
        rate, load_d = max(decode[setting])
        pre, load_p = max(prefill[setting])
        weights = weight_bytes_per_token(engines[setting])
        print(f"| {setting} | {first:.2f} / {seconds:.2f} (load {load_s}) | {rate:.1f} (load {load_d}) "
              f"| {pre:.0f} (load {load_p}) "
              f"| {weights / 1e6:.0f} MB | {bandwidth * 1e9 / weights:.0f} |")
    print("\nall decode runs:", {s: [f"{r:.1f}@{l}" for r, l in v] for s, v in decode.items()})
    print("all prefill runs:", {s: [f"{r:.0f}@{l}" for r, l in v] for s, v in prefill.items()})


if __name__ == "__main__":
    main()
