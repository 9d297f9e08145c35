//! Expressions off the async workers. Every jq and CEL evaluation of an event runs on one of a
//! few dedicated threads, never on a tokio worker, so a slow or runaway expression cannot stop
//! intake, `/healthz` or shutdown:
//!
//! ```text
//!  caller (async) ── permit (≤ workers) ──▶ queue ──▶ expression thread: f() under its Limits
//!        │                                                   │
//!        └── waits at most the time limit (+ grace) ◀── result ┘
//!            past it: EvalError::Budget; the thread is abandoned and replaced
//! ```
//!
//! jq stops itself at its step and time limits ([`inputbot_api::expr::Limits`]); an evaluation
//! that does not (CEL has no step meter, and jq loops that never pass through `range` or an
//! output) is abandoned when its time is up: the caller gets [`EvalError::Budget`] and a
//! replacement thread takes its place, up to [`MAX_ABANDONED`] at a time. Past that, callers
//! wait for a free thread (up to [`QUEUE_WAIT`]) and fail with `budget` — the process keeps
//! serving either way, and an abandoned thread ends with the process.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU8, AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

pub use inputbot_api::expr::{EvalError, Limits};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Abandoned (runaway) evaluations replaced by fresh threads at most at once.
pub const MAX_ABANDONED: usize = 8;
/// How long an evaluation waits for a free expression thread.
pub const QUEUE_WAIT: Duration = Duration::from_secs(30);
/// Stack of an expression thread: deep enough for any value within the nesting limit.
const STACK_BYTES: usize = 64 * 1024 * 1024;
/// Time past the limit the caller allows jq to report its own budget error.
const GRACE: Duration = Duration::from_millis(250);

const RUNNING: u8 = 0;
const DONE: u8 = 1;
/// Timed out, and a replacement thread was started: the stuck thread ends when it returns.
const REPLACED: u8 = 2;
/// Timed out without a replacement: the thread goes back to the queue when it returns.
const KEPT: u8 = 3;

type Job = Box<dyn FnOnce() -> bool + Send>;

struct Pool {
    permits: Arc<Semaphore>,
    queue: mpsc::Sender<Job>,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    abandoned: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        // Twice the cores (at least 4): evaluations are short, and a few slow ones must not
        // queue the rest behind them.
        let workers = std::thread::available_parallelism()
            .map(|n| 2 * n.get())
            .unwrap_or(4)
            .max(4);
        let (queue, jobs) = mpsc::channel();
        let pool = Pool {
            permits: Arc::new(Semaphore::new(workers)),
            queue,
            jobs: Arc::new(Mutex::new(jobs)),
            abandoned: AtomicUsize::new(0),
        };
        for _ in 0..workers {
            spawn_worker(&pool.jobs);
        }
        pool
    })
}

/// A thread taking jobs until one tells it to end (it was replaced while stuck).
fn spawn_worker(jobs: &Arc<Mutex<mpsc::Receiver<Job>>>) {
    let jobs = jobs.clone();
    let spawned = std::thread::Builder::new()
        .name("inputbot-expr".into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            loop {
                // A poisoned lock only means another worker panicked outside a job: go on.
                let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                    Ok(job) => job,
                    Err(_) => return,
                };
                if !job() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start an expression thread");
    }
}

/// Runs a jq program expecting one output over `data` on an expression thread ([`run`]).
pub async fn jq_one(
    program: &inputbot_api::expr::JqProgram,
    data: &serde_json::Value,
    limits: Limits,
) -> Result<serde_json::Value, EvalError> {
    let (program, data) = (program.clone(), data.clone());
    run(limits, move || program.run_one_limited(&data, limits)).await
}

/// Runs `f` on an expression thread and waits at most `limits.time` (plus a short grace) for
/// it. Over time, or when no thread is free within [`QUEUE_WAIT`], the answer is
/// [`EvalError::Budget`]; a panic in `f` is [`EvalError::Failed`].
pub async fn run<T, F>(limits: Limits, f: F) -> Result<T, EvalError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, EvalError> + Send + 'static,
{
    let pool = pool();
    let permit = match tokio::time::timeout(QUEUE_WAIT, pool.permits.clone().acquire_owned()).await
    {
        Ok(Ok(permit)) => permit,
        _ => {
            return Err(EvalError::Budget(format!(
                "no expression thread was free within {QUEUE_WAIT:?}"
            )));
        }
    };
    let state = Arc::new(AtomicU8::new(RUNNING));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job_state = state.clone();
    let job: Job = Box::new(move || {
        let result = std::panic::catch_unwind(AssertUnwindSafe(f));
        let _ = tx.send(result);
        finish(permit, &job_state)
    });
    if pool.queue.send(job).is_err() {
        return Err(EvalError::Failed("the expression threads are gone".into()));
    }
    let waited = tokio::time::timeout(limits.time + GRACE, rx).await;
    match waited {
        Ok(Ok(Ok(result))) => result,
        Ok(Ok(Err(_panic))) => Err(EvalError::Failed("the expression panicked".into())),
        Ok(Err(_)) => Err(EvalError::Failed("the expression thread ended".into())),
        Err(_) => {
            abandon(pool, &state);
            Err(EvalError::Budget(format!(
                "the expression ran longer than {:?}",
                limits.time
            )))
        }
    }
}

/// After a job: whether its thread goes on taking jobs.
fn finish(permit: OwnedSemaphorePermit, state: &AtomicU8) -> bool {
    match state.compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => true,
        Err(REPLACED) => {
            // The replacement holds this capacity now.
            permit.forget();
            pool().abandoned.fetch_sub(1, Ordering::AcqRel);
            false
        }
        Err(_) => true,
    }
}

/// Gives up on a stuck job, starting a replacement thread while few are abandoned.
fn abandon(pool: &Pool, state: &AtomicU8) {
    let replace = pool.abandoned.fetch_add(1, Ordering::AcqRel) < MAX_ABANDONED;
    let next = if replace { REPLACED } else { KEPT };
    if state
        .compare_exchange(RUNNING, next, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
        || !replace
    {
        // It finished meanwhile, or no replacement is allowed: nothing is abandoned.
        pool.abandoned.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    tracing::warn!(
        abandoned = pool.abandoned.load(Ordering::Acquire),
        "an expression overran its time limit; its thread was replaced"
    );
    pool.permits.add_permits(1);
    spawn_worker(&pool.jobs);
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn a_runaway_evaluation_is_abandoned_at_its_time_limit_and_others_still_run() {
        let limits = Limits {
            steps: 1,
            time: Duration::from_millis(50),
        };
        let started = Instant::now();
        let stuck = (0..4).map(|_| {
            run(limits, || -> Result<(), EvalError> {
                std::thread::sleep(Duration::from_secs(2));
                Ok(())
            })
        });
        for result in futures::future::join_all(stuck).await {
            assert!(matches!(result, Err(EvalError::Budget(_))), "{result:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        // Generous limits from here: other tests share the pool.
        let quick = Limits {
            steps: 1,
            time: Duration::from_secs(5),
        };
        assert_eq!(run(quick, || Ok(7)).await, Ok(7));
        assert!(matches!(
            run(quick, || -> Result<(), EvalError> { panic!("boom") }).await,
            Err(EvalError::Failed(_))
        ));
        assert_eq!(run(quick, || Ok(8)).await, Ok(8));
    }
}
