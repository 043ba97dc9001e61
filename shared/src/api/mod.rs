//! The HTTP API other services use to watch and steer jobs (the `bulkimport`
//! operator commands as JSON): a plain async function from `ApiRequest` to
//! `ApiResponse` over the store and a few ports, so tests call it directly
//! and the Lambda only adapts its HTTP types (`handlers::api`). Every
//! endpoint, parameter, response and error is in `docs/openapi.yaml`.

mod failures;
mod jobs;
mod stats;

#[cfg(test)]
mod tests;

use crate::clock::Clock;
use crate::events::JobEvents;
use crate::objects::ObjectVersions;
use crate::queue::{PrepareQueue, WorkQueue};
use crate::report::ReportSink;
use crate::store::JobStore;
use serde::Serialize;
use std::sync::Arc;

pub use failures::{Cursor, FailureRow, FailuresPage};
pub use stats::Stats;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    /// Any other method: every route answers it 405.
    Other(String),
}

impl Method {
    pub fn parse(method: &str) -> Method {
        match method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            other => Method::Other(other.to_owned()),
        }
    }
}

/// A request as the API sees it: the path as sent (percent-encoded), the
/// query string's decoded pairs, and the body.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiRequest {
    pub fn get(path: &str) -> ApiRequest {
        ApiRequest {
            method: Method::Get,
            path: path.into(),
            query: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn post(path: &str) -> ApiRequest {
        ApiRequest {
            method: Method::Post,
            ..ApiRequest::get(path)
        }
    }

    pub fn with_query(mut self, name: &str, value: &str) -> ApiRequest {
        self.query.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> ApiRequest {
        self.body = body.into();
        self
    }
}

/// A status code, headers beyond `content-type` (`Allow` on a 405), and a
/// JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: serde_json::Value,
}

impl ApiResponse {
    fn ok(body: &impl Serialize) -> Result<ApiResponse, ApiError> {
        let body = serde_json::to_value(body).map_err(|e| ApiError::Internal(e.into()))?;
        Ok(ApiResponse {
            status: 200,
            headers: Vec::new(),
            body,
        })
    }

    /// The value of header `name`, if the response has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a client is told went wrong: a stable `code` and a message about
/// its request. Internal causes are logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    /// The path exists; `allow` is the method it takes.
    #[error("{message}")]
    MethodNotAllowed {
        message: String,
        allow: &'static str,
    },
    /// A page cursor of an earlier round of the job: a retry has changed
    /// its failures since.
    #[error("{0}")]
    CursorExpired(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Conflict(_) => "conflict",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::CursorExpired(_) => "cursor_expired",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound(_) => 404,
            ApiError::BadRequest(_) => 400,
            ApiError::Conflict(_) => 409,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::CursorExpired(_) => 410,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }

    fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ApiError {
        ApiError::Internal(e.into())
    }

    fn response(&self) -> ApiResponse {
        let message = match self {
            ApiError::Internal(_) => {
                "internal error; the cause is in the API function's log".into()
            }
            other => other.to_string(),
        };
        let headers = match self {
            // RFC 9110, 15.5.6: a 405 says which methods the path takes.
            ApiError::MethodNotAllowed { allow, .. } => vec![("allow", (*allow).to_owned())],
            _ => Vec::new(),
        };
        ApiResponse {
            status: self.status(),
            headers,
            body: serde_json::json!({ "code": self.code(), "message": message }),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

/// The services the API reads and steers jobs through.
#[derive(Clone)]
pub struct Api {
    pub store: Arc<dyn JobStore>,
    /// Resolves `s3://bucket/key` to the job of the object's current version.
    pub objects: Arc<dyn ObjectVersions>,
    /// An abort announces the job's end like any finalization.
    pub events: Arc<dyn JobEvents>,
    /// An abort writes the report of the failures known so far.
    pub reports: Arc<dyn ReportSink>,
    /// A retry wakes workers here, and continues an unfinished prepare
    /// through the prepare queue (`None`: the next sweep does).
    pub queue: Arc<dyn WorkQueue>,
    pub prepare_queue: Option<Arc<dyn PrepareQueue>>,
    /// Workers a retry wakes at most.
    pub max_workers: u32,
    /// Reported by `GET /health`.
    pub version: String,
    /// Ages in job views, endings, retries, and request timings.
    pub clock: Clock,
}

/// The routes, by path shape; `{id}` is a job id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Jobs,
    Job,
    JobErrors,
    JobAbort,
    JobRetry,
    Stats,
    Health,
}

impl Route {
    fn template(self) -> &'static str {
        match self {
            Route::Jobs => "/jobs",
            Route::Job => "/jobs/{id}",
            Route::JobErrors => "/jobs/{id}/errors",
            Route::JobAbort => "/jobs/{id}/abort",
            Route::JobRetry => "/jobs/{id}/retry",
            Route::Stats => "/stats",
            Route::Health => "/health",
        }
    }

    fn method(self) -> Method {
        match self {
            Route::JobAbort | Route::JobRetry => Method::Post,
            _ => Method::Get,
        }
    }

    /// Query parameters the route takes; any other is refused.
    fn parameters(self) -> &'static [&'static str] {
        match self {
            Route::Jobs => &["status", "kind", "limit", "source"],
            Route::JobErrors => &["limit", "cursor"],
            _ => &[],
        }
    }
}

/// The route and the job id of a path (`None` when no route has its shape).
fn route(path: &str) -> Result<Option<(Route, Option<String>)>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let id = |segment: &str| {
        percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .map(|s| Some(s.into_owned()))
            .map_err(|_| ApiError::BadRequest("the job id is not valid UTF-8".into()))
    };
    Ok(Some(match segments.as_slice() {
        ["jobs"] => (Route::Jobs, None),
        ["jobs", job] => (Route::Job, id(job)?),
        ["jobs", job, "errors"] => (Route::JobErrors, id(job)?),
        ["jobs", job, "abort"] => (Route::JobAbort, id(job)?),
        ["jobs", job, "retry"] => (Route::JobRetry, id(job)?),
        ["stats"] => (Route::Stats, None),
        ["health"] => (Route::Health, None),
        _ => return Ok(None),
    }))
}

/// Whether a path's id has the shape of a job id (`JobId::for_object`: 32
/// lowercase hex digits). No job has another, so such a path is answered
/// 404 without a read, which DynamoDB would refuse with a validation error
/// (a 500) when the key is over its 2 KB limit.
fn is_job_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A request's query parameters, checked against what its route takes.
pub(crate) struct Query<'a>(&'a [(String, String)]);

impl<'a> Query<'a> {
    fn checked(pairs: &'a [(String, String)], allowed: &[&str]) -> Result<Self, ApiError> {
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::BadRequest(if allowed.is_empty() {
                    format!("unknown parameter {name:?}: this endpoint takes none")
                } else {
                    format!(
                        "unknown parameter {name:?}; this endpoint takes {}",
                        allowed.join(", ")
                    )
                }));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::BadRequest(format!(
                    "parameter {name:?} is repeated"
                )));
            }
        }
        Ok(Query(pairs))
    }

    /// The value of parameter `name`; an empty value (`status=`) is the
    /// same as none, as the API document says.
    pub(crate) fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// `limit`: 1 to `max`, `default` when absent.
    pub(crate) fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::BadRequest(format!(
                    "limit must be a whole number from 1 to {max}, not {text:?}"
                ))),
            },
        }
    }
}

impl Api {
    /// Answers one request. Never fails: errors become their JSON answer.
    pub async fn handle(&self, request: &ApiRequest) -> ApiResponse {
        let started = self.clock.instant();
        let (route, result) = match route(&request.path) {
            Err(e) => (None, Err(e)),
            Ok(None) => (
                None,
                Err(ApiError::NotFound(format!("no endpoint {}", request.path))),
            ),
            Ok(Some((route, id))) => (Some(route), self.dispatch(route, id, request).await),
        };
        let template = route.map_or("(none)", Route::template);
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                if let ApiError::Internal(_) = e {
                    let error = crate::telemetry::error_chain(&e);
                    tracing::error!(route = template, %error, "request failed");
                }
                e.response()
            }
        };
        tracing::info!(
            method = ?request.method,
            route = template,
            status = response.status,
            ms = self.clock.since(started).as_millis() as u64,
            "request"
        );
        response
    }

    async fn dispatch(
        &self,
        route: Route,
        id: Option<String>,
        request: &ApiRequest,
    ) -> Result<ApiResponse, ApiError> {
        if request.method != route.method() {
            let allowed = match route.method() {
                Method::Post => "POST",
                _ => "GET",
            };
            return Err(ApiError::MethodNotAllowed {
                message: format!("{} takes {allowed} only", route.template()),
                allow: allowed,
            });
        }
        let query = Query::checked(&request.query, route.parameters())?;
        let id = match id {
            Some(id) if !is_job_id(&id) => {
                return Err(ApiError::NotFound(format!("no job {id}")));
            }
            id => crate::job::JobId::new(id.unwrap_or_default()),
        };
        match route {
            Route::Jobs => ApiResponse::ok(&self.list_jobs(&query).await?),
            Route::Job => ApiResponse::ok(&self.job_view(&id).await?),
            Route::JobErrors => ApiResponse::ok(&self.failures(&id, &query).await?),
            Route::JobAbort => ApiResponse::ok(&self.abort(&id, &request.body).await?),
            Route::JobRetry => ApiResponse::ok(&self.retry(&id).await?),
            Route::Stats => ApiResponse::ok(&self.stats().await?),
            Route::Health => ApiResponse::ok(&self.health().await?),
        }
    }
}
