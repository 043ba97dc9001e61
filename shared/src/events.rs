//! Job lifecycle events (`job.started`, `job.prepared`, `job.completed`,
//! `job.failed`, `job.aborted`) on Amazon EventBridge. Each is recorded on
//! the job, in the same write as what it announces, and is owed until
//! acknowledged: whoever recorded it sends it, the sweeper resends what was
//! never acknowledged. Delivery is at least once, under an id that stays
//! the same for every delivery (`Job::event_id`), for subscribers to
//! deduplicate on.

use crate::job::{EventKind, Job, JobId, JobSource, JobStatus};
use crate::store::{JobStore, StoreError};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The `Source` of every event, for rules to match on.
pub const SOURCE: &str = "bulk-import";

/// An event's `detail`: the job as it stands when the event is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobEvent {
    /// `<jobId>:<kind>` (`:retry-<n>` after the n-th retry): the same for
    /// every delivery of this event.
    pub event_id: String,
    /// `job.started`, ... (also the EventBridge `DetailType`).
    #[serde(rename = "type", with = "event_type")]
    pub kind: EventKind,
    pub job_id: JobId,
    /// The job's kind of import (`Job::kind`), for rules to match on.
    #[serde(rename = "kind", default, skip_serializing_if = "Option::is_none")]
    pub job_kind: Option<String>,
    pub bucket: String,
    pub key: String,
    pub status: JobStatus,
    /// Known once the file is read (from `job.prepared` on).
    pub total_records: Option<u64>,
    pub processed: u64,
    pub failed: u64,
    /// Where the error report is (`s3://…`), once one is written.
    pub report: Option<String>,
    pub retries: u32,
    pub failure_reason: Option<String>,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
}

impl JobEvent {
    pub fn of(job: &Job, kind: EventKind) -> JobEvent {
        let JobSource::Object(object) = &job.source;
        JobEvent {
            event_id: job.event_id(kind),
            kind,
            job_id: job.id.clone(),
            job_kind: job.kind.clone(),
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            status: job.status,
            total_records: job.prepared.then_some(job.total_records),
            processed: job.processed,
            failed: job.failed,
            report: job.report.clone(),
            retries: job.retries,
            failure_reason: job.failure_reason.clone(),
            created_at_ms: job.created_at_ms,
            finished_at_ms: job.finished_at_ms,
        }
    }
}

mod event_type {
    use crate::job::EventKind;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(kind: &EventKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.event_type())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EventKind, D::Error> {
        let name = String::deserialize(d)?;
        name.strip_prefix("job.")
            .unwrap_or(&name)
            .parse()
            .map_err(D::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("sending the {0} event failed")]
    Send(
        &'static str,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
    #[error("EventBridge refused the {event_type} event: {code}: {message}")]
    Refused {
        event_type: &'static str,
        code: String,
        message: String,
    },
}

/// Where events go.
#[async_trait]
pub trait JobEvents: Send + Sync {
    async fn send(&self, event: &JobEvent) -> Result<(), EventError>;
}

/// Logs every event (so log subscriptions see them too) and puts it on an
/// EventBridge bus, when one is configured.
pub struct EventBridgeEvents {
    pub client: aws_sdk_eventbridge::Client,
    /// `EVENT_BUS_NAME` (a name or an ARN); `None`: events are only logged.
    pub bus: Option<String>,
}

#[async_trait]
impl JobEvents for EventBridgeEvents {
    async fn send(&self, event: &JobEvent) -> Result<(), EventError> {
        let event_type = event.kind.event_type();
        tracing::info!(
            event = event_type,
            event_id = %event.event_id,
            job_id = %event.job_id,
            status = %event.status,
            processed = event.processed,
            failed = event.failed,
            "job event"
        );
        let Some(bus) = &self.bus else {
            return Ok(());
        };
        let detail =
            serde_json::to_string(event).map_err(|e| EventError::Send(event_type, e.into()))?;
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(bus)
            .source(SOURCE)
            .detail_type(event_type)
            .detail(detail)
            .resources(format!("arn:aws:s3:::{}/{}", event.bucket, event.key))
            .build();
        let out = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| EventError::Send(event_type, e.into()))?;
        // PutEvents answers 200 even when it refuses an entry.
        if out.failed_entry_count() > 0 || out.entries().iter().any(|e| e.error_code().is_some()) {
            let refused = out.entries().iter().find(|e| e.error_code().is_some());
            return Err(EventError::Refused {
                event_type,
                code: refused
                    .and_then(|e| e.error_code())
                    .unwrap_or("unknown")
                    .to_owned(),
                message: refused
                    .and_then(|e| e.error_message())
                    .unwrap_or("no message")
                    .to_owned(),
            });
        }
        Ok(())
    }
}

/// Keeps events in memory (tests); `failing` makes every send fail.
#[derive(Debug, Default)]
pub struct MemoryEvents {
    pub sent: Mutex<Vec<JobEvent>>,
    pub failing: AtomicBool,
}

impl MemoryEvents {
    /// The events sent so far, in order.
    pub fn all(&self) -> Vec<JobEvent> {
        self.sent.lock().expect("events poisoned").clone()
    }

    /// The sent events of one kind.
    pub fn of(&self, kind: EventKind) -> Vec<JobEvent> {
        self.all().into_iter().filter(|e| e.kind == kind).collect()
    }

    /// The sent events announcing a job's end (completed, failed, aborted).
    pub fn endings(&self) -> Vec<JobEvent> {
        self.all()
            .into_iter()
            .filter(|e| e.kind > EventKind::Prepared)
            .collect()
    }

    pub fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

#[async_trait]
impl JobEvents for MemoryEvents {
    async fn send(&self, event: &JobEvent) -> Result<(), EventError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(EventError::Send(
                event.kind.event_type(),
                "events are unavailable".into(),
            ));
        }
        self.sent
            .lock()
            .expect("events poisoned")
            .push(event.clone());
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Event(#[from] EventError),
}

/// Sends every event `job` owes, in lifecycle order, acknowledging each
/// once sent. Returns how many were sent; stops at the first failure (what
/// is left stays owed).
pub async fn deliver_owed(
    store: &dyn JobStore,
    events: &dyn JobEvents,
    job: &Job,
) -> Result<u64, DeliveryError> {
    let mut sent = 0;
    for kind in &job.owed_events {
        if job.report_owed && Some(*kind) == EventKind::ending(job.status) {
            // The ending is announced with its report, once written.
            break;
        }
        events.send(&JobEvent::of(job, *kind)).await?;
        store.ack_event(&job.id, *kind, job.retries).await?;
        sent += 1;
    }
    let owes_nothing = job.owed_events.is_empty() && !job.report_owed;
    if let (true, Some(ending)) = (owes_nothing, EventKind::ending(job.status)) {
        // Listed as owing but owing nothing: an acknowledgement stopped
        // half-way. Acknowledging again takes the job off the list.
        store.ack_event(&job.id, ending, job.retries).await?;
    }
    Ok(sent)
}

/// `deliver_owed` for the job as stored now.
pub async fn deliver(
    store: &dyn JobStore,
    events: &dyn JobEvents,
    job: &JobId,
) -> Result<u64, DeliveryError> {
    match store.get_job(job).await? {
        Some(job) => deliver_owed(store, events, &job).await,
        None => Ok(0),
    }
}

/// Delivers what `job` owes after whoever recorded it; returns how many
/// were sent. A failure is logged, not returned: the events stay owed and
/// the sweeper sends them.
pub async fn announce(store: &dyn JobStore, events: &dyn JobEvents, job: &Job) -> u64 {
    match deliver_owed(store, events, job).await {
        Ok(sent) => sent,
        Err(e) => {
            let error = crate::telemetry::error_chain(&e);
            tracing::warn!(job_id = %job.id, %error, "job event not sent yet; the sweeper resends it");
            0
        }
    }
}

/// Sends what every final job still owes (the sweeper's pass; active jobs'
/// owed events are sent as the sweeper visits them). Returns how many were
/// sent; one that fails stays owed for the next pass.
pub async fn deliver_pending(
    store: &dyn JobStore,
    events: &dyn JobEvents,
) -> Result<u64, StoreError> {
    let mut sent = 0;
    for job in store.pending_events().await? {
        match deliver(store, events, &job).await {
            Ok(n) => sent += n,
            Err(e) => {
                let error = crate::telemetry::error_chain(&e);
                tracing::warn!(job_id = %job, %error, "job event still not sent");
            }
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::SourceRef;
    use crate::store::memory::MemoryStore;
    use crate::store::{
        CreateOutcome, Finalization, FinalizeWhen, JobControl, PrepareLease, PrepareStore,
    };

    async fn job(store: &MemoryStore) -> Job {
        let source = SourceRef {
            bucket: "uploads".into(),
            key: "in/users.csv".into(),
            version: "v1".into(),
        };
        let lease = PrepareLease {
            owner: "o".into(),
            lease_ms: 60_000,
        };
        match store.create_job(&source, &lease, 1_000).await.unwrap() {
            CreateOutcome::Created(job) => job,
            other => panic!("new job expected: {other:?}"),
        }
    }

    #[test]
    fn the_detail_names_the_object_the_counts_and_a_stable_id() {
        let store = MemoryStore::new();
        let mut job = futures::executor::block_on(job(&store));
        job.status = JobStatus::CompletedWithErrors;
        job.prepared = true;
        job.total_records = 10;
        job.processed = 9;
        job.failed = 1;
        job.report = Some("s3://uploads/reports/x.csv".into());
        let detail = serde_json::to_value(JobEvent::of(&job, EventKind::Completed)).unwrap();
        assert_eq!(detail["eventId"], format!("{}:completed", job.id));
        assert_eq!(detail["type"], "job.completed");
        assert_eq!(detail["bucket"], "uploads");
        assert_eq!(detail["key"], "in/users.csv");
        assert_eq!(detail["status"], "COMPLETED_WITH_ERRORS");
        assert_eq!(
            (
                &detail["totalRecords"],
                &detail["processed"],
                &detail["failed"]
            ),
            (&10.into(), &9.into(), &1.into())
        );
        assert_eq!(detail["report"], "s3://uploads/reports/x.csv");
        assert_eq!(detail["retries"], 0);
        let back: JobEvent = serde_json::from_value(detail).unwrap();
        assert_eq!(back.kind, EventKind::Completed);
    }

    #[test]
    fn totals_are_null_until_the_file_is_read() {
        let store = MemoryStore::new();
        let job = futures::executor::block_on(job(&store));
        let detail = serde_json::to_value(JobEvent::of(&job, EventKind::Started)).unwrap();
        assert!(detail["totalRecords"].is_null());
        assert_eq!(detail["status"], "PROCESSING");
    }

    #[tokio::test]
    async fn owed_events_go_out_in_order_and_a_failed_send_stays_owed() {
        let store = MemoryStore::new();
        let events = MemoryEvents::default();
        let job = job(&store).await;
        let fin = Finalization {
            status: JobStatus::Aborted,
            reason: Some("stop".into()),
            report_owed: false,
            now_ms: 2_000,
        };
        assert!(store
            .finalize(&job.id, &fin, FinalizeWhen::Now)
            .await
            .unwrap());
        events.fail(true);
        assert!(deliver(&store, &events, &job.id).await.is_err());
        assert_eq!(deliver_pending(&store, &events).await.unwrap(), 0);
        assert_eq!(store.pending_events().await.unwrap(), vec![job.id.clone()]);
        events.fail(false);
        assert_eq!(deliver_pending(&store, &events).await.unwrap(), 2);
        let kinds: Vec<EventKind> = events.all().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![EventKind::Started, EventKind::Aborted]);
        assert!(store.pending_events().await.unwrap().is_empty());
        assert_eq!(deliver(&store, &events, &job.id).await.unwrap(), 0);
    }
}
