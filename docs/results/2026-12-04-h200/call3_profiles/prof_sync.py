"""Scratch: torch.profiler over a free and a json_schema run (bench_structured's shape): CUDA runtime calls that
wait (synchronize, D2H copies) and the top CPU ops, per run."""
import sys, time
import torch
from torch.profiler import profile, ProfilerActivity
from bench_structured import SCHEMAS, llm_and_prompts
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_params import StructuredOutputsParams

llm, prompts = llm_and_prompts(sys.argv[1], 256, 256)
free = SamplingParams(temperature=0.8, max_tokens=64, seed=0)
guided = SamplingParams(temperature=0.8, max_tokens=64, seed=0, structured_outputs=StructuredOutputsParams(json=SCHEMAS["line_items"]))
llm.generate([{"prompt_token_ids": p} for p in prompts], free, use_tqdm=False)
llm.generate([{"prompt_token_ids": p} for p in prompts[:16]], guided, use_tqdm=False)
for label, params in (("free", free), ("guided", guided)):
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    ka = prof.key_averages()
    print(f"===== {label}: {wall:.2f} s under the profiler")
    for e in ka:
        if any(k in e.key for k in ("ynchronize", "Memcpy", "memcpy", "item", "local_scalar", "nonzero", "tolist", "HostAlloc", "EventQuery")):
            print(f"  {e.key[:60]:60s} calls {e.count:7d}  cpu total {e.cpu_time_total/1e3:9.1f} ms")
    print(ka.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
    print(ka.table(sort_by="self_device_time_total", row_limit=15, max_name_column_width=50))
