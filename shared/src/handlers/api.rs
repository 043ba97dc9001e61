//! The API Lambda behind an IAM-authenticated function URL: lambda_http's
//! request in, `api::Api` answers, its JSON out. Nothing else happens here.

use crate::api::{Api, ApiRequest, Method};
use crate::aws::Clients;
use crate::config::{ConfigError, Settings};
use crate::events::EventBridgeEvents;
use crate::objects::S3Objects;
use crate::queue::{PrepareQueue, SqsQueue};
use crate::report::S3Reports;
use crate::store::dynamodb::DynamoStore;
use lambda_http::{Body, Request, RequestExt, Response};
use std::sync::Arc;

/// The API over the deployment's table, bucket and events queue.
pub async fn from_env() -> Result<Api, ConfigError> {
    let settings = Settings::from_env()?;
    let clients = Clients::load().await;
    let clock = crate::clock::Clock::system();
    Ok(Api {
        // A retry's requeue may create a counter shard: it expires too.
        store: Arc::new(
            DynamoStore::new(
                clients.dynamodb.clone(),
                &settings.state_table,
                !clients.emulated,
            )
            .with_retention_days(settings.retention_days)
            .with_clock(clock),
        ),
        objects: Arc::new(S3Objects::new(clients.s3.clone())),
        events: Arc::new(EventBridgeEvents {
            client: clients.eventbridge.clone(),
            bus: settings.event_bus_name.clone(),
        }),
        reports: Arc::new(S3Reports::new(
            clients.s3.clone(),
            settings.report_bucket.clone(),
            &settings.report_prefix,
        )),
        queue: Arc::new(SqsQueue::new(clients.sqs.clone(), &settings.queue_url)),
        prepare_queue: settings
            .prepare_queue_url
            .as_ref()
            .map(|url| Arc::new(SqsQueue::new(clients.sqs.clone(), url)) as Arc<dyn PrepareQueue>),
        max_workers: settings.max_workers,
        version: env!("CARGO_PKG_VERSION").into(),
        clock,
    })
}

/// The API's view of an HTTP request.
pub fn request_of(event: &Request) -> ApiRequest {
    let path = match event.raw_http_path() {
        "" => event.uri().path(),
        raw => raw,
    };
    let mut query: Vec<(String, String)> = event
        .query_string_parameters()
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // The map's order is arbitrary; error messages should not be.
    query.sort();
    ApiRequest {
        method: Method::parse(event.method().as_str()),
        path: path.to_owned(),
        query,
        body: event.body().to_vec(),
    }
}

pub async fn handle(api: &Api, event: Request) -> Result<Response<Body>, lambda_http::Error> {
    let response = api.handle(&request_of(&event)).await;
    let mut http = Response::builder()
        .status(response.status)
        .header("content-type", "application/json");
    for (name, value) in &response.headers {
        http = http.header(*name, value);
    }
    Ok(http.body(Body::Text(response.body.to_string()))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemoryEvents;
    use crate::objects::MemoryObjects;
    use crate::report::MemoryReports;
    use crate::store::memory::MemoryStore;
    use lambda_http::request::LambdaRequest;

    const JOB_ERRORS: &str = include_str!("../../../events/api-job-errors.json");
    const POST_ABORT: &str = include_str!("../../../events/api-abort.json");

    fn api() -> Api {
        Api {
            store: Arc::new(MemoryStore::new()),
            objects: Arc::new(MemoryObjects::default()),
            events: Arc::new(MemoryEvents::default()),
            reports: Arc::new(MemoryReports::default()),
            queue: Arc::new(crate::queue::MemoryQueue::default()),
            prepare_queue: None,
            max_workers: 2,
            version: "test".into(),
            clock: crate::clock::Clock::system(),
        }
    }

    fn event(json: &str) -> Request {
        let payload: LambdaRequest = serde_json::from_str(json).expect("a function URL event");
        Request::from(payload)
    }

    #[test]
    fn a_function_url_event_becomes_an_api_request() {
        let request = request_of(&event(JOB_ERRORS));
        assert_eq!(request.method, Method::Get);
        assert_eq!(
            request.path,
            "/jobs/3f2b8c0e9a7d4e51b6c2d1f0a9e8b7c6/errors"
        );
        assert_eq!(
            request.query,
            vec![
                ("cursor".to_owned(), "MC4w".to_owned()),
                ("limit".to_owned(), "50".to_owned())
            ]
        );
        let abort = request_of(&event(POST_ABORT));
        assert_eq!(abort.method, Method::Post);
        assert_eq!(abort.path, "/jobs/3f2b8c0e9a7d4e51b6c2d1f0a9e8b7c6/abort");
        assert_eq!(abort.body, br#"{"reason": "wrong file"}"#);
    }

    #[tokio::test]
    async fn the_handler_answers_json_with_the_status_of_the_api() {
        let response = handle(&api(), event(JOB_ERRORS)).await.unwrap();
        assert_eq!(response.status(), 404, "no such job in an empty store");
        assert_eq!(response.headers()["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(body["code"], "not_found");
    }
}
