# The issue-13 figures in one run (2-core AMD EPYC), from the repository root: one-request decode and prefill,
# start-up, then `pegboard bench throughput` from the commit before this session's CPU work (OLD) and from this tree
# (NEW) in alternating fresh processes, then both backends once (HF's rate). llama.cpp is not in this run (its
# figure, 92.7 tok/s, is the issue's; the 2026-12-03 run measured 95.7-108.5 beside ours).
# OLD: git worktree add --detach /tmp/old_tree 87b1111; mkdir /tmp/oldpk; ln -s /tmp/old_tree /tmp/oldpk/pegboard
# NEW: mkdir /tmp/newpk; ln -s "$PWD" /tmp/newpk/pegboard
set -u
echo "== $(date -u) commit $(git rev-parse --short HEAD); $(lscpu | grep 'Model name'); load $(cut -d' ' -f1 /proc/loadavg)"
python tests/cpu/bench_cpu_decode.py --repeat 3 2>&1 | tail -8
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
echo "== done $(date -u)"
