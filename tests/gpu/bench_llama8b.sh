#!/usr/bin/env bash
# GPU throughput benchmarks (issue 4): a Llama-3.1-8B-shaped model with random weights, bf16, greedy,
# ignore_eos. Usage: [BACKEND=pegboard] [DTYPE=float16] [ROOTS="DIR1 DIR2"] bash tests/gpu/bench_llama8b.sh [A] [B] [C]
# (default: B, pegboard and HF). Writes ceilings.json and bench_W.json to $OUT (default /tmp) and ends with
# tests/gpu/floor.py's table: each run's fraction of the floor. With ROOTS, each workload runs once per
# checkout (a DIR holding a `pegboard` package: PYTHONPATH=DIR), interleaved, into bench_W_<DIR's name>.json:
# two commits side by side in one call.
# Workloads (each with its own prompt seed): A 1000 x 1024 in / 128 out; B 256 x 512 / 128; C 1000 x 128 / 1024.
set -euo pipefail
out="${OUT:-/tmp}"
cfg="$(mktemp -d)/llama-3.1-8b-shape"
python3 tests/gpu/llama8b_config.py "$cfg"
python3 tests/gpu/ceilings.py "$out/ceilings.json"
common=(--model "$cfg" --load-format dummy --skip-tokenizer-init --dtype "${DTYPE:-bfloat16}" --max-model-len 2304
        --max-num-seqs 256 --max-num-batched-tokens 8192 --dataset random)
workloads=("${@:-B}")
read -r -a roots <<< "${ROOTS:-}"
reports=()
for w in "${workloads[@]}"; do
  case "$w" in
    A) args=(--num-prompts 1000 --input-len 1024 --output-len 128 --prompt-seed 1 --backend pegboard) ;;
    B) args=(--num-prompts 256 --input-len 512 --output-len 128 --prompt-seed 2 --backend "${BACKEND:-both}" --hf-batch-size 64) ;;
    C) args=(--num-prompts 1000 --input-len 128 --output-len 1024 --prompt-seed 3 --backend pegboard) ;;
    *) echo "unknown workload $w" >&2; exit 2 ;;
  esac
  for root in "${roots[@]:-}"; do
    label="${root:+_$(basename "$root")}"
    echo "== workload $w${root:+ from $root} ($(date -u +%T.%3N) UTC, before the process starts)"
    PYTHONPATH="${root:-${PYTHONPATH:-}}" python3 -m pegboard.core.cli bench throughput "${common[@]}" "${args[@]}" \
      --output-json "$out/bench_$w$label.json"
    reports+=("$out/bench_$w$label.json")
  done
done
python3 tests/gpu/floor.py "$out/ceilings.json" "${reports[@]}"
