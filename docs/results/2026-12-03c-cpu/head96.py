"""96 requests decoding together (short prompts): every decode step samples 96 rows, over PACKED_MAX_ROWS."""
import time, random
from pegboard import LLM, SamplingParams
llm = LLM("smollm2", dtype="float32", device="cpu", max_num_seqs=128, disable_progress_bar=True)
rng = random.Random(0)
prompts = [{"prompt_token_ids": [rng.randrange(100, 40000) for _ in range(32)]} for _ in range(96)]
params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=64)
llm.generate(prompts[:2], params, use_tqdm=False)
t = time.perf_counter(); llm.generate(prompts, params, use_tqdm=False); e = time.perf_counter() - t
print(f"96 x 64 tokens: {96*64/e:.1f} output tok/s ({e:.2f} s) load {open('/proc/loadavg').read().split()[0]}")
