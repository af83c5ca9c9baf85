#!/usr/bin/env bash
# Access control A/B, from outside the process: one isnad release binary in front of nginx
# serving a fixed chat answer, driven by oha. In alternating runs, the same load goes with the
# bootstrap admin key (no team, no limits, no budget) and with a managed key of a team that
# has a budget, request and token limits, and an address limit in [limits] (10,000 other keys
# in 100 teams exist). Per run and path: closed-loop throughput (32 connections) and open-loop
# p50/p99 at 1,000 req/s (--latency-correction). Prints every run, the medians and the ratios.
#
#   benches/access_ab.sh ISNAD_BIN [RUNS]
#
# Needs `oha` (cargo install oha) and nginx (apt-get install nginx-light). Environment: SECS
# (seconds per point, default 10), OHA (the oha binary).
set -euo pipefail

bin=$1
runs=${2:-5}
secs=${SECS:-10}
oha=${OHA:-oha}
token=ab-admin-token
work=$(mktemp -d)
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mock_port=18991
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
[limits]
address_requests_per_minute = 100000000
[providers.mock]
base_url = "http://127.0.0.1:$mock_port/v1"
max_retries = 0
[[models]]
id = "fast"
provider = "mock"
upstream_model = "mock"
residency = "local"
price_per_1k_input = 0.5
price_per_1k_output = 1.5
EOF
body='{"model":"fast","max_tokens":16,"messages":[{"role":"user","content":"hello"}]}'

ISNAD_ADMIN_KEY=$token "$bin" serve --config "$work/isnad.toml" --data-dir "$work/data" \
  --listen 127.0.0.1:0 >"$work/out" 2>/dev/null &
url=""
for _ in $(seq 100); do
  url=$(sed -n 's/^isnad listening on //p' "$work/out")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "isnad did not start" >&2; exit 1; }
export ISNAD_URL=$url ISNAD_ADMIN_KEY=$token

# 100 teams and 10,000 keys, so lookups are not served from a tiny table.
echo "creating 100 teams and 10,000 keys..." >&2
python3 - "$url" "$token" <<'PY'
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, token = sys.argv[1], sys.argv[2]
def call(method, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method=method,
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
for t in range(100):
    call("POST", "/v1/teams", {"id": f"team{t}"})
with ThreadPoolExecutor(16) as ex:
    list(ex.map(lambda k: call("POST", "/v1/keys", {"label": f"k{k}", "team": f"team{k % 100}"}), range(10000)))
PY
"$bin" teams create bench >/dev/null
key=$("$bin" keys create --label load --team bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
id=$("$bin" keys list --team bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
"$bin" keys limits "$id" --requests-per-minute 100000000 --tokens-per-minute 1000000000000 >/dev/null
"$bin" teams limits bench --tokens-per-day 1000000000000 >/dev/null
"$bin" teams budget bench --tokens 1000000000000 --cost-micros 1000000000000 --period month >/dev/null
"$bin" keys budget "$id" --tokens 1000000000000 --period day >/dev/null

point() { # token, extra oha args -> "rps p50_ms p99_ms"
  local tok=$1
  shift
  "$oha" --no-tui --output-format json -z "${secs}s" -m POST -H "Authorization: Bearer $tok" \
    -H "Content-Type: application/json" -d "$body" "$@" "$url/v1/chat/completions" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; s=d["summary"]; print("%.0f %.3f %.3f %.4f" % (s["requestsPerSec"], p["p50"]*1e3, p["p99"]*1e3, s["successRate"]))'
}

# Check both paths answer 200 with the headers the managed key should get.
curl -s -D - -o /dev/null -H "Authorization: Bearer $key" -H "Content-Type: application/json" \
  -d "$body" "$url/v1/chat/completions" | grep -i -E '^(HTTP|x-ratelimit-remaining-tokens|ratelimit-policy)' >&2

printf "%-4s %-8s %10s %10s %10s %8s\n" run path closed_rps p50_ms p99_ms ok
rows=()
for r in $(seq "$runs"); do
  for path in admin managed; do
    tok=$token
    [ "$path" = managed ] && tok=$key
    read -r crps _ _ cok < <(point "$tok" -c 32)
    read -r _ p50 p99 ook < <(point "$tok" -q 1000 --latency-correction -c 64)
    printf "%-4s %-8s %10s %10s %10s %8s\n" "$r" "$path" "$crps" "$p50" "$p99" "$cok/$ook"
    rows+=("$path $crps $p50 $p99")
  done
done
printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin if l.strip()]
med = {}
for path in ("admin", "managed"):
    r = [x for x in rows if x[0] == path]
    med[path] = [st.median(float(x[i]) for x in r) for i in (1, 2, 3)]
    print("median %-8s closed %8.0f req/s   at 1,000 req/s: p50 %.3f ms  p99 %.3f ms" % (path, *med[path]))
a, m = med["admin"], med["managed"]
print("ratio managed/admin: throughput %.3f   p99 admin/managed %.3f" % (m[0] / a[0], a[2] / m[2]))
'
