"""Self-test of scripts/lambda_standin.py, the stand-in for Lambda's Invoke API.

Runs the example function (examples/processors/orders_handler.py) and a
probe function behind the stand-in and calls them through boto3's lambda
client, the way the `lambda` processor calls its function through
aws-sdk-lambda: per-record failures, function errors, timeouts (with the
worker replaced), warm workers keeping module state, throttling by
reserved concurrency and by --throttle-first, the errors of the call itself
(unknown function, payload too large, body not JSON), Event and DryRun
invocations, the Tail log, and the statistics. Starts its own servers on
free ports; takes a few seconds (the function timeout is 1 s).

Usage: .venv/bin/python scripts/test_lambda_standin.py
"""

import base64
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import uuid

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "lambda_standin.py")
ORDERS = os.path.join(os.path.dirname(HERE), "examples", "processors", "orders_handler.py")
TIMEOUT = 1
MAX_RESPONSE = 6_291_556
JOB = "j-0123456789abcdef"
ARN = "arn:aws:lambda:us-east-1:123456789012:function:"

# A function that shows what the stand-in gives it and does as it is told.
PROBE = '''
import os
import time

calls = 0


def handler(event, context):
    global calls
    calls += 1
    action = event.get("action")
    if action == "exit":
        os._exit(3)
    if action == "sleep":
        time.sleep(event["seconds"])
    if action == "string":
        return "x" * event["size"]
    if action == "unserializable":
        return {1, 2}
    print("probe called")
    return {
        "pid": os.getpid(),
        "calls": calls,
        "requestId": context.aws_request_id,
        "functionName": context.function_name,
        "arn": context.invoked_function_arn,
        "memory": context.memory_limit_in_mb,
        "remaining": context.get_remaining_time_in_millis(),
    }
'''


class Server:
    def __init__(self, handler, *args):
        self.process = subprocess.Popen(
            [sys.executable, SERVER, "--handler", handler, "--port", "0", "--timeout", str(TIMEOUT), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = []
        self.starts = queue.Queue()
        self.marks = queue.Queue()
        listening = queue.Queue()
        threading.Thread(target=lambda: listening.put(self.process.stdout.readline()), daemon=True).start()
        threading.Thread(target=self._read_log, daemon=True).start()
        try:
            line = listening.get(timeout=15)
        except queue.Empty:
            raise RuntimeError("the stand-in did not start")
        assert line.startswith("listening http://"), repr(line)
        self.url = line.split()[1]
        self.client = boto3.client(
            "lambda",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            # Every refusal must reach the test, not be retried away.
            config=Config(retries={"total_max_attempts": 1}, read_timeout=30, max_pool_connections=16),
        )

    def _read_log(self):
        for line in self.process.stderr:
            self.lines.append(line)
            if line.startswith("START RequestId:"):
                self.starts.put(line)
            elif "/standin/stats?mark=" in line:
                self.marks.put(line)

    def forget_starts(self):
        """Forgets the invocations let in so far. A marked request, logged
        after them, shows when the log has been read that far."""
        mark = uuid.uuid4().hex
        with urllib.request.urlopen(f"{self.url}/standin/stats?mark={mark}", timeout=5) as r:
            r.read()
        while mark not in self.marks.get(timeout=10):
            pass
        while not self.starts.empty():
            self.starts.get_nowait()

    def wait_start(self):
        """Waits until the server has let one more invocation in."""
        self.starts.get(timeout=10)

    def stats(self):
        with urllib.request.urlopen(self.url + "/standin/stats", timeout=5) as r:
            return json.loads(r.read())

    def reset(self):
        request = urllib.request.Request(self.url + "/standin/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def record(line, sku, quantity=1, order_id=None):
    return {"line": line, "values": {"order_id": order_id or f"A-{line}", "sku": sku, "quantity": quantity}}


def event(records, retry=0, batch=0):
    return {"jobId": JOB, "kind": "orders", "batchIndex": batch, "retry": retry, "records": records}


def invoke(server, payload, function="orders", **kwargs):
    """Invokes and returns (response, parsed payload or None)."""
    body = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    response = server.client.invoke(FunctionName=function, Payload=body, **kwargs)
    data = response["Payload"].read()
    return response, (json.loads(data) if data else None)


def invoke_error(server, payload, function="orders", **kwargs):
    """Invokes a call that must fail; returns botocore's error response."""
    try:
        invoke(server, payload, function, **kwargs)
    except ClientError as e:
        return e.response
    raise AssertionError("the call did not fail")


def request_id(response):
    return response["ResponseMetadata"]["RequestId"]


class Background:
    """An invocation in a thread, started once the server has let it in."""

    def __init__(self, server, payload):
        self.result = None
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(server, payload))
        self.thread.start()
        server.wait_start()

    def _run(self, server, payload):
        try:
            self.result = invoke(server, payload)
        except Exception as e:  # reported by get()
            self.error = e

    def get(self):
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "the invocation did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def assert_timed_out(response, payload):
    assert response["StatusCode"] == 200, response
    assert response["FunctionError"] == "Unhandled", response
    assert payload == {
        "errorMessage": f"RequestId: {request_id(response)} Error: Task timed out after {TIMEOUT:.2f} seconds",
        "errorType": "Sandbox.Timedout",
    }, payload


# -- the example function ----------------------------------------------------


def test_per_record_failures(s):
    records = [record(2, "SKU-1"), record(3, "SKU-2", 0), record(4, "BACKORDER-7"), record(5, "SKU-3", 2.5)]
    response, payload = invoke(s, event(records), LogType="Tail")
    assert response["StatusCode"] == 200, response
    assert "FunctionError" not in response, response
    assert response["ExecutedVersion"] == "$LATEST", response
    assert payload == {
        "batchItemFailures": [
            {"itemIdentifier": "3", "retryable": False, "reason": "quantity must be positive"},
            {"itemIdentifier": "4", "retryable": True, "reason": "out of stock"},
        ]
    }, payload
    # The retried backorder fails again, as every time.
    response, payload = invoke(s, event([record(4, "BACKORDER-7")], retry=1))
    assert payload == {
        "batchItemFailures": [{"itemIdentifier": "4", "retryable": True, "reason": "out of stock"}]
    }, payload


def test_tail_log(s):
    response, _ = invoke(s, event([record(2, "SKU-1"), record(3, "SKU-2", -1)]), LogType="Tail")
    tail = base64.b64decode(response["LogResult"]).decode()
    rid = request_id(response)
    assert tail.startswith(f"START RequestId: {rid} Version: $LATEST\n"), tail
    assert f"job {JOB} batch 0 retry 0: 1 of 2 records failed\n" in tail, tail
    assert f"END RequestId: {rid}\n" in tail and f"REPORT RequestId: {rid}\t" in tail, tail
    # Without Tail, no log.
    response, _ = invoke(s, event([record(2, "SKU-1")]))
    assert "LogResult" not in response, response


def test_function_error_then_retry(s):
    records = [record(10, "FLAKY-1"), record(11, "SKU-5", 0)]
    response, payload = invoke(s, event(records), LogType="Tail")
    assert response["StatusCode"] == 200, response
    assert response["FunctionError"] == "Unhandled", response
    assert payload["errorMessage"] == "inventory service unavailable", payload
    assert payload["errorType"] == "RuntimeError", payload
    assert payload["requestId"] == request_id(response), payload
    assert sorted(payload) == ["errorMessage", "errorType", "requestId", "stackTrace"], payload
    trace = "".join(payload["stackTrace"])
    assert "orders_handler.py" in trace and "lambda_standin.py" not in trace, trace
    tail = base64.b64decode(response["LogResult"]).decode()
    assert "[ERROR] RuntimeError: inventory service unavailable\nTraceback" in tail, tail
    # The same records on a retry: the call succeeds, one record fails.
    response, payload = invoke(s, event(records, retry=1))
    assert "FunctionError" not in response, response
    assert payload == {
        "batchItemFailures": [{"itemIdentifier": "11", "retryable": False, "reason": "quantity must be positive"}]
    }, payload


def test_timeout_then_fresh_worker(s):
    started = time.monotonic()
    response, payload = invoke(s, event([record(20, "SLOW-1"), record(21, "SKU-1")]))
    elapsed = time.monotonic() - started
    assert_timed_out(response, payload)
    assert TIMEOUT <= elapsed < TIMEOUT + 2, elapsed
    response, payload = invoke(s, event([record(20, "SLOW-1"), record(21, "SKU-1")], retry=1))
    assert "FunctionError" not in response and payload == {"batchItemFailures": []}, (response, payload)


def test_concurrent_calls_get_workers_of_their_own(s):
    s.reset()
    s.forget_starts()
    first = Background(s, event([record(30, "SLOW-1")]))
    second = Background(s, event([record(31, "SLOW-2")]))
    for call in (first, second):
        assert_timed_out(*call.get())
    stats = s.stats()
    assert stats["maxInFlight"] == 2 and stats["timeouts"] == 2, stats


def test_errors_of_the_call(s):
    e = invoke_error(s, event([record(2, "SKU-1")]), function="nope")
    assert e["ResponseMetadata"]["HTTPStatusCode"] == 404, e
    assert e["Error"]["Code"] == "ResourceNotFoundException", e
    assert e["Error"]["Message"] == f"Function not found: {ARN}nope", e
    assert e["Type"] == "User", e

    big = event([record(2, "SKU-1", order_id="x" * 6_500_000)])
    e = invoke_error(s, big)
    assert e["ResponseMetadata"]["HTTPStatusCode"] == 413, e
    assert e["Error"]["Code"] == "RequestEntityTooLargeException", e
    expected = "Request must be smaller than 6291456 bytes for the InvokeFunction operation"
    assert e["Error"]["Message"] == expected, e

    e = invoke_error(s, b"{not json")
    assert e["ResponseMetadata"]["HTTPStatusCode"] == 400, e
    assert e["Error"]["Code"] == "InvalidRequestContentException", e

    # The connection is still good after each of them.
    response, payload = invoke(s, event([record(2, "SKU-1")]))
    assert payload == {"batchItemFailures": []}, payload


def counts(stats):
    """The counters, without the largest payload (checked on its own)."""
    assert stats["maxPayloadBytes"] >= 0, stats
    return {k: v for k, v in stats.items() if k != "maxPayloadBytes"}


def test_statistics(s):
    assert counts(s.reset()) == {
        "invocations": 0, "throttled": 0, "timeouts": 0, "functionErrors": 0, "maxInFlight": 0, "records": 0
    }
    invoke(s, event([record(2, "SKU-1"), record(3, "SKU-2", 0), record(4, "BACKORDER-1")]))
    invoke(s, event([record(5, "FLAKY-1"), record(6, "SKU-1")]))
    invoke(s, event([record(7, "SLOW-1")]))
    # Not invocations: refused calls and dry runs.
    invoke_error(s, event([record(8, "SKU-1")]), function="nope")
    invoke_error(s, b"[")
    invoke_error(s, event([record(9, "SKU-1", order_id="x" * 6_300_000)]))
    response, _ = invoke(s, event([record(10, "SKU-1")]), InvocationType="DryRun")
    assert response["StatusCode"] == 204, response
    assert counts(s.stats()) == {
        "invocations": 3, "throttled": 0, "timeouts": 1, "functionErrors": 2, "maxInFlight": 1, "records": 6
    }, s.stats()
    # An Event invocation counts once accepted, and runs in the background.
    s.forget_starts()
    response, payload = invoke(s, event([record(11, "SKU-1"), record(12, "SKU-2")]), InvocationType="Event")
    assert response["StatusCode"] == 202 and payload is None, response
    s.wait_start()
    stats = s.stats()
    assert stats["invocations"] == 4 and stats["records"] == 8, stats


# -- the probe ---------------------------------------------------------------


def test_warm_worker_keeps_module_state(p):
    first, a = invoke(p, {}, function="probe")
    second, b = invoke(p, {}, function="probe")
    assert a["pid"] == b["pid"] and b["calls"] == a["calls"] + 1, (a, b)
    assert b["requestId"] == request_id(second), b
    assert b["functionName"] == "probe" and b["memory"] == "256", b
    assert b["arn"] == ARN + "probe", b
    assert 0 < b["remaining"] <= TIMEOUT * 1000, b


def test_function_names(p):
    for name, arn in [
        (ARN + "probe", ARN + "probe"),
        (ARN + "probe:live", ARN + "probe:live"),
        ("123456789012:function:probe", ARN + "probe"),
        ("probe:$LATEST", ARN + "probe:$LATEST"),
    ]:
        _, payload = invoke(p, {}, function=name)
        assert payload["arn"] == arn, (name, payload)
    _, payload = invoke(p, {}, function="probe", Qualifier="live")
    assert payload["arn"].endswith(":function:probe:live"), payload
    e = invoke_error(p, {}, function=ARN + "other")
    assert e["Error"]["Code"] == "ResourceNotFoundException", e


def test_runtime_errors_replace_the_worker(p):
    _, before = invoke(p, {}, function="probe")
    response, payload = invoke(p, {"action": "exit"}, function="probe")
    assert response["FunctionError"] == "Unhandled", response
    assert payload == {
        "errorMessage": f"RequestId: {request_id(response)} Error: Runtime exited with error: exit status 3",
        "errorType": "Runtime.ExitError",
    }, payload
    _, after = invoke(p, {}, function="probe")
    assert after["pid"] != before["pid"] and after["calls"] == 1, (before, after)

    response, payload = invoke(p, {"action": "sleep", "seconds": TIMEOUT + 1}, function="probe")
    assert_timed_out(response, payload)
    _, fresh = invoke(p, {}, function="probe")
    assert fresh["pid"] != after["pid"] and fresh["calls"] == 1, (after, fresh)


def test_response_limits(p):
    # A JSON string of n characters is n + 2 bytes.
    response, payload = invoke(p, {"action": "string", "size": MAX_RESPONSE - 2}, function="probe")
    assert "FunctionError" not in response and len(payload) == MAX_RESPONSE - 2, response
    response, payload = invoke(p, {"action": "string", "size": MAX_RESPONSE - 1}, function="probe")
    assert response["FunctionError"] == "Unhandled", response
    assert payload == {
        "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }, payload
    response, payload = invoke(p, {"action": "unserializable"}, function="probe")
    assert response["FunctionError"] == "Unhandled", response
    assert payload["errorType"] == "Runtime.MarshalError", payload
    assert payload["errorMessage"].startswith("Unable to marshal response: Object of type set"), payload


# -- throttling ----------------------------------------------------------------


def test_reserved_concurrency(r):
    r.reset()
    r.forget_starts()
    busy = Background(r, event([record(2, "SLOW-1")]))
    e = invoke_error(r, event([record(3, "SKU-1")]))
    assert e["ResponseMetadata"]["HTTPStatusCode"] == 429, e
    assert e["Error"]["Code"] == "TooManyRequestsException", e
    assert e["Error"]["Message"] == "Rate Exceeded.", e
    assert e["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded" and e["Type"] == "User", e
    assert_timed_out(*busy.get())
    # The slot is free again.
    response, payload = invoke(r, event([record(3, "SKU-1")]))
    assert payload == {"batchItemFailures": []}, payload
    assert counts(r.stats()) == {
        "invocations": 2, "throttled": 1, "timeouts": 1, "functionErrors": 1, "maxInFlight": 1, "records": 2
    }, r.stats()


def test_throttle_first(t):
    codes = []
    for line in range(4):
        try:
            invoke(t, event([record(line + 2, "SKU-1")]))
            codes.append(None)
        except ClientError as e:
            codes.append(e.response["Error"]["Code"])
            assert e.response["Reason"] == "ConcurrentInvocationLimitExceeded", e.response
    assert codes == ["TooManyRequestsException", "TooManyRequestsException", None, None], codes
    stats = t.stats()
    assert stats["throttled"] == 2 and stats["invocations"] == 2 and stats["records"] == 2, stats


def main():
    started = time.monotonic()
    results = []
    servers = []
    with tempfile.TemporaryDirectory() as directory:
        probe_file = os.path.join(directory, "probe.py")
        with open(probe_file, "w") as f:
            f.write(PROBE)
        try:
            orders = Server(ORDERS + ":handler", "--function-name", "orders")
            servers.append(orders)
            probe = Server(probe_file + ":handler", "--function-name", "probe", "--memory-mb", "256")
            servers.append(probe)
            reserved = Server(ORDERS + ":handler", "--function-name", "orders", "--reserved-concurrency", "1")
            servers.append(reserved)
            throttled = Server(ORDERS + ":handler", "--function-name", "orders", "--throttle-first", "2")
            servers.append(throttled)
            tests = [
                (test_per_record_failures, orders),
                (test_tail_log, orders),
                (test_function_error_then_retry, orders),
                (test_timeout_then_fresh_worker, orders),
                (test_concurrent_calls_get_workers_of_their_own, orders),
                (test_errors_of_the_call, orders),
                (test_statistics, orders),
                (test_warm_worker_keeps_module_state, probe),
                (test_function_names, probe),
                (test_runtime_errors_replace_the_worker, probe),
                (test_response_limits, probe),
                (test_reserved_concurrency, reserved),
                (test_throttle_first, throttled),
            ]
            for test, server in tests:
                test_started = time.monotonic()
                try:
                    test(server)
                    results.append(True)
                    print(f"ok    {test.__name__} ({time.monotonic() - test_started:.1f}s)", flush=True)
                except Exception:
                    results.append(False)
                    print(f"FAIL  {test.__name__}\n{traceback.format_exc()}", flush=True)
        finally:
            for server in servers:
                server.stop()
    failed = results.count(False)
    if failed:
        for server in servers:
            sys.stdout.write(f"--- log of {server.url}\n{''.join(server.lines[-40:])}")
    print(f"{len(results) - failed} passed, {failed} failed ({time.monotonic() - started:.1f}s)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
