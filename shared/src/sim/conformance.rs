//! The `JobStore` conformance suite against the DynamoDB store on the
//! simulated DynamoDB: the store's real requests, through the SDK, on the
//! simulation's data engine.

use super::{SimAws, SimConfig};
use crate::store::dynamodb::table::create_state_table;
use crate::store::dynamodb::DynamoStore;

async fn sim_store() -> DynamoStore {
    store_on(SimConfig::exact(7)).await
}

/// The service's latency and partition limits, with indexes read as they
/// are written (the suite reads them back at once).
async fn limited_store() -> DynamoStore {
    let mut config = SimConfig::realistic(7);
    config.faults.index_lag_ms = 0;
    store_on(config).await
}

async fn store_on(config: SimConfig) -> DynamoStore {
    let aws = SimAws::new(config);
    let clients = aws.clients();
    create_state_table(&clients.dynamodb, "state")
        .await
        .expect("create the state table");
    DynamoStore::new(clients.dynamodb, "state", true).with_clock(aws.clock)
}

crate::conformance_tests!(sim_store());

mod limited {
    crate::conformance_tests!(super::limited_store());
}
