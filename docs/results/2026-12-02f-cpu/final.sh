# The issue-13 figures in one run on this session's machine (2-core AMD EPYC), from the repository root;
# llama-cpp-python 0.3.36 in /tmp/llvenv (CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36).
echo "== $(date -u) commit $(git rev-parse --short HEAD); $(lscpu | grep 'Model name'); load $(cut -d' ' -f1 /proc/loadavg)"
/tmp/llvenv/bin/python tests/cpu/bench_llama_cpp.py --repeat 3 2>&1 | tail -1
python tests/cpu/bench_cpu_decode.py --repeat 3 2>&1 | tail -8
/tmp/llvenv/bin/python tests/cpu/bench_llama_cpp.py --repeat 3 2>&1 | tail -1
echo "== start-up, fresh processes (header and tokenizer cached)"
for i in 1 2 3; do
  python -c "import time; t = time.perf_counter()
from pegboard import LLM
LLM('smollm2', dtype='float32', device='cpu', disable_progress_bar=True)
print(f'LLM(\"smollm2\") in a fresh process, imports included: {time.perf_counter() - t:.2f} s')" 2>&1 | tail -1
done
echo "== int8 / int4 on the safetensors copy $(date -u)"
python tests/cpu/bench_cpu_decode.py --model ~/.cache/pegboard/reference/smollm2-hf --settings fp32,int8,int4 \
  --repeat 3 2>&1 | tail -7
python tests/cpu/bench_cpu_throughput.py 2>&1 | tail -2
echo "== pegboard bench throughput $(date -u)"
pegboard bench throughput 2>&1 | grep -v WARN | tail -15
/tmp/llvenv/bin/python tests/cpu/bench_llama_cpp.py --repeat 3 2>&1 | tail -1
echo "== done $(date -u)"
