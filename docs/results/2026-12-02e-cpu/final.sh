# The issue-13 figures in one run, from the repository root; llama-cpp-python 0.3.36 in /tmp/llvenv
# (CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36).
echo "== $(date -u) commit $(git rev-parse --short HEAD) + working tree; $(lscpu | grep 'Model name')"
/tmp/llvenv/bin/python tests/cpu/bench_llama_cpp.py --repeat 3 2>&1 | tail -1
python tests/cpu/bench_cpu_decode.py --repeat 3 2>&1 | tail -8
python tests/cpu/bench_cpu_throughput.py 2>&1 | tail -2
echo "== pegboard bench throughput $(date -u)"
pegboard bench throughput 2>&1 | grep -v WARN | tail -15
/tmp/llvenv/bin/python tests/cpu/bench_llama_cpp.py --repeat 3 2>&1 | tail -1
echo "== done $(date -u)"
