"""moto server that is at least as strict as DynamoDB about concurrent writes.

The tests run the protocol against moto, so wherever DynamoDB can refuse
or cancel a write, the emulator has to do so at least as often: a protocol
that only ever met a lenient emulator would meet its first conflict in
production.

What DynamoDB does, and what this wrapper adds to moto for it:

- A condition check and its write are atomic. moto's backend has no locks,
  and a failed transaction restores whole tables from a copy taken when it
  began, which would undo writes made meanwhile to other items. So moto
  applies each write holding the lock of the table(s) it writes. That lock
  covers only moto's own work (a millisecond or so); the latency and the
  transaction hold below are spent outside it, so requests on different
  items overlap as they do on DynamoDB.
- A TransactWriteItems holds its items while it runs (here: for
  MOTO_TRANSACTION_HOLD_MS, then while moto applies it). Meanwhile a
  PutItem, UpdateItem or DeleteItem on one of them fails with
  TransactionConflictException; another transaction that includes one of
  them is cancelled (TransactionCanceledException, reason
  TransactionConflict at that item); and so is a transaction that finds one
  of its items under a write still in progress. A transaction takes its
  items all or nothing, without waiting, so transactions cannot deadlock.
- BatchWriteItem cannot fail with TransactionConflictException (it is not
  among its errors); a put or delete it cannot apply comes back in
  UnprocessedItems, and so does one on a held item.
- A TransactWriteItems with a ClientRequestToken seen in the last 10
  minutes answers as the first did without writing again, and with other
  items fails with IdempotentParameterMismatchException (moto ignores the
  token).
- Reads are never refused.
- Every request, to any service, first waits MOTO_LATENCY_MS, standing in
  for the network between Lambda and AWS.

Environment (times in milliseconds):
  MOTO_LATENCY_MS           delay before serving any request (default 0)
  MOTO_TRANSACTION_HOLD_MS  time a transaction holds its items (default 5)
  MOTO_CONFLICTS=0          no conflicts, only atomic writes
  MOTO_LOG_HOLDS=1          log a line when a transaction holds its items
                            (tests synchronise on it)

Each conflict is logged to stderr with a running count.

Usage: moto_server.py HOST PORT
"""

import io
import json
import os
import re
import signal
import sys
import threading
import time
import uuid
import zlib
from contextlib import ExitStack

from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

LATENCY = float(os.environ.get("MOTO_LATENCY_MS", "0")) / 1000
HOLD = float(os.environ.get("MOTO_TRANSACTION_HOLD_MS", "5")) / 1000
CONFLICTS = os.environ.get("MOTO_CONFLICTS", "1") != "0"
LOG_HOLDS = os.environ.get("MOTO_LOG_HOLDS") == "1"

ERROR = "com.amazonaws.dynamodb.v20120810#"
ONGOING = "Transaction is ongoing for the item"
CREDENTIAL = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/")

app = DomainDispatcherApplication(create_backend_app)

# Guards the four below; held for bookkeeping only, never across a moto
# call or a sleep.
bookkeeping = threading.Lock()
table_locks = {}  # table -> lock held while moto applies a write to it
writing = {}  # item -> non-transactional writes in progress
held = set()  # items held by a transaction
conflicts = 0
# ClientRequestToken of a TransactWriteItems that succeeded -> (its items,
# when, the response). moto ignores the token; DynamoDB does not.
tokens = {}
TOKEN_WINDOW_S = 600


def application(environ, start_response):
    if LATENCY:
        time.sleep(LATENCY)
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    action = target.rsplit(".", 1)[-1]
    handler = HANDLERS.get(action) if target.startswith("DynamoDB_") else None
    if handler is None:
        return app(environ, start_response)
    try:
        request = json.loads(read_body(environ))
        writes = writes_of(environ, action, request)
    except (ValueError, LookupError, TypeError, AttributeError, StopIteration):
        # Not a well-formed request: moto rejects it without writing.
        return app(environ, start_response)
    status, headers, body = handler(environ, action, request, writes)
    start_response(status, headers)
    return [body]


def single_write(environ, action, request, writes):
    [(_, _, table, item)] = writes
    with bookkeeping:
        refused = CONFLICTS and item in held
        if not refused:
            enter([item])
    if refused:
        log_conflict(f"{action} refused, its item is held by a transaction")
        error = {"__type": ERROR + "TransactionConflictException", "message": ONGOING}
        return reply("400 Bad Request", error)
    try:
        return moto(environ, [table])
    finally:
        leave([item])


def transact_write(environ, action, request, writes):
    """A transaction, with DynamoDB's idempotency: a ClientRequestToken seen
    in the last 10 minutes with the same items answers as before without
    writing again; with other items, IdempotentParameterMismatchException."""
    token = request.get("ClientRequestToken")
    if not token:
        return transact_once(environ, action, request, writes)
    items = json.dumps(request.get("TransactItems"), sort_keys=True)
    now = time.monotonic()
    with bookkeeping:
        seen = tokens.get(token)
        if seen and now - seen[1] > TOKEN_WINDOW_S:
            seen = tokens.pop(token)
            seen = None
    if seen and seen[0] != items:
        error = {
            "__type": ERROR + "IdempotentParameterMismatchException",
            "message": "Request parameters do not match a previous request with the same client token",
        }
        return reply("400 Bad Request", error)
    if seen:
        return seen[2]
    status, headers, body = transact_once(environ, action, request, writes)
    if status.startswith("200"):
        with bookkeeping:
            tokens[token] = (items, now, (status, headers, body))
    return status, headers, body


def transact_once(environ, action, request, writes):
    tables = [table for _, _, table, _ in writes]
    if not CONFLICTS:
        return moto(environ, tables)
    items = {item for _, _, _, item in writes if item}
    with bookkeeping:
        busy = [item in held or item in writing for _, _, _, item in writes]
        if not any(busy):
            held.update(items)
    if any(busy):
        log_conflict(f"{action} cancelled, {sum(busy)} of {len(busy)} items busy")
        codes = ["TransactionConflict" if b else "None" for b in busy]
        error = {
            "__type": ERROR + "TransactionCanceledException",
            "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons"
            f" [{', '.join(codes)}]",
            "CancellationReasons": [
                {"Code": code, "Message": ONGOING} if b else {"Code": code} for code, b in zip(codes, busy)
            ],
        }
        return reply("400 Bad Request", error)
    try:
        if LOG_HOLDS:
            print(f"moto_server: transaction holds {len(items)} items", file=sys.stderr, flush=True)
        time.sleep(HOLD)
        return moto(environ, tables)
    finally:
        with bookkeeping:
            held.difference_update(items)


def batch_write(environ, action, request, writes):
    kept, unprocessed, tables, items = {}, {}, [], []
    with bookkeeping:
        for name, write, table, item in writes:
            if CONFLICTS and item in held:
                unprocessed.setdefault(name, []).append(write)
            else:
                kept.setdefault(name, []).append(write)
                tables.append(table)
                items.append(item)
        enter(items)
    try:
        if not unprocessed:
            return moto(environ, tables)
        log_conflict(
            f"{action} left {len(writes) - len(items)} of {len(writes)} writes unprocessed,"
            " their items held by a transaction"
        )
        if not kept:
            return reply("200 OK", {"UnprocessedItems": unprocessed})
        set_body(environ, json.dumps(dict(request, RequestItems=kept)).encode())
        status, headers, body = moto(environ, tables)
    finally:
        leave(items)
    if not status.startswith("200"):
        return status, headers, body
    response = json.loads(body)
    for name, table_writes in unprocessed.items():
        response.setdefault("UnprocessedItems", {}).setdefault(name, []).extend(table_writes)
    return reply(status, response, headers)


HANDLERS = {
    "PutItem": single_write,
    "UpdateItem": single_write,
    "DeleteItem": single_write,
    "TransactWriteItems": transact_write,
    "BatchWriteItem": batch_write,
}


def writes_of(environ, action, request):
    """[(TableName as sent, write request, table, item)] of what a request writes."""
    if action == "TransactWriteItems":
        return [
            (None, None, *item_of(environ, next(iter(entry.values()))))
            for entry in request["TransactItems"]
        ]
    if action == "BatchWriteItem":
        return [
            (name, write, *item_of(environ, dict(next(iter(write.values())), TableName=name)))
            for name, table_writes in request["RequestItems"].items()
            for write in table_writes
        ]
    return [(None, None, *item_of(environ, request))]


def item_of(environ, op):
    """(table, item) of one write; item is None when it cannot be told (moto
    then fails the request: no such table, or a key missing)."""
    table = table_of(environ, op["TableName"])
    key = op.get("Key")
    if key is None:
        names = key_names(table)
        key = {name: op["Item"].get(name) for name in names} if names else None
    return table, None if key is None else (table, json.dumps(key, sort_keys=True))


def table_of(environ, name):
    """(account, region, table name) of a TableName, which may be an ARN."""
    if name.startswith("arn:"):
        _, _, _, region, account, resource = name.split(":", 5)
        return account, region, resource.split("/", 1)[1]
    credential = CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    region = credential.group(1) if credential else "us-east-1"
    account = os.environ.get("MOTO_ACCOUNT_ID") or environ.get("HTTP_X_MOTO_ACCOUNT_ID") or DEFAULT_ACCOUNT_ID
    return account, region, name


def key_names(table):
    account, region, name = table
    try:
        schema = dynamodb_backends[account][region].tables[name]
    except KeyError:
        return None
    return [attr for attr in (schema.hash_key_attr, schema.range_key_attr) if attr]


def moto(environ, tables):
    """Has moto serve the request with `tables` locked: (status, headers, body)."""
    started = []

    def start_response(status, headers, exc_info=None):
        started[:] = [status, headers]

    with ExitStack() as stack:
        # In one order everywhere, so that writes to several tables cannot deadlock.
        for table in sorted(set(tables)):
            with bookkeeping:
                lock = table_locks.setdefault(table, threading.Lock())
            stack.enter_context(lock)
        # Consume the response inside the lock: the write happens while the
        # body is produced.
        result = app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            getattr(result, "close", lambda: None)()
    return started[0], started[1], body


def enter(items):
    for item in filter(None, items):
        writing[item] = writing.get(item, 0) + 1


def leave(items):
    with bookkeeping:
        for item in filter(None, items):
            writing[item] -= 1
            if not writing[item]:
                del writing[item]


def log_conflict(what):
    global conflicts
    with bookkeeping:
        conflicts += 1
        count = conflicts
    print(f"moto_server: conflict {count}: {what}", file=sys.stderr, flush=True)


def reply(status, payload, headers=None):
    """A DynamoDB JSON response, keeping those of moto's `headers` that the
    body does not change."""
    body = json.dumps(payload).encode()
    if headers is None:
        headers = [("x-amzn-RequestId", uuid.uuid4().hex.upper())]
    changed = {"content-type", "content-length", "x-amz-crc32"}
    return (
        status,
        [(k, v) for k, v in headers if k.lower() not in changed]
        + [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("Content-Length", str(len(body))),
            # DynamoDB sends it with every response, and SDKs verify it.
            ("x-amz-crc32", str(zlib.crc32(body))),
        ],
        body,
    )


def read_body(environ):
    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    if length:
        body = stream.read(int(length))
    else:
        body = stream.read() if environ.get("wsgi.input_terminated") else b""
    set_body(environ, body)
    return body


def set_body(environ, body):
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(host, port, application, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
