"""How many rows each step of head96.py's workload sends through the LM head (row count: steps)."""
import random, collections
from pegboard import LLM, SamplingParams
llm = LLM("smollm2", dtype="float32", device="cpu", max_num_seqs=128, disable_progress_bar=True)
m = llm.engine.executor.runner.model
sizes = collections.Counter()
orig = m.lm_head.forward
m.lm_head.forward = lambda h: (sizes.update([h.shape[0]]), orig(h))[1]
rng = random.Random(0)
prompts = [{"prompt_token_ids": [rng.randrange(100, 40000) for _ in range(32)]} for _ in range(96)]
llm.generate(prompts, SamplingParams(temperature=0, ignore_eos=True, max_tokens=64), use_tqdm=False)
print(type(m.lm_head).__name__, sorted(sizes.items()))
