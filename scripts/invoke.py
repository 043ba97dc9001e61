"""Helpers for scripts/invoke.sh: AWS calls against the emulator (boto3 from
.venv, endpoint from AWS_ENDPOINT_URL) and the Lambda events built from
the fixtures in events/. Prints JSON on stdout.
"""

import argparse
import json
import sys
import time
import urllib.parse
from datetime import datetime, timezone

import boto3


def s3():
    return boto3.client("s3")


def sqs():
    return boto3.client("sqs")


def upload(args):
    """Uploads FILE as BUCKET/KEY to a versioned bucket, as template.yaml's."""
    client = s3()
    client.put_bucket_versioning(
        Bucket=args.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    with open(args.file, "rb") as f:
        out = client.put_object(Bucket=args.bucket, Key=args.key, Body=f)
    head = client.head_object(Bucket=args.bucket, Key=args.key)
    json.dump(
        {
            "bucket": args.bucket,
            "key": args.key,
            "eTag": out["ETag"].strip('"'),
            "versionId": out.get("VersionId") or "",
            "size": head["ContentLength"],
        },
        sys.stdout,
    )


def s3_event(args):
    """events/s3-put.json for the uploaded object (from `upload`'s output)."""
    obj = json.load(open(args.object))
    event = json.load(open(args.template))
    record = event["Records"][0]
    record["eventTime"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    record["s3"]["bucket"]["name"] = obj["bucket"]
    record["s3"]["bucket"]["arn"] = "arn:aws:s3:::" + obj["bucket"]
    # S3 URL-encodes keys in events, form style: spaces become "+".
    record["s3"]["object"]["key"] = urllib.parse.quote_plus(obj["key"], safe="/")
    record["s3"]["object"]["eTag"] = obj["eTag"]
    record["s3"]["object"]["versionId"] = obj["versionId"]
    record["s3"]["object"]["size"] = obj["size"]
    json.dump(event, open(args.out, "w"), indent=2)


def queue_arn(url):
    attrs = sqs().get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return attrs["Attributes"]["QueueArn"]


def sqs_event(args):
    """Receives up to 10 messages, as the event source mapping would, and
    writes them as an SQS event. Prints how many."""
    client = sqs()
    deadline = time.monotonic() + args.wait
    messages = []
    while not messages and time.monotonic() < deadline:
        messages = client.receive_message(
            QueueUrl=args.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            VisibilityTimeout=args.visibility,
            MessageSystemAttributeNames=["All"],
        ).get("Messages", [])
    arn = queue_arn(args.queue_url)
    region = arn.split(":")[3]
    records = [
        {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": {},
            "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": arn,
            "awsRegion": region,
        }
        for m in messages
    ]
    json.dump({"Records": records}, open(args.out, "w"), indent=2)
    json.dump({"messages": len(records)}, sys.stdout)


def settle(args):
    """Deletes the event's messages the worker did not report as failed
    (what the event source mapping does with ReportBatchItemFailures)."""
    event = json.load(open(args.event))
    response = json.load(open(args.response))
    failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
    entries = [
        {"Id": str(i), "ReceiptHandle": r["receiptHandle"]}
        for i, r in enumerate(event["Records"])
        if r["messageId"] not in failed
    ]
    if entries:
        sqs().delete_message_batch(QueueUrl=args.queue_url, Entries=entries)
    json.dump({"deleted": len(entries), "failed": len(failed)}, sys.stdout)


def plain(value):
    """A DynamoDB attribute value as plain JSON."""
    (kind, v), = value.items()
    if kind == "N":
        return int(v) if v.lstrip("-").isdigit() else float(v)
    if kind == "M":
        return {k: plain(x) for k, x in v.items()}
    if kind == "L":
        return [plain(x) for x in v]
    if kind == "NULL":
        return None
    if kind in ("SS", "NS", "BS"):
        return list(v)
    if kind == "B":
        return "<%d bytes>" % len(v)
    return v


def job(args):
    """The job item (pk J#<jobId>, sk JOB) of the state table."""
    out = boto3.client("dynamodb").get_item(
        TableName=args.table,
        Key={"pk": {"S": "J#" + args.job_id}, "sk": {"S": "JOB"}},
        ConsistentRead=True,
    )
    json.dump({k: plain(v) for k, v in sorted(out.get("Item", {}).items())}, sys.stdout)


def count(args):
    """How many items a table holds."""
    out = boto3.client("dynamodb").scan(TableName=args.table, Select="COUNT")
    json.dump({"table": args.table, "items": out["Count"]}, sys.stdout)


def event_tap(args):
    """A queue NAME and a rule on the default bus forwarding every job event
    (source bulk-import) to it, as a subscriber would set up."""
    url = sqs().create_queue(QueueName=args.name)["QueueUrl"]
    events = boto3.client("events")
    events.put_rule(
        Name=args.name,
        EventPattern=json.dumps({"source": ["bulk-import"]}),
    )
    events.put_targets(Rule=args.name, Targets=[{"Id": "queue", "Arn": queue_arn(url)}])
    json.dump({"queueUrl": url, "bus": "default"}, sys.stdout)


def drain(args):
    """Every message of a queue, bodies parsed (the job events' envelopes)."""
    client = sqs()
    bodies = []
    while True:
        messages = client.receive_message(
            QueueUrl=args.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        if not messages:
            break
        for m in messages:
            bodies.append(json.loads(m["Body"]))
            client.delete_message(QueueUrl=args.queue_url, ReceiptHandle=m["ReceiptHandle"])
    json.dump(bodies, sys.stdout)


def head(args):
    """The first lines of an s3://bucket/key object."""
    bucket, key = args.url.removeprefix("s3://").split("/", 1)
    body = s3().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    print("\n".join(body.splitlines()[: args.lines]))


def get(args):
    """A field of a JSON document (dotted path), e.g. `get 0.jobId`."""
    value = json.load(sys.stdin)
    for part in args.path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    print(value if isinstance(value, str) else json.dumps(value))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(required=True)

    p = sub.add_parser("upload")
    p.add_argument("file")
    p.add_argument("bucket")
    p.add_argument("key")
    p.set_defaults(run=upload)

    p = sub.add_parser("s3-event")
    p.add_argument("template")
    p.add_argument("object")
    p.add_argument("out")
    p.set_defaults(run=s3_event)

    p = sub.add_parser("sqs-event")
    p.add_argument("queue_url")
    p.add_argument("out")
    p.add_argument("--wait", type=float, default=10)
    p.add_argument("--visibility", type=int, default=1800)
    p.set_defaults(run=sqs_event)

    p = sub.add_parser("settle")
    p.add_argument("queue_url")
    p.add_argument("event")
    p.add_argument("response")
    p.set_defaults(run=settle)

    p = sub.add_parser("job")
    p.add_argument("table")
    p.add_argument("job_id")
    p.set_defaults(run=job)

    p = sub.add_parser("count")
    p.add_argument("table")
    p.set_defaults(run=count)

    p = sub.add_parser("event-tap")
    p.add_argument("name")
    p.set_defaults(run=event_tap)

    p = sub.add_parser("drain")
    p.add_argument("queue_url")
    p.set_defaults(run=drain)

    p = sub.add_parser("head")
    p.add_argument("url")
    p.add_argument("--lines", type=int, default=5)
    p.set_defaults(run=head)

    p = sub.add_parser("get")
    p.add_argument("path")
    p.set_defaults(run=get)

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
