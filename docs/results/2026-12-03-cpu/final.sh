# The issue-13 figures in one run (2-core AMD EPYC), from the repository root: llama.cpp, one-request decode,
# start-up, then `pegboard bench throughput` from the commit before this round of CPU work (OLD, a worktree) and
# from this tree (NEW) in alternating fresh processes, then HF's rate once and llama.cpp again.
# llama-cpp-python 0.3.36 in /tmp/llvenv (CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36);
# OLD: git worktree add --detach /tmp/old_tree ad2a5eb; mkdir /tmp/oldpk; ln -s /tmp/old_tree /tmp/oldpk/pegboard
# NEW: mkdir /tmp/newpk; ln -s "$PWD" /tmp/newpk/pegboard
set -u
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
for round in 1 2 3 4; do
  for side in old new; do
    echo "== bench throughput, $side tree, round $round, $(date -u +%T), load $(cut -d' ' -f1 /proc/loadavg)"
    PYTHONPATH=/tmp/${side}pk TORCH_EXTENSIONS_DIR=/tmp/ext_$side python -m pegboard.core.cli bench throughput \
      --backend pegboard 2>&1 | grep -E "^pegboard "
  done
done
echo "== pegboard bench throughput (both backends) $(date -u +%T)"
pegboard bench throughput 2>&1 | grep -v WARN | tail -6
/tmp/llvenv/bin/python tests/cpu/bench_llama_cpp.py --repeat 3 2>&1 | tail -1
echo "== done $(date -u)"
