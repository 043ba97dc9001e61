"""A local stand-in for Amazon Bedrock Runtime's InvokeModel, for embedding models.

The AWS emulator the tests use (moto) answers InvokeModel with an empty
body, so the embeddings processor has nothing to test against. This server
speaks InvokeModel's REST API (restJson1) closely enough that the AWS SDKs
(aws-sdk-bedrockruntime, boto3) parse its answers and its errors, with the
client's endpoint pointed at it. It uses only the Python standard library.

    POST /model/{modelId}/invoke

modelId is URL-encoded by the SDKs and may be a model ID or a
foundation-model ARN (arn:aws:bedrock:REGION::foundation-model/ID).
Models served:

  amazon.titan-embed-text-v2:0
      {"inputText": str, "dimensions": 256|512|1024 (default 1024),
       "normalize": bool (default true), "embeddingTypes": ["float", "binary"]}
      -> {"embedding": [...], "embeddingsByType": {"float": [...]},
          "inputTextTokenCount": n}
      inputText must be 1 to 50,000 characters and at most 8,192 tokens.
  amazon.titan-embed-text-v1
      {"inputText": str} -> {"embedding": [1536 floats], "inputTextTokenCount": n}
  cohere.embed-english-v3, cohere.embed-multilingual-v3
      {"texts": [str, ...] (at most 96), "input_type": "search_document" |
       "search_query" | "classification" | "clustering",
       "truncate": "NONE"|"START"|"END", "embedding_types": [...]}
      -> {"embeddings": [[1024 floats], ...], "id": str,
          "response_type": "embeddings_floats", "texts": [...]}
      With embedding_types, "embeddings" is an object keyed by type and
      response_type is "embeddings_by_type".

Any other model ID is refused as Bedrock refuses an ID it cannot resolve:
400 ValidationException "The provided model identifier is invalid.".

Vectors are deterministic. For a model ID (the ID, also when the request
named its ARN), a dimension count d and a text:

    seed  = SHA-256(UTF-8(model_id + "\\n" + str(d) + "\\n" + text))
    block k (k = 0, 1, ...) = SHA-256(seed + k as 4 bytes big-endian),
            read as 8 unsigned 32-bit big-endian integers u
    value = u / 2**31 - 1, in [-1, 1); the first d values are the vector,
            divided by its Euclidean norm when normalized.

Titan v2 normalizes unless "normalize" is false; Cohere vectors are always
normalized; Titan v1 vectors are not. The token count is the number of
words plus punctuation marks (matches of \\w+|[^\\w\\s]). A 1024-dimension
vector costs about 1 ms of CPU to make and encode, and all requests share
one Python process: a 96-text Cohere request takes about 0.1 s.

Errors are what restJson1 services send: the status of the error's shape,
a header x-amzn-ErrorType: <Code>:<namespace> (SDKs keep the part before
the colon), and a body {"message": "..."}. Request validation messages
follow the form Bedrock uses ("Malformed input request: ..., please
reformat your input and try again.").

Throttling (429 ThrottlingException, "Too many requests, please wait
before trying again."):
  --max-concurrency N  a request arriving while N are being served
  --throttle-every K   the K-th, 2K-th, ... InvokeModel request
--latency-ms MS makes each successful request take MS milliseconds, so that
a client's concurrency can be observed.

Counters, for tests:
  GET  /standin/stats -> {"requests", "throttled", "embeddings",
                          "maxInFlight", "maxArrived", "inFlightLimitExceeded"}
       requests     InvokeModel requests received (throttled and refused
                    ones included)
       throttled    of which answered with ThrottlingException
       embeddings   vectors returned
       maxInFlight  most requests served at once (throttled ones excluded)
       maxArrived   most requests open at once, throttled ones included: a
                    client that keeps its own limit of N never makes it
                    exceed N
       inFlightLimitExceeded  a request was throttled by --max-concurrency
  POST /standin/reset -> zeroes them (and restarts the --throttle-every count)

Authorization is not checked; requests without it are served too.

When listening, prints exactly one line to stdout, "listening
http://HOST:PORT" (with --port 0 the port is a free one), then logs only
to stderr. Exits 0 on SIGTERM or SIGINT.

Usage: bedrock_standin.py [--host 127.0.0.1] [--port 0] [--max-concurrency N]
                          [--throttle-every K] [--latency-ms MS]
"""

import argparse
import hashlib
import json
import math
import re
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

# What follows the error code in x-amzn-ErrorType, as Bedrock sends it.
ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
THROTTLED = "Too many requests, please wait before trying again."
INVALID_MODEL = "The provided model identifier is invalid."

# InvokeModel's modelId constraint, from the service model.
MODEL_ID_PATTERN = (
    r"(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:(([0-9]{12}:custom-model/[a-z0-9-]{1,63}[.]{1}"
    r"[a-z0-9-]{1,63}/[a-z0-9]{12})|(:foundation-model/[a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}"
    r"([.:]?[a-z0-9-]{1,63}))|([0-9]{12}:imported-model/[a-z0-9]{12})|([0-9]{12}:"
    r"provisioned-model/[a-z0-9]{12})|([0-9]{12}:custom-model-deployment/[a-z0-9]{12})|"
    r"([0-9]{12}:(inference-profile|application-inference-profile)/[a-zA-Z0-9-:.]+)))|"
    r"([a-z0-9-]{1,63}[.]{1}[a-z0-9-]{1,63}([.:]?[a-z0-9-]{1,63}))|(([0-9a-zA-Z][_-]?)+)|"
    r"([a-zA-Z0-9-:.]+)$|(^(arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:prompt/"
    r"[0-9a-zA-Z]{10}(?::[0-9]{1,5})?))$|(^arn:aws:sagemaker:[a-z0-9-]+:[0-9]{12}:endpoint/"
    r"[a-zA-Z0-9-]+$)|(^arn:aws(-[^:]+)?:bedrock:([0-9a-z-]{1,20}):([0-9]{12}):(default-)?"
    r"prompt-router/[a-zA-Z0-9-:.]+$)"
)
FOUNDATION_MODEL_ARN = re.compile(r"arn:aws(?:-[^:]+)?:bedrock:[a-z0-9-]{1,20}::foundation-model/(.+)")
INVOKE_PATH = re.compile(r"/model/(.+)/invoke")
TOKEN = re.compile(r"\w+|[^\w\s]")

TITAN_V2 = "amazon.titan-embed-text-v2:0"
TITAN_V1 = "amazon.titan-embed-text-v1"
COHERE = ("cohere.embed-english-v3", "cohere.embed-multilingual-v3")
TITAN_MAX_TOKENS = 8192
TITAN_V2_MAX_CHARS = 50000
COHERE_MAX_TEXTS = 96
COHERE_DIMENSIONS = 1024


def log(message):
    print(f"bedrock_standin: {message}", file=sys.stderr, flush=True)


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def validation(message):
    return ApiError(400, "ValidationException", message)


def malformed(message):
    return validation(f"Malformed input request: {message}, please reformat your input and try again.")


# --- vectors -----------------------------------------------------------------


def vector(model_id, dimensions, text, normalize):
    seed = hashlib.sha256(f"{model_id}\n{dimensions}\n{text}".encode("utf-8")).digest()
    blocks = (dimensions + 7) // 8
    stream = b"".join(hashlib.sha256(seed + k.to_bytes(4, "big")).digest() for k in range(blocks))
    values = [u / 2**31 - 1.0 for u in struct.unpack(f">{blocks * 8}I", stream)[:dimensions]]
    if normalize:
        norm = math.hypot(*values) or 1.0
        values = [v / norm for v in values]
    return values


def token_count(text):
    return len(TOKEN.findall(text))


def packed_bits(values):
    """Signs packed 8 to a byte, most significant bit first (0..255)."""
    out = []
    for i in range(0, len(values), 8):
        byte = 0
        for v in values[i : i + 8]:
            byte = (byte << 1) | (v > 0)
        out.append(byte)
    return out


def scaled_int8(values):
    top = max((abs(v) for v in values), default=0.0) or 1.0
    return [round(v / top * 127) for v in values]


# --- request validation, in the JSON-schema style Bedrock reports ------------


def json_type(value):
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Integer"
    if isinstance(value, float):
        return "BigDecimal"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "JSONArray"
    if isinstance(value, dict):
        return "JSONObject"
    return "Null"


class Violations:
    """Collects schema violations as (pointer, message)."""

    def __init__(self):
        self.items = []

    def add(self, pointer, message):
        self.items.append((pointer, message))

    def keys(self, body, required, allowed):
        for key in required:
            if key not in body:
                self.add("#", f"required key [{key}] not found")
        for key in body:
            if key not in allowed:
                self.add("#", f"extraneous key [{key}] is not permitted")

    def typed(self, pointer, value, expected):
        if json_type(value) == expected:
            return True
        self.add(pointer, f"expected type: {expected}, found: {json_type(value)}")
        return False

    def string(self, pointer, value, min_length=None, max_length=None):
        if not self.typed(pointer, value, "String"):
            return
        if min_length is not None and len(value) < min_length:
            self.add(pointer, f"expected minLength: {min_length}, actual: {len(value)}")
        if max_length is not None and len(value) > max_length:
            self.add(pointer, f"expected maxLength: {max_length}, actual: {len(value)}")

    def enum(self, pointer, value, allowed):
        if not any(type(value) is type(a) and value == a for a in allowed):
            shown = value if isinstance(value, str) else json.dumps(value)
            self.add(pointer, f"{shown} is not a valid enum value")

    def enum_list(self, pointer, value, allowed, max_items=None):
        if not self.typed(pointer, value, "JSONArray"):
            return
        if max_items is not None and len(value) > max_items:
            self.add(pointer, f"expected maximum item count: {max_items}, found: {len(value)}")
        for i, item in enumerate(value):
            self.enum(f"{pointer}/{i}", item, allowed)

    def raise_titan(self):
        # Titan reports one violation by itself and several by their number.
        if len(self.items) == 1:
            raise malformed(self.items[0][1])
        if self.items:
            raise malformed(f"{len(self.items)} schema violations found")

    def raise_listed(self):
        # Cohere lists every violation with its location.
        if self.items:
            raise malformed("".join(f"{pointer}: {message}" for pointer, message in self.items))


def request_object(body):
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise malformed("the request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise malformed(f"#: expected type: JSONObject, found: {json_type(value)}")
    return value


def check_titan_tokens(count):
    if count > TITAN_MAX_TOKENS:
        raise validation(
            f"400 Bad Request: Too many input tokens. Max input tokens: {TITAN_MAX_TOKENS}, "
            f"request input token count: {count}"
        )


def titan_v2(model_id, body):
    v = Violations()
    v.keys(body, ["inputText"], ["inputText", "dimensions", "normalize", "embeddingTypes"])
    if "inputText" in body:
        v.string("#/inputText", body["inputText"], 1, TITAN_V2_MAX_CHARS)
    if "dimensions" in body:
        v.enum("#/dimensions", body["dimensions"], [1024, 512, 256])
    if "normalize" in body:
        v.typed("#/normalize", body["normalize"], "Boolean")
    if "embeddingTypes" in body:
        v.enum_list("#/embeddingTypes", body["embeddingTypes"], ["float", "binary"])
    v.raise_titan()
    text = body["inputText"]
    tokens = token_count(text)
    check_titan_tokens(tokens)
    dimensions = body.get("dimensions", 1024)
    values = vector(model_id, dimensions, text, body.get("normalize", True))
    types = body.get("embeddingTypes") or ["float"]
    by_type = {}
    if "float" in types:
        by_type["float"] = values
    if "binary" in types:
        by_type["binary"] = [int(x > 0) for x in values]
    answer = {"embedding": values, "inputTextTokenCount": tokens, "embeddingsByType": by_type}
    return answer, 1, tokens


def titan_v1(model_id, body):
    v = Violations()
    v.keys(body, ["inputText"], ["inputText"])
    if "inputText" in body:
        v.string("#/inputText", body["inputText"], 1)
    v.raise_titan()
    text = body["inputText"]
    tokens = token_count(text)
    check_titan_tokens(tokens)
    answer = {"embedding": vector(model_id, 1536, text, False), "inputTextTokenCount": tokens}
    return answer, 1, tokens


def cohere(model_id, body):
    v = Violations()
    v.keys(body, ["texts", "input_type"], ["texts", "input_type", "truncate", "embedding_types", "images"])
    if "texts" in body and v.typed("#/texts", body["texts"], "JSONArray"):
        if len(body["texts"]) > COHERE_MAX_TEXTS:
            v.add("#/texts", f"expected maximum item count: {COHERE_MAX_TEXTS}, found: {len(body['texts'])}")
        for i, text in enumerate(body["texts"]):
            v.typed(f"#/texts/{i}", text, "String")
    if "input_type" in body:
        v.enum("#/input_type", body["input_type"], ["search_document", "search_query", "classification", "clustering"])
    if "truncate" in body:
        v.enum("#/truncate", body["truncate"], ["NONE", "START", "END"])
    if "embedding_types" in body:
        v.enum_list("#/embedding_types", body["embedding_types"], ["float", "int8", "uint8", "binary", "ubinary"])
    if "images" in body:
        v.add("#/images", "image input is not supported by this stand-in")
    v.raise_listed()
    texts = body["texts"]
    vectors = [vector(model_id, COHERE_DIMENSIONS, text, True) for text in texts]
    tokens = sum(token_count(text) for text in texts)
    answer = {"id": str(uuid.uuid4()), "texts": texts}
    types = body.get("embedding_types")
    if types is None:
        answer["embeddings"] = vectors
        answer["response_type"] = "embeddings_floats"
    else:
        by_type = {}
        for kind in types:
            if kind == "float":
                by_type[kind] = vectors
            elif kind == "int8":
                by_type[kind] = [scaled_int8(x) for x in vectors]
            elif kind == "uint8":
                by_type[kind] = [[i + 128 for i in scaled_int8(x)] for x in vectors]
            elif kind == "ubinary":
                by_type[kind] = [packed_bits(x) for x in vectors]
            elif kind == "binary":
                by_type[kind] = [[b - 128 for b in packed_bits(x)] for x in vectors]
        answer["embeddings"] = by_type
        answer["response_type"] = "embeddings_by_type"
    return answer, len(texts), tokens


MODELS = {TITAN_V2: titan_v2, TITAN_V1: titan_v1, **{m: cohere for m in COHERE}}


def resolve_model(model_id):
    if not 1 <= len(model_id) <= 2048 or not re.fullmatch(MODEL_ID_PATTERN, model_id):
        raise validation(
            f"1 validation error detected: Value '{model_id}' at 'modelId' failed to satisfy "
            f"constraint: Member must satisfy regular expression pattern: {MODEL_ID_PATTERN}"
        )
    arn = FOUNDATION_MODEL_ARN.fullmatch(model_id)
    base = arn.group(1) if arn else model_id
    if base not in MODELS:
        raise validation(INVALID_MODEL)
    return base, MODELS[base]


def invoke(model_id, body):
    """Returns (answer, number of vectors, input tokens) or raises ApiError."""
    base, handler = resolve_model(model_id)
    return handler(base, request_object(body))


# --- counters ----------------------------------------------------------------


class Counters:
    def __init__(self, max_concurrency, throttle_every):
        self.max_concurrency = max_concurrency
        self.throttle_every = throttle_every
        self.lock = threading.Lock()
        self.in_flight = 0
        self.open = 0
        self.zero()

    def zero(self):
        self.requests = 0
        self.throttled = 0
        self.embeddings = 0
        self.max_in_flight = 0
        self.max_arrived = 0
        self.limit_exceeded = False

    def arrive(self):
        """Counts an InvokeModel request; True if it is admitted, False if
        it is to be throttled."""
        with self.lock:
            self.requests += 1
            self.open += 1
            self.max_arrived = max(self.max_arrived, self.open)
            if self.throttle_every and self.requests % self.throttle_every == 0:
                self.throttled += 1
                return False
            if self.max_concurrency and self.in_flight >= self.max_concurrency:
                self.throttled += 1
                self.limit_exceeded = True
                return False
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return True

    def leave(self, admitted, vectors):
        """Called before the answer is written, so that a client sending its
        next request as soon as it has one never finds this one counted."""
        with self.lock:
            self.open -= 1
            if admitted:
                self.in_flight -= 1
            self.embeddings += vectors

    def stats(self):
        with self.lock:
            return {
                "requests": self.requests,
                "throttled": self.throttled,
                "embeddings": self.embeddings,
                "maxInFlight": self.max_in_flight,
                "maxArrived": self.max_arrived,
                "inFlightLimitExceeded": self.limit_exceeded,
            }

    def reset(self):
        with self.lock:
            self.zero()


# --- HTTP ----------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bedrock-standin"
    sys_version = ""

    def log_request(self, code="-", size="-"):
        pass

    def log_message(self, format, *args):
        log(format % args)

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def dispatch(self):
        try:
            body = self.read_body()
            if body is None:
                return
            path = urlsplit(self.path).path
            if path == "/standin/stats" and self.command == "GET":
                self.reply(200, json.dumps(self.server.counters.stats()).encode())
            elif path == "/standin/reset" and self.command == "POST":
                self.server.counters.reset()
                self.reply(200, json.dumps(self.server.counters.stats()).encode())
            elif self.command == "POST" and INVOKE_PATH.fullmatch(path):
                self.invoke_model(unquote(INVOKE_PATH.fullmatch(path).group(1)), body)
            else:
                self.error_reply(ApiError(404, "UnknownOperationException", f"No operation for {self.command} {path}"))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log(f"internal error on {self.command} {self.path}:\n{traceback.format_exc()}")
            self.close_connection = True
            try:
                self.error_reply(ApiError(500, "InternalServerException", "Internal server error"))
            except OSError:
                pass

    def read_body(self):
        """The request body, or None after answering a request whose body
        cannot be read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self.error_reply(ApiError(400, "ValidationException", f"Invalid Content-Length: {length}"))
            return None
        return self.rfile.read(n)

    def invoke_model(self, model_id, body):
        counters = self.server.counters
        admitted = counters.arrive()
        vectors = 0
        try:
            if not admitted:
                raise ApiError(429, "ThrottlingException", THROTTLED)
            started = time.monotonic()
            answer, vectors, tokens = invoke(model_id, body)
            payload = json.dumps(answer).encode()
            remaining = self.server.latency - (time.monotonic() - started)
            if remaining > 0:
                time.sleep(remaining)
            elapsed_ms = round((time.monotonic() - started) * 1000)
            headers = {
                "X-Amzn-Bedrock-Invocation-Latency": str(elapsed_ms),
                "X-Amzn-Bedrock-Input-Token-Count": str(tokens),
            }
        except ApiError as e:
            counters.leave(admitted, 0)
            log(f"{e.status} {e.code} for {model_id}: {e.message[:200]}")
            self.error_reply(e)
            return
        except BaseException:
            counters.leave(admitted, 0)
            raise
        counters.leave(admitted, vectors)
        self.reply(200, payload, headers)

    def error_reply(self, error):
        body = json.dumps({"message": error.message}).encode()
        self.reply(error.status, body, {"x-amzn-ErrorType": f"{error.code}:{ERROR_NAMESPACE}"})

    def reply(self, status, body, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many clients may connect at once; the default backlog of 5 would
    # leave some waiting for a SYN retry.
    request_queue_size = 128


def main():
    parser = argparse.ArgumentParser(description="Local stand-in for Bedrock Runtime InvokeModel (embeddings).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--max-concurrency", type=int, default=0, metavar="N",
                        help="throttle a request arriving while N are being served (0: no limit)")
    parser.add_argument("--throttle-every", type=int, default=0, metavar="K",
                        help="throttle every K-th InvokeModel request (0: never)")
    parser.add_argument("--latency-ms", type=float, default=0.0, metavar="MS",
                        help="time each successful request takes")
    args = parser.parse_args()
    for name in ("port", "max_concurrency", "throttle_every", "latency_ms"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")

    if ":" in args.host:
        Server.address_family = socket.AF_INET6
    server = Server((args.host, args.port), Handler)
    server.counters = Counters(args.max_concurrency, args.throttle_every)
    server.latency = args.latency_ms / 1000

    def stop(signum, _frame):
        log(f"signal {signum}, stopping")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    host = f"[{args.host}]" if ":" in args.host else args.host
    port = server.server_address[1]
    print(f"listening http://{host}:{port}", flush=True)
    log(
        f"listening on {host}:{port} (max concurrency {args.max_concurrency or 'unlimited'}, "
        f"throttle every {args.throttle_every or 'never'}, latency {args.latency_ms:g} ms)"
    )
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.server_close()
    log("stopped")


if __name__ == "__main__":
    main()
