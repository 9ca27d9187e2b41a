#!/usr/bin/env python3
"""Runs the event-import example end to end on weft's embedded durable queue.

A stand-in for the CRM listens on 127.0.0.1:9100; `weft run` serves the example's webhooks; one
HMAC-signed order is posted for customer `initech`; the CRM receives the customer it becomes;
`weft executions show` prints each step's input and output. Standard library only.

    cargo build --release && python3 examples/event-import/demo.py
"""
import hashlib, hmac, http.server, json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEFT = os.environ.get("WEFT", os.path.join(ROOT, "target", "release", "weft"))
received = []

class Crm(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        received.append((self.path, self.headers.get("Authorization"), self.headers.get("Idempotency-Key"), json.loads(body)))
        self.send_response(201)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"id": "crm-42"}')
    def log_message(self, *args):
        pass

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def main():
    if not os.path.exists(WEFT):
        sys.exit(f"build weft first: cargo build --release (looked for {WEFT})")
    crm = http.server.ThreadingHTTPServer(("127.0.0.1", 9100), Crm)
    threading.Thread(target=crm.serve_forever, daemon=True).start()
    port = free_port()
    data = tempfile.mkdtemp(prefix="weft-demo-")
    env = dict(os.environ, CRM_TOKEN_GLOBEX="demo-token-globex", SHOP_WEBHOOK_SECRET_GLOBEX="demo-hook-globex",
               CRM_TOKEN_INITECH="demo-token-initech", SHOP_WEBHOOK_SECRET_INITECH="demo-hook-initech")
    weft = subprocess.Popen([WEFT, "run", os.path.join(ROOT, "examples", "event-import"), "--port", str(port), "--data-dir", data], env=env)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        order = {"id": "order-1001", "amount_cents": 12900, "customer": {"email": "ada@initech.example"}, "lines": []}
        body = json.dumps(order).encode()
        signature = "sha256=" + hmac.new(b"demo-hook-initech", body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/initech/shop-orders-to-crm/orders", data=body, method="POST",
                                         headers={"content-type": "application/json", "X-Signature": signature})
        answer = json.load(urllib.request.urlopen(request))
        print(f"\nPOST /hooks/initech/shop-orders-to-crm/orders -> 202 {answer}")
        for _ in range(200):
            if received:
                break
            time.sleep(0.05)
        if not received:
            sys.exit("the CRM stand-in received nothing")
        path, auth, key, customer = received[0]
        print(f"CRM received POST {path} ({auth.split()[0]} token, Idempotency-Key {key}):\n  {json.dumps(customer)}\n")
        time.sleep(0.2)
        subprocess.run([WEFT, "executions", "show", answer["execution_id"], "--data-dir", data], check=True)
    finally:
        weft.terminate()
        weft.wait(timeout=15)
        crm.shutdown()

if __name__ == "__main__":
    main()
