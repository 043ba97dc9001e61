//! Built-in processor, type `dynamodb` (the default): upserts each valid
//! record into the deployment's target table (`TARGET_TABLE`) keyed by the
//! definition's `keyField`, keeping for each key the row the definition's
//! `onDuplicateKey` says, whatever order workers write in.
//!
//! Every item carries `_importOrder`, the rank of the row that wrote it:
//! its job's creation time, its job, then its line (for `first`, lines
//! count down). Each write is one PutItem on the condition that the stored
//! rank is not higher, so a row that loses to one already written writes
//! nothing, and a row written again (a retry, a reclaimed batch) writes
//! the same item. Within a batch, only the winning row of each key is
//! written. Each write returns the item it replaced or lost to, which
//! tells the rows that repeat a key of the job.

use super::registry::{self, Built, Deployment, ProcessorSettings};
use super::{ProcessContext, ProcessError, RecordProcessor, WriteCost};
use crate::config::ConfigError;
use crate::schema::{FieldValue, OnDuplicateKey, ValidRecord};
use crate::store::dynamodb::cost::{item_size, write_units};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use futures::stream::{self, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;

pub(super) const TYPE: registry::ProcessorType = registry::ProcessorType {
    name: "dynamodb",
    check,
    build,
    needs: "TARGET_TABLE",
    finishes_jobs: false,
};

/// The attribute that holds the rank of the row that wrote an item; no
/// field of a definition for this processor may have its name.
pub const ORDER_ATTRIBUTE: &str = "_importOrder";

/// The type's settings: `table`, where to upsert (the deployment's
/// `TARGET_TABLE` when not given).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    table: Option<String>,
}

fn check(
    settings: &ProcessorSettings,
    _fields: &registry::Fields<'_>,
) -> Result<(), (String, String)> {
    let parsed: Settings = registry::parse(settings)?;
    match parsed.table {
        Some(t) if t.trim().is_empty() => Err(("table".into(), "must not be empty".into())),
        _ => Ok(()),
    }
}

/// The upsert into the definition's `table`, else `TARGET_TABLE`; none
/// without either (the orchestrator).
fn build(settings: &ProcessorSettings, deployment: &Deployment<'_>) -> Built {
    let parsed: Settings = registry::settings_of(settings)?;
    let Some(table) = parsed
        .table
        .as_ref()
        .or(deployment.settings.target_table.as_ref())
    else {
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
    ))))
}

/// PutItem calls one batch keeps in flight.
const WRITES_IN_FLIGHT: usize = 32;

type Item = HashMap<String, AttributeValue>;

pub struct DynamoUpsert {
    client: Client,
    table: String,
}

/// What one conditional write found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Put {
    /// Written; the rank of the item it replaced, if it had one.
    Written { replaced: Option<String> },
    /// Not written: the stored item's row ranks higher.
    Outranked { by: Option<String> },
}

impl DynamoUpsert {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoUpsert {
            client,
            table: table.into(),
        }
    }

    /// The record as an item. The key attribute is always a string (the
    /// value's JSON text unless it is one), so the table's key type does not
    /// depend on the field's type.
    fn item(record: &ValidRecord, key_field: &str) -> Result<Item, ProcessError> {
        let mut item = Item::with_capacity(record.len() + 1);
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

    /// The record's item with its rank among the rows of `rank`'s job.
    fn ranked_item(
        record: &ValidRecord,
        key_field: &str,
        rank: &Rank,
    ) -> Result<Item, ProcessError> {
        let mut item = Self::item(record, key_field)?;
        let rank = rank.of_line(record.line);
        item.insert(ORDER_ATTRIBUTE.into(), AttributeValue::S(rank));
        Ok(item)
    }

    /// Writes `item` unless the stored item of its key ranks higher.
    async fn put(&self, item: Item) -> Result<Put, ProcessError> {
        let rank = item
            .get(ORDER_ATTRIBUTE)
            .cloned()
            .expect("a ranked item has its rank");
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#o) OR #o <= :o")
            .expression_attribute_names("#o", ORDER_ATTRIBUTE)
            .expression_attribute_values(":o", rank)
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match sent {
            Ok(out) => Ok(Put::Written {
                replaced: out.attributes.as_ref().and_then(rank_in),
            }),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(lost)) => Ok(Put::Outranked {
                    by: lost.item().and_then(rank_in),
                }),
                _ => Err(classify(e)),
            },
        }
    }

    /// Writes each planned item, `WRITES_IN_FLIGHT` at a time; each
    /// record's result, and the duplicates found, go to `results` and
    /// `ctx.duplicates`.
    async fn write(
        &self,
        plan: &WritePlan,
        records: &[&ValidRecord],
        results: &mut [Result<(), ProcessError>],
        rank: &Rank,
        ctx: &ProcessContext<'_>,
    ) {
        let puts: Vec<_> = plan
            .writes
            .iter()
            .map(|(i, item)| {
                let (i, item) = (*i, item.clone());
                async move { (i, self.put(item).await) }
            })
            .collect();
        let written: Vec<(usize, Result<Put, ProcessError>)> = stream::iter(puts)
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        for (i, put) in written {
            let found = match &put {
                Ok(Put::Written { replaced: other }) | Ok(Put::Outranked { by: other }) => {
                    other.as_deref()
                }
                Err(_) => None,
            };
            // Another row of this job got to the key first: one of the two
            // repeats the other. Every write of a key but the first finds
            // one, so a key's rows add up to all but one.
            if found.is_some_and(|other| rank.is_other_row(other, records[i].line)) {
                ctx.duplicates.found(records[i].line);
            }
            results[i] = match put {
                // Under `reject` the key's rows come in file order (its
                // partitions): the row written is the key's first.
                Ok(Put::Outranked { by: Some(first) }) if rank.policy == OnDuplicateKey::Reject => {
                    match rank.line_of(&first) {
                        Some(line) if line != records[i].line => Err(duplicate_of(line)),
                        _ => Ok(()),
                    }
                }
                put => put.map(|_| ()),
            };
        }
    }
}

/// Why a row that repeats the key of line `line` fails under `reject`.
fn duplicate_of(line: u64) -> ProcessError {
    ProcessError::permanent(format!("duplicate of line {line}"))
}

/// The rank of an item's row, if it has one.
fn rank_in(item: &Item) -> Option<String> {
    match item.get(ORDER_ATTRIBUTE) {
        Some(AttributeValue::S(rank)) => Some(rank.clone()),
        _ => None,
    }
}

/// Ranks of one job's rows: compared as strings, a later created job's rows
/// rank above an earlier one's (ties broken by a hash of the job id), and a
/// job's rows rank by line, upwards for `last` and downwards for `first`.
/// Fixed width: 13 digits of creation time, 16 hex digits of job, 15 of line.
#[derive(Debug, Clone)]
struct Rank {
    job: String,
    policy: OnDuplicateKey,
}

const LINE_DIGITS_MAX: u64 = 999_999_999_999_999;

impl Rank {
    fn of(ctx: &ProcessContext<'_>) -> Rank {
        let job = xxhash_rust::xxh3::xxh3_64(ctx.job_id.as_str().as_bytes());
        Rank {
            job: format!("{:013}{job:016x}", ctx.job_created_at_ms.max(0)),
            policy: ctx.definition.duplicate_policy(),
        }
    }

    fn of_line(&self, line: u64) -> String {
        let line = line.min(LINE_DIGITS_MAX);
        let place = match self.policy {
            OnDuplicateKey::Last => line,
            OnDuplicateKey::First | OnDuplicateKey::Reject => LINE_DIGITS_MAX - line,
        };
        format!("{}{place:015}", self.job)
    }

    /// The line of a row of this job from its rank.
    fn line_of(&self, rank: &str) -> Option<u64> {
        let place: u64 = rank.strip_prefix(&self.job)?.parse().ok()?;
        Some(match self.policy {
            OnDuplicateKey::Last => place,
            OnDuplicateKey::First | OnDuplicateKey::Reject => LINE_DIGITS_MAX - place,
        })
    }

    /// Whether `rank` is that of another row of this job than `line`.
    fn is_other_row(&self, rank: &str, line: u64) -> bool {
        rank.starts_with(&self.job) && rank != self.of_line(line)
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
        registry::one(self, record, ctx).await
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
        // One rank prefix for the batch: the job's.
        let rank = Rank::of(ctx);
        let items = records
            .iter()
            .map(|r| Self::ranked_item(r, key_field, &rank))
            .collect();
        let (plan, mut results) =
            WritePlan::new(items, key_field, ctx.definition.duplicate_policy());
        for (i, carrier) in plan.carrier.iter().enumerate() {
            if carrier.is_some_and(|c| c != i) {
                ctx.duplicates.found(records[i].line);
            }
        }
        self.write(&plan, records, &mut results, &rank, ctx).await;
        plan.settle(&mut results);
        if ctx.definition.duplicate_policy() == OnDuplicateKey::Reject {
            // A row that rode on the first of its key in the batch repeats it.
            for (i, carrier) in plan.carrier.iter().enumerate() {
                if let Some(c) = carrier.filter(|&c| c != i) {
                    if results[i].is_ok() {
                        results[i] = Err(duplicate_of(records[c].line));
                    }
                }
            }
        }
        results
    }

    fn write_cost(&self) -> Option<&dyn WriteCost> {
        Some(self)
    }
}

impl WriteCost for DynamoUpsert {
    /// Exactly what DynamoDB bills for putting the record's item, rank
    /// included, as a new item (replacing a larger one costs that one's
    /// size instead; a write that loses to the stored row costs the same).
    fn write_units(&self, record: &ValidRecord, ctx: &ProcessContext<'_>) -> u64 {
        let Some(key_field) = ctx.definition.key_field.as_deref() else {
            return 0;
        };
        match Self::ranked_item(record, key_field, &Rank::of(ctx)) {
            Ok(item) => write_units(item_size(&item)) as u64,
            Err(_) => 0,
        }
    }
}

/// What one batch of records writes: only the winning record of each key
/// (the last in the batch, or the first under `first`); the others ride on
/// its write, as they would lose to it anyway.
#[derive(Debug)]
struct WritePlan {
    /// The items to write, each with the index of its record.
    writes: Vec<(usize, Item)>,
    /// For each record, the record whose write carries its values (itself
    /// when it is written; `None` when it has no item).
    carrier: Vec<Option<usize>>,
}

impl WritePlan {
    /// Plans the writes of `items` (one per record, in line order, `Err`
    /// for a record that cannot be stored). Returns the plan and each
    /// record's result before writing: `Ok` for those with an item.
    fn new(
        items: Vec<Result<Item, ProcessError>>,
        key_field: &str,
        policy: OnDuplicateKey,
    ) -> (WritePlan, Vec<Result<(), ProcessError>>) {
        let key = |item: &Item| format!("{:?}", item.get(key_field));
        let mut winner: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            if let Ok(item) = item {
                let slot = winner.entry(key(item)).or_insert(i);
                if policy == OnDuplicateKey::Last {
                    *slot = i;
                }
                // `first` and `reject` keep the first.
            }
        }
        let mut plan = WritePlan {
            writes: Vec::with_capacity(winner.len()),
            carrier: Vec::with_capacity(items.len()),
        };
        let mut results = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Ok(item) => {
                    let carrier = winner[&key(&item)];
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
        super::share_results(results, &self.carrier);
    }
}

/// A value as an attribute: S, N or BOOL. Numbers are written in their
/// decimal text (`i64` and `f64` `Display`: no exponent, so 1e200 is 201
/// digits). DynamoDB refuses a whole BatchWriteItem for one number it
/// cannot store, and a schema `number` is any finite f64: each number is
/// checked up front so only its record fails, with a message that says why.
pub(super) fn attribute(value: FieldValue<'_>) -> Result<AttributeValue, String> {
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
