//! A daemon's tasks side by side, stopped together: each task is spawned by name, watches one
//! stop signal, and is joined at shutdown within one bounded wait; a task still running at
//! the deadline is aborted (and joined) and named in the log, so no task outlives its daemon.
//!
//! Besides the long-lived tasks, short-lived ones (a server's connections, a job one of them
//! starts) are spawned from anywhere through a [`Spawner`] into the same set: at the stop they
//! get what is left of the same wait, then are aborted and joined like the rest.
//!
//! The shape of mini-redis's and linkerd2-proxy's shutdown: one broadcast "stop", every task
//! owned by one `JoinSet`, nothing detached.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinError, JoinSet};

/// A short-lived task on its way to the supervisor's set.
type Child = (&'static str, Pin<Box<dyn Future<Output = ()> + Send>>);

/// What a task's end means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Runs until the stop; ending before it is logged, and the others go on.
    Daemon,
    /// Runs until the stop; ending before it (done, failed or panicked) stops the daemon.
    Essential,
    /// Ends by itself (a connection); only a panic is worth a log line.
    Child,
}

/// The daemon's tasks and the signal that stops them.
#[derive(Debug)]
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    /// The name and kind of each running task, by tokio's task id: the id is what a
    /// `JoinError` (panic, abort) carries.
    names: HashMap<Id, (&'static str, Kind)>,
    stop: watch::Sender<bool>,
    stop_within: Duration,
    /// Short-lived tasks sent by [`Spawner`]s, spawned into `tasks` as they come.
    children: mpsc::UnboundedReceiver<Child>,
    spawner: Spawner,
}

/// Spawns short-lived tasks into a [`Supervisor`]'s set from any task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Spawner {
    children: mpsc::UnboundedSender<Child>,
    stop: watch::Receiver<bool>,
}

/// How the stop went, for the log and the tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// Tasks that had not finished at the deadline and were aborted, by name.
    pub aborted: Vec<&'static str>,
    /// The essential task whose end stopped the daemon, if that is what stopped it.
    pub failed: Option<&'static str>,
}

impl Supervisor {
    /// Tasks get `stop_within` to finish after the stop signal before they are aborted.
    pub fn new(stop_within: Duration) -> Self {
        let (stop, stopping) = watch::channel(false);
        let (sender, children) = mpsc::unbounded_channel();
        Supervisor {
            tasks: JoinSet::new(),
            names: HashMap::new(),
            stop,
            stop_within,
            children,
            spawner: Spawner {
                children: sender,
                stop: stopping,
            },
        }
    }

    /// A receiver that turns true when the daemon stops; each task watches one (see
    /// [`stopped`]).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// A handle that spawns short-lived tasks into this set (see [`Spawner::spawn`]).
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// Runs `task` beside the others. It should return soon after [`Supervisor::stopping`]
    /// turns true; an error it returns is logged.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.spawn_as(name, Kind::Daemon, task);
    }

    /// Like [`Supervisor::spawn`], for a task the daemon is no use without (a server): if it
    /// ends before the stop, however it ends, every task is stopped and
    /// [`Stopped::failed`] names it.
    pub fn spawn_essential<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.spawn_as(name, Kind::Essential, task);
    }

    fn spawn_as<F>(&mut self, name: &'static str, kind: Kind, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), (name, kind));
    }

    fn spawn_child(&mut self, (name, task): Child) {
        self.spawn_as(name, Kind::Child, async move {
            task.await;
            Ok(())
        });
    }

    /// Waits for `signal` (or the end of an essential task), then signals every task to
    /// stop and joins them all, the short-lived ones too; any still running after the one
    /// bounded wait is aborted, joined, and named. Another task that ends before the signal
    /// is logged; the others go on.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Stopped {
        tokio::pin!(signal);
        let mut failed = None;
        while failed.is_none() {
            tokio::select! {
                () = &mut signal => break,
                Some(child) = self.children.recv() => self.spawn_child(child),
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    failed = self.log_end(done, false);
                }
            }
        }
        tracing::info!("stopping");
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + self.stop_within;
        loop {
            if self.tasks.is_empty() {
                // A task's last act may have been to spawn one more.
                match self.children.try_recv() {
                    Ok(child) => self.spawn_child(child),
                    Err(_) => {
                        return Stopped {
                            aborted: Vec::new(),
                            failed,
                        };
                    }
                }
            }
            tokio::select! {
                Some(child) = self.children.recv() => self.spawn_child(child),
                Some(done) = self.tasks.join_next_with_id() => {
                    self.log_end(done, true);
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Too late to start: what is still on its way is dropped unstarted.
        self.children.close();
        while self.children.try_recv().is_ok() {}
        let mut aborted: Vec<&'static str> = self.names.values().map(|(name, _)| *name).collect();
        aborted.sort_unstable();
        tracing::warn!(
            tasks = ?aborted,
            within = ?self.stop_within,
            "tasks still running at the stop deadline; aborting them"
        );
        self.tasks.abort_all();
        // An aborted task ends at its next await; joining it here means none outlives us.
        while self.tasks.join_next().await.is_some() {}
        Stopped { aborted, failed }
    }

    /// Logs a task's end; the name of an essential task that ended before the stop.
    fn log_end(
        &mut self,
        done: Result<(Id, anyhow::Result<()>), JoinError>,
        stopping: bool,
    ) -> Option<&'static str> {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(err) => err.id(),
        };
        let (name, kind) = self.names.remove(&id).unwrap_or(("?", Kind::Daemon));
        let essential = kind == Kind::Essential && !stopping;
        match done {
            Ok((_, Ok(()))) if stopping || kind == Kind::Child => {
                tracing::debug!(task = name, "stopped");
            }
            Ok((_, Ok(()))) if essential => {
                tracing::error!(task = name, "an essential task ended; stopping the daemon");
            }
            Ok((_, Ok(()))) => tracing::warn!(task = name, "task ended early"),
            Ok((_, Err(err))) => tracing::error!(
                task = name,
                error = %crate::cli::describe(&err),
                "task failed"
            ),
            Err(err) => tracing::error!(task = name, error = %err, "task panicked"),
        }
        essential.then_some(name)
    }
}

impl Spawner {
    /// Runs `task` in the supervisor's set: joined at the stop like the daemon's own tasks
    /// (within the same wait, then aborted). It ends by itself; a panic is logged. Once the
    /// supervisor has given up waiting, `task` is dropped unstarted.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let _ = self.children.send((name, Box::pin(task)));
    }

    /// A receiver that turns true when the daemon stops, as [`Supervisor::stopping`].
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.clone()
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

    #[tokio::test(start_paused = true)]
    async fn an_essential_task_that_fails_stops_the_others() {
        let mut sup = Supervisor::new(WITHIN);
        let done = Arc::new(AtomicBool::new(false));
        let task = polite(&sup, Duration::from_millis(100), done.clone());
        sup.spawn("polite", task);
        sup.spawn_essential("server", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            anyhow::bail!("cannot accept")
        });
        let started = tokio::time::Instant::now();
        let stopped = sup.run_until(std::future::pending()).await;
        assert_eq!(stopped.failed, Some("server"));
        assert_eq!(stopped.aborted, Vec::<&str>::new());
        assert!(done.load(Ordering::SeqCst), "told to stop, and joined");
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(1_100),
            "stopped at the failure, not at a signal"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connection_tasks_spawned_from_a_task_are_joined_within_the_same_wait() {
        let mut sup = Supervisor::new(WITHIN);
        let spawner = sup.spawner();
        let finished = Arc::new(AtomicBool::new(false));
        let (alive, gone) = tokio::sync::oneshot::channel::<()>();
        let accepted = finished.clone();
        let mut server_stop = sup.stopping();
        sup.spawn_essential("server", async move {
            // A request in flight that finishes after the signal, within the wait.
            let mut stop = spawner.stopping();
            spawner.spawn("connection", async move {
                stopped(&mut stop).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                accepted.store(true, Ordering::SeqCst);
            });
            // A client that never lets go.
            spawner.spawn("connection", async move {
                let _alive = alive;
                std::future::pending::<()>().await;
            });
            // The server itself stops at once; its connections are not its to wait for.
            stopped(&mut server_stop).await;
            Ok(())
        });
        let started = tokio::time::Instant::now();
        let stopped = sup
            .run_until(tokio::time::sleep(Duration::from_secs(1)))
            .await;
        assert_eq!(stopped.aborted, vec!["connection"], "the one that hung on");
        assert_eq!(stopped.failed, None);
        assert!(
            finished.load(Ordering::SeqCst),
            "the request in flight finished"
        );
        assert!(gone.await.is_err(), "the stuck connection was dropped");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1) + WITHIN,
            "one wait for the tasks and their connections together"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_spawned_after_the_deadline_never_starts() {
        let sup = Supervisor::new(WITHIN);
        let spawner = sup.spawner();
        let stopped = sup.run_until(std::future::ready(())).await;
        assert_eq!(stopped, Stopped::default());
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        spawner.spawn("late", async move { flag.store(true, Ordering::SeqCst) });
        tokio::task::yield_now().await;
        assert!(!started.load(Ordering::SeqCst));
    }
}
