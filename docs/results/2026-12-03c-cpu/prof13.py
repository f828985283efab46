"""bench throughput's mixed workload on the packed CPU path: one plain run, then one under torch's profiler (op table)
or cProfile (function table).    python prof13.py [NUM_PROMPTS] [torch|cprofile]"""
import sys, time
from pegboard import LLM, SamplingParams
from pegboard.plugins.bench.data import mixed_requests, ordinary_token_ids, tokenizer_special_ids

n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
mode = sys.argv[2] if len(sys.argv) > 2 else "torch"
llm = LLM("smollm2", dtype="float32", device="cpu", disable_progress_bar=True)
tok = llm.get_tokenizer()
vocab = ordinary_token_ids(len(tok), tokenizer_special_ids(tok))
reqs = mixed_requests(vocab, n, min_input_len=32, max_input_len=512, min_output_len=32, max_output_len=256, seed=0)
prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=r.output_len) for r in reqs]
out_tokens = sum(r.output_len for r in reqs)
llm.generate(prompts[:2], params[:2], use_tqdm=False)
t = time.perf_counter(); llm.generate(prompts, params, use_tqdm=False); e = time.perf_counter() - t
print(f"plain run: {out_tokens/e:.1f} tok/s ({e:.1f} s) load {open('/proc/loadavg').read().split()[0]}")
if mode == "torch":
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as p:
        t = time.perf_counter(); llm.generate(prompts, params, use_tqdm=False); e = time.perf_counter() - t
    print(f"profiled run: {out_tokens/e:.1f} tok/s ({e:.1f} s)")
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))
else:
    import cProfile, pstats
    pr = cProfile.Profile(); pr.enable()
    llm.generate(prompts, params, use_tqdm=False)
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(35)
