//! The data engine under the simulated DynamoDB: `dynoxide` (DynamoDB's
//! API over SQLite, checked against the real service by its own
//! conformance suite) called in process, with requests and answers in
//! DynamoDB's JSON wire format. Everything the service adds on top of the
//! data (latency, partitions, throttling, conflicts) is `dynamodb.rs`'s.

use dynoxide::errors::DynoxideError;
use dynoxide::Database;
use serde_json::Value;

/// An answer in wire format: the status and the body DynamoDB would send.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn ok(body: String) -> Answer {
        Answer { status: 200, body }
    }

    /// An error of `kind` (`ProvisionedThroughputExceededException`, ...).
    pub fn error(kind: &str, message: &str) -> Answer {
        Answer {
            status: 400,
            body: serde_json::json!({
                "__type": format!("com.amazonaws.dynamodb.v20120810#{kind}"),
                "message": message,
            })
            .to_string(),
        }
    }

    fn of(e: DynoxideError) -> Answer {
        Answer {
            status: e.status_code(),
            body: e.to_json(),
        }
    }
}

/// One database: the service's primary copy, or the lagging replica the
/// indexes and eventually consistent reads are served from.
#[derive(Clone)]
pub struct Engine {
    db: Database,
}

fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, DynoxideError> {
    serde_json::from_str(body).map_err(|e| DynoxideError::ValidationException(e.to_string()))
}

fn to_body<T: serde::Serialize>(value: &T) -> Result<String, DynoxideError> {
    serde_json::to_string(value).map_err(|e| DynoxideError::InternalServerError(e.to_string()))
}

macro_rules! dispatch {
    ($db:expr, $op:expr, $body:expr; $($name:literal => $method:ident),* $(,)?) => {
        match $op {
            $($name => parse($body).and_then(|request| $db.$method(request)).and_then(|r| to_body(&r)),)*
            other => Err(DynoxideError::ValidationException(format!(
                "the simulated DynamoDB does not implement {other}"
            ))),
        }
    };
}

impl Engine {
    pub fn new() -> Engine {
        Engine {
            db: Database::memory().expect("an in-memory database opens"),
        }
    }

    /// Runs operation `op` (`PutItem`, ...) on a request body.
    pub fn call(&self, op: &str, body: &str) -> Answer {
        let result = dispatch!(self.db, op, body;
            "CreateTable" => create_table,
            "DescribeTable" => describe_table,
            "DeleteTable" => delete_table,
            "UpdateTimeToLive" => update_time_to_live,
            "DescribeTimeToLive" => describe_time_to_live,
            "PutItem" => put_item,
            "GetItem" => get_item,
            "DeleteItem" => delete_item,
            "UpdateItem" => update_item,
            "Query" => query,
            "Scan" => scan,
            "BatchGetItem" => batch_get_item,
            "BatchWriteItem" => batch_write_item,
            "TransactWriteItems" => transact_write_items,
            "TransactGetItems" => transact_get_items,
        );
        match result {
            Ok(body) => Answer::ok(body),
            Err(e) => Answer::of(e),
        }
    }

    /// The item under `key` of `table` (wire format), read consistently.
    pub fn item(&self, table: &str, key: &Value) -> Option<Value> {
        let request = serde_json::json!({
            "TableName": table,
            "Key": key,
            "ConsistentRead": true,
        });
        let answer = self.call("GetItem", &request.to_string());
        if answer.status != 200 {
            return None;
        }
        let mut found: Value = serde_json::from_str(&answer.body).ok()?;
        found.get_mut("Item").map(Value::take)
    }
}

impl Default for Engine {
    fn default() -> Engine {
        Engine::new()
    }
}

/// The size DynamoDB bills an item at: each attribute's name and value.
pub fn item_size(item: &Value) -> usize {
    item.as_object()
        .map(|attrs| attrs.iter().map(|(n, v)| n.len() + value_size(v)).sum())
        .unwrap_or(0)
}

fn value_size(value: &Value) -> usize {
    let Some((kind, v)) = value.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    match kind.as_str() {
        "S" => v.as_str().map_or(0, str::len),
        "N" => number_size(v.as_str().unwrap_or("")),
        "B" => v.as_str().map_or(0, |b| b.len() * 3 / 4),
        "BOOL" | "NULL" => 1,
        "SS" => strings(v).map(str::len).sum(),
        "NS" => strings(v).map(number_size).sum(),
        "BS" => strings(v).map(|b| b.len() * 3 / 4).sum(),
        "L" => {
            3 + v
                .as_array()
                .map_or(0, |l| l.iter().map(|e| 1 + value_size(e)).sum())
        }
        "M" => {
            3 + v.as_object().map_or(0, |m| {
                m.iter().map(|(n, e)| 1 + n.len() + value_size(e)).sum()
            })
        }
        _ => 0,
    }
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// About one byte per two significant digits, plus one.
fn number_size(n: &str) -> usize {
    let digits = n.bytes().filter(u8::is_ascii_digit).count();
    digits.div_ceil(2) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_sized_as_dynamodb_bills_them() {
        let item = serde_json::json!({
            "pk": {"S": "job#1"},
            "n": {"N": "12345"},
            "ok": {"BOOL": true},
            "l": {"L": [{"S": "ab"}]},
        });
        assert_eq!(
            item_size(&item),
            (2 + 5) + (1 + 4) + (2 + 1) + (1 + 3 + 1 + 2)
        );
    }

    #[test]
    fn the_engine_answers_in_wire_format() {
        let engine = Engine::new();
        let table = serde_json::json!({
            "TableName": "things",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        });
        let created = engine.call("CreateTable", &table.to_string());
        assert_eq!(created.status, 200, "{}", created.body);
        let put = serde_json::json!({
            "TableName": "things",
            "Item": {"pk": {"S": "a"}, "v": {"N": "1"}},
            "ConditionExpression": "attribute_not_exists(pk)",
        });
        assert_eq!(engine.call("PutItem", &put.to_string()).status, 200);
        let again = engine.call("PutItem", &put.to_string());
        assert_eq!(again.status, 400);
        assert!(again.body.contains("ConditionalCheckFailedException"));
        let key = serde_json::json!({"pk": {"S": "a"}});
        assert_eq!(engine.item("things", &key).unwrap()["v"]["N"], "1");
    }
}
