//! Creates the state table the way template.yaml declares it, for local runs
//! and tests (deployments get it from CloudFormation).

use super::items::LEASE_INDEX;
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
    let index = GlobalSecondaryIndex::builder()
        .index_name(LEASE_INDEX)
        .key_schema(key("gpk", KeyType::Hash))
        .key_schema(key("gsk", KeyType::Range))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::KeysOnly)
                .build(),
        )
        .build()
        .expect("index is complete");
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
        .global_secondary_indexes(index)
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
