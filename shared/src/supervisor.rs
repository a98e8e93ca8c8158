//! A daemon's tasks side by side, stopped together: each task is spawned by name, watches one
//! stop signal, and is joined at shutdown within a bounded wait; a task still running at the
//! deadline is aborted (and joined) and named in the log, so no task outlives its daemon.
//!
//! The shape of mini-redis's and linkerd2-proxy's shutdown: one broadcast "stop", every task
//! owned by one `JoinSet`, nothing detached.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinSet};

/// The daemon's tasks and the signal that stops them.
#[derive(Debug)]
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    /// The name of each running task, by tokio's task id: the id is what a `JoinError`
    /// (panic, abort) carries.
    names: HashMap<Id, &'static str>,
    stop: watch::Sender<bool>,
    stop_within: Duration,
}

/// How the stop went, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// Tasks that had not finished at the deadline and were aborted, by name.
    pub aborted: Vec<&'static str>,
}

impl Supervisor {
    /// Tasks get `stop_within` to finish after the stop signal before they are aborted.
    pub fn new(stop_within: Duration) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            stop: watch::channel(false).0,
            stop_within,
        }
    }

    /// A receiver that turns true when the daemon stops; each task watches one (see
    /// [`stopped`]).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Runs `task` beside the others. It should return soon after [`Supervisor::stopping`]
    /// turns true; an error it returns is logged.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for `signal`, then signals every task to stop and joins them all; any still
    /// running after the bounded wait is aborted, joined, and named. A task that ends before
    /// the signal is logged; the others go on.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Stopped {
        tokio::pin!(signal);
        loop {
            tokio::select! {
                () = &mut signal => break,
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.log_end(done, false);
                }
            }
        }
        tracing::info!("stopping");
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + self.stop_within;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(done)) => self.log_end(done, true),
                Ok(None) => return Stopped::default(),
                Err(_) => break,
            }
        }
        let mut aborted: Vec<&'static str> = self.names.values().copied().collect();
        aborted.sort_unstable();
        tracing::warn!(
            tasks = ?aborted,
            within = ?self.stop_within,
            "tasks still running at the stop deadline; aborting them"
        );
        self.tasks.abort_all();
        // An aborted task ends at its next await; joining it here means none outlives us.
        while self.tasks.join_next().await.is_some() {}
        Stopped { aborted }
    }

    fn log_end(&mut self, done: Result<(Id, anyhow::Result<()>), JoinError>, stopping: bool) {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(err) => err.id(),
        };
        let name = self.names.remove(&id).unwrap_or("?");
        match done {
            Ok((_, Ok(()))) if stopping => tracing::debug!(task = name, "stopped"),
            Ok((_, Ok(()))) => tracing::warn!(task = name, "task ended early"),
            Ok((_, Err(err))) => tracing::error!(
                task = name,
                error = %crate::cli::describe(&err),
                "task failed"
            ),
            Err(err) => tracing::error!(task = name, error = %err, "task panicked"),
        }
    }
}

/// Resolves once `stop` turns true (or its supervisor is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, not across the caller's awaits.
    let _ = stop.wait_for(|stop| *stop).await.map(drop);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    const WITHIN: Duration = Duration::from_millis(500);

    /// A task that returns as soon as it is told to stop, after `cleanup`.
    fn polite(
        sup: &Supervisor,
        cleanup: Duration,
        done: Arc<AtomicBool>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send + 'static {
        let mut stop = sup.stopping();
        async move {
            stopped(&mut stop).await;
            tokio::time::sleep(cleanup).await;
            done.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_task_that_heeds_the_signal_is_joined_before_run_until_returns() {
        let mut sup = Supervisor::new(WITHIN);
        let flags: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::default()).collect();
        for (i, flag) in flags.iter().enumerate() {
            let task = polite(&sup, Duration::from_millis(100 * i as u64), flag.clone());
            sup.spawn("polite", task);
        }
        let started = tokio::time::Instant::now();
        let stopped = sup
            .run_until(tokio::time::sleep(Duration::from_secs(5)))
            .await;
        assert_eq!(stopped, Stopped::default());
        assert!(
            flags.iter().all(|f| f.load(Ordering::SeqCst)),
            "all ran to the end"
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(5) + Duration::from_millis(200),
            "the stop waits for the slowest task, no longer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_the_signal_is_aborted_at_the_deadline_and_named() {
        let mut sup = Supervisor::new(WITHIN);
        let polite_done = Arc::new(AtomicBool::new(false));
        let task = polite(&sup, Duration::ZERO, polite_done.clone());
        sup.spawn("polite", task);
        // Dropped (and so observable) only once the task is really gone.
        let (alive, gone) = tokio::sync::oneshot::channel::<()>();
        sup.spawn("stubborn", async move {
            let _alive = alive;
            std::future::pending::<()>().await;
            Ok(())
        });
        let started = tokio::time::Instant::now();
        let stopped = sup.run_until(std::future::ready(())).await;
        assert_eq!(stopped.aborted, vec!["stubborn"]);
        assert_eq!(started.elapsed(), WITHIN, "bounded wait, then abort");
        assert!(polite_done.load(Ordering::SeqCst));
        assert!(
            gone.await.is_err(),
            "the stubborn task was dropped, not left running"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_that_end_or_panic_early_leave_the_others_running() {
        let mut sup = Supervisor::new(WITHIN);
        sup.spawn("early", async { Ok(()) });
        sup.spawn("failing", async { anyhow::bail!("broken") });
        sup.spawn("panicking", async { panic!("on purpose") });
        let done = Arc::new(AtomicBool::new(false));
        let task = polite(&sup, Duration::ZERO, done.clone());
        sup.spawn("polite", task);
        let stopped = sup
            .run_until(tokio::time::sleep(Duration::from_secs(1)))
            .await;
        assert_eq!(stopped, Stopped::default());
        assert!(
            done.load(Ordering::SeqCst),
            "still ran, then stopped on the signal"
        );
    }
}
