"""The packed CPU path with its one-pass C++ RMSNorm against the same engine with torch's F.rms_norm, runs
alternating in one process: single-request tok/s (128 greedy tokens after a short chat prompt, prefill included)
and whether the two give the same tokens.

    python tests/cpu/bench_cpu_norm.py
"""

import time
from pegboard import LLM
from pegboard.core.sampling_params import SamplingParams
llm = LLM("smollm2", cpu_weights="packed")
model = llm.engine.core.executor.runner.model
norms = [m for m in model.modules() if hasattr(m, "fused_add_norm")]
fused = norms[0].fused_add_norm
assert fused is not None, "packed path did not install the fused norm"
p = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
msgs = [[{"role": "user", "content": "Tell me about the history of Paris in a few paragraphs."}]]
res = {"torch": [], "fused": []}; texts = {}
for rep in range(5):
    for mode in ("torch", "fused"):
        for n in norms: n.fused_add_norm = fused if mode == "fused" else None
        t = time.perf_counter(); o = llm.chat(msgs, p); w = time.perf_counter() - t
        res[mode].append(128 / w); texts[mode] = o[0].outputs[0].token_ids
print({k: [f"{v:.1f}" for v in vs] for k, vs in res.items()})
print("same tokens:", texts["torch"] == texts["fused"], "load", open("/proc/loadavg").read().split()[0])
