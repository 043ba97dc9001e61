//! The limiter on in-memory windows, under tokio's paused clock: time only
//! moves when every task waits, so windows are driven by the limiter's own
//! waits and the tests never sleep.

use super::*;
use std::time::Duration;

/// Half past some second: windows do not start when the test does.
const ORIGIN_MS: i64 = 1_800_000_000_500;

/// Wall-clock time that follows tokio's (paused) clock.
fn paused_clock() -> Clock {
    let origin = tokio::time::Instant::now();
    Clock::new(move || ORIGIN_MS + origin.elapsed().as_millis() as i64)
}

fn job() -> JobId {
    JobId::new("0123456789abcdef0123456789abcdef")
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
        job: &job,
        cap: 100,
    };
    let first = ORIGIN_MS / 1000;
    let mut full = 0;
    within_an_hour(async {
        for _ in 0..10 {
            full += limiter.acquire(30).await.unwrap().full;
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
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (throttle, clock, job) = (throttle.clone(), clock.clone(), job.clone());
            tokio::spawn(async move {
                let limiter = Limiter {
                    throttle: throttle.as_ref(),
                    clock: &clock,
                    job: &job,
                    cap,
                };
                let mut requests = 0;
                for _ in 0..per_worker / limiter.slice() {
                    requests += limiter.acquire(limiter.slice()).await.unwrap().requests;
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
        job: &job,
        cap: 100,
    };
    let first = ORIGIN_MS / 1000;
    within_an_hour(async {
        limiter.acquire(10).await.unwrap();
        // Waits for an empty window rather than forever.
        limiter.acquire(250).await.unwrap();
        limiter.acquire(10).await.unwrap();
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
        job: &job,
        cap: 100,
    };
    assert_eq!(limiter.acquire(0).await.unwrap(), Acquired::default());
    assert!(throttle.windows(&job).is_empty());
}
