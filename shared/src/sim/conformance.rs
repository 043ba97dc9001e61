//! The `JobStore` conformance suite against the DynamoDB store on the
//! simulated DynamoDB: the store's real requests, through the SDK, on the
//! simulation's data engine.

use super::{SimAws, SimConfig};
use crate::store::dynamodb::table::create_state_table;
use crate::store::dynamodb::DynamoStore;

async fn sim_store() -> DynamoStore {
    let aws = SimAws::new(SimConfig::exact(7));
    let clients = aws.clients();
    create_state_table(&clients.dynamodb, "state")
        .await
        .expect("create the state table");
    DynamoStore::new(clients.dynamodb, "state", true).with_clock(aws.clock)
}

crate::conformance_tests!(sim_store());
