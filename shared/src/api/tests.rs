//! The API on in-memory backends: routing, errors, pagination and abort.
//! `tests/tests/api.rs` runs it on the emulator against docs/openapi.yaml.

use super::*;
use crate::events::MemoryEvents;
use crate::job::{now_ms, FailedRecord, FieldIssue, JobId, SourceRef, StagedRecord};
use crate::objects::MemoryObjects;
use crate::report::MemoryReports;
use crate::store::memory::MemoryStore;
use crate::store::{
    BatchOutcome, BatchState, Claim, ClaimStore, CreateOutcome, JobControl, NewBatch, PrepareLease,
    PrepareStore,
};
use serde_json::json;

struct Fixture {
    api: Api,
    store: Arc<MemoryStore>,
    objects: Arc<MemoryObjects>,
    events: Arc<MemoryEvents>,
    reports: Arc<MemoryReports>,
    queue: Arc<crate::queue::MemoryQueue>,
}

fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::new());
    let objects = Arc::new(MemoryObjects::default());
    let events = Arc::new(MemoryEvents::default());
    let reports = Arc::new(MemoryReports::default());
    let queue = Arc::new(crate::queue::MemoryQueue::default());
    let api = Api {
        store: store.clone(),
        objects: objects.clone(),
        events: events.clone(),
        reports: reports.clone(),
        queue: queue.clone(),
        prepare_queue: None,
        max_workers: 2,
        version: "1.2.3".into(),
        clock: crate::clock::Clock::system(),
    };
    Fixture {
        api,
        store,
        objects,
        events,
        reports,
        queue,
    }
}

const DEFINITION: &str = include_str!("../../../examples/users.json");

/// A prepared job of one batch per entry of `failures`, each batch
/// committed with that many failed records (of two issues each) when
/// `commit` is set.
async fn job(f: &Fixture, key: &str, failures: &[u64], commit: bool) -> JobId {
    let store = f.store.as_ref();
    let source = SourceRef {
        bucket: "uploads".into(),
        key: key.into(),
        version: "v1".into(),
    };
    let lease = PrepareLease {
        owner: "orchestrator".into(),
        lease_ms: 60_000,
    };
    let now = now_ms();
    store
        .pin_definition(&source.job_id(), DEFINITION)
        .await
        .unwrap();
    let CreateOutcome::Created(job) = store.create_job(&source, &lease, now).await.unwrap() else {
        panic!("a new job");
    };
    for (index, _) in failures.iter().enumerate() {
        let records: Vec<StagedRecord> = (0..5)
            .map(|i| StagedRecord {
                line: index as u64 * 5 + i + 2,
                values: vec![Some(format!("user{i}@example.com"))].into(),
                issue: None,
            })
            .collect();
        let batch = NewBatch {
            index: index as u64,
            records: &records,
            after: None,
        };
        store.write_batch(&job.id, batch, now).await.unwrap();
    }
    let n = failures.len() as u64;
    store
        .finish_prepare(&job.id, &lease, n * 5, n)
        .await
        .unwrap();
    if commit {
        for _ in failures {
            commit_next(f, &job.id, failures).await;
        }
    }
    job.id
}

/// Claims and commits the next batch of a job made by `job`, with its
/// share of `failures`.
async fn commit_next(f: &Fixture, id: &JobId, failures: &[u64]) {
    let store = f.store.as_ref();
    let now = now_ms();
    {
        {
            let Claim::Batch(claim) = store.claim_batch(id, "w", now, 60_000).await.unwrap() else {
                panic!("a batch to claim");
            };
            let failed: Vec<FailedRecord> = (0..failures[claim.index as usize])
                .map(|i| {
                    let line = claim.index * 5 + i + 2;
                    FailedRecord::invalid(
                        line,
                        vec![
                            FieldIssue::new(Some("email"), Some("x"), "not a valid email address"),
                            FieldIssue::new(Some("age"), Some("-1"), "below the minimum"),
                        ],
                    )
                })
                .collect();
            let outcome = BatchOutcome {
                state: BatchState::Done,
                processed: 5 - failed.len() as u64,
                failed,
                error: None,
                duplicates: 0,
            };
            store.commit_batch(&claim, &outcome, now).await.unwrap();
        }
    }
}

async fn get(f: &Fixture, request: ApiRequest) -> (u16, serde_json::Value) {
    let response = f.api.handle(&request).await;
    (response.status, response.body)
}

#[tokio::test]
async fn unknown_routes_methods_and_parameters_answer_stable_error_codes() {
    let f = fixture();
    let (status, body) = get(&f, ApiRequest::get("/nowhere")).await;
    assert_eq!((status, &body["code"]), (404, &json!("not_found")));
    let (status, body) = get(&f, ApiRequest::post("/jobs")).await;
    assert_eq!((status, &body["code"]), (405, &json!("method_not_allowed")));
    let refused = f.api.handle(&ApiRequest::post("/jobs")).await;
    assert_eq!(
        refused.header("Allow"),
        Some("GET"),
        "RFC 9110: a 405 says what is allowed"
    );
    let refused = f.api.handle(&ApiRequest::get("/jobs/x/retry")).await;
    assert_eq!(
        (refused.status, refused.header("allow")),
        (405, Some("POST"))
    );
    let (status, body) = get(&f, ApiRequest::get("/jobs").with_query("status", "")).await;
    assert_eq!(status, 200, "an empty status is no status: {body}");
    let (status, body) = get(&f, ApiRequest::get("/jobs").with_query("colour", "red")).await;
    assert_eq!((status, &body["code"]), (400, &json!("bad_request")));
    let (status, _) = get(&f, ApiRequest::get("/jobs").with_query("limit", "0")).await;
    assert_eq!(status, 400);
    let (status, body) = get(&f, ApiRequest::get("/jobs").with_query("status", "DONE")).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("COMPLETED"));
    let (status, body) = get(&f, ApiRequest::get("/jobs/nope")).await;
    assert_eq!((status, &body["code"]), (404, &json!("not_found")));
    // Ids no job can have are not looked up: one over DynamoDB's 2 KB key
    // limit would be a validation error there.
    let id = job(&f, "shape.csv", &[1], true).await;
    for other in [
        "a".repeat(3000),
        id.as_str().to_ascii_uppercase(),
        format!("{id}0"),
    ] {
        for path in [format!("/jobs/{other}"), format!("/jobs/{other}/errors")] {
            let (status, body) = get(&f, ApiRequest::get(&path)).await;
            assert_eq!(
                (status, &body["code"]),
                (404, &json!("not_found")),
                "{path}"
            );
        }
        let abort = ApiRequest::post(&format!("/jobs/{other}/abort"));
        assert_eq!(get(&f, abort).await.0, 404);
    }
    let (status, _) = get(&f, ApiRequest::get(&format!("/jobs/{id}"))).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn failures_page_in_input_order_with_an_opaque_cursor_and_end_without_one() {
    let f = fixture();
    // 2 + 0 + 3 failed records of two rows each: 10 rows over 3 batches.
    let id = job(&f, "pages.csv", &[2, 0, 3], true).await;
    let path = format!("/jobs/{id}/errors");
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = ApiRequest::get(&path).with_query("limit", "3");
        if let Some(c) = &cursor {
            request = request.with_query("cursor", c);
        }
        let (status, body) = get(&f, request).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        rows.extend(body["errors"].as_array().unwrap().iter().cloned());
        match body.get("nextCursor") {
            Some(next) => cursor = Some(next.as_str().unwrap().to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 4, "10 rows, 3 a page");
    let lines: Vec<u64> = rows.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [2, 2, 3, 3, 12, 12, 13, 13, 14, 14]);
    assert_eq!(
        rows[0],
        json!({"line": 2, "field": "email", "value": "x",
               "message": "not a valid email address", "stage": "validation"})
    );
    // An empty cursor is none: the first page.
    let first = ApiRequest::get(&path).with_query("limit", "3");
    let empty = first.clone().with_query("cursor", "");
    assert_eq!(get(&f, empty).await, get(&f, first).await);
    for bad in [
        "%%%",
        "bm90IGEgY3Vyc29y",
        &Cursor {
            round: 0,
            batch: 0,
            offset: 99,
        }
        .encode(),
    ] {
        let request = ApiRequest::get(&path).with_query("cursor", bad);
        assert_eq!(get(&f, request).await.0, 400, "cursor {bad}");
    }
}

/// The page a cursor names, and its `nextCursor`.
async fn page(f: &Fixture, path: &str, cursor: &str) -> (u16, serde_json::Value) {
    let request = ApiRequest::get(path)
        .with_query("limit", "3")
        .with_query("cursor", cursor);
    get(f, request).await
}

#[tokio::test]
async fn a_cursor_reads_the_same_page_after_later_commits_and_expires_with_a_retry() {
    let f = fixture();
    let failures = [2, 0, 3, 1];
    let id = job(&f, "stable.csv", &failures, false).await;
    for _ in 0..3 {
        commit_next(&f, &id, &failures).await;
    }
    let path = format!("/jobs/{id}/errors");
    let (_, first) = get(&f, ApiRequest::get(&path).with_query("limit", "3")).await;
    let cursor = first["nextCursor"].as_str().unwrap().to_owned();
    let (status, second) = page(&f, &path, &cursor).await;
    assert_eq!(status, 200, "{second}");
    // The last batch commits (with a failure of its own) in between.
    commit_next(&f, &id, &failures).await;
    assert_eq!(
        page(&f, &path, &cursor).await,
        (200, second.clone()),
        "the rows a cursor names do not move"
    );

    // The job ends and is retried: the failures of the earlier round are
    // rerun, and its cursors are refused rather than skip or repeat rows.
    let store = f.store.as_ref();
    let fin = crate::store::Finalization {
        status: crate::JobStatus::CompletedWithErrors,
        reason: None,
        report_owed: false,
        now_ms: now_ms(),
    };
    assert!(store
        .finalize(&id, &fin, crate::store::FinalizeWhen::AllBatchesDone)
        .await
        .unwrap());
    for kind in store.get_job(&id).await.unwrap().unwrap().owed_events {
        store.ack_event(&id, kind, 0).await.unwrap();
    }
    let reopening = crate::store::Reopening {
        seen_retries: 0,
        requeue: false,
        base: 0,
        now_ms: now_ms(),
    };
    store.reopen(&id, &reopening).await.unwrap().unwrap();
    let (status, body) = page(&f, &path, &cursor).await;
    assert_eq!(
        (status, &body["code"]),
        (410, &json!("cursor_expired")),
        "{body}"
    );
    let (status, fresh) = get(&f, ApiRequest::get(&path).with_query("limit", "3")).await;
    assert_eq!((status, &fresh["errors"]), (200, &first["errors"]));
    let next = fresh["nextCursor"].as_str().unwrap();
    assert_ne!(next, cursor, "a cursor names its round");
    assert_eq!(page(&f, &path, next).await.1["errors"], second["errors"]);
}

/// An abort through the API must end a job of any size within the API
/// function's 30 seconds: it changes the status and leaves the report,
/// which reads every batch with failures, to a worker it wakes.
#[tokio::test]
async fn abort_of_a_big_job_ends_it_at_once_and_a_woken_worker_writes_the_report() {
    let f = fixture();
    let failures = vec![1; 20_000];
    let id = job(&f, "big.csv", &failures, true).await;
    let (status, body) = get(&f, ApiRequest::post(&format!("/jobs/{id}/abort"))).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("ABORTED")),
        "{body}"
    );
    assert!(
        f.reports.reports.lock().unwrap().is_empty(),
        "no report is written inside the request"
    );
    assert!(
        f.events.endings().is_empty(),
        "the event waits for its report"
    );
    let woken = f.queue.sent.lock().unwrap().clone();
    assert_eq!(woken.len(), 1, "a worker is woken for the report");
    let job = f.store.get_job(&id).await.unwrap().unwrap();
    assert!(job.report_owed && job.report.is_none());

    // The woken worker finds the job ended and settles it.
    let definition = crate::Definition::from_json(DEFINITION, "test").unwrap();
    let finalizer = crate::finalize::Finalizer::new(
        f.store.as_ref(),
        f.events.as_ref(),
        f.reports.as_ref(),
        &crate::metrics::NoMetrics,
        &definition,
        &f.api.clock,
    );
    let settled = finalizer.settle(&id).await.unwrap();
    assert!(settled.report);
    let reports = f.reports.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].0, format!("memory://reports/{id}.csv"));
    assert_eq!(
        reports[0].1.lines().count(),
        1 + 20_000,
        "header + a row a record"
    );
    let ended = f.events.endings();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].report.as_deref(), Some(reports[0].0.as_str()));
    assert_eq!(
        finalizer.settle(&id).await.unwrap(),
        Default::default(),
        "settled once"
    );
}

#[tokio::test]
async fn abort_ends_a_running_job_once_and_then_conflicts() {
    let f = fixture();
    let id = job(&f, "stop.csv", &[0, 0], false).await;
    let path = format!("/jobs/{id}/abort");
    let (status, body) = get(
        &f,
        ApiRequest::post(&path).with_body(r#"{"reason": "wrong file"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ABORTED");
    assert_eq!(body["failureReason"], "wrong file");
    let (status, body) = get(&f, ApiRequest::post(&path)).await;
    assert_eq!((status, &body["code"]), (409, &json!("conflict")));
    let (status, _) = get(&f, ApiRequest::post(&path).with_body("reason?")).await;
    assert_eq!(status, 400, "a body that is not the documented JSON");
    let (status, _) = get(&f, ApiRequest::post("/jobs/missing/abort")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn retry_reopens_an_aborted_job_and_conflicts_while_it_runs() {
    let f = fixture();
    let id = job(&f, "again.csv", &[0, 0], false).await;
    let retry = format!("/jobs/{id}/retry");
    let (status, body) = get(&f, ApiRequest::post(&retry)).await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("conflict")),
        "still running"
    );
    get(&f, ApiRequest::post(&format!("/jobs/{id}/abort"))).await;
    let (status, body) = get(&f, ApiRequest::post(&retry)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["status"], &body["retries"]),
        (&json!("PROCESSING"), &json!(1))
    );
    let (status, _) = get(&f, ApiRequest::post("/jobs/missing/retry")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn jobs_are_listed_by_status_and_found_by_their_object() {
    let f = fixture();
    let stopped = job(&f, "stopped.csv", &[1], true).await;
    let running = job(&f, "running.csv", &[0], false).await;
    let (status, _) = get(&f, ApiRequest::post(&format!("/jobs/{stopped}/abort"))).await;
    assert_eq!(status, 200);
    let (_, body) = get(&f, ApiRequest::get("/jobs")).await;
    assert_eq!(body["jobs"].as_array().unwrap().len(), 2);
    let (_, body) = get(
        &f,
        ApiRequest::get("/jobs").with_query("status", "processing"),
    )
    .await;
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(body["jobs"][0]["jobId"], running.as_str());
    let (_, body) = get(&f, ApiRequest::get("/jobs").with_query("status", "ABORTED")).await;
    assert_eq!(body["jobs"][0]["jobId"], stopped.as_str());
    let (_, view) = get(&f, ApiRequest::get(&format!("/jobs/{stopped}"))).await;
    assert_eq!(view["processed"], 4);

    // Memory objects are keyed by a digest of their content.
    f.objects.put("uploads", "new.csv", "email\n");
    let version = {
        use crate::objects::ObjectVersions;
        f.objects
            .current_version("uploads", "new.csv")
            .await
            .unwrap()
            .unwrap()
    };
    let id = SourceRef {
        bucket: "uploads".into(),
        key: "new.csv".into(),
        version,
    }
    .job_id();
    let (_, body) = get(
        &f,
        ApiRequest::get("/jobs").with_query("source", "s3://uploads/new.csv"),
    )
    .await;
    assert_eq!(
        body,
        json!({"jobs": []}),
        "no job for that version yet: {id}"
    );
    let (status, _) = get(
        &f,
        ApiRequest::get("/jobs").with_query("source", "uploads/new.csv"),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn stats_count_jobs_per_status_and_health_answers() {
    let f = fixture();
    job(&f, "a.csv", &[1], true).await;
    job(&f, "b.csv", &[0], false).await;
    let (status, body) = get(&f, ApiRequest::get("/stats")).await;
    assert_eq!(status, 200);
    assert_eq!(body["jobsByStatus"]["PROCESSING"], 2, "{body}");
    assert_eq!(body["recent"]["jobs"], 2);
    assert_eq!(body["recent"]["processed"], 4);
    assert_eq!(body["recent"]["failed"], 1);
    assert_eq!(body["recent"]["successRate"], 0.8);
    let (status, body) = get(&f, ApiRequest::get("/health")).await;
    assert_eq!(
        (status, body),
        (200, json!({"status": "ok", "version": "1.2.3"}))
    );
}
