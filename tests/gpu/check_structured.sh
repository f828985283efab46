#!/usr/bin/env bash
# Guided decoding on the GPU (issue 11) in one call: the grammar tests natively on CUDA (the device DFA walk, both
# grammar processors, every structured-output kind through the engine), then bench_structured.py's cost per
# output token, for each checkout in ROOTS (a DIR holding a `pegboard` package), interleaved, ROUNDS times (the runs
# move with the host by several percent, so compare means over rounds; docs/results/2026-12-04-h200).
# Usage: TOKENIZER=DIR [ROOTS="DIR1 DIR2"] [SCHEMAS="line_items article"] [ROUNDS=1] [TESTS=all|first|none]
#        bash tests/gpu/check_structured.sh   (TESTS=first: the tests of the first root only)
# The engine tests need jsonschema (it and its dependencies as wheels on PYTHONPATH); without it they skip, and
# this script says so. Writes tests_<DIR's name>.txt and bench_<DIR's name>.txt (every round appended) to $OUT
# (default /tmp), and prints each run's ratio lines.
set -uo pipefail
out="${OUT:-/tmp}"
read -r -a roots <<< "${ROOTS:-}"
case "${TESTS:-all}" in all|first|none) ;; *) echo "TESTS must be all, first or none, not '${TESTS}'" >&2; exit 2 ;; esac
[[ "${ROUNDS:-1}" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive integer, not '${ROUNDS}'" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
tested=0
for root in "${roots[@]:-}"; do
  [ "${TESTS:-all}" = none ] && break
  [ "${TESTS:-all}" = first ] && [ "$tested" = 1 ] && break
  tested=1
  label="$(basename "${root:-here}")"
  tree="${root:+$root/pegboard}"
  echo "== tests from ${root:-this tree} ($(date -u +%T) UTC)"
  (cd "${tree:-.}" && PYTHONPATH="${root:-${PYTHONPATH:-}}${root:+:${PYTHONPATH:-}}" python3 -m pytest -q \
    -p no:cacheprovider -rs tests/test_dfa_walk.py tests/test_grammar_processor.py \
    tests/test_structured_outputs_engine.py 2>&1 | tail -6) | tee "$out/tests_$label.txt"
done
for round in $(seq 1 "${ROUNDS:-1}"); do
  for root in "${roots[@]:-}"; do
    label="$(basename "${root:-here}")"
    echo "== bench_structured from ${root:-this tree}, round $round ($(date -u +%T) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))" \
      | tee -a "$out/bench_$label.txt"
    PYTHONPATH="${root:-${PYTHONPATH:-}}${root:+:${PYTHONPATH:-}}" python3 "${root:+$root/pegboard/}tests/gpu/bench_structured.py" \
      "$TOKENIZER" --schema ${SCHEMAS:-line_items article} 2>&1 | grep -v " INFO " | tee -a "$out/bench_$label.txt" \
      | grep "costs"
  done
done
