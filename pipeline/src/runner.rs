//! The runner: each stage and each projection in a task of its own, from its persisted position.

use std::{sync::Arc, time::Duration};

use isnad_journal::{Entry, Journal, Subscription};
use isnad_schemas::{NewEvent, Payload as _, StageFailed};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    projection::{self, Projection, ProjectionHandle},
    stage::{derive_failure, derive_ids},
    Bus, Result, Stage, StageError,
};

/// How often a stage's failing entry is tried before the runner gives up on it.
///
/// Attempt `n` (from 1) that fails with [`StageError::Retry`] is followed by a wait of
/// `first_delay × 2^(n-1)`, at most `max_delay`, then attempt `n + 1`, up to `attempts` in
/// all. With the defaults (5 attempts from 50 ms) an entry that keeps failing holds its stage
/// up for 750 ms; the stage's later entries wait behind it, as they must to stay in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (at least 1).
    pub attempts: u32,
    /// Wait after the first failed attempt.
    pub first_delay: Duration,
    /// Longest wait between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.first_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }
}

/// Tuning of a [`Runner`].
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Retries of a stage's failing entry.
    pub retry: RetryPolicy,
    /// A busy stage's cursor is persisted after this many entries; it is also persisted
    /// whenever the stage catches up with the log.
    pub cursor_every: u64,
    /// A busy projection's state is persisted after this many entries.
    pub state_every: u64,
    /// A projection that has caught up persists its state at most this often (and at once
    /// when this much time has passed since the last save): a projection that keeps catching
    /// up with every group commit would otherwise encode its whole state for each one.
    pub state_interval: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            cursor_every: 256,
            state_every: 1024,
            state_interval: Duration::from_millis(200),
        }
    }
}

/// Runs stages and projections, each in its own task, from its persisted position: a
/// restart resumes where each stopped.
pub struct Runner {
    bus: Bus,
    opts: RunnerOptions,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Runner {
    /// A runner publishing through `bus`, with the default [`RunnerOptions`].
    pub fn new(bus: Bus) -> Self {
        Self::with_options(bus, RunnerOptions::default())
    }

    /// A runner publishing through `bus`.
    pub fn with_options(bus: Bus, opts: RunnerOptions) -> Self {
        Self {
            bus,
            opts,
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// Starts `stage` at its cursor.
    pub fn spawn<S: Stage>(&mut self, stage: S) -> Result<()> {
        let journal = self.bus.journal().clone();
        let start = journal.cursor(stage.name())?;
        let sub = journal.subscribe(start, stage.watermark());
        let task = StageTask {
            name: stage.name().to_owned(),
            stage,
            bus: self.bus.clone(),
            journal,
            opts: self.opts.clone(),
            stop: self.stop.subscribe(),
        };
        self.tasks.push(tokio::spawn(task.run(sub)));
        Ok(())
    }

    /// Starts projection `initial` from its persisted state, or from seq 0 with `initial` as
    /// its state when it has none, when the state does not decode, or when it folded entries
    /// the log no longer holds (each logged). Readers get the live state through the handle.
    pub fn project<P: Projection>(&mut self, initial: P) -> Result<ProjectionHandle<P>> {
        let (handle, task) = projection::start(
            self.bus.journal().clone(),
            initial,
            &self.opts,
            self.stop.subscribe(),
        )?;
        self.tasks.push(tokio::spawn(task));
        Ok(handle)
    }

    /// Stops every stage and projection after the entry each has in hand, persisting each
    /// one's cursor or state first, and waits for them. Call it before
    /// [`Journal::shutdown`], so that what they persist is written with the final flush and
    /// the next start replays nothing.
    pub async fn shutdown(&mut self) {
        self.stop.send_replace(true);
        for t in self.tasks.drain(..) {
            if let Err(e) = t.await {
                if e.is_panic() {
                    tracing::error!(error = %e, "a pipeline task panicked");
                }
            }
        }
    }

    /// Stops every stage and projection at once, as a crash would: each resumes from what it
    /// last persisted next time, and handles again what it did since.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resolves once the runner asks its tasks to stop (or is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the runner was dropped: stop too.
    let _ = stop.wait_for(|s| *s).await;
}

/// How a stage's handling of one entry ended.
enum Handled {
    /// Handled: these outputs are to be appended.
    Delivered(Vec<NewEvent>),
    /// Given up: journal it and move on.
    Failed {
        outcome: &'static str,
        reason: String,
        attempts: u32,
    },
    /// The runner is stopping: leave the entry for next time.
    Stopped,
}

struct StageTask<S> {
    name: String,
    stage: S,
    bus: Bus,
    journal: Journal,
    opts: RunnerOptions,
    stop: watch::Receiver<bool>,
}

impl<S: Stage> StageTask<S> {
    async fn run(mut self, mut sub: Subscription) {
        let name = self.name.clone();
        // The next seq to handle: what the cursor is set to.
        let mut done = sub.position();
        let mut unsaved = 0u64;
        loop {
            let next = tokio::select! {
                biased;
                () = stopped(&mut self.stop) => break,
                next = sub.next() => next,
            };
            let entry = match next {
                Ok(e) => e,
                Err(isnad_journal::Error::Closed) => break,
                Err(e) => {
                    tracing::error!(stage = %name, error = %e, "stage cannot read the journal");
                    break;
                }
            };
            if self.stage.wants(&entry) && !own_failure(&name, &entry) {
                let result = match self.handle(&entry).await {
                    Handled::Delivered(outputs) if outputs.is_empty() => Ok(()),
                    // Hand the outputs over without waiting for the round trip: the journal
                    // sequences one task's submissions in order.
                    Handled::Delivered(outputs) => self
                        .journal
                        .submit_sequenced(derive_ids(&name, &entry, outputs))
                        .map(drop),
                    Handled::Failed {
                        outcome,
                        reason,
                        attempts,
                    } => self.journal_failure(&entry, outcome, reason, attempts),
                    Handled::Stopped => break,
                };
                if let Err(e) = result {
                    tracing::error!(stage = %name, seq = entry.seq, error = %e, "stage output not journaled");
                    break;
                }
            }
            done = entry.seq + 1;
            unsaved += 1;
            let caught_up = done >= self.journal.len();
            if unsaved >= self.opts.cursor_every || caught_up {
                // Queued behind the outputs above, so the cursor never runs ahead of them.
                if let Err(e) = self.journal.submit_cursor(&name, done) {
                    tracing::error!(stage = %name, error = %e, "cannot persist cursor");
                    return;
                }
                unsaved = 0;
            }
        }
        if unsaved > 0 {
            if let Err(e) = self.journal.submit_cursor(&name, done) {
                tracing::debug!(stage = %name, error = %e, "cursor not persisted at stop");
            }
        }
    }

    /// Handles `entry`, retrying transient failures as the policy says.
    async fn handle(&mut self, entry: &Arc<Entry>) -> Handled {
        let attachment = entry
            .event
            .request_id
            .as_deref()
            .and_then(|r| self.bus.attachment(r));
        let policy = &self.opts.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let reason = match self.stage.handle(entry.clone(), attachment.clone()).await {
                Ok(outputs) => return Handled::Delivered(outputs),
                Err(StageError::Reject(reason)) => {
                    return Handled::Failed {
                        outcome: "rejected",
                        reason,
                        attempts: attempt,
                    }
                }
                Err(StageError::Retry(reason)) => reason,
            };
            if attempt >= policy.attempts.max(1) {
                return Handled::Failed {
                    outcome: "errored",
                    reason,
                    attempts: attempt,
                };
            }
            let delay = policy.delay(attempt);
            tracing::debug!(stage = %self.name, seq = entry.seq, attempt, ?delay, %reason, "stage will retry");
            tokio::select! {
                biased;
                () = stopped(&mut self.stop) => return Handled::Stopped,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Journals that the stage gave up on `entry`, with an id derived from it, so that a re-run
    /// after a crash does not journal the failure twice.
    fn journal_failure(
        &self,
        entry: &Entry,
        outcome: &'static str,
        reason: String,
        attempts: u32,
    ) -> isnad_journal::Result<()> {
        tracing::warn!(stage = %self.name, seq = entry.seq, kind = %entry.event.kind, outcome, attempts, %reason, "stage gave up on an entry");
        let failed = StageFailed {
            stage: self.name.clone(),
            input_seq: entry.seq,
            input_kind: entry.event.kind.clone(),
            outcome: outcome.to_owned(),
            reason,
            attempts,
        };
        let event = derive_failure(&self.name, entry, NewEvent::new(&failed)?);
        self.journal.submit_sequenced(vec![event]).map(drop)
    }
}

/// A stage never sees its own failures: one that fails on everything it wants would otherwise
/// feed itself an endless chain of them.
fn own_failure(stage: &str, entry: &Entry) -> bool {
    entry.event.kind == StageFailed::KIND
        && entry
            .event
            .payload_as::<StageFailed>()
            .is_ok_and(|f| f.stage == stage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
        let p = RetryPolicy::default();
        let ms = |n| p.delay(n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5)],
            [50, 100, 200, 400, 800]
        );
        assert_eq!(ms(6), 1000, "capped");
        assert_eq!(ms(u32::MAX), 1000, "no overflow however many attempts");
    }
}
