"""A local stand-in for AWS Lambda's Invoke API that runs a Python handler.

The `lambda` processor calls its function through aws-sdk-lambda's Invoke.
Pointed at this server (endpoint override), it meets the answers the real
service gives, produced by a real handler running in its own process:

    .venv/bin/python scripts/lambda_standin.py \\
        --handler examples/processors/orders_handler.py:handler \\
        --function-name orders --port 0 --timeout 3

Once listening it prints one line to stdout, `listening http://HOST:PORT`,
and from then on logs to stderr only (drain it, or let the child inherit
it: a full pipe would stall the server).

What it serves (restJson1, as Lambda does):

- POST /2015-03-31/functions/{FunctionName}/invocations, FunctionName a
  name, a partial ARN or an ARN, with or without a qualifier (any
  qualifier runs the one function, as $LATEST). X-Amz-Invocation-Type
  RequestResponse (default), Event (202, run in the background, waiting
  for a free slot rather than throttled) or DryRun (204).
  X-Amz-Log-Type: Tail returns the last 4 KB of the call's log, base64, in
  X-Amz-Log-Result.
- A handler that raises, runs past --timeout, exits, or returns more than
  6,291,556 bytes: 200 with X-Amz-Function-Error: Unhandled and the error
  document Lambda's Python runtime writes (errorType RuntimeError and so
  on, Sandbox.Timedout, Runtime.ExitError, Function.ResponseSizeTooLarge).
  A timed-out or exited worker is replaced by a fresh one.
- Errors of the call itself carry x-amzn-ErrorType (where the SDKs read
  the error code) and a JSON body: 404 ResourceNotFoundException,
  400 InvalidRequestContentException (body not JSON), 429
  TooManyRequestsException (--reserved-concurrency invocations already in
  flight, or one of the first --throttle-first synchronous calls), and 413
  for a body over 6,291,456 bytes (1,048,576 for Event). Lambda's API
  model names that last error RequestTooLargeException, but the service
  answers RequestEntityTooLargeException, and so does this server: a
  caller had better recognize the 413 status than either name.
- GET /standin/stats: {"invocations", "throttled", "timeouts",
  "functionErrors", "maxInFlight", "records", "maxPayloadBytes"};
  POST /standin/reset zeroes
  them. `invocations` counts the calls that were let in (not throttled,
  not DryRun), `records` the entries of their events' `records` lists,
  `functionErrors` every answer with X-Amz-Function-Error (timeouts
  included, as Lambda's Errors metric counts them), `maxInFlight` the
  most invocations running at once, `maxPayloadBytes` the largest request
  body of a synchronous call let in.

Each running invocation has a worker process of its own: a loop that
imports the handler file once and then calls handler(event, context) per
request, so module-level state lives on between calls on one worker, as in
a warm Lambda execution environment. Idle workers are kept and reused; a
new one starts when all are busy. The memory size is only reported (in
the context and the log), not enforced.
"""

import argparse
import base64
import binascii
import datetime
import decimal
import importlib.util
import io
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REGION = "us-east-1"
ACCOUNT = "123456789012"
# Lambda's quotas: the request body of a synchronous and of an asynchronous
# invocation, and the response of a synchronous one.
MAX_SYNC_REQUEST = 6_291_456
MAX_EVENT_REQUEST = 1_048_576
MAX_RESPONSE = 6_291_556
LOG_TAIL_BYTES = 4096
# Lambda gives a function's initialization 10 seconds.
INIT_TIMEOUT = 10.0
# A body larger than this is not even read to the end: the connection closes.
MAX_DRAIN = 256 * 1024 * 1024
PATH_PREFIX = "/2015-03-31/functions/"
RESERVED_LIMIT = "ReservedFunctionConcurrentInvocationLimitExceeded"
PATH_SUFFIX = "/invocations"

QUIET = False


def log(message):
    try:
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def function_arn(name, qualifier=None):
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


# ---------------------------------------------------------------------------
# The worker: runs in a child process, one invocation at a time.
# ---------------------------------------------------------------------------


class _LogCapture(io.TextIOBase):
    """Stands in for sys.stdout and sys.stderr in a worker: what the handler
    writes goes to the server's stderr and into the current call's log."""

    def __init__(self):
        self.buffer_parts = None

    def writable(self):
        return True

    @property
    def encoding(self):
        return "utf-8"

    def isatty(self):
        return False

    def fileno(self):
        return 2

    def write(self, text):
        if not isinstance(text, str):
            text = str(text)
        if self.buffer_parts is not None:
            self.buffer_parts.append(text)
        try:
            os.write(2, text.encode("utf-8", "replace"))
        except OSError:
            pass
        return len(text)

    def flush(self):
        pass


class _ClientContext:
    def __init__(self, data):
        self.client = data.get("client")
        self.custom = data.get("custom")
        self.env = data.get("env")


class LambdaContext:
    """The context object of Lambda's Python runtime (the parts a handler uses)."""

    def __init__(self, request_id, deadline_ms, invoked_function_arn, client_context):
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        # A string, as in Lambda (it comes from the environment there too).
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.identity = types.SimpleNamespace(cognito_identity_id=None, cognito_identity_pool_id=None)
        self.client_context = _ClientContext(client_context) if isinstance(client_context, dict) else None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))


def _json_default(value):
    # Lambda's runtime encodes a Decimal as a number.
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _user_frames(tb):
    # As Lambda's runtime formats them: from plain tuples, so without the
    # column markers of newer Pythons, and without the runtime's own frames
    # (here: this file's and the import machinery's).
    here = os.path.abspath(__file__)
    frames = [
        (f.filename, f.lineno, f.name, f.line)
        for f in traceback.extract_tb(tb)
        if os.path.abspath(f.filename) != here and not f.filename.startswith("<frozen ")
    ]
    return traceback.format_list(frames)


def _error_log(error):
    lines = [f"[ERROR] {error['errorType']}: {error['errorMessage']}"]
    if error.get("stackTrace"):
        lines.append("Traceback (most recent call last):")
        for element in error["stackTrace"]:
            lines.extend(element.rstrip("\n").splitlines())
    return "\n".join(lines) + "\n"


def worker_main(path, function):
    """The loop of one worker. It reads requests, one JSON line each, from
    its stdin and writes one JSON line per answer to its stdout; both are
    moved away from fds 0 and 1 first, so that nothing the handler prints
    can get into the protocol."""
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    capture = _LogCapture()
    sys.stdin = open(os.devnull)
    sys.stdout = capture
    sys.stderr = capture

    def send(message):
        proto_out.write(json.dumps(message).encode() + b"\n")
        proto_out.flush()

    module_name = os.path.splitext(os.path.basename(path))[0]
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    capture.buffer_parts = []
    init_error = None
    started = time.monotonic()
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        handler = getattr(module, function, None)
        if handler is None:
            init_error = {
                "errorMessage": f"Handler '{function}' missing on module '{module_name}'",
                "errorType": "Runtime.HandlerNotFound",
                "stackTrace": [],
            }
    except SyntaxError as e:
        init_error = {
            "errorMessage": f"Syntax error in module '{module_name}': {e}",
            "errorType": "Runtime.UserCodeSyntaxError",
            "stackTrace": [f'  File "{e.filename}" Line {e.lineno}\n    {(e.text or "").strip()}\n'],
        }
    except Exception as e:
        init_error = {
            "errorMessage": f"Unable to import module '{module_name}': {e}",
            "errorType": "Runtime.ImportModuleError",
            "stackTrace": _user_frames(e.__traceback__),
        }
    if init_error is not None:
        capture.write(_error_log(init_error))
    init_log = "".join(capture.buffer_parts)
    capture.buffer_parts = None
    send({"ready": init_error is None, "error": init_error, "log": init_log,
          "initMs": (time.monotonic() - started) * 1000})
    if init_error is not None:
        return

    while True:
        line = proto_in.readline()
        if not line:
            return
        request = json.loads(line)
        request_id = request["requestId"]
        capture.buffer_parts = []
        answer = {}
        try:
            context = LambdaContext(
                request_id, request["deadlineMs"], request["arn"], request.get("clientContext")
            )
            event = json.loads(request["event"])
            result = handler(event, context)
            if isinstance(result, (bytes, bytearray)):
                answer["resultBase64"] = base64.b64encode(bytes(result)).decode()
            else:
                try:
                    answer["result"] = json.dumps(result, default=_json_default)
                except (TypeError, ValueError) as e:
                    answer["error"] = {
                        "errorMessage": f"Unable to marshal response: {e}",
                        "errorType": "Runtime.MarshalError",
                        "requestId": request_id,
                        "stackTrace": [],
                    }
        except Exception as e:
            answer["error"] = {
                "errorMessage": str(e),
                "errorType": type(e).__name__,
                "requestId": request_id,
                "stackTrace": _user_frames(e.__traceback__),
            }
        if "error" in answer:
            capture.write(_error_log(answer["error"]))
        answer["log"] = "".join(capture.buffer_parts)
        capture.buffer_parts = None
        try:
            send(answer)
        except BrokenPipeError:
            return


# ---------------------------------------------------------------------------
# The server side of a worker.
# ---------------------------------------------------------------------------


class WorkerGone(Exception):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


class WorkerTimeout(Exception):
    pass


class Worker:
    def __init__(self, config):
        env = {
            **os.environ,
            "AWS_LAMBDA_FUNCTION_NAME": config.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{config.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", REGION),
            "_HANDLER": f"{config.module_name}.{config.function}",
            "PYTHONUNBUFFERED": "1",
        }
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", config.handler_path, config.function],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            # Its own process group: a timeout kills whatever the handler
            # started too, and a Ctrl-C in the terminal reaches only the server.
            start_new_session=True,
        )
        self._buffer = b""
        self.cold = True
        self.init_ms = 0.0
        self.init_log = ""

    def start(self):
        """Waits for the handler module to load: None, or Lambda's init error."""
        ready = self._read(time.monotonic() + INIT_TIMEOUT)
        self.init_ms = ready.get("initMs", 0.0)
        self.init_log = ready.get("log", "")
        return None if ready.get("ready") else ready.get("error")

    def alive(self):
        return self.process.poll() is None

    def call(self, request, deadline):
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerGone(self._exit_status())
        return self._read(deadline)

    def _read(self, deadline):
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerTimeout()
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise WorkerGone(self._exit_status())
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _exit_status(self):
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.returncode
        if code is not None and code < 0:
            try:
                return f"signal: {signal.Signals(-code).name[3:].lower()}"
            except ValueError:
                return f"signal: {-code}"
        return f"exit status {code}"

    def max_memory_mb(self):
        try:
            with open(f"/proc/{self.process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) // 1024
        except (OSError, ValueError):
            pass
        return 0

    def kill(self):
        # The group only while the worker is not reaped: its id is ours then.
        if self.process.returncode is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.process.kill()
            except OSError:
                pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------
# The function: concurrency, workers, statistics.
# ---------------------------------------------------------------------------


class InitFailed(Exception):
    def __init__(self, error):
        super().__init__(error["errorMessage"])
        self.error = error


class Outcome:
    def __init__(self, request_id):
        self.request_id = request_id
        self.payload = b"null"
        self.function_error = None
        self.log = ""
        self.timed_out = False

    def fail(self, document, timed_out=False):
        """Makes this a function error answering document: the status to log."""
        self.function_error = "Unhandled"
        self.payload = json.dumps(document).encode()
        self.timed_out = timed_out
        return "timeout" if timed_out else "error"


class Function:
    def __init__(self, config):
        self.config = config
        self.lock = threading.Condition()
        self.idle = []
        self.workers = set()
        self.in_flight = 0
        self.throttle_left = config.throttle_first
        self.closed = False
        self.stats = self._zero()

    @staticmethod
    def _zero():
        return dict.fromkeys(
            ("invocations", "throttled", "timeouts", "functionErrors", "maxInFlight", "records",
             "maxPayloadBytes"), 0
        )

    def snapshot(self):
        with self.lock:
            return dict(self.stats)

    def reset(self):
        with self.lock:
            self.stats = self._zero()

    def admit(self, records, size=0):
        """Takes a slot for a synchronous invocation: None, or the reason it
        is throttled."""
        with self.lock:
            limit = self.config.reserved_concurrency
            reason = None
            if self.throttle_left > 0:
                self.throttle_left -= 1
                reason = "ConcurrentInvocationLimitExceeded" if limit is None else RESERVED_LIMIT
            elif limit is not None and self.in_flight >= limit:
                reason = RESERVED_LIMIT
            if reason is not None:
                self.stats["throttled"] += 1
                return reason
            self._enter(records, size)
            return None

    def admit_event(self, records):
        """Counts an accepted asynchronous invocation (it takes its slot later)."""
        with self.lock:
            self.stats["invocations"] += 1
            self.stats["records"] += records

    def wait_slot(self):
        """Waits until the reserved concurrency leaves room: False once closed."""
        with self.lock:
            limit = self.config.reserved_concurrency
            while not self.closed and limit is not None and self.in_flight >= limit:
                self.lock.wait(1.0)
            if self.closed:
                return False
            self.in_flight += 1
            self.stats["maxInFlight"] = max(self.stats["maxInFlight"], self.in_flight)
            return True

    def _enter(self, records, size=0):
        self.stats["maxPayloadBytes"] = max(self.stats["maxPayloadBytes"], size)
        self.in_flight += 1
        self.stats["invocations"] += 1
        self.stats["records"] += records
        self.stats["maxInFlight"] = max(self.stats["maxInFlight"], self.in_flight)

    def leave(self, outcome):
        with self.lock:
            self.in_flight -= 1
            if outcome.function_error:
                self.stats["functionErrors"] += 1
            if outcome.timed_out:
                self.stats["timeouts"] += 1
            self.lock.notify_all()

    def _take_worker(self):
        with self.lock:
            dead = []
            worker = None
            while self.idle and worker is None:
                candidate = self.idle.pop()
                if candidate.alive():
                    worker = candidate
                else:
                    self.workers.discard(candidate)
                    dead.append(candidate)
            closed = self.closed
        for gone in dead:
            gone.kill()
        if worker is not None:
            return worker
        if closed:
            raise WorkerGone("shutting down")
        # A cold start: the worker loads the handler module in start().
        worker = Worker(self.config)
        with self.lock:
            self.workers.add(worker)
            closed = self.closed
        if closed:
            worker.kill()
            raise WorkerGone("shutting down")
        return worker

    def _give_back(self, worker):
        with self.lock:
            if not self.closed and worker.alive():
                worker.cold = False
                self.idle.append(worker)
                return
            self.workers.discard(worker)
        worker.kill()

    def _discard(self, worker):
        with self.lock:
            self.workers.discard(worker)
        worker.kill()

    def run(self, event_text, invoked_arn, client_context, request_id):
        """Runs one invocation on a worker (the caller holds its slot)."""
        config = self.config
        outcome = Outcome(request_id)
        status, logged, init, memory = "ok", "", "", 0
        worker, reuse, phase = None, False, "init"
        started = time.monotonic()
        try:
            worker = self._take_worker()
            if worker.cold:
                error = worker.start()
                logged = worker.init_log
                init = f"\tInit Duration: {worker.init_ms:.2f} ms"
                if error is not None:
                    raise InitFailed({**error, "requestId": request_id})
            phase = "invoke"
            started = time.monotonic()
            request = {
                "requestId": request_id,
                "event": event_text,
                "deadlineMs": time.time() * 1000 + config.timeout * 1000,
                "arn": invoked_arn,
                "clientContext": client_context,
            }
            answer = worker.call(request, started + config.timeout)
            reuse = True
            logged += answer.get("log", "")
            if "error" in answer:
                status = outcome.fail(answer["error"])
            else:
                if "resultBase64" in answer:
                    payload = base64.b64decode(answer["resultBase64"])
                else:
                    payload = answer["result"].encode()
                if len(payload) > MAX_RESPONSE:
                    status = outcome.fail({
                        "errorMessage": "Response payload size exceeded maximum allowed payload size "
                        f"({MAX_RESPONSE} bytes).",
                        "errorType": "Function.ResponseSizeTooLarge",
                    })
                else:
                    outcome.payload = payload
        except InitFailed as failed:
            status = outcome.fail(failed.error)
        except WorkerTimeout:
            # Past the function's timeout, or past the 10 s Lambda gives initialization.
            seconds = config.timeout if phase == "invoke" else INIT_TIMEOUT
            message = f"Task timed out after {seconds:.2f} seconds"
            status = outcome.fail(
                {"errorMessage": f"RequestId: {request_id} Error: {message}", "errorType": "Sandbox.Timedout"},
                timed_out=True,
            )
            logged += f"{now_iso()} {request_id} {message}\n"
        except WorkerGone as gone:
            status = outcome.fail({
                "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: {gone.status}",
                "errorType": "Runtime.ExitError",
            })
        except Exception:
            log(f"lambda_standin: invocation {request_id} failed:\n{traceback.format_exc()}")
            status = outcome.fail(
                {"errorMessage": "The stand-in could not run the handler", "errorType": "Unknown"}
            )

        duration_ms = (time.monotonic() - started) * 1000
        if worker is not None:
            memory = worker.max_memory_mb()
            if reuse:
                self._give_back(worker)
            else:
                self._discard(worker)
        report = (
            f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\t"
            f"Billed Duration: {max(1, int(duration_ms + 0.999))} ms\t"
            f"Memory Size: {config.memory_mb} MB\tMax Memory Used: {memory} MB{init}"
        )
        if status != "ok":
            report += f"\tStatus: {status}"
        outcome.log = (
            f"START RequestId: {request_id} Version: $LATEST\n{logged}END RequestId: {request_id}\n{report}\n"
        )
        if not QUIET or status != "ok":
            log(report)
        return outcome

    def close(self):
        with self.lock:
            self.closed = True
            workers = list(self.workers)
            self.workers.clear()
            self.idle.clear()
            self.lock.notify_all()
        for worker in workers:
            worker.kill()


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


class BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lambda-standin"
    # For requests too broken to reach a route (BaseHTTPRequestHandler answers those).
    error_content_type = "application/json"
    error_message_format = '{"Type": "User", "message": "%(message)s"}'

    def version_string(self):
        return self.server_version

    def log_message(self, format, *args):
        if not QUIET:
            log(f"lambda_standin: {self.address_string()} {format % args}")

    # Every method: a bad request never takes the server down.
    def do_GET(self):
        self._serve()

    def do_POST(self):
        self._serve()

    def do_PUT(self):
        self._serve()

    def do_DELETE(self):
        self._serve()

    def do_PATCH(self):
        self._serve()

    def _serve(self):
        self.request_id = str(uuid.uuid4())
        try:
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log(f"lambda_standin: {self.command} {self.path} failed:\n{traceback.format_exc()}")
            try:
                document = {"Type": "Service", "Message": "Internal error in the stand-in"}
                self._error(500, "ServiceException", document)
            except OSError:
                pass
            self.close_connection = True

    # -- body --------------------------------------------------------------

    def _read_body(self, limit):
        """The body, or None when it is over limit bytes (it is drained either way)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length_text = self.headers.get("Content-Length", "0").strip() or "0"
        try:
            length = int(length_text)
        except ValueError:
            raise BadRequest("Content-Length is not a number")
        if length < 0:
            raise BadRequest("Content-Length is negative")
        if length > limit:
            self._drain(length)
            return None
        return self._read_exactly(length)

    def _read_exactly(self, n):
        parts = []
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                raise ConnectionResetError("client closed the connection mid-body")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def _drain(self, n):
        if n > MAX_DRAIN:
            self.close_connection = True
            return
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                break
            n -= len(chunk)

    def _read_chunked(self, limit):
        parts, size, over = [], 0, False
        while True:
            line = self.rfile.readline(1024)
            try:
                chunk_size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BadRequest("malformed chunked body")
            if chunk_size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                break
            if size + chunk_size > MAX_DRAIN:
                self.close_connection = True
                return None
            data = self._read_exactly(chunk_size)
            self.rfile.readline(16)
            size += chunk_size
            if size > limit:
                over = True
            elif not over:
                parts.append(data)
        return None if over else b"".join(parts)

    # -- answers -----------------------------------------------------------

    def _send(self, status, body=b"", headers=None, content_type="application/json"):
        self.send_response(status)
        if body or status not in (202, 204):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", self.request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status, code, document):
        body = json.dumps(document).encode()
        self._send(status, body, {"x-amzn-ErrorType": code})

    # -- routes ------------------------------------------------------------

    def _route(self):
        url = urlsplit(self.path)
        path = url.path
        if path == "/standin/stats" and self.command == "GET":
            self._discard_body()
            self._send(200, json.dumps(self.server.function.snapshot()).encode())
            return
        if path == "/standin/reset" and self.command == "POST":
            self._discard_body()
            self.server.function.reset()
            self._send(200, json.dumps(self.server.function.snapshot()).encode())
            return
        if path.startswith(PATH_PREFIX) and path.endswith(PATH_SUFFIX) and self.command == "POST":
            name = path[len(PATH_PREFIX):-len(PATH_SUFFIX)]
            if name and "/" not in name:
                self._invoke(unquote(name), parse_qs(url.query))
                return
        self._discard_body()
        self._error(404, "UnknownOperationException", {"Type": "User", "message": "Unknown operation"})

    def _discard_body(self):
        try:
            self._read_body(0)
        except BadRequest:
            self.close_connection = True

    def _invoke(self, name_or_arn, query):
        function = self.server.function
        config = function.config
        invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        log_type = self.headers.get("X-Amz-Log-Type", "None")
        limit = MAX_EVENT_REQUEST if invocation_type == "Event" else MAX_SYNC_REQUEST
        try:
            body = self._read_body(limit)
        except BadRequest as e:
            self.close_connection = True
            self._error(400, "InvalidRequestContentException", {"Type": "User", "message": str(e)})
            return
        if body is None:
            if invocation_type == "Event":
                size = int(self.headers.get("Content-Length", "0") or 0)
                message = (
                    f"{size} byte payload is too large for the Event invocation type "
                    f"(limit {MAX_EVENT_REQUEST} bytes)"
                )
            else:
                message = f"Request must be smaller than {MAX_SYNC_REQUEST} bytes for the InvokeFunction operation"
            self._error(413, "RequestEntityTooLargeException", {"Type": "User", "message": message})
            return

        name, qualifier = parse_function_name(name_or_arn)
        query_qualifier = (query.get("Qualifier") or [None])[0]
        if qualifier and query_qualifier and qualifier != query_qualifier:
            self._error(400, "InvalidParameterValueException", {
                "Type": "User",
                "message": "The derived qualifier from the function name does not match the specified qualifier.",
            })
            return
        qualifier = qualifier or query_qualifier
        if name != config.function_name:
            self._error(404, "ResourceNotFoundException", {
                "Type": "User",
                "Message": f"Function not found: {function_arn(name, qualifier)}",
            })
            return
        if invocation_type not in ("RequestResponse", "Event", "DryRun"):
            self._error(400, "InvalidParameterValueException", {
                "Type": "User",
                "message": "InvocationType must be one of RequestResponse, Event or DryRun",
            })
            return
        if log_type not in ("None", "Tail"):
            document = {"Type": "User", "message": "LogType must be None or Tail"}
            self._error(400, "InvalidParameterValueException", document)
            return
        client_context = None
        encoded_context = self.headers.get("X-Amz-Client-Context")
        if encoded_context:
            try:
                client_context = json.loads(base64.b64decode(encoded_context, validate=True))
            except (binascii.Error, ValueError):
                self._error(400, "InvalidRequestContentException", {
                    "Type": "User",
                    "message": "Client context must be a valid Base64-encoded JSON object.",
                })
                return

        if not body.strip():
            body = b"{}"
        try:
            text = body.decode("utf-8")
            event = json.loads(text, parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError) as e:
            self._error(400, "InvalidRequestContentException", {
                "Type": "User",
                "message": f"Could not parse request body into json: Could not parse payload into json: {e}",
            })
            return

        if invocation_type == "DryRun":
            self._send(204)
            return

        records = event.get("records") if isinstance(event, dict) else None
        records = len(records) if isinstance(records, list) else 0
        invoked_arn = function_arn(name, qualifier)

        if invocation_type == "Event":
            function.admit_event(records)
            threading.Thread(
                target=self._run_event,
                args=(function, text, invoked_arn, client_context, self.request_id),
                daemon=True,
            ).start()
            self._send(202)
            return

        reason = function.admit(records, len(body))
        if reason is not None:
            if not QUIET:
                log(f"THROTTLED RequestId: {self.request_id}\tReason: {reason}")
            document = {"Type": "User", "message": "Rate Exceeded.", "Reason": reason}
            self._error(429, "TooManyRequestsException", document)
            return
        if not QUIET:
            log(f"START RequestId: {self.request_id} Version: $LATEST")
        outcome = None
        try:
            outcome = function.run(text, invoked_arn, client_context, self.request_id)
        finally:
            function.leave(outcome or Outcome(self.request_id))
        headers = {"X-Amz-Executed-Version": "$LATEST"}
        if outcome.function_error:
            headers["X-Amz-Function-Error"] = outcome.function_error
        if log_type == "Tail":
            tail = outcome.log.encode("utf-8", "replace")[-LOG_TAIL_BYTES:]
            headers["X-Amz-Log-Result"] = base64.b64encode(tail).decode()
        self._send(200, outcome.payload, headers)

    @staticmethod
    def _run_event(function, text, invoked_arn, client_context, request_id):
        if not function.wait_slot():
            return
        if not QUIET:
            log(f"START RequestId: {request_id} Version: $LATEST")
        outcome = None
        try:
            outcome = function.run(text, invoked_arn, client_context, request_id)
        finally:
            function.leave(outcome or Outcome(request_id))


def _reject_constant(name):
    raise ValueError(f"Unrecognized token '{name}'")


def parse_function_name(value):
    """(name, qualifier) of a function name, partial ARN or ARN."""
    if ":function:" in value:
        rest = value.split(":function:", 1)[1]
    else:
        rest = value
    name, _, qualifier = rest.partition(":")
    return name, (qualifier or None)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="A local stand-in for AWS Lambda's Invoke API, running a Python handler."
    )
    parser.add_argument(
        "--handler", required=True, help="FILE.py:FUNCTION, e.g. examples/processors/orders_handler.py:handler"
    )
    parser.add_argument("--function-name", help="the function's name (default: the handler file's name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS",
                        help="how long a call may run (default 3)")
    parser.add_argument("--reserved-concurrency", type=int, default=None, metavar="N",
                        help="at most N invocations at once; more are throttled (429)")
    parser.add_argument("--throttle-first", type=int, default=0, metavar="K",
                        help="throttle the first K synchronous invocations whatever the concurrency")
    parser.add_argument("--memory-mb", type=int, default=128, metavar="MB", help="memory size told the handler (default 128)")
    parser.add_argument("--quiet", action="store_true", help="log only failed invocations, not every request")
    args = parser.parse_args(argv)

    path, sep, function = args.handler.rpartition(":")
    if not sep or not path or not function:
        parser.error("--handler must be FILE.py:FUNCTION")
    if not os.path.isfile(path):
        parser.error(f"no handler file {path}")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if args.reserved_concurrency is not None and args.reserved_concurrency < 0:
        parser.error("--reserved-concurrency must be 0 or more")
    if args.throttle_first < 0:
        parser.error("--throttle-first must be 0 or more")

    global QUIET
    QUIET = args.quiet
    module_name = os.path.splitext(os.path.basename(path))[0]
    config = types.SimpleNamespace(
        handler_path=os.path.abspath(path),
        module_name=module_name,
        function=function,
        function_name=args.function_name or module_name,
        timeout=args.timeout,
        reserved_concurrency=args.reserved_concurrency,
        throttle_first=args.throttle_first,
        memory_mb=args.memory_mb,
    )

    function_state = Function(config)
    server = Server((args.host, args.port), Handler)
    server.function = function_state

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    sys.stdout.write(f"listening http://{host}:{port}\n")
    sys.stdout.flush()
    limits = ""
    if args.reserved_concurrency is not None:
        limits += f", reserved concurrency {args.reserved_concurrency}"
    if args.throttle_first:
        limits += f", throttling the first {args.throttle_first} calls"
    log(f"lambda_standin: function {config.function_name} ({args.handler}), timeout {args.timeout:g}s{limits}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        function_state.close()
        server.shutdown()
        server.server_close()
    log("lambda_standin: stopped")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3])
        sys.exit(0)
    sys.exit(main())
