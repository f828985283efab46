"""One request's decode on the packed path, with and without enforce_eager (no C++ decoder blocks), the two engines
alternating in this process: 128 greedy tokens after a short prompt, tok/s over the whole request (its short
prefill included), best of 3."""
import time

from pegboard import LLM, SamplingParams

engines = {name: LLM("smollm2", dtype="float32", device="cpu", disable_progress_bar=True, **kw)
           for name, kw in (("C++ blocks", {}), ("enforce_eager", {"enforce_eager": True}))}
prompt = [{"prompt_token_ids": engines["C++ blocks"].get_tokenizer()("Tell me about Paris.").input_ids}]
params = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
best = {}
for _ in range(3):
    for name, llm in engines.items():
        llm.generate(prompt, SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
        started = time.perf_counter()
        llm.generate(prompt, params, use_tqdm=False)
        best[name] = max(best.get(name, 0), 128 / (time.perf_counter() - started))
print({name: f"{rate:.1f} tok/s" for name, rate in best.items()}, "load", open("/proc/loadavg").read().split()[0])
