"""Runs a packaged Lambda function (its `bootstrap`) on one event, the way
Lambda does: a local Lambda Runtime API (the 2018-06-01 interface custom
runtimes poll) hands the event to the bootstrap, which answers with the
result or an error; then the bootstrap is stopped. Prints the answer as
one JSON line, {"response": ...} or {"error": ...}, and exits 0 (2 when
the function failed to start or answered nothing in time).

Usage:
  python scripts/runtime_api.py --event EVENT.json [--timeout 120] \
      [--function-name worker] -- path/to/bootstrap

The bootstrap inherits this process's environment (its configuration:
STATE_TABLE, QUEUE_URL, AWS_ENDPOINT_URL, ...) plus the variables Lambda
sets for a function (AWS_LAMBDA_RUNTIME_API and the AWS_LAMBDA_FUNCTION_*
ones).
"""

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--event", required=True, help="the event, a JSON file")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds the invocation may take")
    parser.add_argument("--function-name", default="function")
    parser.add_argument("command", nargs="+", help="the bootstrap and its arguments")
    args = parser.parse_args()

    with open(args.event, "rb") as f:
        event = f.read()
    json.loads(event)
    request_id = str(uuid.uuid4())
    deadline_ms = int((time.time() + args.timeout) * 1000)
    arn = f"arn:aws:lambda:us-east-1:123456789012:function:{args.function_name}"
    answers = queue.Queue()
    handed = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def _reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length)

        def do_GET(self):
            if self.path != f"{PREFIX}/invocation/next":
                self._reply(404, b'{"errorMessage": "unknown path"}')
                return
            if handed.is_set():
                # One event only: the next poll waits until we stop it.
                time.sleep(args.timeout)
                self._reply(500, b"{}")
                return
            handed.set()
            self._reply(200, event, [
                ("Lambda-Runtime-Aws-Request-Id", request_id),
                ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
                ("Lambda-Runtime-Invoked-Function-Arn", arn),
                ("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000;Parent=0000000000000000;Sampled=0"),
            ])

        def do_POST(self):
            body = self._body()
            if self.path == f"{PREFIX}/invocation/{request_id}/response":
                answers.put({"response": json.loads(body or b"null")})
            elif self.path in (f"{PREFIX}/invocation/{request_id}/error", f"{PREFIX}/init/error"):
                answers.put({"error": json.loads(body or b"null")})
            else:
                self._reply(404, b'{"errorMessage": "unknown path"}')
                return
            self._reply(202, b'{"status": "OK"}')

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    env = {
        **os.environ,
        "AWS_LAMBDA_RUNTIME_API": f"{host}:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": args.function_name,
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1769",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{args.function_name}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "local",
    }
    # The function's log (its stdout, as on Lambda) goes to stderr: stdout
    # carries only the answer.
    child = subprocess.Popen(args.command, env=env, stdout=sys.stderr)
    try:
        answer = None
        waited = 0.0
        while answer is None and waited < args.timeout:
            try:
                answer = answers.get(timeout=0.5)
            except queue.Empty:
                waited += 0.5
                if child.poll() is not None:
                    break
        if answer is None:
            code = child.poll()
            why = f"exited with {code}" if code is not None else "answered nothing in time"
            print(json.dumps({"error": {"errorMessage": f"the function {why}"}}), flush=True)
            return 2
        print(json.dumps(answer), flush=True)
        return 0
    finally:
        child.kill()
        child.wait()
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
