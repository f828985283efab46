"""bench throughput's mixed workload on the packed path at several max_num_batched_tokens, engines in one process, alternating."""
import sys, time
from pegboard import LLM, SamplingParams
from pegboard.plugins.bench.data import mixed_requests, ordinary_token_ids, tokenizer_special_ids
budgets = [int(b) for b in sys.argv[1].split(",")]
rounds = int(sys.argv[2])
engines = {b: LLM("smollm2", dtype="float32", device="cpu", max_num_batched_tokens=b, disable_progress_bar=True) for b in budgets}
tok = engines[budgets[0]].get_tokenizer()
vocab = ordinary_token_ids(len(tok), tokenizer_special_ids(tok))
reqs = mixed_requests(vocab, 64, min_input_len=32, max_input_len=512, min_output_len=32, max_output_len=256, seed=0)
prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=r.output_len) for r in reqs]
n = sum(r.output_len for r in reqs)
for llm in engines.values():
    llm.generate(prompts[:2], params[:2], use_tqdm=False)
for i in range(rounds):
    order = budgets if i % 2 == 0 else budgets[::-1]
    for b in order:
        t = time.perf_counter(); engines[b].generate(prompts, params, use_tqdm=False); e = time.perf_counter() - t
        print(f"round {i} budget {b}: {n/e:.1f} tok/s ({e:.1f} s) load {open('/proc/loadavg').read().split()[0]}", flush=True)
