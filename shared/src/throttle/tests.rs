//! The limiter on in-memory windows, under tokio's paused clock: time only
//! moves when every task waits, so windows are driven by the limiter's own
//! waits and the tests never sleep.

use super::*;
use std::sync::Arc;
use std::time::Duration;

/// Half past some second: windows do not start when the test does.
const ORIGIN_MS: i64 = 1_800_000_000_500;

/// Wall-clock time that follows tokio's (paused) clock.
fn paused_clock() -> Clock {
    Clock::simulated(ORIGIN_MS)
}

/// Jitter that repeats from run to run.
fn rng() -> Rng {
    Rng::seeded(0x7e57)
}

fn job() -> JobId {
    JobId::new("0123456789abcdef0123456789abcdef")
}

/// The reservation, which a limiter without a deadline always makes.
fn granted(grant: Result<Grant, ThrottleError>) -> Acquired {
    grant
        .unwrap()
        .granted()
        .expect("no deadline, so never out of time")
}

/// Fails instead of hanging if the limiter never lets a task through.
async fn within_an_hour<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(3600), work)
        .await
        .expect("the limiter let every reservation through")
}

#[test]
fn the_definition_cap_wins_over_the_deployment_default() {
    assert_eq!(cap_of(None, 0), None, "no cap anywhere");
    assert_eq!(cap_of(None, 500), Some(500), "the deployment default");
    assert_eq!(cap_of(Some(200), 500), Some(200), "the definition wins");
    assert_eq!(cap_of(Some(2000), 500), Some(2000), "higher too");
    assert_eq!(cap_of(Some(0), 500), None, "0 lifts the default");
}

#[test]
fn records_are_cut_into_runs_of_at_most_the_slice() {
    assert_eq!(slices(&[], 10), Vec::<Range<usize>>::new());
    assert_eq!(slices(&[1; 25], 10), vec![0..10, 10..20, 20..25]);
    assert_eq!(slices(&[3, 3, 3, 3], 10), vec![0..3, 3..4]);
    // A record over the slice is a run of its own, wherever it is.
    assert_eq!(slices(&[2, 40, 2, 2], 10), vec![0..1, 1..2, 2..4]);
    assert_eq!(slices(&[40], 10), vec![0..1]);
    // Records that cost nothing (they will not be written) ride along.
    assert_eq!(slices(&[0, 0, 10, 0], 10), vec![0..4]);
}

#[tokio::test(start_paused = true)]
async fn reservations_fill_a_window_then_wait_for_the_next() {
    let throttle = MemoryThrottle::default();
    let clock = paused_clock();
    let job = job();
    let limiter = Limiter {
        throttle: &throttle,
        clock: &clock,
        rng: &rng(),
        job: &job,
        cap: 100,
        stop_at: None,
    };
    let first = ORIGIN_MS / 1000;
    let mut full = 0;
    within_an_hour(async {
        for _ in 0..10 {
            full += granted(limiter.acquire(30).await).full;
        }
    })
    .await;
    // 30 + 30 + 30 fit a window of 100; the fourth waits for the next.
    assert_eq!(
        throttle.windows(&job),
        vec![
            (first, 90),
            (first + 1, 90),
            (first + 2, 90),
            (first + 3, 30)
        ]
    );
    assert_eq!(full, 3, "one refusal per window change");
    assert_eq!(clock.now_ms().div_euclid(1000), first + 3);
}

#[tokio::test(start_paused = true)]
async fn workers_together_never_exceed_the_cap_and_use_all_of_it() {
    let throttle = Arc::new(MemoryThrottle::default());
    let clock = paused_clock();
    let job = job();
    let cap = 100;
    let (workers, per_worker) = (8, 500);
    let rng = rng();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (throttle, rng, job) = (throttle.clone(), rng.clone(), job.clone());
            tokio::spawn(async move {
                let limiter = Limiter {
                    throttle: throttle.as_ref(),
                    clock: &clock,
                    rng: &rng,
                    job: &job,
                    cap,
                    stop_at: None,
                };
                let mut requests = 0;
                for _ in 0..per_worker / limiter.slice() {
                    requests += granted(limiter.acquire(limiter.slice()).await).requests;
                }
                requests
            })
        })
        .collect();
    let requests: u32 = within_an_hour(futures::future::join_all(tasks))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    let windows = throttle.windows(&job);
    let used: Vec<u64> = windows.iter().map(|w| w.1).collect();
    assert_eq!(used.iter().sum::<u64>(), workers * per_worker);
    assert_eq!(
        used,
        vec![cap; (workers * per_worker / cap) as usize],
        "every window is filled to the cap, none beyond"
    );
    let seconds: Vec<i64> = windows.iter().map(|w| w.0).collect();
    let first = ORIGIN_MS / 1000;
    assert_eq!(
        seconds,
        (first..first + seconds.len() as i64).collect::<Vec<_>>()
    );
    // 400 reservations granted, and each worker turned away at most once a
    // window.
    let granted = (workers * per_worker / 10) as u32;
    assert!(requests >= granted);
    assert!(requests - granted <= workers as u32 * seconds.len() as u32);
}

#[tokio::test(start_paused = true)]
async fn a_reservation_larger_than_the_cap_takes_a_whole_window() {
    let throttle = MemoryThrottle::default();
    let clock = paused_clock();
    let job = job();
    let limiter = Limiter {
        throttle: &throttle,
        clock: &clock,
        rng: &rng(),
        job: &job,
        cap: 100,
        stop_at: None,
    };
    let first = ORIGIN_MS / 1000;
    within_an_hour(async {
        granted(limiter.acquire(10).await);
        // Waits for an empty window rather than forever.
        granted(limiter.acquire(250).await);
        granted(limiter.acquire(10).await);
    })
    .await;
    assert_eq!(
        throttle.windows(&job),
        vec![(first, 10), (first + 1, 100), (first + 2, 10)]
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_to_write_reserves_nothing() {
    let throttle = MemoryThrottle::default();
    let clock = paused_clock();
    let job = job();
    let limiter = Limiter {
        throttle: &throttle,
        clock: &clock,
        rng: &rng(),
        job: &job,
        cap: 100,
        stop_at: None,
    };
    assert_eq!(granted(limiter.acquire(0).await), Acquired::default());
    assert!(throttle.windows(&job).is_empty());
}

#[tokio::test(start_paused = true)]
async fn no_wait_starts_for_a_window_that_opens_after_the_stop_point() {
    let throttle = MemoryThrottle::default();
    let clock = paused_clock();
    let job = job();
    let start = clock.instant();
    // Windows open at 0.5 s, 1.5 s, 2.5 s...: the second fits, the third not.
    let stop_at = start + Duration::from_millis(2_200);
    let limiter = Limiter {
        throttle: &throttle,
        clock: &clock,
        rng: &rng(),
        job: &job,
        cap: 100,
        stop_at: Some(stop_at),
    };
    let first = ORIGIN_MS / 1000;
    let grants = within_an_hour(async {
        let mut grants = Vec::new();
        for _ in 0..4 {
            grants.push(limiter.acquire(100).await.unwrap());
        }
        grants
    })
    .await;
    let made: Vec<bool> = grants.iter().map(|g| g.granted().is_some()).collect();
    assert_eq!(made, vec![true, true, true, false]);
    assert_eq!(
        grants[3].acquired(),
        Acquired {
            requests: 1,
            full: 1
        },
        "turned away once, then no wait"
    );
    assert_eq!(
        throttle.windows(&job),
        vec![(first, 100), (first + 1, 100), (first + 2, 100)]
    );
    let now = clock.instant();
    assert!(now < stop_at, "stopped {:?} after the start", now - start);
    assert_eq!(clock.now_ms().div_euclid(1000), first + 2);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_reserved_once_the_stop_point_has_passed() {
    let throttle = MemoryThrottle::default();
    let clock = paused_clock();
    let job = job();
    let limiter = Limiter {
        throttle: &throttle,
        clock: &clock,
        rng: &rng(),
        job: &job,
        cap: 100,
        stop_at: Some(clock.instant()),
    };
    let grant = limiter.acquire(10).await.unwrap();
    assert_eq!(grant, Grant::OutOfTime(Acquired::default()));
    assert!(
        throttle.windows(&job).is_empty(),
        "units reserved now would go unspent"
    );
}

fn definition(options: &str) -> Definition {
    let text = format!(r#"{{"fields": [{{"name": "a", "type": "string"}}]{options}}}"#);
    Definition::from_json(&text, "def.json").unwrap()
}

#[test]
fn a_cap_too_low_to_write_a_batch_in_time_is_refused() {
    let own = definition(r#", "batchSize": 500, "maxWriteUnitsPerSecond": 2"#);
    let e = check_cap(&own, 1000, "def.json").unwrap_err();
    assert_eq!(
        e.to_string(),
        "import definition def.json: batchSize 500 at maxWriteUnitsPerSecond 2 needs at least \
         250 s per batch at the full cap (a record costs at least 1 write unit), more than the \
         60 s a batch may take: lower batchSize to at most 120 or raise maxWriteUnitsPerSecond \
         to at least 9"
    );
    // The deployment's default, for a definition that sets no cap.
    let default = definition(r#", "batchSize": 500"#);
    let e = check_cap(&default, 2, "def.json").unwrap_err();
    assert_eq!(
        e.to_string(),
        "import definition def.json sets no maxWriteUnitsPerSecond, so its jobs run under the \
         deployment's MAX_WRITE_UNITS_PER_SECOND 2: batchSize 500 at 2 write units a second \
         needs at least 250 s per batch at the full cap (a record costs at least 1 write unit), \
         more than the 60 s a batch may take: lower batchSize to at most 120, raise \
         MAX_WRITE_UNITS_PER_SECOND to at least 9, or set maxWriteUnitsPerSecond in the \
         definition"
    );
}

#[test]
fn a_cap_that_writes_a_batch_in_time_is_accepted() {
    let fits = |options: &str, default| check_cap(&definition(options), default, "def.json");
    // 60 s a batch at the full cap, exactly.
    assert_eq!(
        fits(r#", "batchSize": 120, "maxWriteUnitsPerSecond": 2"#, 0),
        Ok(())
    );
    assert_eq!(fits(r#", "batchSize": 500"#, 9), Ok(()));
    // No cap anywhere, or the definition lifts the default.
    assert_eq!(fits(r#", "batchSize": 500"#, 0), Ok(()));
    assert_eq!(
        fits(r#", "batchSize": 500, "maxWriteUnitsPerSecond": 0"#, 1),
        Ok(())
    );
    // The definition's own cap wins over a default too low.
    assert_eq!(
        fits(r#", "batchSize": 500, "maxWriteUnitsPerSecond": 100"#, 1),
        Ok(())
    );
    assert!(fits(r#", "batchSize": 121, "maxWriteUnitsPerSecond": 2"#, 0).is_err());
}
