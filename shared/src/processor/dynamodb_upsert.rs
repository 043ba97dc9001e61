//! Built-in processor: upserts each valid record into a DynamoDB table keyed
//! by the definition's `keyField`. Idempotent (a re-processed batch writes
//! the same items), batched 25 a request.

use super::{ProcessContext, ProcessError, RecordProcessor};
use crate::retry::Backoff;
use crate::schema::ValidRecord;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use serde_dynamo::aws_sdk_dynamodb_1::to_attribute_value;
use std::collections::HashMap;

const BATCH_WRITE_MAX: usize = 25;
const UNPROCESSED_RETRIES: u32 = 8;

type Item = HashMap<String, AttributeValue>;

pub struct DynamoUpsert {
    client: Client,
    table: String,
    backoff: Backoff,
}

impl DynamoUpsert {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoUpsert {
            client,
            table: table.into(),
            backoff: Backoff::default(),
        }
    }

    /// The record as an item. The key attribute is always a string, so the
    /// table's key type does not depend on the field's type.
    fn item(record: &ValidRecord, key_field: &str) -> Result<Item, ProcessError> {
        let mut item = Item::with_capacity(record.values.len());
        for (name, value) in &record.values {
            let attr = if name == key_field {
                AttributeValue::S(match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            } else {
                to_attribute_value(value).map_err(|e| {
                    ProcessError::permanent_from(format!("field {name} cannot be stored"), e)
                })?
            };
            item.insert(name.clone(), attr);
        }
        if !item.contains_key(key_field) {
            return Err(ProcessError::permanent(format!(
                "key field {key_field} has no value"
            )));
        }
        Ok(item)
    }

    async fn put_one(&self, item: Item) -> Result<(), ProcessError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// One BatchWriteItem group; UnprocessedItems retried with backoff.
    async fn write_group(&self, items: &[(usize, Item)]) -> Result<(), ProcessError> {
        let mut requests: Vec<WriteRequest> = items
            .iter()
            .map(|(_, item)| {
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item.clone()))
                            .build()
                            .expect("item is set"),
                    )
                    .build()
            })
            .collect();
        for attempt in 0..=UNPROCESSED_RETRIES {
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(classify)?;
            requests = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if requests.is_empty() {
                return Ok(());
            }
            self.backoff.wait(attempt + 1).await;
        }
        Err(ProcessError::retryable(format!(
            "{} items stayed unprocessed (throttled)",
            requests.len()
        )))
    }
}

fn classify<E, R>(e: aws_sdk_dynamodb::error::SdkError<E, R>) -> ProcessError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    use aws_sdk_dynamodb::error::SdkError;
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .map(str::to_owned);
    match (&e, code.as_deref()) {
        (SdkError::ServiceError(_), Some("ValidationException")) => {
            let message = e
                .as_service_error()
                .and_then(|s| s.message())
                .unwrap_or("invalid item")
                .to_owned();
            ProcessError::permanent_from(format!("target table rejected the record: {message}"), e)
        }
        (SdkError::ServiceError(_), Some("ResourceNotFoundException")) => {
            ProcessError::retryable_from("target table not found", e)
        }
        _ => ProcessError::retryable_from("writing to the target table failed", e),
    }
}

#[async_trait]
impl RecordProcessor for DynamoUpsert {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let key_field = ctx
            .definition
            .key_field
            .as_deref()
            .ok_or_else(|| ProcessError::permanent("no keyField"))?;
        self.put_one(Self::item(record, key_field)?).await
    }

    async fn process_batch(
        &self,
        records: &[&ValidRecord],
        ctx: &ProcessContext<'_>,
    ) -> Vec<Result<(), ProcessError>> {
        let Some(key_field) = ctx.definition.key_field.as_deref() else {
            return records
                .iter()
                .map(|_| Err(ProcessError::permanent("the definition has no keyField")))
                .collect();
        };
        let mut results: Vec<Result<(), ProcessError>> = Vec::with_capacity(records.len());
        // BatchWriteItem rejects two puts of one key in a request; the last
        // record of a key wins, as it would if written one by one.
        let mut latest: HashMap<String, usize> = HashMap::new();
        let mut items: Vec<Option<Item>> = Vec::with_capacity(records.len());
        for (i, record) in records.iter().enumerate() {
            match Self::item(record, key_field) {
                Ok(item) => {
                    let key = format!("{:?}", item.get(key_field));
                    latest.insert(key, i);
                    items.push(Some(item));
                    results.push(Ok(()));
                }
                Err(e) => {
                    items.push(None);
                    results.push(Err(e));
                }
            }
        }
        let mut to_write: Vec<(usize, Item)> = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            if let Some(item) = item {
                if latest.get(&format!("{:?}", item.get(key_field))) == Some(&i) {
                    to_write.push((i, item));
                }
            }
        }
        for group in to_write.chunks(BATCH_WRITE_MAX) {
            match self.write_group(group).await {
                Ok(()) => {}
                Err(ProcessError::Permanent { .. }) => {
                    // One bad item fails the whole request: find it.
                    for (i, item) in group {
                        results[*i] = self.put_one(item.clone()).await;
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    for (i, _) in group {
                        results[*i] = Err(ProcessError::retryable(message.clone()));
                    }
                }
            }
        }
        results
    }
}
