//! What the simulated DynamoDB's indexes cost a write: an index pays for
//! an entry put, moved, deleted or changed in what it stores, and nothing
//! for a write that leaves its entry as it was, as DynamoDB bills them. A
//! spent index partition refuses only the writes that change it.

use super::{SimAws, SimConfig};
use serde_json::{json, Value};

const TABLE: &str = "jobs";

/// A table whose index `by_status` projects its keys only, on partitions
/// good for 10 write units a second.
async fn world() -> SimAws {
    let config = SimConfig {
        partition_write_units: 10.0,
        partitions: 4,
        ..SimConfig::exact(3)
    };
    let aws = SimAws::new(config);
    let create = json!({
        "TableName": TABLE,
        "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "status", "AttributeType": "S"}
        ],
        "GlobalSecondaryIndexes": [{
            "IndexName": "by_status",
            "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}],
            "Projection": {"ProjectionType": "KEYS_ONLY"}
        }],
        "BillingMode": "PAY_PER_REQUEST"
    });
    let answer = aws.dynamodb.serve("CreateTable", &create.to_string()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    aws
}

fn index_writes(aws: &SimAws) -> f64 {
    let stats = aws.dynamodb.stats();
    stats
        .partition_writes
        .iter()
        .filter(|(p, _)| p.starts_with(&format!("{TABLE}/by_status#")))
        .map(|(_, units)| units)
        .sum()
}

async fn update(aws: &SimAws, pk: &str, set: &str, value: Value) -> u16 {
    let request = json!({
        "TableName": TABLE,
        "Key": {"pk": {"S": pk}},
        "UpdateExpression": "SET #a = :v",
        "ExpressionAttributeNames": {"#a": set},
        "ExpressionAttributeValues": {":v": value},
    });
    aws.dynamodb
        .serve("UpdateItem", &request.to_string())
        .await
        .status
}

fn item(aws: &SimAws, pk: &str) -> Value {
    aws.dynamodb
        .item(TABLE, &json!({"pk": {"S": pk}}))
        .expect("the item exists")
}

#[tokio::test(start_paused = true)]
async fn an_index_pays_only_for_writes_that_change_its_entry() {
    let aws = world().await;
    assert_eq!(update(&aws, "a", "status", json!({"S": "OPEN"})).await, 200);
    assert_eq!(index_writes(&aws), 1.0, "the entry is put");
    assert_eq!(update(&aws, "a", "count", json!({"N": "1"})).await, 200);
    assert_eq!(index_writes(&aws), 1.0, "an attribute it does not store");
    assert_eq!(update(&aws, "a", "status", json!({"S": "DONE"})).await, 200);
    assert_eq!(index_writes(&aws), 3.0, "moved: deleted and put");
    assert_eq!(update(&aws, "b", "count", json!({"N": "1"})).await, 200);
    assert_eq!(index_writes(&aws), 3.0, "an item the index leaves out");
}

#[tokio::test(start_paused = true)]
async fn a_spent_index_partition_refuses_only_the_writes_that_change_it() {
    let aws = world().await;
    // Spend the partition of `OPEN` entries: each new item puts one.
    let mut pk = 0;
    while update(&aws, &format!("i{pk}"), "status", json!({"S": "OPEN"})).await == 200 {
        pk += 1;
    }
    let refused = format!("i{pk}");
    assert!(
        aws.dynamodb
            .item(TABLE, &json!({"pk": {"S": refused}}))
            .is_none(),
        "a refused write is not applied"
    );
    // An item in that partition still takes writes the index does not see.
    assert_eq!(update(&aws, "i0", "count", json!({"N": "7"})).await, 200);
    assert_eq!(item(&aws, "i0")["count"], json!({"N": "7"}));
    // A write that would move it out of the spent partition is refused
    // and leaves it as it was.
    assert_eq!(
        update(&aws, "i0", "status", json!({"S": "DONE"})).await,
        400
    );
    assert_eq!(item(&aws, "i0")["status"], json!({"S": "OPEN"}));
}

/// A transaction an index refuses is undone, and leaves no trace of its
/// client request token: retried with it once the index has room, it is
/// applied, not taken for a success already seen.
#[tokio::test(start_paused = true)]
async fn a_transaction_an_index_refused_is_applied_when_retried_with_its_token() {
    let aws = world().await;
    assert_eq!(update(&aws, "a", "status", json!({"S": "DONE"})).await, 200);
    let mut pk = 0;
    while update(&aws, &format!("i{pk}"), "status", json!({"S": "OPEN"})).await == 200 {
        pk += 1;
    }
    let transaction = json!({
        "ClientRequestToken": "commit-a",
        "TransactItems": [{"Update": {
            "TableName": TABLE,
            "Key": {"pk": {"S": "a"}},
            "UpdateExpression": "SET #s = :open",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":open": {"S": "OPEN"}},
        }}],
    })
    .to_string();
    let refused = aws.dynamodb.serve("TransactWriteItems", &transaction).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(item(&aws, "a")["status"], json!({"S": "DONE"}));
    // A second later the partition has room again.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let retried = aws.dynamodb.serve("TransactWriteItems", &transaction).await;
    assert_eq!(retried.status, 200, "{}", retried.body);
    assert_eq!(item(&aws, "a")["status"], json!({"S": "OPEN"}));
    // Once applied, the token makes a repeat a no-op that succeeds.
    assert_eq!(update(&aws, "a", "status", json!({"S": "DONE"})).await, 200);
    let repeated = aws.dynamodb.serve("TransactWriteItems", &transaction).await;
    assert_eq!(repeated.status, 200, "{}", repeated.body);
    assert_eq!(item(&aws, "a")["status"], json!({"S": "DONE"}));
}
