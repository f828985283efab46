"""bench throughput's mixed workload, one run in this process: output tok/s and which pegboard tree ran it."""
import time
from pegboard import LLM, SamplingParams
from pegboard.plugins.bench.data import mixed_requests, ordinary_token_ids, tokenizer_special_ids
import pegboard
llm = LLM("smollm2", dtype="float32", device="cpu", disable_progress_bar=True)
tok = llm.get_tokenizer()
vocab = ordinary_token_ids(len(tok), tokenizer_special_ids(tok))
reqs = mixed_requests(vocab, 64, min_input_len=32, max_input_len=512, min_output_len=32, max_output_len=256, seed=0)
prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=r.output_len) for r in reqs]
n = sum(r.output_len for r in reqs)
llm.generate(prompts[:2], params[:2], use_tqdm=False)
t = time.perf_counter(); llm.generate(prompts, params, use_tqdm=False); e = time.perf_counter() - t
print(f"{pegboard.__file__}: {n/e:.1f} tok/s ({e:.1f} s) load {open('/proc/loadavg').read().split()[0]}", flush=True)
