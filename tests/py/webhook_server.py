"""A webhook receiver for weir's tests: records each POST as one JSON line.

Usage: webhook_server.py OUT.jsonl [--fail-first N] [--reject TEXT]
Prints the port it listens on (127.0.0.1) and serves until killed. The first N requests
get 503; a body containing TEXT gets 400; every other request gets 200 and is recorded
as {"key": Idempotency-Key, "content_type": ..., "body": parsed JSON}.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = argparse.ArgumentParser()
args.add_argument("out")
args.add_argument("--fail-first", type=int, default=0)
args.add_argument("--reject", default=None)
opts = args.parse_args()

lock = threading.Lock()
seen = {"requests": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            seen["requests"] += 1
            n = seen["requests"]
            if n <= opts.fail_first:
                status = 503
            elif opts.reject is not None and opts.reject.encode() in body:
                status = 400
            else:
                status = 200
                with open(opts.out, "a") as f:
                    f.write(json.dumps({
                        "key": self.headers.get("Idempotency-Key"),
                        "content_type": self.headers.get("Content-Type"),
                        "body": json.loads(body),
                    }) + "\n")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok" if status == 200 else b"not now" if status == 503 else b"rejected")

    def log_message(self, *a):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
