#!/usr/bin/env bash
# Gateway A/B measured from outside the process, the way a user would: two isnad binaries (say,
# main before and after a change) in front of one mock upstream, driven by oha, in alternating
# runs on this machine. Per run and binary: closed-loop throughput (32 connections), open-loop
# latency at 1,000 and 100 req/s (with --latency-correction), and resident memory; the mock is
# measured directly at the same rates in every run, so "added" latency is isnad's own.
#
#   benches/oha_ab.sh BEFORE_BIN AFTER_BIN [RUNS]
#
# BEFORE_BIN and AFTER_BIN are `isnad` release binaries. Needs `oha` (cargo install oha) and
# nginx (apt-get install nginx-light), which serves the mock's fixed answer far faster than the
# gateway. Environment: SECS (seconds per point, default 10), OHA (the oha binary).
set -euo pipefail

before=$1
after=$2
runs=${3:-5}
secs=${SECS:-10}
oha=${OHA:-oha}
token=ab-token
work=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# The mock: nginx answering every chat completion with one fixed body.
mock_port=18990
answer='{"id":"chatcmpl-ab","object":"chat.completion","created":0,"model":"mock","choices":[{"index":0,"message":{"role":"assistant","content":"Mock reply: hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}'
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_buffer_size 64k;
  server {
    listen 127.0.0.1:$mock_port;
    location /v1/chat/completions { default_type application/json; return 200 '$answer'; }
  }
}
EOF
nginx -c "$work/nginx.conf"

cat >"$work/isnad.toml" <<EOF
[server]
max_concurrent_requests = 4096
[providers.mock]
base_url = "http://127.0.0.1:$mock_port/v1"
max_retries = 0
[[models]]
id = "fast"
provider = "mock"
upstream_model = "mock"
residency = "local"
EOF
body='{"model":"fast","messages":[{"role":"user","content":"hello"}]}'

# oha's JSON summary -> "rps p50_ms p99_ms"
point() {
  local url=$1
  shift
  "$oha" --no-tui --output-format json -z "${secs}s" -m POST -H "Authorization: Bearer $token" \
    -H "Content-Type: application/json" -d "$body" "$@" "$url" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; print("%.0f %.3f %.3f" % (d["summary"]["requestsPerSec"], p["p50"]*1e3, p["p99"]*1e3))'
}

measure() { # label bin -> one row
  local label=$1 bin=$2 data="$work/data-$1-$RANDOM"
  ISNAD_ADMIN_KEY=$token "$bin" serve --config "$work/isnad.toml" --data-dir "$data" \
    --listen 127.0.0.1:0 >"$work/out" 2>/dev/null &
  local pid=$!
  local url=""
  for _ in $(seq 100); do
    url=$(sed -n 's/^isnad listening on //p' "$work/out")
    [ -n "$url" ] && break
    sleep 0.1
  done
  url="$url/v1/chat/completions"
  "$oha" --no-tui --output-format quiet -z 2s -c 32 -m POST -H "Authorization: Bearer $token" \
    -H "Content-Type: application/json" -d "$body" "$url" >/dev/null
  read -r closed _ _ < <(point "$url" -c 32)
  read -r _ p50_1k p99_1k < <(point "$url" -c 32 -q 1000 --latency-correction)
  read -r _ p50_100 p99_100 < <(point "$url" -c 8 -q 100 --latency-correction)
  local hwm
  hwm=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
  kill -TERM "$pid"
  wait "$pid" || true
  echo "$label $closed $p50_1k $p99_1k $p50_100 $p99_100 $hwm"
}

mock_url="http://127.0.0.1:$mock_port/v1/chat/completions"
echo "# run binary closed_rps p50_1k_ms p99_1k_ms p50_100_ms p99_100_ms rss_hwm_mb | mock p50/p99 at 1k, p50/p99 at 100 (ms)"
for r in $(seq "$runs"); do
  read -r _ m50_1k m99_1k < <(point "$mock_url" -c 32 -q 1000 --latency-correction)
  read -r _ m50_100 m99_100 < <(point "$mock_url" -c 8 -q 100 --latency-correction)
  # Alternate which binary goes first.
  if [ $((r % 2)) -eq 1 ]; then order="before after"; else order="after before"; fi
  for which in $order; do
    bin=$before
    [ "$which" = after ] && bin=$after
    echo "$r $(measure "$which" "$bin") | $m50_1k $m99_1k $m50_100 $m99_100"
  done
done
