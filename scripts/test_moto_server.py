"""Self-test of scripts/moto_server.py, the emulator the tests run against.

Checks that it refuses writes around transactions the way DynamoDB does,
that single-item conditional writes are atomic, that writes to different
items do not wait for each other, and that MOTO_LATENCY_MS and
MOTO_CONFLICTS=0 work. Starts its own servers on free ports.

Usage: .venv/bin/python scripts/test_moto_server.py
"""

import os
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "moto_server.py")
TABLE = "t"
# Long enough that a request sent once the transaction is held surely lands
# inside the hold.
HOLD_MS = 300


class Server:
    def __init__(self, **env):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.lines = []
        self.holds = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, SERVER, "127.0.0.1", str(port)],
            env={**os.environ, "MOTO_LOG_HOLDS": "1", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except Exception:
                time.sleep(0.05)
        else:
            raise RuntimeError("moto server did not start")
        self.db = boto3.client(
            "dynamodb",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            # Every refusal must reach the test, not be retried away.
            config=Config(retries={"mode": "standard", "max_attempts": 1}, max_pool_connections=32),
        )
        self.db.create_table(
            TableName=TABLE,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )

    def _read_log(self):
        for line in self.process.stderr:
            self.lines.append(line)
            if "transaction holds" in line:
                self.holds.put(line)

    def conflicts(self):
        return sum("moto_server: conflict" in line for line in self.lines)

    def wait_conflicts(self, n):
        """The log shows n conflicts (it may lag the response a little)."""
        deadline = time.monotonic() + 5
        while self.conflicts() < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.conflicts()

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def key(pk, sk="s"):
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def put(pk, v="txn"):
    """A transaction's Put."""
    return {"Put": {"TableName": TABLE, "Item": {**key(pk), "v": {"S": v}}}}


def update(pk, v="txn"):
    """A transaction's Update."""
    return {"Update": {"TableName": TABLE, "Key": key(pk), **set_v(v)}}


def set_v(v):
    return {"UpdateExpression": "SET v = :v", "ExpressionAttributeValues": {":v": {"S": v}}}


def v_of(s, pk):
    item = s.db.get_item(TableName=TABLE, Key=key(pk), ConsistentRead=True).get("Item")
    return item and item["v"]["S"]


def error_code(call):
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


class Background:
    """Runs a TransactWriteItems in a thread and waits until the server holds
    its items."""

    def __init__(self, server, items):
        while not server.holds.empty():
            server.holds.get_nowait()
        self.done = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, args=(server, items))
        self.thread.start()
        server.holds.get(timeout=10)

    def _run(self, server, items):
        try:
            server.db.transact_write_items(TransactItems=items)
        except Exception as e:  # reported by result()
            self.error = e
        self.done.set()

    def result(self):
        self.thread.join(timeout=10)
        assert self.done.is_set(), "transaction did not finish"
        assert self.error is None, f"transaction failed: {self.error}"


def test_writes_on_held_items_conflict(s):
    before = s.conflicts()
    txn = Background(s, [put("a1"), put("a2"), put("a3")])
    codes = [
        error_code(lambda: s.db.update_item(TableName=TABLE, Key=key("a2"), **set_v("single"))),
        error_code(lambda: s.db.put_item(TableName=TABLE, Item={**key("a1"), "v": {"S": "single"}})),
        error_code(lambda: s.db.delete_item(TableName=TABLE, Key=key("a3"))),
    ]
    assert not txn.done.is_set(), "the transaction ended before the writes were refused: hold too short"
    txn.result()
    assert codes == ["TransactionConflictException"] * 3, codes
    assert [v_of(s, pk) for pk in ("a1", "a2", "a3")] == ["txn"] * 3
    assert s.wait_conflicts(before + 3) == before + 3
    # Released once the transaction is over.
    s.db.update_item(TableName=TABLE, Key=key("a2"), **set_v("single"))


def test_overlapping_transactions_cancel_the_later(s):
    before = s.conflicts()
    first = Background(s, [put("b0"), update("b1")])
    try:
        s.db.transact_write_items(TransactItems=[put("b2"), put("b1"), put("b3")])
        raise AssertionError("the second transaction was not cancelled")
    except ClientError as e:
        assert e.response["Error"]["Code"] == "TransactionCanceledException", e.response["Error"]
        reasons = e.response["CancellationReasons"]
        message = e.response["Error"]["Message"]
    assert not first.done.is_set(), "the first transaction ended too early: hold too short"
    first.result()
    assert [r["Code"] for r in reasons] == ["None", "TransactionConflict", "None"], reasons
    assert reasons[1]["Message"] == "Transaction is ongoing for the item", reasons
    assert "Message" not in reasons[0], reasons
    expected = "Transaction cancelled, please refer cancellation reasons for specific reasons"
    assert message == expected + " [None, TransactionConflict, None]", message
    assert s.wait_conflicts(before + 1) == before + 1
    # Nothing of the cancelled transaction was written.
    assert v_of(s, "b2") is None
    assert v_of(s, "b1") == "txn"


def test_batch_write_leaves_held_items_unprocessed(s):
    before = s.conflicts()
    txn = Background(s, [put("c1")])

    def batch_put(pk):
        return {"PutRequest": {"Item": {**key(pk), "v": {"S": "batch"}}}}

    out = s.db.batch_write_item(RequestItems={TABLE: [batch_put("c1"), batch_put("c2")]})
    txn.result()
    assert out["UnprocessedItems"] == {TABLE: [batch_put("c1")]}, out
    assert (v_of(s, "c1"), v_of(s, "c2")) == ("txn", "batch")
    assert s.wait_conflicts(before + 1) == before + 1


def test_reads_are_not_refused(s):
    s.db.put_item(TableName=TABLE, Item={**key("r1"), "v": {"S": "old"}})
    txn = Background(s, [put("r1", v="new")])
    seen = v_of(s, "r1")
    assert not txn.done.is_set()
    txn.result()
    assert seen == "old", seen


def test_condition_failures_pass_through_and_release_items(s):
    try:
        s.db.transact_write_items(
            TransactItems=[
                put("d1"),
                {
                    "ConditionCheck": {
                        "TableName": TABLE,
                        "Key": key("d2"),
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
            ]
        )
        raise AssertionError("the transaction was not cancelled")
    except ClientError as e:
        codes = [r["Code"] for r in e.response["CancellationReasons"]]
    assert codes == ["None", "ConditionalCheckFailed"], codes
    # Its items are free again.
    s.db.put_item(TableName=TABLE, Item=key("d1"))
    s.db.put_item(TableName=TABLE, Item=key("d2"))


def test_a_client_token_replays_its_transaction_and_refuses_other_items(s):
    once = [put("i1", "first")]
    s.db.transact_write_items(TransactItems=once, ClientRequestToken="tok-1")
    s.db.put_item(TableName=TABLE, Item={**key("i1"), "v": {"S": "later"}})
    # The same request again answers as before and writes nothing.
    s.db.transact_write_items(TransactItems=once, ClientRequestToken="tok-1")
    assert v_of(s, "i1") == "later"
    # The same token with other items is refused, as DynamoDB does.
    other = [put("i1", "other")]
    code = error_code(lambda: s.db.transact_write_items(TransactItems=other, ClientRequestToken="tok-1"))
    assert code == "IdempotentParameterMismatchException", code
    assert v_of(s, "i1") == "later"


# Racing increments: 8 threads × 25 keep the run short while still racing
# every write against the others.
INCREMENT_THREADS, INCREMENTS = 8, 25


def test_conditional_increments_are_atomic(s):
    s.db.put_item(TableName=TABLE, Item={**key("n"), "n": {"N": "0"}})
    errors = []

    def worker():
        try:
            current = "0"
            for _ in range(INCREMENTS):
                while True:
                    try:
                        s.db.update_item(
                            TableName=TABLE,
                            Key=key("n"),
                            UpdateExpression="SET n = n + :one",
                            ConditionExpression="n = :expected",
                            ExpressionAttributeValues={":one": {"N": "1"}, ":expected": {"N": current}},
                            # The refusal carries the item as it is now: the
                            # re-read, without another request.
                            ReturnValuesOnConditionCheckFailure="ALL_OLD",
                        )
                        current = str(int(current) + 1)
                        break
                    except ClientError as e:
                        if e.response["Error"]["Code"] != "ConditionalCheckFailedException":
                            raise
                        current = e.response["Item"]["n"]["N"]
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(INCREMENT_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    n = s.db.get_item(TableName=TABLE, Key=key("n"), ConsistentRead=True)["Item"]["n"]["N"]
    assert n == str(INCREMENT_THREADS * INCREMENTS), n


def test_different_items_do_not_wait(s):
    txn = Background(s, [put("e1")])
    s.db.update_item(TableName=TABLE, Key=key("e2"), **set_v("single"))
    assert not txn.done.is_set(), "the write on another item waited for the transaction"
    # A transaction on other items holds them alongside.
    other = Background(s, [put("e3"), put("e4")])
    assert not txn.done.is_set(), "the transaction on other items waited for the first one"
    other.result()
    txn.result()


def test_latency(slow):
    started = time.monotonic()
    slow.db.list_tables()
    elapsed = time.monotonic() - started
    assert elapsed >= 0.2, elapsed


def test_conflicts_off(plain):
    def txn():
        plain.db.transact_write_items(TransactItems=[put("f1"), put("f2")])

    def upd():
        plain.db.update_item(TableName=TABLE, Key=key("f1"), **set_v("single"))

    barrier = threading.Barrier(4)
    errors = []

    def run(call):
        barrier.wait()
        try:
            call()
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(call,)) for call in (txn, txn, upd, upd)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert plain.holds.empty(), "a transaction held its items"
    assert plain.conflicts() == 0, plain.conflicts()


def main():
    results = []
    servers = []
    try:
        strict = Server(MOTO_TRANSACTION_HOLD_MS=str(HOLD_MS), MOTO_LATENCY_MS="0")
        servers.append(strict)
        # Latency long enough that overlapping requests surely overlap; the
        # hold is set to show that it is ignored with conflicts off.
        plain = Server(MOTO_CONFLICTS="0", MOTO_TRANSACTION_HOLD_MS=str(HOLD_MS), MOTO_LATENCY_MS="200")
        servers.append(plain)
        tests = [
            (test_writes_on_held_items_conflict, strict),
            (test_overlapping_transactions_cancel_the_later, strict),
            (test_batch_write_leaves_held_items_unprocessed, strict),
            (test_reads_are_not_refused, strict),
            (test_condition_failures_pass_through_and_release_items, strict),
            (test_a_client_token_replays_its_transaction_and_refuses_other_items, strict),
            (test_conditional_increments_are_atomic, strict),
            (test_different_items_do_not_wait, strict),
            (test_latency, plain),
            (test_conflicts_off, plain),
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
            server.stop()
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
