"""int8 prompt GEMMs (weights per output row, activations per row, dynamic) patched into the packed CPU path's
steps over 64 rows: greedy agreement with the exact float32 path on tests/reference_prompts.json (16 prompts at
once, 24 tokens), as tests/test_cpu_weights.py counts it.

    python int8_prompt_gemms.py bf16|all|nodown   (bf16: the path as it is; all: every prompt GEMM int8;
                                                   nodown: all but the MLP's down projection)
"""
import sys, types
from pathlib import Path
import torch
import torch.nn.functional as F
from pegboard.core.llm import LLM
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.cpu_weights import PackedCPUScheme
from pegboard.plugins.sources import packaged_model_path

MODE = sys.argv[1]

def q_rows(x):
    s = x.abs().amax(1, keepdim=True).clamp_(min=1e-8).div_(127)
    return torch.round(x / s).to(torch.int8), s

class W8:
    def __init__(self, w):
        w = w.detach().float()
        self.s = w.abs().amax(1).clamp(min=1e-8) / 127
        self.q = torch.round(w / self.s[:, None]).to(torch.int8).t()  # [K, N] view of [N, K]
    def __call__(self, x):
        xq, xs = q_rows(x)
        return torch._int_mm(xq, self.q).float().mul_(xs).mul_(self.s)

def patch(llm):
    model = llm.engine.executor.runner.model
    n = 0
    for m in model.modules():
        sch = getattr(m, "scheme", None)
        if isinstance(sch, PackedCPUScheme) and sch.prefill_weight is not None:
            sch.w8 = W8(m.weight)
            def apply(self, layer, x, bias, _orig=sch.apply):
                if x.shape[0] > self.max_rows:
                    y = self.w8(x)
                    return y if bias is None else y.add_(bias)
                return _orig(layer, x, bias)
            sch.apply = types.MethodType(apply, sch)
            n += 1
    # the MLP: the decoder layers' packed blocks hold it
    for m in model.modules():
        for name, val in vars(m).items():
            if hasattr(val, "prompt_mlp") and val.prompt_mlp is not None:
                mlp = val.prompt_mlp
                gu = W8(mlp.gate_up.float()); dn = W8(mlp.down.float()) if MODE == "all" else None
                ops = mlp.ops; down_bf = mlp.down
                def call(x, gu=gu, dn=dn, ops=ops, down_bf=down_bf):
                    g = gu(x)
                    h = F.silu(g[:, : g.shape[1] // 2]) * g[:, g.shape[1] // 2:]
                    return dn(h) if dn is not None else F.linear(h.to(torch.bfloat16), down_bf).float()
                val.prompt_mlp = call
                n += 1
    return n

gguf = str(packaged_model_path("smollm2"))
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
from test_cpu_weights import _SENTENCES, MAX_TOKENS  # noqa
exact = LLM(gguf, dtype="float32", max_model_len=1024, device="cpu", cpu_weights="fp32")
packed = LLM(gguf, dtype="float32", max_model_len=1024, device="cpu", cpu_weights="packed")
if MODE != "bf16":
    print("patched", patch(packed))
tok = exact.get_tokenizer()
prompts = [{"prompt_token_ids": tok(s).input_ids} for s in _SENTENCES]
print("prompt lengths", [len(p["prompt_token_ids"]) for p in prompts])
params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, min_tokens=MAX_TOKENS, logprobs=2)
ref = exact.generate(prompts, params, use_tqdm=False)
out = packed.generate(prompts, params, use_tqdm=False)
same = 0
for r, o in zip(ref, out):
    a, b = r.outputs[0].token_ids, o.outputs[0].token_ids
    if a == b: same += 1; continue
    i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    top2 = sorted((lp.logprob for lp in r.outputs[0].logprobs[i].values()), reverse=True)[:2]
    print(f"  diverges at {i}, reference top-2 gap {top2[0]-top2[1]:.4f}")
print(MODE, "identical", same, "of 16")
