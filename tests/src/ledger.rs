//! A write ledger for benchmarks: an HTTP client wrapper that reads every
//! DynamoDB write request on its way out and tallies it per item and per
//! partition (table and `leases` index), the way DynamoDB meters write
//! capacity. It sees requests, not the store's intentions, so it measures
//! the protocol from outside. Attempts are counted, refused ones included:
//! DynamoDB bills a failed conditional write too.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct Tally {
    /// Write requests per item (table, pk, sk).
    pub item_writes: HashMap<(String, String, String), u64>,
    /// Write units per table partition (table, pk).
    pub partition_units: HashMap<(String, String), f64>,
    /// Write units per index partition (table, gpk).
    pub index_units: HashMap<(String, String), f64>,
    /// Index partition of each item, learned from the puts that created it.
    gpk_of: HashMap<(String, String, String), String>,
    /// Write requests.
    pub requests: u64,
    /// Write requests by the tables they write (one request can count for
    /// several tables).
    pub table_requests: HashMap<String, u64>,
    /// Every DynamoDB request, reads included, by operation.
    pub operations: HashMap<String, u64>,
    /// Read requests (GetItem, BatchGetItem, Query) by the tables they read.
    pub table_reads: HashMap<String, u64>,
    /// Every S3 request, by operation (`PutObject`, `ListObjectsV2`,
    /// `GetObject`, or the method of another).
    pub s3_operations: HashMap<String, u64>,
    /// Each item write as it was sent: wall-clock milliseconds, table,
    /// write units.
    pub timeline: Vec<(i64, String, f64)>,
}

#[derive(Debug, Clone, Default)]
pub struct Ledger {
    tally: Arc<Mutex<Tally>>,
}

impl Ledger {
    pub fn wrap(&self, inner: SharedHttpClient) -> SharedHttpClient {
        SharedHttpClient::new(LedgerClient {
            inner,
            ledger: self.clone(),
        })
    }

    pub fn with<T>(&self, f: impl FnOnce(&Tally) -> T) -> T {
        f(&self.tally.lock().expect("ledger poisoned"))
    }

    fn record(&self, operation: &str, body: &Value) {
        let mut t = self.tally.lock().expect("ledger poisoned");
        *t.operations.entry(operation.to_owned()).or_default() += 1;
        let read: Vec<String> = match operation {
            "GetItem" | "Query" => vec![table(body)],
            "BatchGetItem" => body["RequestItems"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, _)| name.clone())
                .collect(),
            _ => vec![],
        };
        for name in read {
            *t.table_reads.entry(name).or_default() += 1;
        }
        let writes: Vec<(String, &Value, Write)> = match operation {
            "PutItem" => vec![(table(body), body, Write::put(body))],
            "UpdateItem" | "DeleteItem" => vec![(table(body), body, Write::update(body))],
            "BatchWriteItem" => body["RequestItems"]
                .as_object()
                .into_iter()
                .flatten()
                .flat_map(|(name, requests)| {
                    requests.as_array().into_iter().flatten().filter_map(|r| {
                        let put = r.get("PutRequest")?;
                        Some((name.clone(), put, Write::put(put)))
                    })
                })
                .collect(),
            "TransactWriteItems" => body["TransactItems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|entry| {
                    let (kind, action) = entry.as_object()?.iter().next()?;
                    let write = match kind.as_str() {
                        "Put" => Write::put(action),
                        _ => Write::update(action),
                    };
                    Some((table(action), action, write.transactional()))
                })
                .collect(),
            _ => return,
        };
        t.requests += 1;
        let mut tables: Vec<&String> = writes.iter().map(|(table, _, _)| table).collect();
        tables.sort();
        tables.dedup();
        for table in tables {
            *t.table_requests.entry(table.clone()).or_default() += 1;
        }
        let sent_ms = bulk_import::job::now_ms();
        for (table, action, write) in writes {
            t.timeline.push((sent_ms, table.clone(), write.units));
            let (pk, sk) = key_of(action);
            let item = (table.clone(), pk.clone(), sk);
            *t.item_writes.entry(item.clone()).or_default() += 1;
            *t.partition_units.entry((table.clone(), pk)).or_default() += write.units;
            if let Some(gpk) = &write.new_gpk {
                t.gpk_of.insert(item.clone(), gpk.clone());
            }
            if write.index_units > 0.0 {
                let gpk = write
                    .new_gpk
                    .clone()
                    .or_else(|| t.gpk_of.get(&item).cloned());
                if let Some(gpk) = gpk {
                    *t.index_units.entry((table, gpk)).or_default() += write.index_units;
                }
            }
        }
    }
}

/// What one write costs: table units, and units in the index partition.
struct Write {
    units: f64,
    index_units: f64,
    new_gpk: Option<String>,
}

impl Write {
    fn put(action: &Value) -> Write {
        let item = &action["Item"];
        let size: usize = item
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, v)| name.len() + value_size(v))
            .sum();
        let new_gpk = item["gpk"]["S"].as_str().map(str::to_owned);
        Write {
            units: size.max(1).div_ceil(1024) as f64,
            index_units: if new_gpk.is_some() { 1.0 } else { 0.0 },
            new_gpk,
        }
    }

    /// The store's updates touch small items (under 1 KB): one unit; an
    /// update that writes more (a processor's, such as a vector) is billed
    /// at least the size of what it writes, key included. An update that
    /// sets the index's sort key moves the entry (delete + put); one that
    /// removes it deletes the entry.
    fn update(action: &Value) -> Write {
        let written: usize = ["Key", "ExpressionAttributeValues"]
            .iter()
            .flat_map(|part| action[*part].as_object().into_iter().flatten())
            .map(|(name, v)| name.len() + value_size(v))
            .sum::<usize>()
            + action["ExpressionAttributeNames"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, v)| v.as_str().map_or(0, str::len))
                .sum::<usize>();
        let expression = action["UpdateExpression"].as_str().unwrap_or_default();
        let (set, remove) = match expression.find("REMOVE") {
            Some(at) => (&expression[..at], &expression[at..]),
            None => (expression, ""),
        };
        let names = &action["ExpressionAttributeNames"];
        let mentions = |part: &str, attr: &str| {
            part.split(|c: char| !(c.is_alphanumeric() || c == '#'))
                .any(|w| w == attr || names[w].as_str() == Some(attr))
        };
        let index_units = if mentions(remove, "gsk") {
            1.0
        } else if mentions(set, "gsk") {
            2.0
        } else {
            0.0
        };
        Write {
            units: written.max(1).div_ceil(1024) as f64,
            index_units,
            new_gpk: None,
        }
    }

    fn transactional(mut self) -> Write {
        self.units *= 2.0;
        self
    }
}

fn table(action: &Value) -> String {
    action["TableName"].as_str().unwrap_or_default().to_owned()
}

fn key_of(action: &Value) -> (String, String) {
    let source = if action.get("Key").is_some() {
        &action["Key"]
    } else {
        &action["Item"]
    };
    let part = |name: &str| {
        let v = &source[name];
        v["S"]
            .as_str()
            .or_else(|| v["N"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    (part("pk"), part("sk"))
}

fn value_size(v: &Value) -> usize {
    let Some((kind, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    match kind.as_str() {
        "S" => inner.as_str().map_or(0, str::len),
        "N" => inner.as_str().map_or(0, |n| n.len().div_ceil(2) + 1),
        "B" => inner.as_str().map_or(0, |b| b.len() * 3 / 4),
        "M" => inner.as_object().map_or(3, |m| {
            3 + m
                .iter()
                .map(|(k, e)| 1 + k.len() + value_size(e))
                .sum::<usize>()
        }),
        "L" => inner.as_array().map_or(3, |l| {
            3 + l.iter().map(|e| 1 + value_size(e)).sum::<usize>()
        }),
        _ => 1,
    }
}

#[derive(Debug)]
struct LedgerClient {
    inner: SharedHttpClient,
    ledger: Ledger,
}

impl HttpClient for LedgerClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(LedgerConnector {
            inner: self.inner.http_connector(settings, components),
            ledger: self.ledger.clone(),
        })
    }
}

#[derive(Debug)]
struct LedgerConnector {
    inner: SharedHttpConnector,
    ledger: Ledger,
}

impl HttpConnector for LedgerConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        // S3's REST calls carry no target (SQS's and EventBridge's JSON ones do).
        if target.is_empty() && request.headers().get("x-amz-content-sha256").is_some() {
            let operation = match (request.method(), request.uri()) {
                ("PUT", _) => "PutObject".to_owned(),
                ("GET", uri) if uri.contains("list-type=2") => "ListObjectsV2".to_owned(),
                ("GET", _) => "GetObject".to_owned(),
                (method, _) => method.to_owned(),
            };
            let mut t = self.ledger.tally.lock().expect("ledger poisoned");
            *t.s3_operations.entry(operation).or_default() += 1;
        }
        if let Some(operation) = target.strip_prefix("DynamoDB_20120810.") {
            if let Some(body) = request
                .body()
                .bytes()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
            {
                self.ledger.record(operation, &body);
            }
        }
        self.inner.call(request)
    }
}
