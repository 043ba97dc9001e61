"""Reserves stock for order records: an example function for the `lambda` processor.

The processor calls the function with one batch of validated records:

    {"jobId": "...", "kind": "orders", "batchIndex": 3, "retry": 0,
     "records": [{"line": 17, "values": {"order_id": "A-1", "sku": "SKU-9", "quantity": 2}}]}

and the function answers which records failed, as an SQS partial batch
response: {"batchItemFailures": [{"itemIdentifier": "17", "retryable": false,
"reason": "quantity must be positive"}]}. `itemIdentifier` is the record's
line; records not listed succeeded. A failure is retried unless `retryable`
is false. Raising an exception, or running past the timeout, fails the
whole call, and the processor calls again with its records. `retry` counts
the calls made before for these records (0 on the first), so the work must
be safe to repeat.

The rules below are made up so that every kind of answer shows up.
"""

import time


def handler(event, context):
    first_call = event["retry"] == 0
    failures = []
    for record in event["records"]:
        values = record["values"]
        sku = values["sku"]

        if first_call and sku.startswith("FLAKY-"):
            # A failure of the whole call: every record of the batch is retried.
            raise RuntimeError("inventory service unavailable")
        if first_call and sku.startswith("SLOW-"):
            # Runs past the function's timeout: Lambda stops it, and the call
            # fails as a whole, as above.
            time.sleep(context.get_remaining_time_in_millis() / 1000 + 1)

        if values["quantity"] <= 0:
            # Permanent: trying again cannot help.
            failures.append(failure(record, "quantity must be positive", retryable=False))
        elif sku.startswith("BACKORDER-"):
            # Transient as far as the processor knows: it retries these records,
            # and counts them failed if they still fail on the last retry.
            failures.append(failure(record, "out of stock", retryable=True))
        # Anything else: stock reserved, the record succeeded.

    print(
        f"job {event['jobId']} batch {event['batchIndex']} retry {event['retry']}: "
        f"{len(failures)} of {len(event['records'])} records failed"
    )
    return {"batchItemFailures": failures}


def failure(record, reason, retryable):
    return {"itemIdentifier": str(record["line"]), "retryable": retryable, "reason": reason}
