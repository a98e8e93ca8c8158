//! The outbox's one owner: a thread of its own holds the [`Outbox`] and carries out the
//! commands that the link, the sources and the daemon send it over a channel, answering each
//! on a oneshot. No one else holds the outbox, and there is no lock around it.
//!
//! Every spool write, read, rewrite and fsync happens on that thread, never on a runtime
//! worker: a slow or stuck SD card holds up the callers waiting for their answer, not the
//! runtime that runs the link's keepalives, the metrics endpoint and the watchdog.
//!
//! The channel keeps the order of commands: a sample a source queued (and had answered)
//! before it woke the link is there when the link asks for a batch. A caller waits for its
//! answer, so a slow disk slows the sources down as the lock did, rather than letting
//! commands pile up in memory.

use std::thread::JoinHandle;

use edgeshare_shared::backend::depin::Reading;
use tokio::sync::{mpsc, oneshot};

use super::{Outbox, OutboxStats};
use crate::spool::{Appended, Entry, Kind, SpoolError};

/// Commands queued at most; each caller has one in flight, so this is rarely reached.
const QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(
        "the outbox's thread has stopped (a panic, logged above); messages cannot be queued until the agent restarts"
    )]
    Gone,
}

type Reply<T> = oneshot::Sender<T>;

/// One [`Outbox`] method each; see there for what it does.
#[derive(Debug)]
enum Command {
    Push {
        kind: Kind,
        reading: Reading,
        reply: Reply<(Result<Appended, SpoolError>, OutboxStats)>,
    },
    SetOnline {
        online: bool,
        reply: Reply<Result<(), SpoolError>>,
    },
    Rewind {
        reply: Reply<()>,
    },
    NextBatch {
        max: usize,
        reply: Reply<Result<Vec<Entry>, SpoolError>>,
    },
    HasUnsent {
        reply: Reply<bool>,
    },
    /// Answers how many messages this confirmed, and the figures after it.
    ConfirmThrough {
        seq: u64,
        reply: Reply<Result<(u64, OutboxStats), SpoolError>>,
    },
    Sync {
        reply: Reply<Result<OutboxStats, SpoolError>>,
    },
    /// Flushes everything to disk, answers, and ends the thread.
    Close {
        reply: Reply<Result<OutboxStats, SpoolError>>,
    },
}

/// A way to the outbox; cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct OutboxHandle {
    commands: mpsc::Sender<Command>,
}

/// The owner thread, kept by the daemon to close and join it at shutdown.
#[derive(Debug)]
pub struct OutboxOwner {
    handle: OutboxHandle,
    thread: JoinHandle<()>,
}

impl OutboxOwner {
    /// Hands `outbox` to a thread of its own.
    pub fn spawn(outbox: Outbox) -> std::io::Result<OutboxOwner> {
        let (commands, inbox) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("outbox".into())
            .spawn(move || serve(outbox, inbox))?;
        Ok(OutboxOwner {
            handle: OutboxHandle { commands },
            thread,
        })
    }

    pub fn handle(&self) -> OutboxHandle {
        self.handle.clone()
    }

    /// For shutdown, once the tasks using the outbox have ended: everything still waiting
    /// goes to disk, durably; then the thread ends and is joined.
    pub async fn close(self) -> Result<OutboxStats, OutboxError> {
        let flushed = self.handle.ask(|reply| Command::Close { reply }).await;
        let thread = self.thread;
        // It has answered and is returning: a short wait, but a blocking one.
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        match joined {
            Ok(Ok(())) => Ok(flushed??),
            _ => Err(OutboxError::Gone),
        }
    }
}

impl OutboxHandle {
    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| OutboxError::Gone)?;
        answer.await.map_err(|_| OutboxError::Gone)
    }

    /// [`Outbox::push`], with the figures after it (also when it failed, for the metrics).
    pub async fn push(
        &self,
        kind: Kind,
        reading: Reading,
    ) -> Result<(Result<Appended, SpoolError>, OutboxStats), OutboxError> {
        self.ask(|reply| Command::Push {
            kind,
            reading,
            reply,
        })
        .await
    }

    pub async fn set_online(&self, online: bool) -> Result<(), OutboxError> {
        Ok(self
            .ask(|reply| Command::SetOnline { online, reply })
            .await??)
    }

    pub async fn rewind(&self) -> Result<(), OutboxError> {
        self.ask(|reply| Command::Rewind { reply }).await
    }

    pub async fn next_batch(&self, max: usize) -> Result<Vec<Entry>, OutboxError> {
        Ok(self
            .ask(|reply| Command::NextBatch { max, reply })
            .await??)
    }

    pub async fn has_unsent(&self) -> Result<bool, OutboxError> {
        self.ask(|reply| Command::HasUnsent { reply }).await
    }

    /// [`Outbox::confirm_through`]: how many messages this confirmed, and the figures after.
    pub async fn confirm_through(&self, seq: u64) -> Result<(u64, OutboxStats), OutboxError> {
        Ok(self
            .ask(|reply| Command::ConfirmThrough { seq, reply })
            .await??)
    }

    /// [`Outbox::sync`], with the figures after it.
    pub async fn sync(&self) -> Result<OutboxStats, OutboxError> {
        Ok(self.ask(|reply| Command::Sync { reply }).await??)
    }
}

/// The owner thread: one command at a time, in the order they came. An answer nobody waits
/// for any more (its task was stopped) is dropped; the command was carried out all the same,
/// as it would have been under the lock.
fn serve(mut outbox: Outbox, mut inbox: mpsc::Receiver<Command>) {
    while let Some(command) = inbox.blocking_recv() {
        match command {
            Command::Push {
                kind,
                reading,
                reply,
            } => {
                let pushed = outbox.push(kind, reading);
                let _ = reply.send((pushed, outbox.stats()));
            }
            Command::SetOnline { online, reply } => {
                let _ = reply.send(outbox.set_online(online));
            }
            Command::Rewind { reply } => {
                outbox.rewind();
                let _ = reply.send(());
            }
            Command::NextBatch { max, reply } => {
                let _ = reply.send(outbox.next_batch(max));
            }
            Command::HasUnsent { reply } => {
                let _ = reply.send(outbox.has_unsent());
            }
            Command::ConfirmThrough { seq, reply } => {
                let before = outbox.stats().confirmed;
                let confirmed = outbox.confirm_through(seq).map(|()| {
                    let stats = outbox.stats();
                    (stats.confirmed.saturating_sub(before), stats)
                });
                let _ = reply.send(confirmed);
            }
            Command::Sync { reply } => {
                let _ = reply.send(outbox.sync().map(|()| outbox.stats()));
            }
            Command::Close { reply } => {
                let _ = reply.send(outbox.flush_all().map(|()| outbox.stats()));
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use std::io::BufRead as _;
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::spool::SpoolLimits;
    use crate::spool::tests::reading;

    fn spawn(dir: &Path) -> OutboxOwner {
        let (outbox, _) =
            Outbox::open_with_memory_limit(dir, SpoolLimits::with_max_bytes(1 << 20), 8).unwrap();
        OutboxOwner::spawn(outbox).unwrap()
    }

    fn n(entry: &Entry) -> u64 {
        entry.reading.data["n"].as_u64().unwrap()
    }

    /// The spool's first segment is a named pipe: opening it for the first append blocks
    /// until someone reads it, as a write to a stuck SD card does. The runtime (a single
    /// thread here, so a blocked worker would be a stopped runtime) must go on meanwhile.
    #[tokio::test(flavor = "current_thread")]
    async fn a_stuck_disk_holds_up_the_caller_not_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let owner = spawn(dir.path());
        let fifo = dir.path().join(format!("spool-{:020}.jsonl", 1));
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // The disk comes unstuck when told to, or after a while in any case, so that a
        // regression fails the assertion below rather than hanging the test.
        let (unstick, told) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let _ = told.recv_timeout(Duration::from_secs(5));
            let mut line = String::new();
            std::io::BufReader::new(std::fs::File::open(&fifo).unwrap())
                .read_line(&mut line)
                .unwrap();
            line
        });

        let outbox = owner.handle();
        // Offline: the push goes to disk, and blocks there.
        let mut push = tokio::spawn(async move { outbox.push(Kind::Sensor, reading(1)).await });
        let ran_meanwhile = tokio::select! {
            biased;
            _ = &mut push => false,
            () = tokio::time::sleep(Duration::from_millis(200)) => true,
        };
        assert!(
            ran_meanwhile,
            "a timer on the runtime fired while the disk was stuck"
        );
        unstick.send(()).unwrap();
        let (pushed, stats) = push.await.unwrap().unwrap();
        assert_eq!(pushed.unwrap().written, 1);
        assert_eq!(stats.disk_entries, 1);
        assert!(reader.join().unwrap().contains("\"n\":1"));
        // The pipe cannot be synced like a file; the thread still answers and ends.
        let _ = owner.close().await;
    }

    #[tokio::test]
    async fn samples_from_many_tasks_reach_the_link_once_each_in_the_order_queued() {
        let dir = tempfile::tempdir().unwrap();
        let owner = spawn(dir.path());
        let link = owner.handle();
        link.set_online(true).await.unwrap();
        let mut sources = tokio::task::JoinSet::new();
        for source in 0..4u64 {
            let outbox = owner.handle();
            sources.spawn(async move {
                for i in 0..50 {
                    let (pushed, _) = outbox
                        .push(Kind::Sensor, reading(source * 1000 + i))
                        .await
                        .unwrap();
                    pushed.unwrap();
                }
            });
        }
        // The link takes batches meanwhile; the memory limit (8) sends some to disk.
        let mut seen = Vec::new();
        while seen.len() < 200 {
            let batch = link.next_batch(5).await.unwrap();
            if let Some(last) = batch.last() {
                let (confirmed, _) = link.confirm_through(last.seq).await.unwrap();
                assert_eq!(confirmed, batch.len() as u64);
            } else {
                tokio::task::yield_now().await;
            }
            seen.extend(batch);
        }
        while sources.join_next().await.is_some() {}
        assert!(!link.has_unsent().await.unwrap());
        let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "in seq order: {seqs:?}"
        );
        for source in 0..4u64 {
            let own: Vec<u64> = seen.iter().map(n).filter(|n| n / 1000 == source).collect();
            assert_eq!(own, (0..50).map(|i| source * 1000 + i).collect::<Vec<_>>());
        }
        let stats = owner.close().await.unwrap();
        assert_eq!((stats.depth, stats.confirmed), (0, 200));
    }

    #[tokio::test]
    async fn closing_flushes_what_waits_in_memory_and_it_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let owner = spawn(dir.path());
        let outbox = owner.handle();
        outbox.set_online(true).await.unwrap();
        for i in 1..=3 {
            outbox
                .push(Kind::Usage, reading(i))
                .await
                .unwrap()
                .0
                .unwrap();
        }
        assert_eq!(outbox.sync().await.unwrap().disk_entries, 0, "in memory");
        let flushed = owner.close().await.unwrap();
        assert_eq!((flushed.depth, flushed.disk_entries), (3, 3));
        assert!(matches!(outbox.rewind().await, Err(OutboxError::Gone)));

        let again = spawn(dir.path());
        let outbox = again.handle();
        outbox.set_online(true).await.unwrap();
        let batch = outbox.next_batch(10).await.unwrap();
        assert_eq!(batch.iter().map(n).collect::<Vec<_>>(), vec![1, 2, 3]);
        again.close().await.unwrap();
    }
}
