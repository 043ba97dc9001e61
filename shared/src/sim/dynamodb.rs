//! The simulated DynamoDB: the data in `engine`, and around it what the
//! service does that the protocol depends on.
//!
//! - **Latency**: every request travels for a drawn time, is applied at
//!   once, and its answer travels back; a caller that dies on the way out
//!   leaves the request unapplied, one that dies on the way back leaves it
//!   applied and unanswered.
//! - **Partitions**: every table and index spreads its partition-key
//!   values over `partitions` partitions, each good for
//!   `partition_write_units` and `partition_read_units` a second (a
//!   second's worth banked). A request to a spent partition is refused with
//!   `ProvisionedThroughputExceededException`; items of a batch request on
//!   spent partitions come back unprocessed; an index partition that is
//!   spent holds back the writes of the base table, as on DynamoDB.
//! - **Transactions**: a transaction holds its items for as long as it
//!   takes; a transaction or single-item write reaching a held item is
//!   refused (`TransactionCanceledException` with `TransactionConflict`,
//!   `TransactionConflictException`).
//! - **Indexes and eventually consistent reads** are served from a replica
//!   that applies the table's writes after a drawn delay, in order.
//! - **Faults** drawn from the world's generator: throttled requests and
//!   unprocessed items of batch requests beyond what capacity explains.
//!
//! Write and read units are billed as DynamoDB bills them (1 KB a write
//! unit of the larger of the item's old and new images, 4 KB a read unit,
//! transactions twice), per partition and per item.

use super::engine::{item_size, Answer, Engine};
use super::World;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// What the simulated DynamoDB served, billed and refused.
#[derive(Debug, Default, Clone)]
pub struct DynamoStats {
    /// Requests by operation, refused ones included.
    pub requests: BTreeMap<String, u64>,
    pub write_units: f64,
    pub read_units: f64,
    /// Requests refused for a spent partition, and items left unprocessed
    /// for one.
    pub throttled: u64,
    /// Requests refused by the fault mix (`ThrottlingException`).
    pub injected: u64,
    /// Writes and transactions refused because a transaction held an item.
    pub conflicts: u64,
    /// Items of batch requests returned unprocessed, for any reason.
    pub unprocessed: u64,
    /// Write units by partition (`table[/index]#n`).
    pub partition_writes: HashMap<String, f64>,
    /// Write units by item (`table|pk|sk`).
    pub item_writes: HashMap<String, f64>,
    /// Read units by partition.
    pub partition_reads: HashMap<String, f64>,
    /// Read units by item read by key (`GetItem`, `BatchGetItem`).
    pub item_reads: HashMap<String, f64>,
    /// Requests by operation and the shape of the key they name (ids and
    /// numbers left out: `UpdateItem J#<id>#K#<n>`), to tell the items a
    /// batch costs apart.
    pub shapes: BTreeMap<String, u64>,
    /// Requests by shape that a spent partition refused in whole or in
    /// part (throttled, or items left unprocessed), and writes refused for
    /// a transaction holding an item (`conflict on <key shape>`): what
    /// saturates.
    pub refused: BTreeMap<String, u64>,
}

impl DynamoStats {
    pub fn total_requests(&self) -> u64 {
        self.requests.values().sum()
    }

    /// The `n` busiest of `units`, busiest first.
    pub fn top(units: &HashMap<String, f64>, n: usize) -> Vec<(String, f64)> {
        let mut all: Vec<_> = units.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

#[derive(Debug, Clone)]
struct Schema {
    hash: String,
    range: Option<String>,
    /// Global secondary indexes.
    indexes: Vec<Index>,
}

/// A global secondary index: its keys and what it projects.
#[derive(Debug, Clone)]
struct Index {
    name: String,
    hash: String,
    range: Option<String>,
    /// Non-key attributes projected: `None` for all of them.
    projects: Option<Vec<String>>,
}

struct Bucket {
    write: f64,
    read: f64,
    at: Instant,
}

#[derive(Default)]
struct State {
    tables: HashMap<String, Schema>,
    buckets: HashMap<String, Bucket>,
    /// Items held by transactions in flight, until when.
    holds: HashMap<String, Instant>,
    /// Writes the replica has yet to apply, with when it does.
    lagging: VecDeque<(Instant, String, String)>,
    last_visible: Option<Instant>,
    /// Client request tokens of the transactions that succeeded: the
    /// digest of their items, and when. Kept here, not by the engine: a
    /// transaction is applied on trial (an index it changes may refuse
    /// it), and one undone must leave no token behind.
    tokens: HashMap<String, (u64, Instant)>,
    /// The same tokens in the order they were kept, to let them go when
    /// their window ends without a pass over all of them.
    token_order: VecDeque<(Instant, String)>,
    stats: DynamoStats,
}

/// How long DynamoDB keeps a transaction's client request token.
const TOKEN_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// Lets go of the tokens whose window has ended, oldest first.
fn forget_tokens(state: &mut State, now: Instant) {
    while let Some((at, _)) = state.token_order.front() {
        if *at + TOKEN_WINDOW > now {
            break;
        }
        let (at, token) = state.token_order.pop_front().expect("a front");
        // Kept again since (its window had ended): that one stays.
        if state
            .tokens
            .get(&token)
            .is_some_and(|(_, kept)| *kept == at)
        {
            state.tokens.remove(&token);
        }
    }
}

pub struct SimDynamo {
    world: Arc<World>,
    primary: Engine,
    replica: Engine,
    state: Mutex<State>,
}

/// A table's item: its id for holds and billing, and its partition.
struct Located {
    id: String,
    partition: String,
}

const WRITE_UNIT: usize = 1024;
const READ_UNIT: usize = 4096;

fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(WRITE_UNIT).max(1) as f64
}

fn read_units(bytes: usize, consistent: bool) -> f64 {
    let units = bytes.div_ceil(READ_UNIT).max(1) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

fn stable_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn name_of(schema_key: &Value) -> Option<String> {
    let key = schema_key.as_array()?;
    let find = |kind: &str| {
        key.iter()
            .find(|k| k["KeyType"] == kind)
            .and_then(|k| k["AttributeName"].as_str())
            .map(str::to_owned)
    };
    find("HASH")
}

fn range_of(schema_key: &Value) -> Option<String> {
    schema_key
        .as_array()?
        .iter()
        .find(|k| k["KeyType"] == "RANGE")
        .and_then(|k| k["AttributeName"].as_str())
        .map(str::to_owned)
}

impl SimDynamo {
    pub fn new(world: Arc<World>) -> SimDynamo {
        SimDynamo {
            world,
            primary: Engine::new(),
            replica: Engine::new(),
            state: Mutex::default(),
        }
    }

    pub fn stats(&self) -> DynamoStats {
        self.state.lock().unwrap().stats.clone()
    }

    /// The item under `key` of `table` as it is now (for checks after a
    /// run; unbilled).
    pub fn item(&self, table: &str, key: &Value) -> Option<Value> {
        self.primary.item(table, key)
    }

    /// Every item of `table` (unbilled; for checks after a run).
    pub fn scan(&self, table: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut start: Option<Value> = None;
        loop {
            let mut request = json!({ "TableName": table });
            if let Some(start) = start.take() {
                request["ExclusiveStartKey"] = start;
            }
            let answer = self.primary.call("Scan", &request.to_string());
            assert_eq!(answer.status, 200, "scan of {table}: {}", answer.body);
            let mut page: Value = serde_json::from_str(&answer.body).expect("scan answer");
            if let Some(Value::Array(found)) = page.get_mut("Items").map(Value::take) {
                items.extend(found);
            }
            match page.get_mut("LastEvaluatedKey").map(Value::take) {
                Some(key) if !key.is_null() => start = Some(key),
                _ => return items,
            }
        }
    }

    /// Holds the item under `key` of `table` until `until`, as a
    /// transaction in flight would (for tests of what meets a held item).
    pub fn hold(&self, table: &str, key: &Value, until: Instant) {
        let mut state = self.state.lock().unwrap();
        let schema = self.schema(&state, table).expect("the table exists");
        let (_, at) = self.locate(&schema, table, key);
        state.holds.insert(at.id, until);
    }

    /// Serves a request on the data alone, unbilled and untraced.
    pub fn serve_direct(&self, op: &str, body: &str) -> Answer {
        self.primary.call(op, body)
    }

    /// Serves one request: out, applied, back.
    pub async fn serve(&self, op: &str, body: &str) -> Answer {
        let (out, back) = self.world.round_trip();
        tokio::time::sleep(out).await;
        let answer = self.apply(op, body, out + back);
        tokio::time::sleep(back).await;
        answer
    }

    fn apply(&self, op: &str, body: &str, took: std::time::Duration) -> Answer {
        let now = Instant::now();
        self.world.trace("dynamodb", op, body);
        let request: Value = match serde_json::from_str(body) {
            Ok(v) => v,
            Err(e) => return Answer::error("SerializationException", &e.to_string()),
        };
        let mut state = self.state.lock().unwrap();
        *state.stats.requests.entry(op.to_owned()).or_default() += 1;
        let shape = shape_of(op, &request);
        *state.stats.shapes.entry(shape.clone()).or_default() += 1;
        let throttled = state.stats.throttled;
        let answer = self.dispatch(&mut state, now, op, body, &request, took);
        if state.stats.throttled > throttled {
            *state.stats.refused.entry(shape).or_default() += 1;
        }
        answer
    }

    fn dispatch(
        &self,
        state: &mut State,
        now: Instant,
        op: &str,
        body: &str,
        request: &Value,
        took: std::time::Duration,
    ) -> Answer {
        let mutating = matches!(
            op,
            "PutItem" | "UpdateItem" | "DeleteItem" | "BatchWriteItem" | "TransactWriteItems"
        );
        if (mutating || matches!(op, "GetItem" | "Query" | "BatchGetItem"))
            && self.world.chance(self.world.config.faults.throttle)
        {
            state.stats.injected += 1;
            return Answer::error(
                "ThrottlingException",
                "Rate of requests exceeds the allowed throughput.",
            );
        }
        match op {
            "CreateTable" => self.create_table(state, op, body, request),
            "PutItem" | "UpdateItem" | "DeleteItem" => {
                self.single_write(state, now, op, body, request)
            }
            "GetItem" => self.get_item(state, now, body, request),
            "Query" => self.query(state, now, body, request),
            "BatchWriteItem" => self.batch_write(state, now, request),
            "BatchGetItem" => self.batch_get(state, now, request),
            "TransactWriteItems" => self.transact(state, now, body, request, took),
            _ => {
                let answer = self.primary.call(op, body);
                if answer.status == 200 && mutating {
                    self.lag(state, now, op, body.to_owned());
                }
                answer
            }
        }
    }

    fn create_table(&self, state: &mut State, op: &str, body: &str, request: &Value) -> Answer {
        let answer = self.primary.call(op, body);
        if answer.status == 200 {
            self.replica.call(op, body);
            let indexes = request["GlobalSecondaryIndexes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    let projection = &i["Projection"];
                    let projects = match projection["ProjectionType"].as_str() {
                        Some("ALL") => None,
                        Some("INCLUDE") => Some(
                            projection["NonKeyAttributes"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|a| a.as_str().map(str::to_owned))
                                .collect(),
                        ),
                        _ => Some(Vec::new()),
                    };
                    Some(Index {
                        name: i["IndexName"].as_str()?.to_owned(),
                        hash: name_of(&i["KeySchema"])?,
                        range: range_of(&i["KeySchema"]),
                        projects,
                    })
                })
                .collect();
            let table = request["TableName"].as_str().unwrap_or_default().to_owned();
            state.tables.insert(
                table,
                Schema {
                    hash: name_of(&request["KeySchema"]).unwrap_or_default(),
                    range: range_of(&request["KeySchema"]),
                    indexes,
                },
            );
        }
        answer
    }

    fn schema(&self, state: &State, table: &str) -> Option<Schema> {
        state.tables.get(table).cloned()
    }

    /// The key of `item` in `table`'s schema, and where it lives.
    fn locate(&self, schema: &Schema, table: &str, item: &Value) -> (Value, Located) {
        let mut key = Map::new();
        let pk = item[&schema.hash].clone();
        key.insert(schema.hash.clone(), pk.clone());
        let mut id = format!("{table}|{pk}");
        if let Some(range) = &schema.range {
            let sk = item[range].clone();
            id.push('|');
            id.push_str(&sk.to_string());
            key.insert(range.clone(), sk);
        }
        let partition = self.partition_of(table, None, &pk.to_string());
        (Value::Object(key), Located { id, partition })
    }

    fn partition_of(&self, table: &str, index: Option<&str>, pk: &str) -> String {
        let n = stable_hash(pk) % u64::from(self.world.config.partitions.max(1));
        match index {
            Some(index) => format!("{table}/{index}#{n}"),
            None => format!("{table}#{n}"),
        }
    }

    fn bucket<'s>(&self, state: &'s mut State, partition: &str, now: Instant) -> &'s mut Bucket {
        let config = &self.world.config;
        let bucket = state
            .buckets
            .entry(partition.to_owned())
            .or_insert_with(|| Bucket {
                write: config.partition_write_units,
                read: config.partition_read_units,
                at: now,
            });
        let secs = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.write =
            (bucket.write + secs * config.partition_write_units).min(config.partition_write_units);
        bucket.read =
            (bucket.read + secs * config.partition_read_units).min(config.partition_read_units);
        bucket.at = now;
        bucket
    }

    fn write_spent(&self, state: &mut State, partition: &str, now: Instant) -> bool {
        self.bucket(state, partition, now).write <= 0.0
    }

    fn read_spent(&self, state: &mut State, partition: &str, now: Instant) -> bool {
        self.bucket(state, partition, now).read <= 0.0
    }

    fn bill_write(&self, state: &mut State, now: Instant, at: &Located, units: f64) {
        self.bucket(state, &at.partition, now).write -= units;
        state.stats.write_units += units;
        *state
            .stats
            .partition_writes
            .entry(at.partition.clone())
            .or_default() += units;
        *state.stats.item_writes.entry(at.id.clone()).or_default() += units;
    }

    fn bill_read(&self, state: &mut State, now: Instant, partition: &str, units: f64) {
        self.bucket(state, partition, now).read -= units;
        state.stats.read_units += units;
        *state
            .stats
            .partition_reads
            .entry(partition.to_owned())
            .or_default() += units;
    }

    /// An item's entry in an index: the index partition it is in, its
    /// index key, and what the index stores of it. `None` when the item
    /// lacks the index's keys (a sparse index leaves it out).
    fn entry(
        &self,
        schema: &Schema,
        table: &str,
        index: &Index,
        image: &Value,
    ) -> Option<(String, Value, Map<String, Value>)> {
        let pk = image.get(&index.hash)?;
        let sk = match &index.range {
            Some(range) => Some(image.get(range)?),
            None => None,
        };
        let partition = self.partition_of(table, Some(&index.name), &pk.to_string());
        let keys = [Some(&schema.hash), schema.range.as_ref(), Some(&index.hash)]
            .into_iter()
            .chain([index.range.as_ref()])
            .flatten();
        let stored = image
            .as_object()?
            .iter()
            .filter(|(name, _)| {
                keys.clone().any(|k| k == *name)
                    || index.projects.as_ref().is_none_or(|p| p.contains(name))
            })
            .map(|(name, v)| (name.clone(), v.clone()))
            .collect();
        Some((partition, json!([pk, sk]), stored))
    }

    /// The index partitions a write from `before` to `after` writes, as
    /// DynamoDB bills them: an entry put, deleted or moved to another key
    /// (two writes), or changed in what the index stores; nothing for an
    /// index whose entry the write leaves as it was.
    fn index_writes(
        &self,
        schema: &Schema,
        table: &str,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> Vec<String> {
        let mut written = Vec::new();
        for index in &schema.indexes {
            let old = before.and_then(|i| self.entry(schema, table, index, i));
            let new = after.and_then(|i| self.entry(schema, table, index, i));
            match (old, new) {
                (None, None) => {}
                (Some((p, _, _)), None) | (None, Some((p, _, _))) => written.push(p),
                (Some((old_p, old_key, old)), Some((new_p, new_key, new))) => {
                    if old_key != new_key {
                        written.push(old_p);
                        written.push(new_p);
                    } else if old != new {
                        written.push(new_p);
                    }
                }
            }
        }
        written
    }

    /// Bills a write of one item: its table partition, and one unit on
    /// each index partition the write changes (`index_writes`).
    fn bill_item(
        &self,
        state: &mut State,
        now: Instant,
        at: &Located,
        images: [Option<&Value>; 2],
        index: &[String],
        factor: f64,
    ) {
        let [before, after] = images;
        let size = before.map_or(0, item_size).max(after.map_or(0, item_size));
        self.bill_write(state, now, at, factor * write_units(size));
        for partition in index {
            let index_at = Located {
                id: partition.clone(),
                partition: partition.clone(),
            };
            self.bill_write(state, now, &index_at, factor);
        }
    }

    /// A write would be throttled: its partition is spent, or an index
    /// partition it changes is.
    fn throttles(&self, state: &mut State, now: Instant, at: &Located, index: &[String]) -> bool {
        self.write_spent(state, &at.partition, now) || self.index_spent(state, now, index)
    }

    /// One of the index partitions a write changes is spent: DynamoDB
    /// refuses a table write its indexes cannot take.
    fn index_spent(&self, state: &mut State, now: Instant, index: &[String]) -> bool {
        index.iter().any(|p| self.write_spent(state, p, now))
    }

    /// Puts an item back as it was before a write that is refused after
    /// all (an index it changed could not take it).
    fn restore(&self, table: &str, key: &Value, before: Option<&Value>) {
        let answer = match before {
            Some(item) => self.primary.call(
                "PutItem",
                &json!({ "TableName": table, "Item": item }).to_string(),
            ),
            None => self.primary.call(
                "DeleteItem",
                &json!({ "TableName": table, "Key": key }).to_string(),
            ),
        };
        debug_assert!(answer.status == 200, "restoring {key}: {}", answer.body);
    }

    fn held(&self, state: &State, id: &str, now: Instant) -> bool {
        state.holds.get(id).is_some_and(|until| *until > now)
    }

    fn lag(&self, state: &mut State, now: Instant, op: &str, body: String) {
        let lag = self.world.config.faults.index_lag_ms;
        if lag == 0 {
            return;
        }
        let delay = std::time::Duration::from_millis(self.world.below(lag + 1));
        let visible = (now + delay).max(state.last_visible.unwrap_or(now));
        state.last_visible = Some(visible);
        state.lagging.push_back((visible, op.to_owned(), body));
    }

    /// The engine reads not promised to be consistent are served from:
    /// the replica, brought up to `now`, when writes lag.
    fn eventual(&self, state: &mut State, now: Instant) -> &Engine {
        if self.world.config.faults.index_lag_ms == 0 {
            return &self.primary;
        }
        while state.lagging.front().is_some_and(|(at, _, _)| *at <= now) {
            let (_, op, body) = state.lagging.pop_front().expect("checked");
            let answer = self.replica.call(&op, &body);
            debug_assert!(
                answer.status == 200,
                "replica diverged on {op}: {}",
                answer.body
            );
        }
        &self.replica
    }

    fn single_write(
        &self,
        state: &mut State,
        now: Instant,
        op: &str,
        body: &str,
        request: &Value,
    ) -> Answer {
        let table = request["TableName"].as_str().unwrap_or_default().to_owned();
        let Some(schema) = self.schema(state, &table) else {
            return self.primary.call(op, body);
        };
        let item = if op == "PutItem" {
            &request["Item"]
        } else {
            &request["Key"]
        };
        let (key, at) = self.locate(&schema, &table, item);
        if self.held(state, &at.id, now) {
            state.stats.conflicts += 1;
            let held = shape_of("conflict on", &json!({ "Key": item }));
            *state.stats.refused.entry(held).or_default() += 1;
            return Answer::error(
                "TransactionConflictException",
                "Transaction is ongoing for the item",
            );
        }
        let before = self.primary.item(&table, &key);
        if self.write_spent(state, &at.partition, now) {
            state.stats.throttled += 1;
            return exceeded();
        }
        // What an update makes of the item is known once it is applied: an
        // index that cannot take the change undoes it.
        let answer = self.primary.call(op, body);
        let after = self.primary.item(&table, &key);
        let index = self.index_writes(&schema, &table, before.as_ref(), after.as_ref());
        if self.index_spent(state, now, &index) {
            if answer.status == 200 {
                self.restore(&table, &key, before.as_ref());
            }
            state.stats.throttled += 1;
            return exceeded();
        }
        let images = [before.as_ref(), after.as_ref()];
        self.bill_item(state, now, &at, images, &index, 1.0);
        if answer.status == 200 {
            self.lag(state, now, op, body.to_owned());
        }
        answer
    }

    fn get_item(&self, state: &mut State, now: Instant, body: &str, request: &Value) -> Answer {
        let table = request["TableName"].as_str().unwrap_or_default().to_owned();
        let Some(schema) = self.schema(state, &table) else {
            return self.primary.call("GetItem", body);
        };
        let (_, at) = self.locate(&schema, &table, &request["Key"]);
        if self.read_spent(state, &at.partition, now) {
            state.stats.throttled += 1;
            return exceeded();
        }
        let consistent = request["ConsistentRead"] == true;
        let answer = if consistent {
            self.primary.call("GetItem", body)
        } else {
            self.eventual(state, now).call("GetItem", body)
        };
        let size = serde_json::from_str::<Value>(&answer.body)
            .ok()
            .map_or(0, |v| item_size(&v["Item"]));
        let units = read_units(size, consistent);
        self.bill_read(state, now, &at.partition, units);
        *state.stats.item_reads.entry(at.id.clone()).or_default() += units;
        answer
    }

    fn query(&self, state: &mut State, now: Instant, body: &str, request: &Value) -> Answer {
        let table = request["TableName"].as_str().unwrap_or_default().to_owned();
        let index = request["IndexName"].as_str().map(str::to_owned);
        let Some(schema) = self.schema(state, &table) else {
            return self.primary.call("Query", body);
        };
        let hash = match &index {
            Some(name) => schema
                .indexes
                .iter()
                .find(|i| &i.name == name)
                .map(|i| i.hash.clone()),
            None => Some(schema.hash.clone()),
        };
        let pk = hash
            .and_then(|h| key_value(request, &h))
            .unwrap_or(Value::Null);
        let partition = self.partition_of(&table, index.as_deref(), &pk.to_string());
        if self.read_spent(state, &partition, now) {
            state.stats.throttled += 1;
            return exceeded();
        }
        let consistent = index.is_none() && request["ConsistentRead"] == true;
        let answer = if consistent {
            self.primary.call("Query", body)
        } else {
            self.eventual(state, now).call("Query", body)
        };
        let size: usize = serde_json::from_str::<Value>(&answer.body)
            .ok()
            .and_then(|v| {
                v["Items"]
                    .as_array()
                    .map(|items| items.iter().map(item_size).sum())
            })
            .unwrap_or(0);
        self.bill_read(state, now, &partition, read_units(size, consistent));
        answer
    }

    fn batch_write(&self, state: &mut State, now: Instant, request: &Value) -> Answer {
        let mut processed = Map::new();
        let mut unprocessed = Map::new();
        let mut throttled = 0;
        let mut billed = Vec::new();
        let empty = Map::new();
        for (table, writes) in request["RequestItems"].as_object().unwrap_or(&empty) {
            let Some(schema) = self.schema(state, table) else {
                return self.primary.call("BatchWriteItem", &request.to_string());
            };
            let (mut done, mut left) = (Vec::new(), Vec::new());
            for write in writes.as_array().into_iter().flatten() {
                let put = write.get("PutRequest").map(|p| &p["Item"]);
                let item = put.unwrap_or(&write["DeleteRequest"]["Key"]);
                let (key, at) = self.locate(&schema, table, item);
                let before = self.primary.item(table, &key);
                // A put's item is what it writes; a delete leaves nothing.
                let index = self.index_writes(&schema, table, before.as_ref(), put);
                let spent = self.throttles(state, now, &at, &index);
                throttled += u64::from(spent);
                if spent
                    || self.held(state, &at.id, now)
                    || self.world.chance(self.world.config.faults.unprocessed)
                {
                    left.push(write.clone());
                } else {
                    done.push(write.clone());
                    billed.push((at, before, put.cloned(), index));
                }
            }
            if !done.is_empty() {
                processed.insert(table.clone(), Value::Array(done));
            }
            if !left.is_empty() {
                unprocessed.insert(table.clone(), Value::Array(left));
            }
        }
        state.stats.throttled += throttled;
        let left: usize = unprocessed
            .values()
            .map(|v| v.as_array().map_or(0, Vec::len))
            .sum();
        state.stats.unprocessed += left as u64;
        if processed.is_empty() && throttled > 0 {
            return exceeded();
        }
        let mut answer = if processed.is_empty() {
            Answer::ok("{}".into())
        } else {
            let body = json!({ "RequestItems": processed }).to_string();
            let answer = self.primary.call("BatchWriteItem", &body);
            if answer.status != 200 {
                return answer;
            }
            for (at, before, after, index) in billed {
                let images = [before.as_ref(), after.as_ref()];
                self.bill_item(state, now, &at, images, &index, 1.0);
            }
            self.lag(state, now, "BatchWriteItem", body);
            answer
        };
        let mut out: Value = serde_json::from_str(&answer.body).unwrap_or_else(|_| json!({}));
        out["UnprocessedItems"] = Value::Object(unprocessed);
        answer.body = out.to_string();
        answer
    }

    fn batch_get(&self, state: &mut State, now: Instant, request: &Value) -> Answer {
        let mut asked = Map::new();
        let mut unprocessed = Map::new();
        let mut throttled = 0;
        let mut partitions = Vec::new();
        let empty = Map::new();
        for (table, spec) in request["RequestItems"].as_object().unwrap_or(&empty) {
            let Some(schema) = self.schema(state, table) else {
                return self.primary.call("BatchGetItem", &request.to_string());
            };
            let (mut take, mut left) = (Vec::new(), Vec::new());
            for key in spec["Keys"].as_array().into_iter().flatten() {
                let (_, at) = self.locate(&schema, table, key);
                let spent = self.read_spent(state, &at.partition, now);
                throttled += u64::from(spent);
                if spent || self.world.chance(self.world.config.faults.unprocessed) {
                    left.push(key.clone());
                } else {
                    take.push(key.clone());
                    partitions.push((at.partition, at.id, spec["ConsistentRead"] == true));
                }
            }
            let with = |keys: Vec<Value>| {
                let mut part = spec.clone();
                part["Keys"] = Value::Array(keys);
                part
            };
            if !take.is_empty() {
                asked.insert(table.clone(), with(take));
            }
            if !left.is_empty() {
                unprocessed.insert(table.clone(), with(left));
            }
        }
        state.stats.throttled += throttled;
        state.stats.unprocessed += unprocessed
            .values()
            .map(|v| v["Keys"].as_array().map_or(0, Vec::len) as u64)
            .sum::<u64>();
        if asked.is_empty() && throttled > 0 {
            return exceeded();
        }
        let mut out = if asked.is_empty() {
            json!({ "Responses": {} })
        } else {
            let body = json!({ "RequestItems": asked }).to_string();
            let answer = self.primary.call("BatchGetItem", &body);
            if answer.status != 200 {
                return answer;
            }
            serde_json::from_str(&answer.body).unwrap_or_else(|_| json!({}))
        };
        // Billed per item found, each at least a unit (as a batch read is).
        let found: Vec<usize> = out["Responses"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .flat_map(|items| items.as_array().into_iter().flatten())
            .map(item_size)
            .collect();
        for (i, (partition, id, consistent)) in partitions.iter().enumerate() {
            let size = found.get(i).copied().unwrap_or(0);
            let units = read_units(size, *consistent);
            self.bill_read(state, now, partition, units);
            *state.stats.item_reads.entry(id.clone()).or_default() += units;
        }
        out["UnprocessedKeys"] = Value::Object(unprocessed);
        Answer::ok(out.to_string())
    }

    fn transact(
        &self,
        state: &mut State,
        now: Instant,
        body: &str,
        request: &Value,
        took: std::time::Duration,
    ) -> Answer {
        let items = request["TransactItems"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // A token seen with the same items in the last ten minutes: the
        // transaction succeeded already, and is not applied again.
        let token = request["ClientRequestToken"].as_str().map(|token| {
            (
                token.to_owned(),
                stable_hash(&request["TransactItems"].to_string()),
            )
        });
        let untokened;
        let body = match &token {
            Some((token, digest)) => {
                forget_tokens(state, now);
                match state.tokens.get(token) {
                    Some((seen, _)) if seen == digest => return Answer::ok("{}".into()),
                    Some(_) => {
                        return Answer::error(
                            "IdempotentParameterMismatchException",
                            "The request uses the same client token as a previous, but non-identical request.",
                        )
                    }
                    None => {}
                }
                let mut request = request.clone();
                if let Some(fields) = request.as_object_mut() {
                    fields.remove("ClientRequestToken");
                }
                untokened = request.to_string();
                untokened.as_str()
            }
            None => body,
        };
        let mut located = Vec::new();
        for entry in &items {
            let Some((kind, action)) = entry.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            let table = action["TableName"].as_str().unwrap_or_default().to_owned();
            let Some(schema) = self.schema(state, &table) else {
                return self.primary.call("TransactWriteItems", body);
            };
            let item = if kind == "Put" {
                &action["Item"]
            } else {
                &action["Key"]
            };
            let (key, at) = self.locate(&schema, &table, item);
            located.push((kind.clone(), table, schema, key, at));
        }
        // The items as they are before: for the throttling check and the
        // bill (the larger of each item's images).
        let befores: Vec<Option<Value>> = located
            .iter()
            .map(|(_, table, _, key, _)| self.primary.item(table, key))
            .collect();
        let mut reasons = vec![json!({ "Code": "None" }); located.len()];
        let mut refused = None;
        for (i, (_, _, _, _, at)) in located.iter().enumerate() {
            if self.held(state, &at.id, now) {
                let held = shape_of("conflict on", &json!({ "Key": located[i].3 }));
                *state.stats.refused.entry(held).or_default() += 1;
                reasons[i] = json!({ "Code": "TransactionConflict", "Message": "Transaction is ongoing for the item" });
                refused = Some("conflict");
                break;
            }
            if self.write_spent(state, &at.partition, now) {
                reasons[i] = json!({ "Code": "ThrottlingError", "Message": "Throughput exceeds the current capacity of your table or index." });
                refused = Some("throttle");
                break;
            }
        }
        let mut answer = None;
        if refused.is_none() {
            // What the updates make of their items is known once applied:
            // an index that cannot take a change undoes them all.
            let applied = self.primary.call("TransactWriteItems", body);
            let afters: Vec<Option<Value>> = located
                .iter()
                .map(|(_, table, _, key, _)| self.primary.item(table, key))
                .collect();
            let index: Vec<Vec<String>> = located
                .iter()
                .zip(befores.iter().zip(&afters))
                .map(|((kind, table, schema, ..), (before, after))| {
                    if kind == "ConditionCheck" {
                        return Vec::new();
                    }
                    self.index_writes(schema, table, before.as_ref(), after.as_ref())
                })
                .collect();
            let spent = index.iter().position(|p| self.index_spent(state, now, p));
            if let Some(i) = spent {
                if applied.status == 200 {
                    for ((_, table, _, key, _), before) in located.iter().zip(&befores) {
                        self.restore(table, key, before.as_ref());
                    }
                }
                reasons[i] = json!({ "Code": "ThrottlingError", "Message": "Throughput exceeds the current capacity for one or more global secondary indexes." });
                refused = Some("throttle");
            } else {
                answer = Some((applied, afters, index));
            }
        }
        if let Some(why) = refused {
            if why == "conflict" {
                state.stats.conflicts += 1;
            } else {
                state.stats.throttled += 1;
            }
            let codes: Vec<&str> = reasons
                .iter()
                .map(|r| r["Code"].as_str().unwrap_or("None"))
                .collect();
            return Answer {
                status: 400,
                body: json!({
                    "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
                    "Message": format!("Transaction cancelled, please refer cancellation reasons for specific reasons [{}]", codes.join(", ")),
                    "CancellationReasons": reasons,
                })
                .to_string(),
            };
        }
        let (answer, afters, index) = answer.expect("applied unless refused");
        for (((kind, _, _, _, at), before), (after, index)) in
            located.iter().zip(&befores).zip(afters.iter().zip(&index))
        {
            if kind == "ConditionCheck" {
                self.bill_read(state, now, &at.partition, 2.0);
                continue;
            }
            let images = [before.as_ref(), after.as_ref()];
            self.bill_item(state, now, at, images, index, 2.0);
        }
        if answer.status == 200 {
            if let Some((token, digest)) = token {
                state.token_order.push_back((now, token.clone()));
                state.tokens.insert(token, (digest, now));
            }
            let until = now + took;
            for (_, _, _, _, at) in &located {
                state.holds.insert(at.id.clone(), until);
            }
            self.lag(state, now, "TransactWriteItems", body.to_owned());
        }
        if state.holds.len() > 100_000 {
            state.holds.retain(|_, until| *until > now);
        }
        answer
    }
}

/// A request refused for a spent partition.
fn exceeded() -> Answer {
    Answer::error(
        "ProvisionedThroughputExceededException",
        "The level of configured provisioned throughput for the table was exceeded.",
    )
}

/// The value a query's key condition gives attribute `name` (`#n = :v`
/// or `name = :v`), resolved through the request's names and values.
fn key_value(request: &Value, name: &str) -> Option<Value> {
    let condition = request["KeyConditionExpression"].as_str()?;
    let names = request["ExpressionAttributeNames"].as_object();
    let resolve = |token: &str| -> String {
        names
            .and_then(|n| n.get(token))
            .and_then(Value::as_str)
            .unwrap_or(token)
            .to_owned()
    };
    for clause in condition.split(" AND ").chain(condition.split(" and ")) {
        let Some((left, right)) = clause.split_once('=') else {
            continue;
        };
        let (left, right) = (
            left.trim().trim_start_matches('('),
            right.trim().trim_end_matches(')'),
        );
        if resolve(left) == name && right.starts_with(':') {
            return request["ExpressionAttributeValues"].get(right).cloned();
        }
    }
    None
}

/// `op` and the shape of the first key a request names, ids and numbers
/// replaced: `Query leases J#<id>#L#<n>`.
fn shape_of(op: &str, request: &Value) -> String {
    let key = match op {
        "Query" => {
            let index = request["IndexName"].as_str().unwrap_or("table");
            let pk = request["ExpressionAttributeValues"]
                .as_object()
                .and_then(|v| v.values().find_map(|v| v["S"].as_str()))
                .unwrap_or("");
            format!("{index} {pk}")
        }
        "GetItem" | "UpdateItem" | "DeleteItem" | "conflict on" => {
            request["Key"]["pk"]["S"].as_str().unwrap_or("").to_owned()
        }
        "PutItem" => request["Item"]["pk"]["S"].as_str().unwrap_or("").to_owned(),
        "TransactWriteItems" => request["TransactItems"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| {
                        let (kind, action) = i.as_object()?.iter().next()?;
                        let pk = action["Key"]["pk"]["S"]
                            .as_str()
                            .or_else(|| action["Item"]["pk"]["S"].as_str())?;
                        Some(format!("{kind}:{pk}"))
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
        "BatchGetItem" => request["RequestItems"]
            .as_object()
            .and_then(|t| t.values().next())
            .map(|spec| {
                let keys = spec["Keys"].as_array().map_or(&[][..], Vec::as_slice);
                let first = keys
                    .first()
                    .and_then(|k| k["pk"]["S"].as_str())
                    .unwrap_or("");
                let count = match keys.len() {
                    1 => "one key",
                    2 => "two keys",
                    3..=9 => "a few keys",
                    _ => "many keys",
                };
                format!("{first} ({count})")
            })
            .unwrap_or_default(),
        _ => String::new(),
    };
    let mut shape = String::with_capacity(op.len() + key.len() + 1);
    shape.push_str(op);
    shape.push(' ');
    let mut run = String::new();
    let flush = |run: &mut String, shape: &mut String| {
        if run.len() >= 8 {
            shape.push_str("<id>");
        } else if !run.is_empty() && run.chars().all(|c| c.is_ascii_digit()) {
            shape.push_str("<n>");
        } else {
            shape.push_str(run);
        }
        run.clear();
    };
    for c in key.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            run.push(c);
        } else {
            flush(&mut run, &mut shape);
            shape.push(c);
        }
    }
    flush(&mut run, &mut shape);
    shape
}
