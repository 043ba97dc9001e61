//! What a user asks about a job ("where is my import?"): phase, progress by
//! the usual convention (0-10 while the file is read, 10-99 as batches
//! finish, 100 when final), rate and ETA, computed from one read of the job.

use crate::job::{Cost, Job, JobId, JobStatus};
use crate::source::Checkpoint;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Prepare is still reading the file (workers may already process).
    ReadingFile,
    /// Every batch is written; workers are processing them.
    Processing,
    /// Every batch is done; the job is being finalized.
    Finalizing,
    Done,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatusView {
    pub job_id: JobId,
    /// The kind of import (the definition's `kind`), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub source: String,
    pub status: JobStatus,
    pub phase: Phase,
    /// 0-10 while the file is read, 10-99 as batches finish, 100 when final.
    pub progress: u8,
    /// Records read from the file and published so far (all of them once
    /// the file is read).
    pub records_read: u64,
    /// Known once the whole file is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_records: Option<u64>,
    pub processed: u64,
    pub failed: u64,
    /// Rows that repeat a key another row of the job has (all of a key's
    /// rows but one): with `onDuplicateKey`, the rows that did not decide
    /// the key's item.
    pub duplicates: u64,
    pub batches_ready: u64,
    pub batches_done: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_batches: Option<u64>,
    pub records_per_second: f64,
    /// Seconds left at the current rate, once the total is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    pub created_at_ms: i64,
    /// The last publication, commit, end or retry.
    pub updated_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Ended, and the report is being written (`report` follows).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub report_pending: bool,
    /// A retry's requeue pass is putting failed batches back.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub requeuing: bool,
    /// Retry rounds run so far.
    pub retries: u32,
    pub spend: Cost,
}

impl JobStatusView {
    pub fn of(job: &Job, now_ms: i64) -> Self {
        let phase = if job.status.is_final() {
            Phase::Done
        } else if !job.prepared {
            Phase::ReadingFile
        } else if job.all_batches_done() {
            Phase::Finalizing
        } else {
            Phase::Processing
        };
        let progress = match phase {
            Phase::Done => 100,
            Phase::Finalizing => 99,
            // Without the file's size, reading only says it has started.
            Phase::ReadingFile => u8::from(job.batches_ready > 0) * 5,
            Phase::Processing => {
                let done = job.batches_done.min(job.total_batches);
                10 + (89 * done / job.total_batches.max(1)) as u8
            }
        };
        // A retry's round counts from when its batches were back, over
        // what it settled itself: not from the job's creation a day before.
        let (_, rate) = job.round_rate(now_ms);
        let handled = job.processed + job.failed;
        let total = job.prepared.then_some(job.total_records);
        // While reading, the checkpoint of the last publication counts the
        // records before it.
        let records_read = total.unwrap_or_else(|| {
            job.prepare_checkpoint
                .as_deref()
                .and_then(|c| Checkpoint::decode(c).ok())
                .map_or(0, |c| c.records)
        });
        let eta_seconds = match (total, phase) {
            (_, Phase::Done) => Some(0),
            (Some(total), _) if rate > 0.0 => {
                Some((total.saturating_sub(handled) as f64 / rate).ceil() as u64)
            }
            _ => None,
        };
        JobStatusView {
            job_id: job.id.clone(),
            kind: job.kind.clone(),
            source: job.source.to_string(),
            status: job.status,
            phase,
            progress,
            records_read,
            total_records: total,
            processed: job.processed,
            failed: job.failed,
            duplicates: job.duplicates,
            batches_ready: job.batches_ready,
            batches_done: job.batches_done,
            total_batches: job.prepared.then_some(job.total_batches),
            records_per_second: (rate * 10.0).round() / 10.0,
            eta_seconds,
            created_at_ms: job.created_at_ms,
            updated_at_ms: job.updated_at_ms.max(job.created_at_ms),
            finished_at_ms: job.finished_at_ms,
            failure_reason: job.failure_reason.clone(),
            report: job.report.clone(),
            report_pending: job.report_owed,
            requeuing: job.round.requeuing,
            retries: job.retries,
            spend: job.cost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobSource, SourceRef};

    fn job() -> Job {
        Job {
            id: JobId::new("j"),
            kind: Some("users".into()),
            status: JobStatus::Processing,
            source: JobSource::Object(SourceRef {
                bucket: "b".into(),
                key: "k.csv".into(),
                version: "v".into(),
            }),
            prepared: false,
            total_records: 0,
            total_batches: 0,
            batches_ready: 0,
            batches_handed_out: 0,
            batches_done: 0,
            processed: 0,
            failed: 0,
            prepare_lease_until_ms: 0,
            prepare_failures: 0,
            prepare_checkpoint: None,
            created_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: None,
            failure_reason: None,
            report: None,
            report_owed: false,
            owed_events: Vec::new(),
            cost: Cost::default(),
            retries: 0,
            retryable: 0,
            duplicates: 0,
            round: Default::default(),
        }
    }

    #[test]
    fn progress_follows_the_phases() {
        let mut j = job();
        let v = JobStatusView::of(&j, 1_000);
        assert_eq!(
            (v.phase, v.progress, v.eta_seconds),
            (Phase::ReadingFile, 0, None)
        );
        j.batches_ready = 3;
        let checkpoint = r#"{"o":2700,"l":31,"r":30,"f":"csv","d":44,"q":34,"h":12}"#;
        j.prepare_checkpoint = Some(checkpoint.to_owned());
        let v = JobStatusView::of(&j, 1_000);
        assert_eq!((v.progress, v.records_read, v.total_records), (5, 30, None));
        j.prepared = true;
        j.total_batches = 10;
        j.total_records = 1_000;
        j.batches_done = 5;
        j.processed = 450;
        j.failed = 50;
        let v = JobStatusView::of(&j, 10_000);
        assert_eq!((v.phase, v.progress), (Phase::Processing, 54));
        assert_eq!((v.records_read, v.total_records), (1_000, Some(1_000)));
        assert_eq!(v.records_per_second, 50.0);
        assert_eq!(v.eta_seconds, Some(10), "500 records left at 50 a second");
        j.batches_done = 10;
        assert_eq!(JobStatusView::of(&j, 10_000).phase, Phase::Finalizing);
        j.status = JobStatus::CompletedWithErrors;
        j.finished_at_ms = Some(20_000);
        let v = JobStatusView::of(&j, 99_000);
        assert_eq!(
            (v.phase, v.progress, v.eta_seconds),
            (Phase::Done, 100, Some(0))
        );
    }

    /// A job retried a day after it was created: its rate counts what the
    /// round settled since its batches were back, not since the creation.
    #[test]
    fn a_retried_round_counts_its_rate_and_eta_from_its_own_start() {
        const DAY_MS: i64 = 86_400_000;
        let mut j = job();
        j.prepared = true;
        j.total_batches = 10;
        j.total_records = 1_000;
        j.batches_done = 8;
        j.processed = 800;
        j.retries = 1;
        // The requeue pass: nothing of the round is settled yet.
        j.round.requeuing = true;
        j.round.started_at_ms = DAY_MS;
        j.round.base = 1_000;
        let v = JobStatusView::of(&j, DAY_MS + 5_000);
        assert_eq!((v.records_per_second, v.eta_seconds), (0.0, None));
        // The pass ended at the day's start with 800 records settled; ten
        // seconds later the round has settled 100 more.
        j.round = crate::job::Round {
            started_at_ms: DAY_MS,
            base: 800,
            ..Default::default()
        };
        j.batches_done = 9;
        j.processed = 900;
        let v = JobStatusView::of(&j, DAY_MS + 10_000);
        assert_eq!(v.records_per_second, 10.0);
        assert_eq!(v.eta_seconds, Some(10), "100 records left at 10 a second");
        assert_eq!(j.summary(DAY_MS + 10_000).records_per_second, 10.0);
    }
}
