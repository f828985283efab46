#!/usr/bin/env bash
# Guided decoding on the GPU (issue 11) in one call: the grammar tests natively on CUDA (the device DFA walk, both
# grammar processors, every structured-output kind through the engine), then bench_structured.py's cost per
# output token, for each checkout in ROOTS (a DIR holding a `pegboard` package), interleaved.
# Usage: TOKENIZER=DIR [ROOTS="DIR1 DIR2"] [SCHEMAS="line_items article"] bash tests/gpu/check_structured.sh
# The engine tests need jsonschema (it and its dependencies as wheels on PYTHONPATH); without it they skip, and
# this script says so. Writes tests_<DIR's name>.txt and bench_<DIR's name>.txt to $OUT (default /tmp).
set -uo pipefail
out="${OUT:-/tmp}"
read -r -a roots <<< "${ROOTS:-}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
for root in "${roots[@]:-}"; do
  label="$(basename "${root:-here}")"
  tree="${root:+$root/pegboard}"
  echo "== tests from ${root:-this tree} ($(date -u +%T) UTC)"
  (cd "${tree:-.}" && PYTHONPATH="${root:-${PYTHONPATH:-}}${root:+:${PYTHONPATH:-}}" python3 -m pytest -q \
    -p no:cacheprovider -rs tests/test_dfa_walk.py tests/test_grammar_processor.py \
    tests/test_structured_outputs_engine.py 2>&1 | tail -6) | tee "$out/tests_$label.txt"
done
for root in "${roots[@]:-}"; do
  label="$(basename "${root:-here}")"
  echo "== bench_structured from ${root:-this tree} ($(date -u +%T) UTC)"
  PYTHONPATH="${root:-${PYTHONPATH:-}}${root:+:${PYTHONPATH:-}}" python3 "${root:+$root/pegboard/}tests/gpu/bench_structured.py" \
    "$TOKENIZER" --schema ${SCHEMAS:-line_items article} 2>&1 | grep -v " INFO " | tee "$out/bench_$label.txt"
done
