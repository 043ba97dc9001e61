//! The simulated SQS: standard queues with at-least-once delivery. A
//! received message is hidden for the queue's visibility timeout and comes
//! back unless deleted; some receives (the world's `duplicate` share) leave
//! it visible, so that two consumers get it at once; a message received
//! more than `max_receives` times moves to the dead-letter list.
//!
//! Producers reach it through the SDK (`SendMessage`, `SendMessageBatch`,
//! `CreateQueue`, `GetQueueUrl`); Lambda's event source mapping, which the
//! fleet plays, through `receive` and `delete` directly.

use super::World;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub body: String,
    /// Deliveries so far, this one included.
    pub receives: u32,
    pub receipt: String,
}

struct Stored {
    body: String,
    visible_at: Instant,
    receives: u32,
}

struct Queue {
    visibility: Duration,
    max_receives: u32,
    /// By sequence number: the order messages were sent.
    messages: BTreeMap<u64, Stored>,
    dead: Vec<String>,
    woken: Arc<Notify>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SqsStats {
    pub sent: u64,
    pub received: u64,
    pub duplicates: u64,
    pub redelivered: u64,
    pub deleted: u64,
    pub dead_lettered: u64,
    pub requests: u64,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    next: u64,
    stats: SqsStats,
}

pub struct SimSqs {
    world: Arc<World>,
    state: Mutex<State>,
}

const URL_PREFIX: &str = "https://sqs.us-east-1.amazonaws.com/000000000000/";

fn error(kind: &str, message: &str) -> super::engine::Answer {
    super::engine::Answer {
        status: 400,
        body: json!({ "__type": format!("com.amazonaws.sqs#{kind}"), "message": message })
            .to_string(),
    }
}

impl SimSqs {
    pub fn new(world: Arc<World>) -> SimSqs {
        SimSqs {
            world,
            state: Mutex::default(),
        }
    }

    /// Creates queue `name` (idempotent); returns its URL.
    pub fn create(&self, name: &str, visibility: Duration, max_receives: u32) -> String {
        let mut state = self.state.lock().unwrap();
        state
            .queues
            .entry(name.to_owned())
            .or_insert_with(|| Queue {
                visibility,
                max_receives,
                messages: BTreeMap::new(),
                dead: Vec::new(),
                woken: Arc::new(Notify::new()),
            });
        format!("{URL_PREFIX}{name}")
    }

    fn name_of(url: &str) -> &str {
        url.rsplit('/').next().unwrap_or(url)
    }

    pub fn stats(&self) -> SqsStats {
        self.state.lock().unwrap().stats
    }

    /// Sends `body` to the queue at `url`.
    pub fn send(&self, url: &str, body: &str) -> Option<String> {
        let mut state = self.state.lock().unwrap();
        let seq = state.next;
        state.next += 1;
        state.stats.sent += 1;
        let queue = state.queues.get_mut(Self::name_of(url))?;
        queue.messages.insert(
            seq,
            Stored {
                body: body.to_owned(),
                visible_at: Instant::now(),
                receives: 0,
            },
        );
        queue.woken.notify_waiters();
        Some(format!("m-{seq}"))
    }

    /// Wakes when a message is sent to the queue at `url`.
    pub fn woken(&self, url: &str) -> Arc<Notify> {
        let state = self.state.lock().unwrap();
        state.queues[Self::name_of(url)].woken.clone()
    }

    /// Receives up to `max` visible messages, oldest first, hiding each for
    /// the visibility timeout (some, drawn, stay visible: duplicates).
    pub fn receive(&self, url: &str, max: usize) -> Vec<Message> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let mut stats = state.stats;
        let queue = state
            .queues
            .get_mut(Self::name_of(url))
            .expect("the queue exists");
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for (seq, stored) in queue.messages.iter_mut() {
            if out.len() == max {
                break;
            }
            if stored.visible_at > now {
                continue;
            }
            if stored.receives >= queue.max_receives {
                dead.push(*seq);
                continue;
            }
            stored.receives += 1;
            if stored.receives > 1 {
                stats.redelivered += 1;
            }
            if self.world.chance(self.world.config.faults.duplicate) {
                stats.duplicates += 1;
            } else {
                stored.visible_at = now + queue.visibility;
            }
            stats.received += 1;
            out.push(Message {
                id: format!("m-{seq}"),
                body: stored.body.clone(),
                receives: stored.receives,
                receipt: format!("m-{seq}/{}", stored.receives),
            });
        }
        for seq in dead {
            if let Some(stored) = queue.messages.remove(&seq) {
                queue.dead.push(stored.body);
                stats.dead_lettered += 1;
            }
        }
        state.stats = stats;
        out
    }

    /// When the next hidden message of the queue at `url` shows again.
    pub fn next_visible(&self, url: &str) -> Option<Instant> {
        let state = self.state.lock().unwrap();
        state.queues[Self::name_of(url)]
            .messages
            .values()
            .map(|m| m.visible_at)
            .min()
    }

    /// Deletes a received message (a stale receipt deletes it all the same,
    /// as SQS does within the retention period).
    pub fn delete(&self, url: &str, receipt: &str) {
        let seq: Option<u64> = receipt
            .strip_prefix("m-")
            .and_then(|r| r.split('/').next())
            .and_then(|s| s.parse().ok());
        let mut state = self.state.lock().unwrap();
        let removed = state
            .queues
            .get_mut(Self::name_of(url))
            .and_then(|q| q.messages.remove(&seq?));
        if removed.is_some() {
            state.stats.deleted += 1;
        }
    }

    /// Messages waiting or in flight, and dead-lettered.
    pub fn depth(&self, url: &str) -> (usize, usize) {
        let state = self.state.lock().unwrap();
        let queue = &state.queues[Self::name_of(url)];
        (queue.messages.len(), queue.dead.len())
    }

    /// Serves an SQS request from the SDK.
    pub async fn serve(&self, op: &str, body: &str) -> super::engine::Answer {
        let (out, back) = self.world.round_trip();
        tokio::time::sleep(out).await;
        self.world.trace("sqs", op, body);
        self.state.lock().unwrap().stats.requests += 1;
        let request: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let url = request["QueueUrl"].as_str().unwrap_or_default().to_owned();
        let known = self
            .state
            .lock()
            .unwrap()
            .queues
            .contains_key(Self::name_of(&url));
        let answer = match op {
            "CreateQueue" => {
                let name = request["QueueName"].as_str().unwrap_or_default();
                let visibility = request["Attributes"]["VisibilityTimeout"]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(30);
                let url = self.create(name, Duration::from_secs(visibility), 5);
                super::engine::Answer::ok(json!({ "QueueUrl": url }).to_string())
            }
            "GetQueueUrl" => {
                let name = request["QueueName"].as_str().unwrap_or_default();
                if self.state.lock().unwrap().queues.contains_key(name) {
                    super::engine::Answer::ok(
                        json!({ "QueueUrl": format!("{URL_PREFIX}{name}") }).to_string(),
                    )
                } else {
                    error("QueueDoesNotExist", "The specified queue does not exist.")
                }
            }
            _ if !known => error("QueueDoesNotExist", "The specified queue does not exist."),
            "SendMessage" => {
                let id = self.send(&url, request["MessageBody"].as_str().unwrap_or_default());
                super::engine::Answer::ok(json!({ "MessageId": id }).to_string())
            }
            "SendMessageBatch" => {
                let entries = request["Entries"].as_array().cloned().unwrap_or_default();
                if entries.len() > 10 {
                    error(
                        "TooManyEntriesInBatchRequest",
                        "Maximum number of entries per request are 10.",
                    )
                } else {
                    let successful: Vec<Value> = entries
                        .iter()
                        .map(|e| {
                            let body = e["MessageBody"].as_str().unwrap_or_default();
                            let id = self.send(&url, body);
                            json!({ "Id": e["Id"], "MessageId": id })
                        })
                        .collect();
                    super::engine::Answer::ok(
                        json!({ "Successful": successful, "Failed": [] }).to_string(),
                    )
                }
            }
            other => error(
                "UnsupportedOperation",
                &format!("the simulated SQS does not implement {other}"),
            ),
        };
        tokio::time::sleep(back).await;
        answer
    }
}
