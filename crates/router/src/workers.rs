//! Shared-nothing workers: `workers` OS threads (`sniroute-worker-K`), each
//! running its own current-thread tokio runtime, on which the accept loops
//! of its own listening sockets run ([`crate::listener::Group`]). A
//! connection is accepted, read, routed, connected and forwarded on the
//! thread that accepted it: no work stealing, no wake-up of another thread.
//!
//! What is shared between workers is shared through [`crate::state::Shared`]
//! (atomics and sharded locks: the limits, metrics, the config generation),
//! exactly as between the tasks of one runtime. The control plane (admin
//! endpoint, discovery, health checks, signals, reload) runs on the main
//! runtime, which is not a worker.
//!
//! The threads end when [`Workers`] is dropped, after the drain: a
//! connection still open then is closed with its runtime.

use std::io;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::metrics::{self, Counter};

/// The worker threads.
#[derive(Debug)]
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    /// Its runtime, to register sockets with and spawn accept loops on.
    handle: Handle,
    /// Dropped (or sent) to end the thread.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// `sniroute_worker_connections_total{worker}`, held for the process's
    /// life so the series exists from the start.
    accepted: Counter,
}

/// The number of CPUs this process may run on (its affinity mask and
/// cgroup quota), for `workers: auto`.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl Workers {
    /// Starts `count` worker threads (at least one), each with a
    /// current-thread runtime (I/O and timers enabled).
    ///
    /// # Errors
    /// A thread or runtime that cannot be started; those started already
    /// end.
    pub(crate) fn start(count: usize) -> io::Result<Self> {
        let mut workers = Vec::with_capacity(count.max(1));
        for k in 0..count.max(1) {
            workers.push(Worker::start(k)?);
        }
        Ok(Self { workers })
    }

    /// How many there are.
    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    /// Worker `k`'s runtime (`k` below [`Workers::len`]).
    pub(crate) fn handle(&self, k: usize) -> &Handle {
        &self.workers[k].handle
    }

    /// Worker `k`'s accepted-connections counter.
    pub(crate) fn accepted(&self, k: usize) -> Counter {
        self.workers[k].accepted.clone()
    }

    /// Every worker's runtime, for a liveness probe that outlives a borrow
    /// (the watchdog, see [`alive`]).
    pub(crate) fn handles(&self) -> Vec<Handle> {
        self.workers.iter().map(|w| w.handle.clone()).collect()
    }
}

/// Whether every runtime of `handles` ran a task within `within`: a
/// worker stuck in a busy loop or a blocking call fails it.
pub(crate) async fn alive(handles: &[Handle], within: Duration) -> bool {
    let probes: Vec<_> = handles.iter().map(|h| h.spawn(async {})).collect();
    let all = async {
        for probe in probes {
            if probe.await.is_err() {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(within, all).await.unwrap_or(false)
}

impl Worker {
    fn start(k: usize) -> io::Result<Self> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("sniroute-worker-{k}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                        return;
                    }
                };
                let _ = handle_tx.send(Ok(runtime.handle().clone()));
                // Tasks spawned through the handle run while this waits.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let handle = match handle_rx.recv() {
            Ok(Ok(handle)) => handle,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("a worker thread ended at start"));
            }
        };
        let label = k.to_string();
        let accepted = metrics::registry().counter(
            &metrics::WORKER_CONNECTIONS_TOTAL,
            &[("worker", label.as_str())],
        );
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
            accepted,
        })
    }
}

impl Drop for Workers {
    /// Ends every worker thread and waits for them: first all are told,
    /// then each is joined.
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        for w in &mut self.workers {
            if let Some(thread) = w.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn workers_run_on_their_own_named_threads_and_end() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let mut names = Vec::new();
        for k in 0..2 {
            let name = workers
                .handle(k)
                .spawn(async { std::thread::current().name().map(str::to_owned) })
                .await
                .unwrap();
            names.push(name.unwrap());
        }
        assert_eq!(names, ["sniroute-worker-0", "sniroute-worker-1"]);
        let handles = workers.handles();
        assert!(alive(&handles, Duration::from_secs(5)).await);
        // A worker blocked in a task is not alive.
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        workers.handle(1).spawn(async move {
            let _ = blocked.recv_timeout(Duration::from_secs(10));
        });
        assert!(!alive(&handles, Duration::from_millis(100)).await);
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !alive(&handles, Duration::from_millis(100)).await {
            assert!(std::time::Instant::now() < deadline, "worker 1 came back");
        }
        drop(workers);
        // Gone: a probe is refused, not hung.
        assert!(!alive(&handles, Duration::from_secs(5)).await);
    }
}
