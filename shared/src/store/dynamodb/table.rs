//! Creates the state table the way template.yaml declares it, for local runs
//! and tests (deployments get it from CloudFormation).

use super::items::{JOBS_INDEX, LEASE_INDEX};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .expect("key is complete")
}

fn attr(name: &str, kind: ScalarAttributeType) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .expect("attribute is complete")
}

/// Creates the state table unless it exists.
pub async fn create_state_table(
    client: &Client,
    table: &str,
) -> Result<(), aws_sdk_dynamodb::Error> {
    let index = |name: &str, hash: &str, range: &str, projection: Projection| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(hash, KeyType::Hash))
            .key_schema(key(range, KeyType::Range))
            .projection(projection)
            .build()
            .expect("index is complete")
    };
    let keys_only = Projection::builder()
        .projection_type(ProjectionType::KeysOnly)
        .build();
    // Listings filter jobs by kind on the index (template.yaml: the same).
    let with_kind = Projection::builder()
        .projection_type(ProjectionType::Include)
        .non_key_attributes("kind")
        .build();
    let result = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .attribute_definitions(attr("pk", ScalarAttributeType::S))
        .attribute_definitions(attr("sk", ScalarAttributeType::S))
        .attribute_definitions(attr("gpk", ScalarAttributeType::S))
        .attribute_definitions(attr("gsk", ScalarAttributeType::N))
        .attribute_definitions(attr("lpk", ScalarAttributeType::S))
        .attribute_definitions(attr("lsk", ScalarAttributeType::N))
        .global_secondary_indexes(index(LEASE_INDEX, "gpk", "gsk", keys_only))
        .global_secondary_indexes(index(JOBS_INDEX, "lpk", "lsk", with_kind))
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Creates a table keyed by one string attribute (the built-in processor's
/// target table) unless it exists.
pub async fn create_keyed_table(
    client: &Client,
    table: &str,
    key_attr: &str,
) -> Result<(), aws_sdk_dynamodb::Error> {
    let result = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key(key_attr, KeyType::Hash))
        .attribute_definitions(attr(key_attr, ScalarAttributeType::S))
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
