#!/usr/bin/env bash
# Instructions per event of `weft run` and of the hand-written handler, counted by callgrind.
#
# Throughput and CPU time on a shared machine move by 2× from one minute to the next; the
# count of user-space instructions an event costs does not (kernel work — sockets, WAL writes,
# fsync — is not counted). This drives the reference flow of `cargo bench --bench reference`
# (its own repository: signed webhook → map → HTTP POST → reply, `respond: sync`) through
# each server under `valgrind --tool=callgrind`, with the same load, and prints instructions
# per event.
#
#   benches/instructions.sh [EVENTS] [SENDERS]         (defaults: 1000 events, 32 senders)
#   WEFT_BINARY=/path/to/weft benches/instructions.sh  (another build of weft)
#
# Needs valgrind and python3. Under valgrind the CPU has no SHA extensions, so HMAC costs
# more than it does natively (in both servers alike).
set -euo pipefail
EVENTS=${1:-1000}
SENDERS=${2:-32}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH=$(cargo bench --bench reference --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "reference" and m.get("executable"):
        print(m["executable"])')
WEFT=${WEFT_BINARY:-$ROOT/target/release/weft}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
SECRET=bench-hook-secret-5d3e
# The bench's own repository (the reference flow), its sink on 127.0.0.1:18099.
WEFT_BENCH_WRITE_REPO="$WORK/repo" WEFT_BENCH_HANDWRITTEN_SINK=127.0.0.1:18099 "$BENCH"
# The sink: answers each POST with a small JSON body.
cat > "$WORK/sink.py" <<'PY'
import http.server, json
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        out = json.dumps({"ok": True, "id": json.loads(body).get("id")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", 18099), Sink).serve_forever()
PY
# The load: N signed events from C senders on keep-alive connections; fails on any non-2xx.
cat > "$WORK/load.py" <<'PY'
import hashlib, hmac, http.client, json, sys, threading
port, path, n, senders, prefix, key = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6].encode()
lock, counter, failed = threading.Lock(), [0], [0]
def send():
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    while True:
        with lock:
            i = counter[0]; counter[0] += 1
        if i >= n:
            return
        body = json.dumps({"id": f"{prefix}-{i}", "amount_cents": 1000 + i, "sent": 0}).encode()
        signature = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        conn.request("POST", path, body, {"content-type": "application/json", "X-Signature": signature})
        response = conn.getresponse(); response.read()
        if response.status >= 300:
            with lock: failed[0] += 1
threads = [threading.Thread(target=send) for _ in range(senders)]
[t.start() for t in threads]; [t.join() for t in threads]
sys.exit(f"{failed[0]} events failed" if failed[0] else 0)
PY
python3 "$WORK/sink.py" & 
# Runs one server under callgrind: warm-up, counters dumped, the measured load, dumped again.
measure() { # name port path command...
  local name=$1 port=$2 path=$3; shift 3
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.%p" --dump-instr=no "$@" \
    > "$WORK/$name.out" 2> "$WORK/$name.err" &
  local pid=$!
  for _ in $(seq 1 600); do
    port_now=${port:-$(cut -s -d: -f2 "$WORK/$name.out" 2>/dev/null | tr -d '\n')}
    [ -n "$port_now" ] && curl -s -o /dev/null "http://127.0.0.1:$port_now/" 2>/dev/null && break
    sleep 0.2
  done
  python3 "$WORK/load.py" "$port_now" "$path" 300 4 warm "$SECRET"
  callgrind_control --dump "$pid" > /dev/null 2>&1
  python3 "$WORK/load.py" "$port_now" "$path" "$EVENTS" "$SENDERS" measured "$SECRET"
  callgrind_control --dump "$pid" > /dev/null 2>&1
  kill -INT "$pid"; sleep 1; kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  python3 - "$WORK/$name.$pid.2" "$EVENTS" "$name" <<'PY'
import sys
for line in open(sys.argv[1]):
    if line.startswith("totals:"):
        print(f"{sys.argv[3]:<24} {int(line.split()[1]) / int(sys.argv[2]) / 1000:8.0f} k instructions per event")
PY
}
# The bench binary serves as the hand-written handler when this names the sink; weft ignores it.
export WEFT_BENCH_HANDWRITTEN_SINK=127.0.0.1:18099 HOOK_SECRET=$SECRET CRM_TOKEN=bench-crm-token-8f2a NO_COLOR=1
echo "reference flow, respond: sync; $EVENTS events from $SENDERS senders, under callgrind"
measure "hand-written" "" /hooks/acme/reference/orders "$BENCH"
measure "weft run" 18097 /hooks/acme/reference/orders-sync \
  "$WEFT" run "$WORK/repo" --port 18097 --data-dir "$WORK/data"
