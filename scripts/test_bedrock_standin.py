"""Self-test of scripts/bedrock_standin.py, the Bedrock Runtime stand-in the
embeddings tests run against.

Talks to it through boto3's bedrock-runtime client, as an SDK would: checks
the embedding models' answers, that refusals arrive as the errors Bedrock
sends, that --max-concurrency, --throttle-every and --latency-ms work and
that the counters report them. Starts its own servers on free ports.

Usage: .venv/bin/python scripts/test_bedrock_standin.py
"""

import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bedrock_standin.py")
TITAN_V2 = "amazon.titan-embed-text-v2:0"
TITAN_V2_ARN = f"arn:aws:bedrock:us-east-1::foundation-model/{TITAN_V2}"
TITAN_V1 = "amazon.titan-embed-text-v1"
COHERE = "cohere.embed-english-v3"
LATENCY_MS = 200


class Server:
    def __init__(self, *args):
        self.process = subprocess.Popen(
            [sys.executable, SERVER, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = []
        stdout = queue.Queue()
        threading.Thread(target=lambda: stdout.put(self.process.stdout.readline()), daemon=True).start()
        threading.Thread(target=self._read_log, daemon=True).start()
        try:
            first = stdout.get(timeout=10)
        except queue.Empty:
            self.process.kill()
            raise RuntimeError("the stand-in did not start") from None
        assert first.startswith("listening http://127.0.0.1:"), repr(first)
        self.url = first.split()[1]
        self.client = boto3.client(
            "bedrock-runtime",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            # Every refusal must reach the test, not be retried away
            # (retries' max_attempts counts retries; this counts attempts).
            config=Config(retries={"total_max_attempts": 1}, max_pool_connections=16),
        )

    def _read_log(self):
        for line in self.process.stderr:
            self.lines.append(line)

    def invoke(self, model, body):
        answer = self.client.invoke_model(
            modelId=model, body=json.dumps(body), contentType="application/json", accept="application/json"
        )
        assert answer["contentType"] == "application/json", answer["contentType"]
        return json.loads(answer["body"].read()), answer["ResponseMetadata"]["HTTPHeaders"]

    def http(self, method, path, body=None):
        """(status, headers, parsed body) of a plain HTTP request."""
        request = urllib.request.Request(self.url + path, data=body, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, e.headers, json.loads(e.read())

    def stats(self):
        status, _, stats = self.http("GET", "/standin/stats")
        assert status == 200, status
        return stats

    def reset(self):
        status, _, stats = self.http("POST", "/standin/reset")
        assert status == 200, status
        return stats

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=10)


def error_of(call):
    """(code, message, HTTP status) of the ClientError call raises."""
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["Error"]["Message"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("the call succeeded")


def norm(values):
    return math.sqrt(sum(v * v for v in values))


def test_titan_v2_vectors(s):
    a, headers = s.invoke(TITAN_V2, {"inputText": "Hello, world!", "dimensions": 256})
    assert set(a) == {"embedding", "embeddingsByType", "inputTextTokenCount"}, sorted(a)
    v = a["embedding"]
    assert len(v) == 256 and all(-1 <= x <= 1 for x in v)
    assert abs(norm(v) - 1) < 1e-9, norm(v)
    assert a["embeddingsByType"] == {"float": v}
    assert a["inputTextTokenCount"] == 4, a["inputTextTokenCount"]
    assert headers["x-amzn-bedrock-input-token-count"] == "4", headers
    assert int(headers["x-amzn-bedrock-invocation-latency"]) >= 0, headers

    same, _ = s.invoke(TITAN_V2, {"inputText": "Hello, world!", "dimensions": 256, "normalize": True})
    assert same["embedding"] == v
    by_arn, _ = s.invoke(TITAN_V2_ARN, {"inputText": "Hello, world!", "dimensions": 256})
    assert by_arn["embedding"] == v
    other, _ = s.invoke(TITAN_V2, {"inputText": "Goodbye, world!", "dimensions": 256})
    assert len(other["embedding"]) == 256 and other["embedding"] != v

    default, _ = s.invoke(TITAN_V2, {"inputText": "Hello, world!"})
    assert len(default["embedding"]) == 1024
    raw, _ = s.invoke(TITAN_V2, {"inputText": "Hello, world!", "dimensions": 512, "normalize": False})
    assert len(raw["embedding"]) == 512 and all(-1 <= x <= 1 for x in raw["embedding"])
    assert norm(raw["embedding"]) > 2, norm(raw["embedding"])
    both, _ = s.invoke(TITAN_V2, {"inputText": "x", "dimensions": 256, "embeddingTypes": ["float", "binary"]})
    assert both["embeddingsByType"]["binary"] == [int(x > 0) for x in both["embeddingsByType"]["float"]]


def test_titan_v2_refusals(s):
    def refusal(body):
        return error_of(lambda: s.invoke(TITAN_V2, body))

    def malformed(what):
        return ("ValidationException", f"Malformed input request: {what}, please reformat your input and try again.", 400)

    assert refusal({"inputText": "x", "dimensions": 300}) == malformed("300 is not a valid enum value")
    assert refusal({"inputText": ""}) == malformed("expected minLength: 1, actual: 0")
    assert refusal({"dimensions": 256}) == malformed("required key [inputText] not found")
    assert refusal({"inputText": "x" * 50001}) == malformed("expected maxLength: 50000, actual: 50001")
    assert refusal({"inputText": "", "dimensions": 300}) == malformed("2 schema violations found")
    code, message, status = refusal({"inputText": "word " * 9000})
    assert (code, status) == ("ValidationException", 400)
    assert message == "400 Bad Request: Too many input tokens. Max input tokens: 8192, request input token count: 9000", message


def test_unknown_model(s):
    assert error_of(lambda: s.invoke("amazon.titan-embed-text-v9:0", {"inputText": "x"})) == (
        "ValidationException",
        "The provided model identifier is invalid.",
        400,
    )
    code, message, status = error_of(lambda: s.invoke("no such model", {"inputText": "x"}))
    assert (code, status) == ("ValidationException", 400)
    assert message.startswith("1 validation error detected: Value 'no such model' at 'modelId'"), message


def test_titan_v1(s):
    a, _ = s.invoke(TITAN_V1, {"inputText": "Hello, world!"})
    assert set(a) == {"embedding", "inputTextTokenCount"}, sorted(a)
    assert len(a["embedding"]) == 1536 and a["inputTextTokenCount"] == 4


def test_cohere(s):
    texts = ["first document", "second document"]
    a, _ = s.invoke(COHERE, {"texts": texts, "input_type": "search_document"})
    assert set(a) == {"embeddings", "id", "response_type", "texts"}, sorted(a)
    assert a["response_type"] == "embeddings_floats" and a["texts"] == texts
    assert isinstance(a["id"], str) and a["id"]
    assert [len(e) for e in a["embeddings"]] == [1024, 1024]
    assert all(abs(norm(e) - 1) < 1e-9 for e in a["embeddings"])
    assert a["embeddings"][0] != a["embeddings"][1]
    again, _ = s.invoke(COHERE, {"texts": texts[:1], "input_type": "search_document", "truncate": "END"})
    assert again["embeddings"][0] == a["embeddings"][0]

    typed, _ = s.invoke(COHERE, {"texts": texts, "input_type": "search_query", "embedding_types": ["float", "int8"]})
    assert typed["response_type"] == "embeddings_by_type", typed["response_type"]
    assert sorted(typed["embeddings"]) == ["float", "int8"]
    assert [len(e) for e in typed["embeddings"]["int8"]] == [1024, 1024]

    assert error_of(lambda: s.invoke(COHERE, {"inputText": "x"})) == (
        "ValidationException",
        "Malformed input request: #: required key [texts] not found#: required key [input_type] not found"
        "#: extraneous key [inputText] is not permitted, please reformat your input and try again.",
        400,
    )


def test_raw_http(s):
    # Without an Authorization header, as a plain client sends it.
    status, headers, body = s.http("POST", "/model/amazon.titan-embed-text-v2%3A0/invoke", b'{"inputText": "hi"}')
    assert status == 200 and len(body["embedding"]) == 1024, status
    assert headers["Content-Type"] == "application/json"

    status, headers, body = s.http("POST", "/model/amazon.titan-embed-text-v2%3A0/invoke", b"not json")
    assert status == 400, status
    assert headers["x-amzn-ErrorType"].split(":")[0] == "ValidationException", headers["x-amzn-ErrorType"]
    assert set(body) == {"message"}, body

    status, headers, body = s.http("GET", "/nothing/here")
    assert status == 404 and "message" in body, (status, body)
    status, _, _ = s.http("POST", "/model/amazon.titan-embed-text-v2%3A0/invoke", b"[1, 2")
    assert status == 400, status
    # Still serving.
    assert s.invoke(TITAN_V2, {"inputText": "still here", "dimensions": 256})[0]["embedding"]


def at_once(s, n):
    """Sends n requests at the same moment; each one's outcome: ("ok",
    seconds taken) or (error code, HTTP status)."""
    start = threading.Barrier(n)
    outcomes = [None] * n

    def call(i):
        start.wait()
        began = time.monotonic()
        try:
            s.invoke(TITAN_V2, {"inputText": f"text {i}", "dimensions": 256})
            outcomes[i] = ("ok", time.monotonic() - began)
        except ClientError as e:
            outcomes[i] = (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert None not in outcomes, outcomes
    return outcomes


def test_concurrency_limit(s):
    s.reset()
    outcomes = at_once(s, 6)
    ok = [o for o in outcomes if o[0] == "ok"]
    throttled = [o for o in outcomes if o[0] != "ok"]
    assert len(ok) >= 2 and throttled, outcomes
    assert all(o == ("ThrottlingException", 429) for o in throttled), outcomes
    assert all(seconds >= LATENCY_MS / 1000 for _, seconds in ok), outcomes
    stats = s.stats()
    assert stats["requests"] == 6 and stats["throttled"] == len(throttled), stats
    assert stats["embeddings"] == len(ok), stats
    assert stats["maxInFlight"] <= 2 and stats["maxArrived"] >= 3, stats
    assert stats["inFlightLimitExceeded"] is True, stats

    # A client that keeps to the limit is never refused, even when it sends
    # its next requests as soon as it has the last answers.
    s.reset()
    for _ in range(3):
        outcomes = at_once(s, 2)
        assert [o[0] for o in outcomes] == ["ok", "ok"], outcomes
    stats = s.stats()
    assert stats["throttled"] == 0 and stats["maxInFlight"] == 2 and stats["maxArrived"] == 2, stats
    assert stats["inFlightLimitExceeded"] is False, stats


def test_throttle_every(s):
    s.reset()

    def outcome():
        try:
            s.invoke(TITAN_V2, {"inputText": "x", "dimensions": 256})
            return "ok"
        except ClientError as e:
            assert e.response["Error"]["Message"] == "Too many requests, please wait before trying again.", e.response
            return e.response["Error"]["Code"]

    results = [outcome() for _ in range(7)]
    assert [i + 1 for i, r in enumerate(results) if r != "ok"] == [3, 6], results
    assert {r for r in results if r != "ok"} == {"ThrottlingException"}, results
    stats = s.stats()
    assert stats == {
        "requests": 7,
        "throttled": 2,
        "embeddings": 5,
        "maxInFlight": 1,
        "maxArrived": 1,
        "inFlightLimitExceeded": False,
    }, stats
    assert s.reset() == {k: (False if k == "inFlightLimitExceeded" else 0) for k in stats}
    assert s.stats()["requests"] == 0
    # The count restarts with the counters.
    assert [outcome() for _ in range(3)] == ["ok", "ok", "ThrottlingException"]


def test_sigterm(_):
    s = Server()
    assert s.stop() == 0, "".join(s.lines)


def main():
    results = []
    servers = []
    try:
        plain = Server()
        servers.append(plain)
        limited = Server("--max-concurrency", "2", "--latency-ms", str(LATENCY_MS))
        servers.append(limited)
        every = Server("--throttle-every", "3")
        servers.append(every)
        tests = [
            (test_titan_v2_vectors, plain),
            (test_titan_v2_refusals, plain),
            (test_unknown_model, plain),
            (test_titan_v1, plain),
            (test_cohere, plain),
            (test_raw_http, plain),
            (test_concurrency_limit, limited),
            (test_throttle_every, every),
            (test_sigterm, None),
        ]
        for test, server in tests:
            started = time.monotonic()
            try:
                test(server)
                results.append(True)
                print(f"ok    {test.__name__} ({time.monotonic() - started:.1f}s)", flush=True)
            except Exception:
                results.append(False)
                print(f"FAIL  {test.__name__}\n{traceback.format_exc()}", flush=True)
    finally:
        for server in servers:
            code = server.stop()
            if code != 0:
                results.append(False)
                print(f"FAIL  a server exited with {code}:\n{''.join(server.lines)}", flush=True)
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
