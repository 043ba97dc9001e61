//! Checking the API's answers against docs/openapi.yaml: each response
//! must have a status the document lists for its path and method (404 for
//! a path it does not have, 405 naming the documented methods for a
//! method it does not have), the headers it promises, and a body valid
//! against that response's JSON schema.

use bulk_import::api::{Api, ApiRequest, ApiResponse, Method};
use serde_json::{json, Value};
use std::sync::OnceLock;

const OPENAPI: &str = include_str!("../../../docs/openapi.yaml");

fn openapi() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_norway::from_str(OPENAPI).expect("docs/openapi.yaml parses"))
}

/// One key as a segment of a JSON pointer in a URI fragment.
fn escape(key: &str) -> String {
    key.replace('~', "~0")
        .replace('/', "~1")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

/// The documented path template `path` falls under (`/jobs/{id}` for
/// `/jobs/abc`).
fn template_of(path: &str) -> Option<String> {
    let wanted: Vec<&str> = path.trim_matches('/').split('/').collect();
    openapi()["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .find(|template| {
            let parts: Vec<&str> = template.trim_matches('/').split('/').collect();
            parts.len() == wanted.len()
                && parts
                    .iter()
                    .zip(&wanted)
                    .all(|(p, w)| p == w || (p.starts_with('{') && p.ends_with('}')))
        })
        .cloned()
}

/// Asserts `response` is what the document promises for `request`: a
/// documented status of that operation (404 for a path it does not
/// have), and a body valid against that response's schema.
fn assert_documented(request: &ApiRequest, response: &ApiResponse) {
    let doc = openapi();
    let status = response.status.to_string();
    let Some(template) = template_of(&request.path) else {
        assert_eq!(
            response.status, 404,
            "{} is no documented path",
            request.path
        );
        return validate("#/components/schemas/Error", &response.body);
    };
    let method = match &request.method {
        Method::Get => "get".to_owned(),
        Method::Post => "post".to_owned(),
        Method::Other(m) => m.to_ascii_lowercase(),
    };
    let operation = &doc["paths"][&template];
    if operation.get(&method).is_none() {
        assert_eq!(
            response.status, 405,
            "{method} {template} is not documented"
        );
        let allowed: Vec<String> = ["get", "post"]
            .into_iter()
            .filter(|m| operation.get(m).is_some())
            .map(str::to_ascii_uppercase)
            .collect();
        assert_eq!(
            response.header("allow"),
            Some(allowed.join(", ").as_str()),
            "a 405 names the documented methods"
        );
        return validate("#/components/schemas/Error", &response.body);
    }
    let mut pointer = format!("#/paths/{}/{method}/responses/{status}", escape(&template));
    let mut documented = &operation[&method]["responses"][&status];
    if let Some(reference) = documented.get("$ref").and_then(Value::as_str) {
        pointer = reference.to_owned();
        documented = doc
            .pointer(reference.trim_start_matches('#'))
            .expect("the response $ref resolves");
    }
    assert!(
        documented.is_object(),
        "{method} {template} answered {status}, which the document does not list: {}",
        response.body
    );
    assert!(
        documented["content"]["application/json"]["schema"].is_object(),
        "{pointer} has no JSON schema"
    );
    if let Some(headers) = documented.get("headers").and_then(Value::as_object) {
        for (name, header) in headers {
            if header["required"] == Value::Bool(true) {
                assert!(
                    response.header(name).is_some(),
                    "{pointer} promises the {name} header"
                );
            }
        }
    }
    validate(
        &format!("{pointer}/content/application~1json/schema"),
        &response.body,
    );
}

/// Validates `body` against the schema at `pointer` in the document (the
/// whole document is the root, so its `$ref`s resolve).
fn validate(pointer: &str, body: &Value) {
    let mut root = openapi().clone();
    root["$ref"] = json!(pointer);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .unwrap_or_else(|e| panic!("the schema at {pointer} compiles: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "response does not match {pointer}: {errors:#?}\n{body:#}"
    );
}

/// Calls the API and checks the answer against the document.
pub(super) async fn call(api: &Api, request: ApiRequest) -> (u16, Value) {
    let response = api.handle(&request).await;
    assert_documented(&request, &response);
    (response.status, response.body)
}
