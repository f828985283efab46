#!/usr/bin/env bash
# Served latency under load (issue 12's table): `pegboard serve` on a Llama-3.1-8B-shaped dummy model (bf16)
# with SmolLM2's tokenizer, then `pegboard bench serve` at each request rate: random 1024 in / 128 out,
# 400 requests, Poisson arrivals, ignore_eos. Usage:
#   TOKENIZER=DIR [ROOTS="DIR1 DIR2"] [RATES="8 16 24 32 40"] [SERVE_ARGS="..."] bash tests/gpu/bench_serve.sh
# TOKENIZER is a folder with SmolLM2's tokenizer files (tokenizer.json, tokenizer_config.json). With ROOTS, each
# checkout (a DIR holding a `pegboard` package: PYTHONPATH=DIR) serves in turn: two commits side by side in one
# call; CLIENT_ROOT (default: each root itself) is the checkout whose `bench serve` client measures them all, so
# an older commit's server meets today's client. Writes serve_<root>_<rate>.json to $OUT (default /tmp) and prints one table row per rate.
set -euo pipefail
out="${OUT:-/tmp}"
cfg="$(mktemp -d)/llama-3.1-8b-shape"
python3 tests/gpu/llama8b_config.py "$cfg" "${TOKENIZER:?set TOKENIZER to a folder of tokenizer files}"
read -r -a roots <<< "${ROOTS:-}"
read -r -a rates <<< "${RATES:-8 16 24 32 40}"
port=8123
base_path="${PYTHONPATH:-}"  # kept behind each root (carried wheels, say)
for root in "${roots[@]:-}"; do
  label="$(basename "${root:-here}")"
  export PYTHONPATH="${root:+$root:}${base_path}"
  started=$(date +%s.%N)
  # shellcheck disable=SC2086
  python3 -m pegboard.core.cli serve "$cfg" --load-format dummy --dtype bfloat16 --max-model-len 2304 \
    --port "$port" --served-model-name llama8b ${SERVE_ARGS:-} > "$out/serve_$label.log" 2>&1 &
  server=$!
  until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do
    kill -0 "$server" 2> /dev/null || { echo "server from ${root:-here} died:"; tail -20 "$out/serve_$label.log"; exit 1; }
    sleep 0.5
  done
  echo "== ${root:-here}: ready in $(python3 -c "print(round($(date +%s.%N) - $started, 1))") s"
  echo "| req/s offered | achieved | TTFT mean / P99 ms | TPOT median / P99 ms | requests |"
  for rate in "${rates[@]}"; do
    PYTHONPATH="${CLIENT_ROOT:-$root}${base_path:+:$base_path}" python3 -m pegboard.core.cli bench serve --base-url "http://127.0.0.1:$port" --model llama8b --tokenizer "$cfg" \
      --dataset-name random --random-input-len 1024 --random-output-len 128 --num-prompts 400 --ignore-eos \
      --request-rate "$rate" --seed 0 --save-result --result-dir "$out" --result-filename "serve_${label}_$rate.json" \
      > "$out/bench_${label}_$rate.txt" 2>&1 || { echo "bench at $rate req/s failed:"; tail -20 "$out/bench_${label}_$rate.txt"; }
    python3 - "$out/serve_${label}_$rate.json" "$rate" <<'PY' || echo "| $rate | no result |"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {r['request_throughput']:.2f} | {r['mean_ttft_ms']:.0f} / {r['p99_ttft_ms']:.0f} | "
      f"{r['median_tpot_ms']:.1f} / {r['p99_tpot_ms']:.1f} | {r['completed']} done, {r['failed']} failed |")
PY
  done
  kill "$server"; wait "$server" || true
done
