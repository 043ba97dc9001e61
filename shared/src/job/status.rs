//! Where a job stands (`JobStatus`) and the lifecycle events announcing
//! each step of it (`EventKind`), with the names they have in the store,
//! in the API and on the event bus.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    /// Batches are being written and/or processed.
    Processing,
    Completed,
    CompletedWithErrors,
    Failed,
    /// Stopped by an operator: nothing more is published or claimed.
    Aborted,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Processing,
        JobStatus::Completed,
        JobStatus::CompletedWithErrors,
        JobStatus::Failed,
        JobStatus::Aborted,
    ];

    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Processing)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Processing => "PROCESSING",
            JobStatus::Completed => "COMPLETED",
            JobStatus::CompletedWithErrors => "COMPLETED_WITH_ERRORS",
            JobStatus::Failed => "FAILED",
            JobStatus::Aborted => "ABORTED",
        }
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;

    /// `COMPLETED_WITH_ERRORS`, `completed-with-errors`, ... (any case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_uppercase().replace('-', "_");
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == wanted)
            .ok_or_else(|| {
                let names: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status {s:?}; one of {}", names.join(", "))
            })
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that widths in format strings apply.
        f.pad(self.as_str())
    }
}

/// A job's lifecycle events, in the order they happen. Each is recorded on
/// the job when it happens (it is then owed) and delivered at least once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The job was created for an uploaded object.
    Started,
    /// The whole file was read: the totals are known.
    Prepared,
    /// The job ended COMPLETED or COMPLETED_WITH_ERRORS.
    Completed,
    Failed,
    Aborted,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Started,
        EventKind::Prepared,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::Aborted,
    ];

    /// The name in event ids and in the store (`completed`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Prepared => "prepared",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Aborted => "aborted",
        }
    }

    /// The event's type as subscribers see it (`job.completed`).
    pub fn event_type(self) -> &'static str {
        match self {
            EventKind::Started => "job.started",
            EventKind::Prepared => "job.prepared",
            EventKind::Completed => "job.completed",
            EventKind::Failed => "job.failed",
            EventKind::Aborted => "job.aborted",
        }
    }

    /// The event that announces a job ending in `status` (`None` for
    /// PROCESSING).
    pub fn ending(status: JobStatus) -> Option<EventKind> {
        match status {
            JobStatus::Processing => None,
            JobStatus::Completed | JobStatus::CompletedWithErrors => Some(EventKind::Completed),
            JobStatus::Failed => Some(EventKind::Failed),
            JobStatus::Aborted => Some(EventKind::Aborted),
        }
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ending_status_has_its_event_and_kinds_round_trip() {
        for status in JobStatus::ALL {
            assert_eq!(EventKind::ending(status).is_some(), status.is_final());
        }
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            assert_eq!(kind.event_type(), format!("job.{kind}"));
        }
    }
}
