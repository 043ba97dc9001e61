//! Fault injection for resilience tests: an HTTP client wrapper that answers
//! a share of DynamoDB requests itself, without sending them, with the
//! errors DynamoDB returns under load (throttling, 500s, transactions
//! cancelled by a conflict, single-item writes turned away because a
//! transaction holds the item). Off unless `BULKIMPORT_FAULT_RATE` is set.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use rand::Rng;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where injected faults are counted: in memory, and one line each in the
/// file named by `BULKIMPORT_FAULT_LOG` (so a killed process's count survives).
#[derive(Debug, Default)]
pub struct FaultCounter {
    pub injected: AtomicU64,
    log: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub struct FaultyClient {
    inner: SharedHttpClient,
    rate: f64,
    counter: Arc<FaultCounter>,
}

impl FaultyClient {
    /// Wraps `inner` when `BULKIMPORT_FAULT_RATE` is a share in (0, 1].
    pub fn from_env(inner: SharedHttpClient) -> SharedHttpClient {
        let rate = std::env::var("BULKIMPORT_FAULT_RATE")
            .ok()
            .and_then(|r| r.parse::<f64>().ok())
            .unwrap_or(0.0);
        if rate <= 0.0 {
            return inner;
        }
        let counter = Arc::new(FaultCounter {
            injected: AtomicU64::new(0),
            log: std::env::var_os("BULKIMPORT_FAULT_LOG").map(Into::into),
        });
        SharedHttpClient::new(FaultyClient {
            inner,
            rate: rate.min(1.0),
            counter,
        })
    }
}

impl HttpClient for FaultyClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(FaultyConnector {
            inner: self.inner.http_connector(settings, components),
            rate: self.rate,
            counter: self.counter.clone(),
        })
    }
}

#[derive(Debug)]
struct FaultyConnector {
    inner: SharedHttpConnector,
    rate: f64,
    counter: Arc<FaultCounter>,
}

impl HttpConnector for FaultyConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request
            .headers()
            .get("x-amz-target")
            .unwrap_or_default()
            .to_owned();
        if !target.starts_with("DynamoDB_") || !rand::rng().random_bool(self.rate) {
            return self.inner.call(request);
        }
        self.counter.injected.fetch_add(1, Ordering::Relaxed);
        if let Some(path) = &self.counter.log {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{target}");
            }
        }
        let (status, body) = fault_for(&target);
        HttpConnectorFuture::ready(Ok(response(status, body)))
    }
}

fn fault_for(target: &str) -> (u16, &'static str) {
    const THROTTLED: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#;
    const INTERNAL: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"Internal server error"}"#;
    const CONFLICT: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","message":"Transaction cancelled, please refer cancellation reasons for specific reasons [TransactionConflict]","CancellationReasons":[{"Code":"TransactionConflict","Message":"Transaction is ongoing for the item"},{"Code":"None"}]}"#;
    const ITEM_HELD: &str = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionConflictException","message":"Transaction is ongoing for the item"}"#;
    let single_write = [".PutItem", ".UpdateItem", ".DeleteItem"]
        .iter()
        .any(|op| target.ends_with(op));
    let roll = rand::rng().random_range(0..10);
    if target.ends_with(".TransactWriteItems") && roll < 4 {
        (400, CONFLICT)
    } else if single_write && roll < 4 {
        (400, ITEM_HELD)
    } else if roll < 8 {
        (400, THROTTLED)
    } else {
        (500, INTERNAL)
    }
}

fn response(status: u16, body: &'static str) -> HttpResponse {
    let mut response = HttpResponse::new(
        StatusCode::try_from(status).expect("valid status"),
        SdkBody::from(body),
    );
    response
        .headers_mut()
        .insert("content-type", "application/x-amz-json-1.0");
    response
}
