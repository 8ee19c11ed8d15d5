//! The storage threads: a fixed number of OS threads that run every tenant's SQLite work as
//! synchronous calls, as a Durable Object's SQLite API does. A job is one whole unit of work (a
//! group commit, a page of reads), so it costs one hop to a thread and one back, however many
//! statements it runs. Threads are bounded by a setting, not by the number of tenants.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
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

#[derive(Debug)]
struct Inner {
    jobs: Sender<Job>,
    queue: Receiver<Job>,
    threads: usize,
    started: OnceLock<Result<Vec<JoinHandle<()>>, String>>,
}

impl StorePool {
    /// A pool of `threads` storage threads (at least one), started on first use.
    pub fn new(threads: usize) -> Self {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        Self {
            inner: Arc::new(Inner {
                jobs,
                queue,
                threads: threads.max(1),
                started: OnceLock::new(),
            }),
        }
    }

    /// How many threads run jobs.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    fn start(&self) -> Result<(), PoolError> {
        let started = self.inner.started.get_or_init(|| {
            (0..self.inner.threads)
                .map(|i| {
                    let queue = self.inner.queue.clone();
                    std::thread::Builder::new()
                        .name(format!("wharf-store-{i}"))
                        .spawn(move || {
                            while let Ok(job) = queue.recv() {
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
        self.inner.jobs.send(job).map_err(|_| PoolError::Stopped)?;
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
