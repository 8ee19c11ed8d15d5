//! The storage threads: a fixed number of OS threads that run every tenant's SQLite work as
//! synchronous calls, as a Durable Object's SQLite API does. A job is one whole unit of work (a
//! group commit, a page of reads), so it costs one hop to a thread and one back, however many
//! statements it runs. Threads are bounded by a setting, not by the number of tenants.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Why a job did not run to its end.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    #[error("the storage threads are stopped")]
    Stopped,
    #[error("cannot start the storage threads: {0}")]
    Spawn(String),
    #[error("a storage job panicked: {0}")]
    Panicked(String),
}

/// A handle to the storage threads. Cheap to clone. The threads start with the first job and
/// end when the last handle is dropped (each finishes the job it is running first).
#[derive(Clone, Debug)]
pub struct StorePool {
    inner: Arc<Inner>,
}

struct Inner {
    queue: Arc<Queue>,
    threads: usize,
    started: OnceLock<Result<Vec<JoinHandle<()>>, String>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorePool")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

/// The jobs waiting for a thread. Idle threads sleep on the condition variable (no spinning:
/// on a small machine, spinning threads take the core from the ones doing work).
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    closed: bool,
}

impl Queue {
    fn push(&self, job: Job) -> Result<(), PoolError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed {
            return Err(PoolError::Stopped);
        }
        state.jobs.push_back(job);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state = self.ready.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_all();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The threads finish what is queued and end.
        self.queue.close();
    }
}

impl StorePool {
    /// A pool of `threads` storage threads (at least one), started on first use.
    pub fn new(threads: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue: Arc::new(Queue::default()),
                threads: threads.max(1),
                started: OnceLock::new(),
            }),
        }
    }

    fn start(&self) -> Result<(), PoolError> {
        let started = self.inner.started.get_or_init(|| {
            (0..self.inner.threads)
                .map(|i| {
                    let queue = self.inner.queue.clone();
                    std::thread::Builder::new()
                        .name(format!("wharf-store-{i}"))
                        .spawn(move || {
                            while let Some(job) = queue.pop() {
                                job();
                            }
                        })
                })
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(|e| e.to_string())
        });
        match started {
            Ok(_) => Ok(()),
            Err(e) => Err(PoolError::Spawn(e.clone())),
        }
    }

    /// Runs `job` on a storage thread and returns its result. A panic in the job is caught and
    /// returned as an error; the thread lives on.
    pub async fn run<R, F>(&self, job: F) -> Result<R, PoolError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(job)).map_err(|panic| {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                PoolError::Panicked(msg)
            });
            let _ = tx.send(result);
        });
        self.start()?;
        self.inner.queue.push(job)?;
        rx.await.map_err(|_| PoolError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_a_bounded_set_of_threads() {
        let pool = StorePool::new(2);
        let names = futures_util::future::join_all((0..20).map(|_| {
            pool.run(|| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                std::thread::current().name().map(str::to_owned)
            })
        }))
        .await;
        let mut names: Vec<String> = names
            .into_iter()
            .map(|n| n.expect("ran").expect("named"))
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() <= 2, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("wharf-store-")));
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_thread_goes_on() {
        let pool = StorePool::new(1);
        let e = pool
            .run(|| -> u32 { panic!("boom") })
            .await
            .expect_err("panicked");
        assert!(e.to_string().contains("boom"), "{e}");
        assert_eq!(pool.run(|| 7).await.expect("runs"), 7);
    }
}
