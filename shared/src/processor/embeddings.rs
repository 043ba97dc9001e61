//! Processor type `embeddings`: each record's text (a field, or a template
//! over fields) is sent to an Amazon Bedrock embedding model
//! (`InvokeModel`), and the vector is stored on the record's item in a
//! DynamoDB table, keyed by the definition's `keyField`, beside the
//! record's fields. Models: Titan Text Embeddings V2 (`dimensions`,
//! `normalize`), Titan Text Embeddings V1, and Cohere Embed.
//!
//! The model calls of one process for a definition are limited to
//! `concurrency` in flight, whatever the batches and jobs it works on (a
//! fleet of N workers makes at most N times that). Throttling is retried by the SDK with backoff,
//! then by the worker (the record fails retryably); a text the model
//! refuses fails its record permanently with the model's reason.

use super::dynamodb::attribute;
use super::registry::{self, Built, Deployment, Fields, ProcessorSettings, ProcessorType};
use super::{ProcessContext, ProcessError, RecordProcessor};
use crate::schema::ValidRecord;
use async_trait::async_trait;
use aws_sdk_bedrockruntime::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::stream::{self, StreamExt};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub(super) const TYPE: ProcessorType = ProcessorType {
    name: "embeddings",
    check,
    build,
    needs: "TARGET_TABLE",
    finishes_jobs: false,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Settings {
    /// A model id (`amazon.titan-embed-text-v2:0`) or ARN.
    model: String,
    /// The field whose text is embedded...
    #[serde(default)]
    text: Option<String>,
    /// ...or a template over fields: `"{title}: {description}"`.
    #[serde(default)]
    template: Option<String>,
    /// Titan V2: 256, 512 or 1024 (the model's default).
    #[serde(default)]
    dimensions: Option<u32>,
    /// Titan V2: unit vectors (the model's default).
    #[serde(default)]
    normalize: Option<bool>,
    /// Where the items go (the deployment's `TARGET_TABLE` when not given).
    #[serde(default)]
    table: Option<String>,
    /// The attribute that holds the vector.
    #[serde(default = "default_attribute")]
    attribute: String,
    /// How the vector is stored.
    #[serde(default)]
    encoding: VectorEncoding,
    /// Model calls of this process in flight at once.
    #[serde(default = "default_concurrency")]
    concurrency: usize,
}

/// How a vector is stored on its item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorEncoding {
    /// A list of numbers (L of N): readable anywhere, about 14 bytes a
    /// dimension.
    #[default]
    Numbers,
    /// Binary (B): each dimension a little-endian IEEE 754 float32, 4
    /// bytes a dimension (a 512-dimension vector is 2 KB: 2 write units
    /// instead of 7).
    Float32,
}

impl VectorEncoding {
    /// `vector` as an attribute value.
    pub fn encode(self, vector: &[f64]) -> AttributeValue {
        match self {
            VectorEncoding::Numbers => AttributeValue::L(
                vector
                    .iter()
                    .map(|x| AttributeValue::N(x.to_string()))
                    .collect(),
            ),
            VectorEncoding::Float32 => AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(
                vector
                    .iter()
                    .flat_map(|x| (*x as f32).to_le_bytes())
                    .collect::<Vec<u8>>(),
            )),
        }
    }
}

fn default_attribute() -> String {
    "embedding".into()
}

fn default_concurrency() -> usize {
    8
}

/// The model families, by how they are called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    TitanV2,
    TitanV1,
    Cohere,
}

fn family(model: &str) -> Option<Family> {
    // An ARN ends with the model id.
    let id = model.rsplit('/').next().unwrap_or(model);
    if id.starts_with("amazon.titan-embed-text-v2") {
        Some(Family::TitanV2)
    } else if id.starts_with("amazon.titan-embed-text-v1")
        || id.starts_with("amazon.titan-embed-g1-text")
    {
        Some(Family::TitanV1)
    } else if id.starts_with("cohere.embed-") {
        Some(Family::Cohere)
    } else {
        None
    }
}

/// The pieces of a template: text, and field names between braces.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Field(String),
}

fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in {template:?}"))?;
        let name = after[..close].trim();
        if name.is_empty() {
            return Err(format!("empty {{}} in {template:?}"));
        }
        pieces.push(Piece::Field(name.to_owned()));
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unopened }} in {template:?}"));
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

fn check(settings: &ProcessorSettings, fields: &Fields<'_>) -> Result<(), (String, String)> {
    let s: Settings = registry::parse(settings)?;
    let Some(family) = family(&s.model) else {
        return Err((
            "model".into(),
            format!(
                "{:?} is not an embedding model this processor calls (amazon.titan-embed-text-v2, amazon.titan-embed-text-v1, cohere.embed-*)",
                s.model
            ),
        ));
    };
    match (&s.text, &s.template) {
        (Some(field), None) => fields.require("text", field)?,
        (None, Some(template)) => {
            let pieces = parse_template(template).map_err(|m| ("template".to_owned(), m))?;
            for piece in &pieces {
                if let Piece::Field(name) = piece {
                    fields.require("template", name)?;
                }
            }
        }
        _ => return Err((
            "text".into(),
            "give the field to embed (text) or a template over fields (template), one of the two"
                .into(),
        )),
    }
    if fields.key_field.is_none() {
        return Err((
            String::new(),
            "the embeddings processor stores each vector on the record's item: the definition needs a keyField".into(),
        ));
    }
    match (family, s.dimensions) {
        (_, None) | (Family::TitanV2, Some(256 | 512 | 1024)) => {}
        (Family::TitanV2, Some(d)) => {
            return Err((
                "dimensions".into(),
                format!("{d}: Titan V2 makes 256, 512 or 1024"),
            ))
        }
        (_, Some(_)) => return Err(("dimensions".into(), "only Titan V2 takes dimensions".into())),
    }
    if !(1..=256).contains(&s.concurrency) {
        return Err(("concurrency".into(), "must be between 1 and 256".into()));
    }
    if fields.fields.iter().any(|f| f.name == s.attribute) {
        return Err((
            "attribute".into(),
            format!(
                "{:?} is also a field: name the vector's attribute otherwise",
                s.attribute
            ),
        ));
    }
    Ok(())
}

fn build(settings: &ProcessorSettings, deployment: &Deployment<'_>) -> Built {
    let s: Settings = registry::settings_of(settings)?;
    let Some(table) = s.table.clone().or(deployment.settings.target_table.clone()) else {
        return Ok(None);
    };
    let family = family(&s.model).expect("checked when the definition loaded");
    let pieces = match (&s.text, &s.template) {
        (Some(field), _) => vec![Piece::Field(field.clone())],
        (None, Some(t)) => parse_template(t).expect("checked when the definition loaded"),
        (None, None) => unreachable!("checked when the definition loaded"),
    };
    Ok(Some(Arc::new(Embeddings {
        bedrock: deployment.clients.bedrock.clone(),
        dynamodb: deployment.clients.dynamodb.clone(),
        table,
        family,
        pieces,
        in_flight: Semaphore::new(s.concurrency),
        settings: s,
    })))
}

pub struct Embeddings {
    bedrock: aws_sdk_bedrockruntime::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    family: Family,
    pieces: Vec<Piece>,
    /// Model calls in flight, across every batch of this process.
    in_flight: Semaphore,
    settings: Settings,
}

/// The model's answer: one vector (Titan) or a list of them (Cohere).
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    embedding: Option<Vec<f64>>,
    #[serde(default)]
    embeddings: Option<Vec<Vec<f64>>>,
}

impl Embeddings {
    /// The record's text; refused when none of its fields has a value
    /// (a template's own text alone is nothing to embed).
    fn text(&self, record: &ValidRecord) -> Result<String, ProcessError> {
        let mut text = String::new();
        let mut any = false;
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => text.push_str(t),
                Piece::Field(name) => {
                    let value = record.get(name).map(|v| v.to_string()).unwrap_or_default();
                    any |= !value.trim().is_empty();
                    text.push_str(&value);
                }
            }
        }
        if any {
            return Ok(text);
        }
        let names: Vec<&str> = self
            .pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Field(name) => Some(name.as_str()),
                Piece::Text(_) => None,
            })
            .collect();
        Err(ProcessError::permanent(format!(
            "nothing to embed: {} {} no value",
            names.join(", "),
            if names.len() == 1 { "has" } else { "have" }
        )))
    }

    fn request(&self, text: &str) -> serde_json::Value {
        let s = &self.settings;
        match self.family {
            Family::TitanV2 => {
                let mut body = serde_json::json!({ "inputText": text });
                if let Some(d) = s.dimensions {
                    body["dimensions"] = d.into();
                }
                if let Some(n) = s.normalize {
                    body["normalize"] = n.into();
                }
                body
            }
            Family::TitanV1 => serde_json::json!({ "inputText": text }),
            Family::Cohere => {
                serde_json::json!({ "texts": [text], "input_type": "search_document" })
            }
        }
    }

    /// The vector of `text`, with at most `concurrency` calls in flight.
    async fn embed(&self, text: &str) -> Result<Vec<f64>, ProcessError> {
        let body = serde_json::to_vec(&self.request(text)).expect("requests serialize");
        let sent = {
            let _permit = self.in_flight.acquire().await.expect("never closed");
            self.bedrock
                .invoke_model()
                .model_id(&self.settings.model)
                .content_type("application/json")
                .accept("application/json")
                .body(Blob::new(body))
                .send()
                .await
        };
        let out = sent.map_err(|e| classify(&self.settings.model, e))?;
        let answer: Answer = serde_json::from_slice(out.body().as_ref()).map_err(|e| {
            ProcessError::retryable_from(
                format!(
                    "{} answered something else than a vector",
                    self.settings.model
                ),
                e,
            )
        })?;
        answer
            .embedding
            .or_else(|| {
                answer
                    .embeddings
                    .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)))
            })
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                ProcessError::retryable(format!("{} answered no vector", self.settings.model))
            })
    }

    /// Stores the record's fields and `vector` on its item.
    async fn store(
        &self,
        record: &ValidRecord,
        key_field: &str,
        vector: Vec<f64>,
    ) -> Result<(), ProcessError> {
        let key = record
            .get(key_field)
            .map(|v| v.to_string())
            .ok_or_else(|| {
                ProcessError::permanent(format!("key field {key_field} has no value"))
            })?;
        let mut sets = Vec::new();
        let mut names = HashMap::new();
        let mut values = HashMap::new();
        for (i, (name, value)) in record.iter().filter(|(n, _)| *n != key_field).enumerate() {
            let value = attribute(value)
                .map_err(|problem| ProcessError::permanent(format!("field {name}: {problem}")))?;
            sets.push(format!("#f{i} = :f{i}"));
            names.insert(format!("#f{i}"), name.to_owned());
            values.insert(format!(":f{i}"), value);
        }
        sets.push("#vector = :vector".into());
        names.insert("#vector".into(), self.settings.attribute.clone());
        values.insert(":vector".into(), self.settings.encoding.encode(&vector));
        self.dynamodb
            .update_item()
            .table_name(&self.table)
            .key(key_field, AttributeValue::S(key))
            .update_expression(format!("SET {}", sets.join(", ")))
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                ProcessError::retryable_from(format!("writing to {} failed", self.table), e)
            })
    }
}

fn classify<E>(
    model: &str,
    e: aws_sdk_bedrockruntime::error::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> ProcessError
where
    E: aws_sdk_bedrockruntime::error::ProvideErrorMetadata
        + std::error::Error
        + Send
        + Sync
        + 'static,
{
    let code = e
        .as_service_error()
        .and_then(|s| s.code())
        .unwrap_or("")
        .to_owned();
    let message = e
        .as_service_error()
        .and_then(|s| s.message())
        .unwrap_or("")
        .to_owned();
    match code.as_str() {
        "ThrottlingException" | "ServiceUnavailableException" | "ModelNotReadyException" => {
            ProcessError::retryable_from(format!("{model} was throttled"), e)
        }
        "ValidationException" => {
            ProcessError::permanent_from(format!("{model} refused the text: {message}"), e)
        }
        "AccessDeniedException" | "ResourceNotFoundException" => {
            ProcessError::permanent_from(format!("calling {model} failed: {code} {message}"), e)
        }
        _ => ProcessError::retryable_from(format!("calling {model} failed: {code} {message}"), e),
    }
}

#[async_trait]
impl RecordProcessor for Embeddings {
    async fn process(
        &self,
        record: &ValidRecord,
        ctx: &ProcessContext<'_>,
    ) -> Result<(), ProcessError> {
        let Some(key_field) = ctx.definition.key_field.as_deref() else {
            return Err(ProcessError::permanent("the definition has no keyField"));
        };
        let text = self.text(record)?;
        let vector = self.embed(&text).await?;
        self.store(record, key_field, vector).await
    }

    /// Each record's call and write, as many at once as `concurrency`
    /// lets calls through (writes are not held to it).
    async fn process_batch(
        &self,
        records: &[&ValidRecord],
        ctx: &ProcessContext<'_>,
    ) -> Vec<Result<(), ProcessError>> {
        let pending: Vec<_> = records
            .iter()
            .map(|record| async move { self.process(record, ctx).await })
            .collect();
        stream::iter(pending)
            .buffered(self.settings.concurrency * 2)
            .collect()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_float32_vector_is_four_little_endian_bytes_a_dimension() {
        let AttributeValue::B(blob) = VectorEncoding::Float32.encode(&[1.0, -0.5, 0.25]) else {
            panic!("binary");
        };
        let bytes = blob.into_inner();
        assert_eq!(bytes.len(), 12);
        let back: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, [1.0, -0.5, 0.25]);
        let AttributeValue::L(numbers) = VectorEncoding::Numbers.encode(&[1.0, -0.5]) else {
            panic!("a list");
        };
        assert_eq!(
            numbers,
            [
                AttributeValue::N("1".into()),
                AttributeValue::N("-0.5".into())
            ]
        );
    }

    #[test]
    fn a_template_is_text_and_fields_and_refuses_unbalanced_braces() {
        assert_eq!(
            parse_template("{title}. {description}").unwrap(),
            [
                Piece::Field("title".into()),
                Piece::Text(". ".into()),
                Piece::Field("description".into())
            ]
        );
        assert!(parse_template("{title").is_err());
        assert!(parse_template("title}").is_err());
        assert!(parse_template("{}").is_err());
    }
}
