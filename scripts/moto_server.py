"""moto server with DynamoDB's single-item writes serialized.

DynamoDB applies a condition check and its write atomically; moto's
DynamoDB backend does not lock, so under moto's threaded server two
concurrent conditional writes can both pass their check. Running the
writes that can carry a condition (PutItem, UpdateItem, DeleteItem,
TransactWriteItems) one at a time restores the guarantee the protocol
relies on. Everything else (reads, BatchWriteItem, S3, SQS long polls)
stays concurrent.

Usage: moto_server.py HOST PORT
"""

import signal
import sys
import threading

from werkzeug.serving import run_simple

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)

app = DomainDispatcherApplication(create_backend_app)
conditional_writes = threading.Lock()
CONDITIONAL = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems")


def application(environ, start_response):
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target.startswith("DynamoDB_") and target.rsplit(".", 1)[-1] in CONDITIONAL:
        with conditional_writes:
            # Consume the response inside the lock: the write happens while
            # the body is produced.
            return list(app(environ, start_response))
    return app(environ, start_response)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_simple(host, port, application, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
