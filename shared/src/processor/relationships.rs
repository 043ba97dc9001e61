//! Processor type `relationships`: each record is an edge between two
//! things, written to a DynamoDB table in the adjacency-list layout: the
//! partition key is the edge's source, the sort key its relation and
//! destination (`follows#bob`), with the record's other fields as the
//! edge's attributes. With `reverse`, the same edge is also written under
//! its destination (`~follows#alice`), so both ends can list their edges
//! with one query. With `mustExist`, both ends must be items of a things
//! table, looked up in batches: an edge with a missing end fails with the
//! end it lacks.
//!
//! Writes are puts of whole items, so an edge written again (a retry, a
//! reclaimed batch) is the same item. Of a batch's rows that give one edge,
//! the last is written and the others share its result.

use super::dynamodb::attribute;
use super::registry::{self, Built, Deployment, Fields, ProcessorSettings, ProcessorType};
use super::{ProcessContext, ProcessError, RecordProcessor};
use crate::clock::Clock;
use crate::retry::Backoff;
use crate::rng::Rng;
use crate::schema::ValidRecord;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub(super) const TYPE: ProcessorType = ProcessorType {
    name: "relationships",
    check,
    build,
    needs: "",
    finishes_jobs: false,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Settings {
    /// Where the edges go.
    table: String,
    /// The field holding the edge's source key.
    from: String,
    /// The field holding the edge's destination key.
    to: String,
    /// The relation of every edge (`follows`)...
    #[serde(default)]
    relation: Option<String>,
    /// ...or the field holding each edge's relation.
    #[serde(default)]
    relation_field: Option<String>,
    /// Also write each edge under its destination.
    #[serde(default)]
    reverse: bool,
    #[serde(default = "default_partition_key")]
    partition_key: String,
    #[serde(default = "default_sort_key")]
    sort_key: String,
    /// Both ends must be items of this table.
    #[serde(default)]
    must_exist: Option<MustExist>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MustExist {
    table: String,
    /// The things table's partition key (type S); it has no sort key.
    key: String,
}

fn default_partition_key() -> String {
    "pk".into()
}

fn default_sort_key() -> String {
    "sk".into()
}

/// Relations are names: they make up sort keys with `#` and `~`.
fn check_relation(relation: &str) -> Result<(), String> {
    let ok = !relation.is_empty()
        && relation.len() <= 100
        && !relation.starts_with('~')
        && !relation.contains('#');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{relation:?} is not a relation: 1 to 100 characters, without '#', not starting with '~'"
        ))
    }
}

fn check(settings: &ProcessorSettings, fields: &Fields<'_>) -> Result<(), (String, String)> {
    let s: Settings = registry::parse(settings)?;
    fields.require("from", &s.from)?;
    fields.require("to", &s.to)?;
    match (&s.relation, &s.relation_field) {
        (Some(r), None) => check_relation(r).map_err(|m| ("relation".to_owned(), m))?,
        (None, Some(f)) => fields.require("relationField", f)?,
        _ => {
            return Err((
                "relation".into(),
                "give the relation of every edge (relation) or the field holding it (relationField), one of the two".into(),
            ))
        }
    }
    if s.partition_key == s.sort_key {
        return Err(("sortKey".into(), "must differ from partitionKey".into()));
    }
    for name in [&s.partition_key, &s.sort_key] {
        if fields.fields.iter().any(|f| &f.name == name) {
            return Err((
                "partitionKey".into(),
                format!("{name:?} is also a field: rename the key attribute or the field"),
            ));
        }
    }
    Ok(())
}

fn build(settings: &ProcessorSettings, deployment: &Deployment<'_>) -> Built {
    let settings: Settings = registry::settings_of(settings)?;
    Ok(Some(Arc::new(Relationships {
        client: deployment.clients.dynamodb.clone(),
        settings,
        clock: *deployment.clock,
        rng: deployment.rng.clone(),
    })))
}

pub struct Relationships {
    client: aws_sdk_dynamodb::Client,
    settings: Settings,
    clock: Clock,
    rng: Rng,
}

type Item = HashMap<String, AttributeValue>;

/// BatchWriteItem and BatchGetItem take at most this many each.
const WRITE_BATCH: usize = 25;
const GET_BATCH: usize = 100;
/// Tries of a batch request's unprocessed part before its records fail
/// retryably (the worker retries them later, with backoff).
const TRIES: u32 = 6;
const BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(50),
    max: Duration::from_secs(2),
};

/// A record's edge, once read.
struct Edge {
    from: String,
    to: String,
    relation: String,
    attributes: Item,
}

impl Relationships {
    fn edge(&self, record: &ValidRecord) -> Result<Edge, ProcessError> {
        let s = &self.settings;
        let text = |field: &str, what: &str| {
            record
                .get(field)
                .map(|v| v.to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| ProcessError::permanent(format!("{what} ({field}) has no value")))
        };
        let from = text(&s.from, "the edge's source")?;
        let to = text(&s.to, "the edge's destination")?;
        let relation = match (&s.relation, &s.relation_field) {
            (Some(r), _) => r.clone(),
            (None, Some(field)) => {
                let r = text(field, "the edge's relation")?;
                check_relation(&r).map_err(ProcessError::permanent)?;
                r
            }
            (None, None) => unreachable!("checked when the definition loaded"),
        };
        let mut attributes = Item::new();
        for (name, value) in record.iter() {
            let value = attribute(value)
                .map_err(|problem| ProcessError::permanent(format!("field {name}: {problem}")))?;
            attributes.insert(name.to_owned(), value);
        }
        Ok(Edge {
            from,
            to,
            relation,
            attributes,
        })
    }

    /// The edge's items: under its source, and with `reverse` under its
    /// destination.
    fn items(&self, edge: &Edge) -> Vec<Item> {
        let s = &self.settings;
        let mut forward = edge.attributes.clone();
        forward.insert(
            s.partition_key.clone(),
            AttributeValue::S(edge.from.clone()),
        );
        forward.insert(
            s.sort_key.clone(),
            AttributeValue::S(format!("{}#{}", edge.relation, edge.to)),
        );
        if !s.reverse {
            return vec![forward];
        }
        let mut reverse = edge.attributes.clone();
        reverse.insert(s.partition_key.clone(), AttributeValue::S(edge.to.clone()));
        reverse.insert(
            s.sort_key.clone(),
            AttributeValue::S(format!("~{}#{}", edge.relation, edge.from)),
        );
        vec![forward, reverse]
    }

    /// Which of `keys` are items of the things table. An error is the
    /// lookup's, for every record that needs it.
    async fn existing(
        &self,
        must: &MustExist,
        keys: Vec<String>,
    ) -> Result<HashSet<String>, ProcessError> {
        let mut found = HashSet::new();
        for chunk in keys.chunks(GET_BATCH) {
            let mut wanted = KeysAndAttributes::builder()
                .projection_expression("#k")
                .expression_attribute_names("#k", &must.key);
            for key in chunk {
                wanted = wanted.keys(HashMap::from([(
                    must.key.clone(),
                    AttributeValue::S(key.clone()),
                )]));
            }
            let mut request =
                HashMap::from([(must.table.clone(), wanted.build().expect("keys are set"))]);
            for attempt in 0.. {
                let out = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(request))
                    .send()
                    .await
                    .map_err(|e| {
                        ProcessError::retryable_from(
                            format!("looking up things in {} failed", must.table),
                            e,
                        )
                    })?;
                for item in out
                    .responses()
                    .and_then(|r| r.get(&must.table))
                    .into_iter()
                    .flatten()
                {
                    if let Some(AttributeValue::S(key)) = item.get(&must.key) {
                        found.insert(key.clone());
                    }
                }
                match out.unprocessed_keys.filter(|u| !u.is_empty()) {
                    None => break,
                    Some(_) if attempt + 1 >= TRIES => {
                        return Err(ProcessError::retryable(format!(
                            "looking up things in {} was throttled",
                            must.table
                        )))
                    }
                    Some(unprocessed) => {
                        BACKOFF.sleep(attempt, &self.clock, &self.rng).await;
                        request = unprocessed;
                    }
                }
            }
        }
        Ok(found)
    }

    /// Writes `items` (each with the index of the record it is for), 25 to
    /// a request; the records whose items could not be written get the
    /// error.
    async fn write(&self, items: Vec<(usize, Item)>, results: &mut [Result<(), ProcessError>]) {
        let table = &self.settings.table;
        for chunk in items.chunks(WRITE_BATCH) {
            let mut pending: Vec<(usize, WriteRequest)> = chunk
                .iter()
                .map(|(i, item)| {
                    let put = PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .expect("the item is set");
                    (*i, WriteRequest::builder().put_request(put).build())
                })
                .collect();
            for attempt in 0.. {
                let requests = pending.iter().map(|(_, w)| w.clone()).collect();
                let sent = self
                    .client
                    .batch_write_item()
                    .request_items(table, requests)
                    .send()
                    .await;
                let unprocessed = match sent {
                    Ok(out) => out
                        .unprocessed_items
                        .and_then(|mut u| u.remove(table))
                        .unwrap_or_default(),
                    Err(e) => {
                        let error = classify(table, e);
                        let records: Vec<usize> = pending.iter().map(|(i, _)| *i).collect();
                        fail(results, &records, error);
                        break;
                    }
                };
                if unprocessed.is_empty() {
                    break;
                }
                // Match what came back to the records it is for.
                pending.retain(|(_, w)| unprocessed.contains(w));
                if attempt + 1 >= TRIES {
                    let records: Vec<usize> = pending.iter().map(|(i, _)| *i).collect();
                    let error =
                        ProcessError::retryable(format!("writing edges to {table} was throttled"));
                    fail(results, &records, error);
                    break;
                }
                BACKOFF.sleep(attempt, &self.clock, &self.rng).await;
            }
        }
    }
}

/// `error` for each of `records` (one error per record, sharing the cause).
fn fail(results: &mut [Result<(), ProcessError>], records: &[usize], error: ProcessError) {
    let mut unique: Vec<usize> = records.to_vec();
    unique.sort_unstable();
    unique.dedup();
    for (i, e) in unique.iter().zip(error.repeated(unique.len())) {
        if results[*i].is_ok() {
            results[*i] = Err(e);
        }
    }
}

fn classify<E, R>(table: &str, e: aws_sdk_dynamodb::error::SdkError<E, R>) -> ProcessError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match e.as_service_error().and_then(|s| s.code()) {
        Some("ValidationException") => {
            let message = e
                .as_service_error()
                .and_then(|s| s.message())
                .unwrap_or("invalid item")
                .to_owned();
            ProcessError::permanent_from(format!("{table} rejected the edge: {message}"), e)
        }
        _ => ProcessError::retryable_from(format!("writing edges to {table} failed"), e),
    }
}

#[async_trait]
impl RecordProcessor for Relationships {
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
        _ctx: &ProcessContext<'_>,
    ) -> Vec<Result<(), ProcessError>> {
        let mut results: Vec<Result<(), ProcessError>> = Vec::with_capacity(records.len());
        let mut edges: Vec<Option<Edge>> = Vec::with_capacity(records.len());
        for record in records {
            match self.edge(record) {
                Ok(edge) => {
                    edges.push(Some(edge));
                    results.push(Ok(()));
                }
                Err(e) => {
                    edges.push(None);
                    results.push(Err(e));
                }
            }
        }
        if let Some(must) = &self.settings.must_exist {
            let keys: Vec<String> = edges
                .iter()
                .flatten()
                .flat_map(|e| [e.from.clone(), e.to.clone()])
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            match self.existing(must, keys).await {
                Ok(found) => {
                    for (i, edge) in edges.iter_mut().enumerate() {
                        let Some(e) = edge else { continue };
                        let missing = [("source", &e.from), ("destination", &e.to)]
                            .into_iter()
                            .find(|(_, key)| !found.contains(*key));
                        if let Some((end, key)) = missing {
                            results[i] = Err(ProcessError::permanent(format!(
                                "the edge's {end} {key:?} is not in {}",
                                must.table
                            )));
                            *edge = None;
                        }
                    }
                }
                Err(error) => {
                    let all: Vec<usize> =
                        (0..records.len()).filter(|i| edges[*i].is_some()).collect();
                    fail(&mut results, &all, error);
                    return results;
                }
            }
        }
        // One write per item key: the batch's last row of an edge wins; the
        // others ride on its write (an edge's items all have one key each,
        // so a row rides on a single carrier).
        let s = &self.settings;
        let mut by_key: BTreeMap<(String, String), (usize, Item)> = BTreeMap::new();
        for (i, edge) in edges.iter().enumerate() {
            let Some(edge) = edge else { continue };
            for item in self.items(edge) {
                let key = |name: &str| match item.get(name) {
                    Some(AttributeValue::S(v)) => v.clone(),
                    _ => String::new(),
                };
                by_key.insert((key(&s.partition_key), key(&s.sort_key)), (i, item));
            }
        }
        let mut carrier: Vec<Option<usize>> = (0..records.len()).map(|_| None).collect();
        for (i, edge) in edges.iter().enumerate() {
            if let Some(edge) = edge {
                let forward = (edge.from.clone(), format!("{}#{}", edge.relation, edge.to));
                carrier[i] = by_key.get(&forward).map(|(owner, _)| *owner);
            }
        }
        self.write(by_key.into_values().collect(), &mut results)
            .await;
        super::share_results(&mut results, &carrier);
        results
    }
}
