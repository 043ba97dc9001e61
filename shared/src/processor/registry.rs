//! The processor types a definition can name (`"processor": {"type": …}`),
//! each a file of this folder that exports a `TYPE`, registered by one line
//! in `TYPES`. The definition's loader asks the registry whether the type
//! and its settings are known; the functions' wiring asks it to build one.

use super::RecordProcessor;
use crate::aws::Clients;
use crate::clock::Clock;
use crate::config::{ConfigError, Settings};
use crate::rng::Rng;
use crate::schema::{Definition, FieldDef};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// Every processor type, by the name a definition gives it. The first is
/// the default, used when a definition names none.
const TYPES: &[ProcessorType] = &[
    super::dynamodb::TYPE,
    super::embeddings::TYPE,
    super::lambda::TYPE,
    super::relationships::TYPE,
    super::s3::TYPE,
];

/// The definition's `processor` object: its `type` and the type's own
/// settings (the other keys, checked by the type when the definition loads).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessorSettings {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl Default for ProcessorSettings {
    fn default() -> Self {
        ProcessorSettings {
            kind: TYPES[0].name.to_owned(),
            settings: serde_json::Map::new(),
        }
    }
}

impl ProcessorSettings {
    /// What a definition without `processor` means: left out when the
    /// definition is written back, so a pinned copy reads as it was written.
    pub fn is_default(&self) -> bool {
        *self == ProcessorSettings::default()
    }
}

/// What the deployment gives a processor to be built with, at cold start.
#[derive(Clone, Copy)]
pub struct Deployment<'a> {
    /// The deployment's definition (a job's own pinned copy reaches the
    /// processor through `ProcessContext`).
    pub definition: &'a Definition,
    pub settings: &'a Settings,
    pub clients: &'a Clients,
    /// The deployment's clock and source of randomness, for a processor's
    /// own waits (its retries' backoff).
    pub clock: &'a Clock,
    pub rng: &'a Rng,
}

/// A built processor; `None` when this function is not given what the type
/// needs (the orchestrator has no target): a worker then refuses to start
/// (`Processors::require`).
pub type Built = Result<Option<Arc<dyn RecordProcessor>>, ConfigError>;

/// One processor type: its name, and how its settings are checked and the
/// processor built.
pub struct ProcessorType {
    /// The `type` a definition names it by.
    pub name: &'static str,
    /// Checks the type's settings when a definition loads, before any
    /// client exists, against the definition's fields: `Err((key,
    /// message))` for a setting it refuses.
    pub check: fn(&ProcessorSettings, &Fields<'_>) -> Checked,
    /// Builds the processor at cold start.
    pub build: fn(&ProcessorSettings, &Deployment<'_>) -> Built,
    /// The setting a function must have for `build` to make one, named
    /// when a worker lacks it.
    pub needs: &'static str,
    /// The processor's `finish_job` must run when a job ends.
    pub finishes_jobs: bool,
}

/// A type's verdict on its settings: `Err((key, message))` names the
/// setting it refuses.
pub type Checked = Result<(), (String, String)>;

/// What a type's `check` sees of the definition.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub fields: &'a [FieldDef],
    pub key_field: Option<&'a str>,
}

impl Fields<'_> {
    /// Refuses `name` unless a field has it, naming the setting at `key`.
    pub fn require(&self, key: &str, name: &str) -> Result<(), (String, String)> {
        if self.fields.iter().any(|f| f.name == name) {
            return Ok(());
        }
        let names: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
        Err((
            key.to_owned(),
            format!(
                "{name:?} is not a field of the definition (fields: {})",
                names.join(", ")
            ),
        ))
    }
}

/// A type's settings read into `T` (which should deny unknown fields):
/// `Err((key, message))` naming the setting that does not fit.
pub(super) fn parse<T: serde::de::DeserializeOwned>(
    processor: &ProcessorSettings,
) -> Result<T, (String, String)> {
    let value = serde_json::Value::Object(processor.settings.clone());
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let message = e.into_inner().to_string();
        (path, format!("the {} processor: {message}", processor.kind))
    })
}

/// `parse` at build time, when the definition was checked already: a
/// refusal there is a definition assembled in code.
pub(super) fn settings_of<T: serde::de::DeserializeOwned>(
    processor: &ProcessorSettings,
) -> Result<T, ConfigError> {
    parse(processor).map_err(|(key, message)| {
        crate::schema::DefinitionError::Invalid {
            origin: "of this deployment".into(),
            path: format!("processor.{key}"),
            message,
        }
        .into()
    })
}

/// One record through `process_batch`: `process` of a processor that works
/// in batches.
pub(super) async fn one<P: RecordProcessor + ?Sized>(
    processor: &P,
    record: &crate::schema::ValidRecord,
    ctx: &super::ProcessContext<'_>,
) -> Result<(), super::ProcessError> {
    processor
        .process_batch(&[record], ctx)
        .await
        .pop()
        .expect("one result per record")
}

/// Whether jobs of `definition` owe their processor's `finish_job` when
/// they end.
pub fn finishes_jobs(definition: &Definition) -> bool {
    find(&definition.processor.kind).is_some_and(|t| t.finishes_jobs)
}

fn find(kind: &str) -> Option<&'static ProcessorType> {
    TYPES.iter().find(|t| t.name == kind)
}

/// The processors of the definitions jobs run on, each built once per
/// process on first use: a deployment with routes runs jobs of several
/// definitions, each naming its own processor. A processor given in code
/// (a worker of your own) serves every definition.
#[derive(Default)]
pub struct Processors {
    given: Option<Arc<dyn RecordProcessor>>,
    deployment: Option<OwnedDeployment>,
    /// By the definition's JSON: a pinned copy equals the route's.
    built: std::sync::Mutex<HashMap<String, Option<Arc<dyn RecordProcessor>>>>,
}

struct OwnedDeployment {
    settings: Settings,
    clients: Clients,
    clock: Clock,
    rng: Rng,
}

impl Processors {
    /// `processor` for every definition.
    pub fn given(processor: Arc<dyn RecordProcessor>) -> Processors {
        Processors {
            given: Some(processor),
            ..Processors::default()
        }
    }

    /// The processors the definitions name, built with the deployment's
    /// settings and clients.
    pub fn built_from(
        settings: &Settings,
        clients: &Clients,
        clock: Clock,
        rng: Rng,
    ) -> Processors {
        Processors {
            deployment: Some(OwnedDeployment {
                settings: settings.clone(),
                clients: clients.clone(),
                clock,
                rng,
            }),
            ..Processors::default()
        }
    }

    /// The processor of jobs running on `definition`; `None` when this
    /// function is not given what its type needs (the orchestrator has no
    /// target table).
    pub fn of(&self, definition: &Definition) -> Built {
        if let Some(given) = &self.given {
            return Ok(Some(given.clone()));
        }
        let Some(d) = &self.deployment else {
            return Ok(None);
        };
        let key = definition.to_json();
        if let Some(built) = self.built.lock().expect("processors poisoned").get(&key) {
            return Ok(built.clone());
        }
        let built = build(&Deployment {
            definition,
            settings: &d.settings,
            clients: &d.clients,
            clock: &d.clock,
            rng: &d.rng,
        })?;
        self.built
            .lock()
            .expect("processors poisoned")
            .insert(key, built.clone());
        Ok(built)
    }

    /// `of`, refusing a processor this function cannot build: what a
    /// worker needs, checked at cold start for every route.
    pub fn require(
        &self,
        definition: &Definition,
    ) -> Result<Arc<dyn RecordProcessor>, ConfigError> {
        self.of(definition)?.ok_or_else(|| {
            let needs = find(&definition.processor.kind).map_or("TARGET_TABLE", |t| t.needs);
            ConfigError::Missing(needs)
        })
    }
}

/// The names of every type, for messages.
fn known() -> String {
    TYPES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// Checks a definition's processor: a known type with settings it takes.
/// `Err((path, message))`, the path relative to the definition.
pub fn check(processor: &ProcessorSettings, fields: &Fields<'_>) -> Result<(), (String, String)> {
    let Some(kind) = find(&processor.kind) else {
        return Err((
            "processor.type".into(),
            format!(
                "unknown processor type {:?} (known types: {})",
                processor.kind,
                known()
            ),
        ));
    };
    (kind.check)(processor, fields).map_err(|(key, message)| {
        let path = if key.is_empty() {
            "processor".to_owned()
        } else {
            format!("processor.{key}")
        };
        (path, message)
    })
}

/// Builds the processor the deployment's definition names.
pub fn build(deployment: &Deployment<'_>) -> Built {
    let processor = &deployment.definition.processor;
    // A loaded definition names a known type (`check`); one assembled in
    // code is refused the same way.
    let Some(kind) = find(&processor.kind) else {
        let fields = Fields {
            fields: &deployment.definition.fields,
            key_field: deployment.definition.key_field.as_deref(),
        };
        let (path, message) = check(processor, &fields).err().unwrap_or_default();
        return Err(crate::schema::DefinitionError::Invalid {
            origin: "of this deployment".into(),
            path,
            message,
        }
        .into());
    };
    (kind.build)(processor, deployment)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Fields<'static> = Fields {
        fields: &[],
        key_field: None,
    };

    fn settings(json: &str) -> ProcessorSettings {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_default_type_is_the_dynamodb_upsert() {
        assert_eq!(ProcessorSettings::default().kind, "dynamodb");
        assert!(settings(r#"{"type": "dynamodb"}"#).is_default());
        assert_eq!(check(&ProcessorSettings::default(), &NONE), Ok(()));
    }

    #[test]
    fn an_unknown_type_is_refused_naming_it_and_the_known_ones() {
        let (path, message) = check(&settings(r#"{"type": "carrier-pigeon"}"#), &NONE).unwrap_err();
        assert_eq!(path, "processor.type");
        assert_eq!(
            message,
            "unknown processor type \"carrier-pigeon\" (known types: dynamodb, embeddings, lambda, relationships, s3)"
        );
    }

    #[test]
    fn a_setting_the_type_does_not_take_is_refused_naming_it() {
        let (path, message) =
            check(&settings(r#"{"type": "dynamodb", "tabel": "x"}"#), &NONE).unwrap_err();
        assert_eq!(path, "processor.tabel");
        assert_eq!(
            message,
            "the dynamodb processor: unknown field `tabel`, expected `table`"
        );
    }
}
