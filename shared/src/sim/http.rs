//! The SDK's way into the simulated world: an HTTP client that hands each
//! request to the service it is for, in process, and the world's clock as
//! the SDK's time source (request signing, retry timers).

use super::engine::Answer;
use super::SimAws;
use crate::clock::Clock;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use std::time::{Duration, SystemTime};

#[derive(Clone)]
pub(super) struct SimHttp {
    aws: SimAws,
    /// Straight to the data (`SimAws::direct_clients`).
    direct: bool,
    /// Where the DynamoDB requests sent through these clients are counted.
    counted: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
}

impl std::fmt::Debug for SimHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimHttp")
    }
}

impl SimHttp {
    pub(super) fn shared(
        aws: SimAws,
        direct: bool,
        counted: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> SharedHttpClient {
        SharedHttpClient::new(SimHttp {
            aws,
            direct,
            counted,
        })
    }
}

impl HttpClient for SimHttp {
    fn http_connector(
        &self,
        _: &HttpConnectorSettings,
        _: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for SimHttp {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (aws, direct, counted) = (self.aws.clone(), self.direct, self.counted.clone());
        let target = request
            .headers()
            .get("x-amz-target")
            .unwrap_or_default()
            .to_owned();
        let body = request
            .body()
            .bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        HttpConnectorFuture::new(async move {
            let (answer, content_type) = if let Some(op) = target.strip_prefix("DynamoDB_20120810.")
            {
                if let Some(counted) = &counted {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let answer = if direct {
                    aws.dynamodb.serve_direct(op, &body)
                } else {
                    aws.dynamodb.serve(op, &body).await
                };
                (answer, "application/x-amz-json-1.0")
            } else if let Some(op) = target.strip_prefix("AmazonSQS.") {
                (aws.sqs.serve(op, &body).await, "application/x-amz-json-1.0")
            } else {
                (
                    Answer {
                        status: 501,
                        body: format!("the simulated AWS does not serve {target:?}"),
                    },
                    "text/plain",
                )
            };
            let mut response = HttpResponse::new(
                StatusCode::try_from(answer.status).expect("a valid status"),
                SdkBody::from(answer.body),
            );
            response.headers_mut().insert("content-type", content_type);
            Ok(response)
        })
    }
}

/// The world's wall clock as the SDK reads it.
#[derive(Debug)]
pub(super) struct SimTime(pub(super) Clock);

impl aws_smithy_async::time::TimeSource for SimTime {
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.0.now_ms().max(0) as u64)
    }
}
