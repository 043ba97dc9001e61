//! Built-in processor, type `dynamodb` (the default): upserts each valid
//! record into the deployment's target table (`TARGET_TABLE`) keyed by the
//! definition's `keyField`. Idempotent (a re-processed batch writes the
//! same items), batched 25 a request.

use super::registry::{self, Built, Deployment, ProcessorSettings};
use super::{ProcessContext, ProcessError, RecordProcessor, WriteCost};
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::retry::Backoff;
use crate::rng::Rng;
use crate::schema::{FieldValue, ValidRecord};
use crate::store::dynamodb::cost::{item_size, write_units};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;
use std::sync::Arc;

pub(super) const TYPE: registry::ProcessorType = registry::ProcessorType {
    name: "dynamodb",
    check: registry::no_settings,
    build,
};

/// The upsert into `TARGET_TABLE`; none without it (the orchestrator).
fn build(_settings: &ProcessorSettings, deployment: &Deployment<'_>) -> Built {
    let Some(table) = &deployment.settings.target_table else {
        return Ok(None);
    };
    if deployment.definition.key_field.is_none() {
        return Err(ConfigError::Invalid {
            var: "IMPORT_DEFINITION",
            value: deployment.settings.definition.clone(),
            message: "the built-in DynamoDB processor needs a keyField".into(),
        });
    }
    Ok(Some(Arc::new(DynamoUpsert::new(
        deployment.clients.dynamodb.clone(),
        table,
        *deployment.clock,
        deployment.rng.clone(),
    ))))
}

const BATCH_WRITE_MAX: usize = 25;
const UNPROCESSED_RETRIES: u32 = 8;

type Item = HashMap<String, AttributeValue>;

pub struct DynamoUpsert {
    client: Client,
    table: String,
    backoff: Backoff,
    /// What the backoff between unprocessed items' retries waits on and
    /// draws its jitter from: the deployment's.
    clock: Clock,
    rng: Rng,
}

impl DynamoUpsert {
    pub fn new(client: Client, table: impl Into<String>, clock: Clock, rng: Rng) -> Self {
        DynamoUpsert {
            client,
            table: table.into(),
            backoff: Backoff::default(),
            clock,
            rng,
        }
    }

    /// The record as an item. The key attribute is always a string (the
    /// value's JSON text unless it is one), so the table's key type does not
    /// depend on the field's type.
    fn item(record: &ValidRecord, key_field: &str) -> Result<Item, ProcessError> {
        let mut item = Item::with_capacity(record.len());
        for (name, value) in record.iter() {
            let attr = if name == key_field {
                AttributeValue::S(value.to_string())
            } else {
                attribute(value).map_err(|problem| {
                    ProcessError::permanent(format!("field {name}: {problem}"))
                })?
            };
            item.insert(name.to_owned(), attr);
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
            self.backoff
                .sleep(attempt + 1, &self.clock, &self.rng)
                .await;
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
        let items = records.iter().map(|r| Self::item(r, key_field)).collect();
        let (plan, mut results) = WritePlan::new(items, key_field);
        for group in plan.writes.chunks(BATCH_WRITE_MAX) {
            match self.write_group(group).await {
                Ok(()) => {}
                Err(ProcessError::Permanent { .. }) => {
                    // One bad item fails the whole request: find it.
                    for (i, item) in group {
                        results[*i] = self.put_one(item.clone()).await;
                    }
                }
                Err(e) => {
                    for ((i, _), e) in group.iter().zip(e.repeated(group.len())) {
                        results[*i] = Err(e);
                    }
                }
            }
        }
        plan.settle(&mut results);
        results
    }

    fn write_cost(&self) -> Option<&dyn WriteCost> {
        Some(self)
    }
}

impl WriteCost for DynamoUpsert {
    /// Exactly what DynamoDB bills for putting the record's item as a new
    /// item (replacing a larger one costs that one's size instead).
    fn write_units(&self, record: &ValidRecord, ctx: &ProcessContext<'_>) -> u64 {
        let Some(key_field) = ctx.definition.key_field.as_deref() else {
            return 0;
        };
        match Self::item(record, key_field) {
            Ok(item) => write_units(item_size(&item)) as u64,
            Err(_) => 0,
        }
    }
}

/// What one batch of records writes. BatchWriteItem rejects two puts of one
/// key in a request, so only the last record of a key is written (it would
/// win if written one by one); the earlier ones ride on its write.
#[derive(Debug)]
struct WritePlan {
    /// The items to write, each with the index of its record.
    writes: Vec<(usize, Item)>,
    /// For each record, the record whose write carries its values (itself
    /// when it is written; `None` when it has no item).
    carrier: Vec<Option<usize>>,
}

impl WritePlan {
    /// Plans the writes of `items` (one per record, `Err` for a record that
    /// cannot be stored). Returns the plan and each record's result before
    /// writing: `Ok` for those with an item.
    fn new(
        items: Vec<Result<Item, ProcessError>>,
        key_field: &str,
    ) -> (WritePlan, Vec<Result<(), ProcessError>>) {
        let key = |item: &Item| format!("{:?}", item.get(key_field));
        let mut last: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            if let Ok(item) = item {
                last.insert(key(item), i);
            }
        }
        let mut plan = WritePlan {
            writes: Vec::with_capacity(last.len()),
            carrier: Vec::with_capacity(items.len()),
        };
        let mut results = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Ok(item) => {
                    let carrier = last[&key(&item)];
                    if carrier == i {
                        plan.writes.push((i, item));
                    }
                    plan.carrier.push(Some(carrier));
                    results.push(Ok(()));
                }
                Err(e) => {
                    plan.carrier.push(None);
                    results.push(Err(e));
                }
            }
        }
        (plan, results)
    }

    /// Completes `results` (those of the written records filled in): a record
    /// that rode on another's write has that write's result.
    fn settle(&self, results: &mut [Result<(), ProcessError>]) {
        let mut riders: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, carrier) in self.carrier.iter().enumerate() {
            if let Some(c) = *carrier {
                if c != i && results[c].is_err() {
                    riders.entry(c).or_default().push(i);
                }
            }
        }
        for (carrier, riders) in riders {
            if let Err(e) = std::mem::replace(&mut results[carrier], Ok(())) {
                let copies = e.repeated(riders.len() + 1);
                for (i, e) in std::iter::once(carrier).chain(riders).zip(copies) {
                    results[i] = Err(e);
                }
            }
        }
    }
}

/// A value as an attribute: S, N or BOOL. Numbers are written in their
/// decimal text (`i64` and `f64` `Display`: no exponent, so 1e200 is 201
/// digits). DynamoDB refuses a whole BatchWriteItem for one number it
/// cannot store, and a schema `number` is any finite f64: each number is
/// checked up front so only its record fails, with a message that says why.
fn attribute(value: FieldValue<'_>) -> Result<AttributeValue, String> {
    let n = match value {
        FieldValue::String(s) => return Ok(AttributeValue::S(s.to_owned())),
        FieldValue::Boolean(b) => return Ok(AttributeValue::Bool(b)),
        FieldValue::Integer(n) => n.to_string(),
        FieldValue::Number(x) => x.to_string(),
    };
    match number_problem(&n) {
        None => Ok(AttributeValue::N(n)),
        Some(problem) => Err(problem),
    }
}

/// Why DynamoDB would refuse the number `n` (decimal text, with or without
/// an exponent): at most 38 significant digits, and a magnitude between
/// 1E-130 and 9.9999999999999999999999999999999999999E+125, or zero.
fn number_problem(n: &str) -> Option<String> {
    let unsigned = n.strip_prefix(['-', '+']).unwrap_or(n);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().ok()),
        None => (unsigned, Some(0)),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let Some(exponent) =
        exponent.filter(|_| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
    else {
        return Some(format!("{n} is not a number"));
    };
    let significant = digits.trim_start_matches('0');
    let kept = significant.trim_end_matches('0');
    if kept.is_empty() {
        return None;
    }
    // The power of ten of the leading digit, as in 1.5E+3.
    let magnitude = (significant.len() as i64 - 1)
        .saturating_add(exponent)
        .saturating_sub(frac.len() as i64);
    let scientific = match kept.split_at(1) {
        (lead, "") => format!("{lead}E{magnitude:+}"),
        (lead, rest) => format!("{lead}.{rest}E{magnitude:+}"),
    };
    if magnitude > 125 {
        Some(format!(
            "{scientific} is larger than DynamoDB numbers can be \
             (at most 9.9999999999999999999999999999999999999E+125)"
        ))
    } else if magnitude < -130 {
        Some(format!(
            "{scientific} is closer to zero than DynamoDB numbers can be (at least 1E-130)"
        ))
    } else if kept.len() > 38 {
        Some(format!(
            "{} has more significant digits than DynamoDB numbers can (at most 38)",
            crate::job::truncate_value(n)
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
