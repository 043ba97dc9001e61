//! Which definition an uploaded object is imported with. The orchestrator
//! asks [`Routes`] for a new job's definition and pins it to the job
//! (`pinned`); every later phase of the job runs on the pinned copy,
//! whatever the routes say by then.
//!
//! A route takes the objects whose key starts with its prefix (and ends
//! with its suffix, when it has one); the longest matching prefix wins,
//! then the longest suffix. A deployment configured with one definition
//! (`IMPORT_DEFINITION`) has one route, with the empty prefix, which takes
//! every object; one configured with a routes file (`ROUTES`) has the
//! routes it lists:
//!
//! ```json
//! {"routes": [
//!   {"prefix": "uploads/users/", "definition": "users.json"},
//!   {"prefix": "uploads/orders/", "suffix": ".csv", "kind": "orders", "definition": "orders.json"}
//! ]}
//! ```
//!
//! A definition is a path or `s3://` URI, relative to the routes file's
//! own location unless absolute, or the definition itself inline. Its kind
//! is the route's `kind`, else the definition's own, else the name of its
//! file without the extension.

use crate::config::ConfigError;
use crate::job::SourceRef;
use crate::schema::{check_kind, Definition};
use serde::Deserialize;
use std::sync::Arc;

/// The deployment's routes from uploaded objects to definitions.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Never empty.
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    prefix: String,
    suffix: String,
    definition: Arc<Definition>,
}

/// Why a routes file does not load.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("routes file {location}: {path}{source}", path = crate::schema::path_prefix(.path))]
    Parse {
        location: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("routes file {location}: {path}: {message}")]
    Invalid {
        location: String,
        path: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    routes: Vec<RouteEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteEntry {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    suffix: String,
    #[serde(default)]
    kind: Option<String>,
    definition: DefinitionRef,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DefinitionRef {
    Location(String),
    Inline(Box<serde_json::Value>),
}

/// Routes at most: every upload is matched against each.
pub const MAX_ROUTES: usize = 100;

impl Routes {
    /// One definition for every object.
    pub fn single(definition: impl Into<Arc<Definition>>) -> Routes {
        Routes {
            routes: vec![Route {
                prefix: String::new(),
                suffix: String::new(),
                definition: definition.into(),
            }],
        }
    }

    /// One definition for the objects under `prefix`, and none for others.
    pub fn prefixed(prefix: &str, definition: impl Into<Arc<Definition>>) -> Routes {
        let mut routes = Routes::single(definition);
        routes.routes[0].prefix = prefix.into();
        routes
    }

    /// These routes and one more, for `prefix` and `suffix`.
    pub fn with(
        mut self,
        prefix: &str,
        suffix: &str,
        definition: impl Into<Arc<Definition>>,
    ) -> Routes {
        self.routes.push(Route {
            prefix: prefix.into(),
            suffix: suffix.into(),
            definition: definition.into(),
        });
        self
    }

    /// The routes of the routes file at `location` (a path or an `s3://`
    /// URI; `routes.json` in it when it is a folder, ending with `/`),
    /// each definition loaded and checked.
    pub async fn load(location: &str, s3: &aws_sdk_s3::Client) -> Result<Routes, ConfigError> {
        let file;
        let location = if location.ends_with('/') {
            file = format!("{location}routes.json");
            file.as_str()
        } else {
            location
        };
        let text = crate::config::read_text(location, "ROUTES", s3).await?;
        let invalid = |path: String, message: String| RoutesError::Invalid {
            location: location.to_owned(),
            path,
            message,
        };
        let mut de = serde_json::Deserializer::from_str(&text);
        let file: RoutesFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            RoutesError::Parse {
                location: location.to_owned(),
                path: if path == "." { String::new() } else { path },
                source: e.into_inner(),
            }
        })?;
        if file.routes.is_empty() {
            return Err(invalid("routes".into(), "must list at least one route".into()).into());
        }
        if file.routes.len() > MAX_ROUTES {
            return Err(invalid("routes".into(), format!("at most {MAX_ROUTES} routes")).into());
        }
        let mut routes: Vec<Route> = Vec::with_capacity(file.routes.len());
        for (i, entry) in file.routes.into_iter().enumerate() {
            let at = |key: &str| format!("routes[{i}].{key}");
            if let Some(j) = routes
                .iter()
                .position(|r| r.prefix == entry.prefix && r.suffix == entry.suffix)
            {
                return Err(invalid(
                    at("prefix"),
                    format!("takes the same objects as routes[{j}]"),
                )
                .into());
            }
            let (definition, stem) = match entry.definition {
                DefinitionRef::Location(path) => {
                    let path = relative_to(location, &path);
                    let definition = crate::config::load_definition(&path, s3).await?;
                    (definition, file_stem(&path))
                }
                DefinitionRef::Inline(json) => {
                    let origin = format!("{location} {}", at("definition"));
                    let definition = Definition::from_json(&json.to_string(), &origin)?;
                    (definition, None)
                }
            };
            let kind = entry
                .kind
                .or(definition.kind.clone())
                .or(stem)
                .ok_or_else(|| {
                    invalid(
                        at("kind"),
                        "an inline definition needs a kind (the route's or its own)".into(),
                    )
                })?;
            check_kind(&kind).map_err(|m| invalid(at("kind"), m))?;
            let mut definition = definition;
            definition.kind = Some(kind);
            routes.push(Route {
                prefix: entry.prefix,
                suffix: entry.suffix,
                definition: Arc::new(definition),
            });
        }
        Ok(Routes { routes })
    }

    /// The definition for `object`: the route with the longest prefix of
    /// its key, then the longest suffix; `None` when no route takes it.
    pub fn route(&self, object: &SourceRef) -> Option<&Arc<Definition>> {
        self.routes
            .iter()
            .filter(|r| object.key.starts_with(&r.prefix) && object.key.ends_with(&r.suffix))
            .max_by_key(|r| (r.prefix.len(), r.suffix.len()))
            .map(|r| &r.definition)
    }

    /// Why no route takes `object`: what the job of such an upload fails
    /// with, so the uploader learns where files of each kind go.
    pub fn unrouted(&self, object: &SourceRef) -> String {
        const SHOWN: usize = 10;
        let mut listed: Vec<String> = self
            .routes
            .iter()
            .take(SHOWN)
            .map(|r| format!("{}*{} ({})", r.prefix, r.suffix, r.definition.kind_name()))
            .collect();
        if self.routes.len() > SHOWN {
            listed.push(format!("and {} more", self.routes.len() - SHOWN));
        }
        format!(
            "no route takes {}: uploads are imported from {}",
            object.key,
            listed.join(", ")
        )
    }

    /// The first route's definition: what the sweeper's phases are
    /// assembled on before each is bound to a job's pinned copy.
    pub fn primary(&self) -> &Arc<Definition> {
        &self.routes[0].definition
    }

    /// Every route's definition, for the checks made at cold start.
    pub fn definitions(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.routes.iter().map(|r| &r.definition)
    }
}

/// `path` read from beside the routes file at `base`, unless absolute.
fn relative_to(base: &str, path: &str) -> String {
    if path.starts_with("s3://") || path.starts_with('/') || path.starts_with("file://") {
        return path.to_owned();
    }
    match base.rfind('/') {
        Some(at) => format!("{}/{}", &base[..at], path),
        None => path.to_owned(),
    }
}

/// `users` for `.../users.json`: a definition's kind when nothing names one.
pub(crate) fn file_stem(location: &str) -> Option<String> {
    let name = location.rsplit('/').next()?;
    let stem = name.split('.').next()?;
    check_kind(stem).is_ok().then(|| stem.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(key: &str) -> SourceRef {
        SourceRef {
            bucket: "b".into(),
            key: key.into(),
            version: "v".into(),
        }
    }

    fn definition(batch_size: usize) -> Definition {
        let json = format!(
            r#"{{"fields": [{{"name": "id", "type": "string"}}], "batchSize": {batch_size}}}"#
        );
        Definition::from_json(&json, "test").unwrap()
    }

    #[test]
    fn a_single_definition_takes_every_object() {
        let routes = Routes::single(definition(10));
        for key in ["a.csv", "uploads/b.csv", ""] {
            assert_eq!(routes.route(&object(key)).unwrap().batch_size, 10);
        }
        assert_eq!(routes.definitions().count(), 1);
        assert_eq!(routes.primary().batch_size, 10);
    }

    #[test]
    fn the_longest_prefix_wins_and_an_object_no_route_takes_has_none() {
        let routes = Routes::prefixed("uploads/", definition(10)).with(
            "uploads/orders/",
            "",
            definition(20),
        );
        let size = |key: &str| routes.route(&object(key)).map(|d| d.batch_size);
        assert_eq!(size("uploads/orders/1.csv"), Some(20));
        assert_eq!(size("uploads/users.csv"), Some(10));
        assert_eq!(size("other/users.csv"), None);
    }

    fn s3() -> aws_sdk_s3::Client {
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version_latest()
                .build(),
        )
    }

    /// A folder of files, removed when dropped.
    struct Folder(std::path::PathBuf);

    impl Folder {
        fn new(files: &[(&str, &str)]) -> Folder {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("routes-{}-{n}", std::process::id()));
            for (name, text) in files {
                let path = dir.join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, text).unwrap();
            }
            Folder(dir)
        }

        fn path(&self, name: &str) -> String {
            self.0.join(name).display().to_string()
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const FIELDS: &str = r#""fields": [{"name": "id", "type": "string"}]"#;

    #[tokio::test]
    async fn a_routes_file_maps_prefixes_and_suffixes_to_definitions_of_their_kind() {
        let users = format!("{{{FIELDS}, \"batchSize\": 10}}");
        let orders = format!("{{\"kind\": \"orders\", {FIELDS}, \"batchSize\": 20}}");
        let routes = format!(
            r#"{{"routes": [
                {{"prefix": "uploads/users/", "definition": "defs/users.json"}},
                {{"prefix": "uploads/orders/", "suffix": ".csv", "definition": "defs/orders.json"}},
                {{"prefix": "uploads/orders/", "kind": "legacy-orders", "definition": "defs/orders.json"}},
                {{"prefix": "uploads/", "suffix": ".ndjson", "kind": "events",
                  "definition": {{{FIELDS}, "batchSize": 30}}}}
            ]}}"#
        );
        let folder = Folder::new(&[
            ("config/routes.json", &routes),
            ("config/defs/users.json", &users),
            ("config/defs/orders.json", &orders),
        ]);
        let loaded = Routes::load(&folder.path("config/routes.json"), &s3())
            .await
            .unwrap();
        let routed = |key: &str| {
            loaded
                .route(&object(key))
                .map(|d| (d.kind_name().to_owned(), d.batch_size))
        };
        // The kind: the definition's file name, else its own, unless the
        // route names one.
        assert_eq!(routed("uploads/users/a.csv"), Some(("users".into(), 10)));
        assert_eq!(routed("uploads/orders/a.csv"), Some(("orders".into(), 20)));
        assert_eq!(
            routed("uploads/orders/a.ndjson"),
            Some(("legacy-orders".into(), 20))
        );
        assert_eq!(routed("uploads/clicks.ndjson"), Some(("events".into(), 30)));
        assert_eq!(routed("uploads/clicks.csv"), None);
        assert_eq!(
            loaded.unrouted(&object("uploads/clicks.csv")),
            "no route takes uploads/clicks.csv: uploads are imported from \
             uploads/users/* (users), uploads/orders/*.csv (orders), \
             uploads/orders/* (legacy-orders), uploads/*.ndjson (events)"
        );
        // The kind travels with the definition pinned to a job.
        let pinned = Definition::from_json(&loaded.primary().to_json(), "pinned").unwrap();
        assert_eq!(pinned.kind.as_deref(), Some("users"));
    }

    #[tokio::test]
    async fn a_routes_file_that_does_not_load_names_the_route_and_what_is_wrong() {
        let error = |routes: &str| {
            let routes = routes.to_owned();
            async move {
                let folder = Folder::new(&[
                    ("routes.json", &routes),
                    ("users.json", &format!("{{{FIELDS}}}")),
                ]);
                Routes::load(&folder.path("routes.json"), &s3())
                    .await
                    .unwrap_err()
                    .to_string()
            }
        };
        let same = error(
            r#"{"routes": [{"prefix": "a/", "definition": "users.json"},
                           {"prefix": "a/", "definition": "users.json"}]}"#,
        )
        .await;
        assert!(
            same.ends_with("routes[1].prefix: takes the same objects as routes[0]"),
            "{same}"
        );
        let inline = error(&format!(
            r#"{{"routes": [{{"prefix": "a/", "definition": {{{FIELDS}}}}}]}}"#
        ))
        .await;
        assert!(
            inline.ends_with(
                "routes[0].kind: an inline definition needs a kind (the route's or its own)"
            ),
            "{inline}"
        );
        let kind = error(r#"{"routes": [{"kind": "a b", "definition": "users.json"}]}"#).await;
        assert!(
            kind.contains("routes[0].kind: \"a b\" is not a kind"),
            "{kind}"
        );
        let typo = error(r#"{"routes": [{"prefx": "a/", "definition": "users.json"}]}"#).await;
        assert!(
            typo.contains("routes[0].prefx: unknown field `prefx`"),
            "{typo}"
        );
        let missing = error(r#"{"routes": [{"definition": "orders.json"}]}"#).await;
        assert!(
            missing.starts_with("import definition ")
                && missing.ends_with("orders.json: cannot be read"),
            "{missing}"
        );
        let empty = error(r#"{"routes": []}"#).await;
        assert!(
            empty.ends_with("routes: must list at least one route"),
            "{empty}"
        );
    }

    #[tokio::test]
    async fn the_example_routes_load_from_their_folder() {
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/routes/");
        let routes = Routes::load(folder, &s3()).await.unwrap();
        let kinds: Vec<(&str, &str)> = [
            "users/a.csv",
            "follows/a.csv",
            "clicks/a.csv",
            "orders/a.csv",
            "products/a.csv",
        ]
        .iter()
        .map(|key| {
            let d = routes.route(&object(&format!("uploads/{key}"))).unwrap();
            (d.kind_name(), d.processor.kind.as_str())
        })
        .collect();
        assert_eq!(
            kinds,
            [
                ("users", "dynamodb"),
                ("follows", "relationships"),
                ("clicks", "s3"),
                ("orders", "lambda"),
                ("products", "embeddings")
            ]
        );
        assert!(routes.route(&object("uploads/follows/a.tsv")).is_none());
    }
}
