//! Which definition an uploaded object is imported with. The orchestrator
//! asks [`Routes`] for a new job's definition and pins it to the job
//! (`pinned`); every later phase of the job runs on the pinned copy,
//! whatever the routes say by then.
//!
//! A route takes the objects whose key starts with its prefix; the longest
//! matching prefix wins. A deployment configured with one definition has
//! one route, with the empty prefix, which takes every object.

use crate::job::SourceRef;
use crate::schema::Definition;
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
    definition: Arc<Definition>,
}

impl Routes {
    /// One definition for every object.
    pub fn single(definition: impl Into<Arc<Definition>>) -> Routes {
        Routes {
            routes: vec![Route {
                prefix: String::new(),
                definition: definition.into(),
            }],
        }
    }

    /// One definition for the objects under `prefix`, and none for others.
    #[cfg(test)]
    pub(crate) fn prefixed(prefix: &str, definition: impl Into<Arc<Definition>>) -> Routes {
        let mut routes = Routes::single(definition);
        routes.routes[0].prefix = prefix.into();
        routes
    }

    /// The definition for `object`: the route with the longest prefix of
    /// its key; `None` when no route takes it.
    pub fn route(&self, object: &SourceRef) -> Option<&Arc<Definition>> {
        self.routes
            .iter()
            .filter(|r| object.key.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
            .map(|r| &r.definition)
    }

    /// The first route's definition: what the sweeper's phases are
    /// assembled on before each is bound to a job's pinned copy, and what
    /// the processor is built from at cold start.
    pub fn primary(&self) -> &Arc<Definition> {
        &self.routes[0].definition
    }

    /// Every route's definition, for the checks made at cold start.
    pub fn definitions(&self) -> impl Iterator<Item = &Arc<Definition>> {
        self.routes.iter().map(|r| &r.definition)
    }
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
        let mut routes = Routes::prefixed("uploads/", definition(10));
        routes.routes.push(Route {
            prefix: "uploads/orders/".into(),
            definition: Arc::new(definition(20)),
        });
        let size = |key: &str| routes.route(&object(key)).map(|d| d.batch_size);
        assert_eq!(size("uploads/orders/1.csv"), Some(20));
        assert_eq!(size("uploads/users.csv"), Some(10));
        assert_eq!(size("other/users.csv"), None);
    }
}
