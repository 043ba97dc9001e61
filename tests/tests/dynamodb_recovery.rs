//! DynamoDB-specific recovery: a worker that took an index from the cursor
//! and died before claiming the batch leaves it PENDING behind the cursor;
//! the sparse `leases` index finds it once the cursor has run out.

use aws_sdk_dynamodb::types::AttributeValue;
use bulk_import::job::{SourceRef, StagedRecord};
use bulk_import::store::{
    Claim, ClaimStore, CreateOutcome, JobControl, LeaseView, NewBatch, PrepareLease, PrepareStore,
};
use integration_tests::{clients, fresh_store};

#[tokio::test]
async fn a_batch_handed_out_but_never_claimed_is_recovered_through_the_lease_index() {
    let store = fresh_store().await;
    let lease = PrepareLease {
        owner: "o".into(),
        lease_ms: 60_000,
    };
    let src = SourceRef {
        bucket: "b".into(),
        key: "orphan.csv".into(),
        version: "v".into(),
    };
    let CreateOutcome::Created(job) = store.create_job(&src, &lease, 1_000).await.unwrap() else {
        panic!()
    };
    let records = vec![StagedRecord {
        line: 2,
        values: vec![Some("x".into())].into(),
        issue: None,
    }];
    for index in 0..2 {
        store
            .write_batch(
                &job.id,
                NewBatch {
                    index,
                    records: &records,
                    after: None,
                },
                1_000,
            )
            .await
            .unwrap();
    }
    store.finish_prepare(&job.id, &lease, 2, 2).await.unwrap();

    // A worker bumps the cursor (shard 0's) for batch 0, then dies before
    // claiming it.
    clients()
        .await
        .dynamodb
        .update_item()
        .table_name(store.table())
        .key("pk", AttributeValue::S(format!("J#{}#K#0", job.id)))
        .key("sk", AttributeValue::S("CURSOR".into()))
        .update_expression("SET k = :one")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .send()
        .await
        .unwrap();
    let view = store.lease_view(&job.id, 2_000).await.unwrap();
    assert_eq!(
        view,
        LeaseView {
            live: false,
            reclaimable: 1
        },
        "the sweeper sees it waiting"
    );

    let mut claimed = Vec::new();
    for worker in ["w1", "w2"] {
        match store
            .claim_batch(&job.id, worker, 2_000, 60_000)
            .await
            .unwrap()
        {
            Claim::Batch(c) => claimed.push((c.index, c.version)),
            other => panic!("{worker}: {other:?}"),
        }
    }
    claimed.sort();
    assert_eq!(
        claimed,
        vec![(0, 1), (1, 1)],
        "batch 1 from the cursor, batch 0 from the index"
    );
    assert_eq!(
        store
            .claim_batch(&job.id, "w3", 2_000, 60_000)
            .await
            .unwrap(),
        Claim::NoneAvailable
    );
}
