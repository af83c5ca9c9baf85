//! Projections: state folded from the log (keys, teams, usage, budgets, documents), persisted
//! together with the position it was folded up to, and rebuilt from seq 0 whenever that is
//! missing or cannot be trusted.

use std::{future::Future, sync::Arc};

use isnad_journal::{Entry, Hash, Journal, SavedState, Subscription, Watermark};
use parking_lot::RwLock;
use tokio::{sync::watch, time::Instant};

use crate::{runner::stopped, Error, Result, RunnerOptions};

/// State folded from journal entries.
///
/// `apply` only folds: no I/O, no events, no clock. Whatever follows from the state (a budget
/// threshold crossed, a webhook due) is a [`crate::Stage`]'s business; that keeps the
/// projection a pure function of the log, so replaying the log from seq 0 (`isnad journal
/// replay`) always gives the same state, and a projection can be rebuilt at any time.
///
/// # State and position are persisted together
///
/// The runner saves [`Projection::encode`]'s bytes and the next seq to fold as one metadata
/// value ([`Journal::submit_state`]), queued behind the journal's appends like a stage's
/// cursor. So a restart resumes from exactly the entries the state has folded: none is folded
/// twice, none skipped.
///
/// # Why `encode`/`decode` and not serde
///
/// The pipeline does not choose one format for every projection. A projection picks what suits
/// its state (rkyv as the payloads use, JSON for a table an operator may want to read, a
/// hand-written layout for a counter) and should put a format version of its own first. A
/// change of layout then fails to decode, and the runner rebuilds from the log, instead of
/// reading old bytes into a new shape (serde's `#[serde(default)]` would fill in a missing
/// field silently, and the state would be wrong without any error). Rebuilding is always safe:
/// the log is the authority and the state only a cache of it.
///
/// # Which watermark
///
/// [`Watermark::Sequenced`] (the default) folds entries as soon as they are sequenced, before
/// they are on disk. Pick it for state read on the request path (keys, budgets, usage): the
/// next request sees the last one's effects at once. Should a crash lose entries the state
/// had already folded, the saved state no longer matches the log
/// ([`SavedState::matches`]) and is rebuilt from seq 0, so nothing lost is ever counted.
///
/// [`Watermark::Durable`] folds only what is on disk. Pick it when the state is shown or acted
/// on outside the process and must never run ahead of what a crash would keep (an exported
/// report, a figure an auditor compares with the log).
pub trait Projection: Send + Sync + Sized + 'static {
    /// Stable name; the state is persisted as `projection/<name>`.
    fn name(&self) -> &str;

    /// Which journal position the projection folds up to.
    fn watermark(&self) -> Watermark {
        Watermark::Sequenced
    }

    /// Cheap filter: does this entry change the state at all?
    fn wants(&self, entry: &Entry) -> bool;

    /// Folds `entry` into the state. Infallible: an entry the projection cannot read (a payload
    /// version it does not know) is skipped, as it would be on every replay.
    fn apply(&mut self, entry: &Entry);

    /// The state's bytes, format version first. A failure is logged, and the save is tried
    /// again later; the state in memory is unaffected.
    fn encode(&self) -> Result<Vec<u8>, String>;

    /// The state from [`Projection::encode`]'s bytes. `self` is the initial state given to
    /// [`crate::Runner::project`]: a projection with configuration of its own (which entries it
    /// wants, its watermark) takes it from there rather than from the bytes. A failure (an
    /// older format, damage) makes the runner rebuild from seq 0, starting from `self`.
    fn decode(&self, bytes: &[u8]) -> Result<Self, String>;
}

/// A reader's view of a running projection: its live state, how far it has folded, and how far
/// behind the log it is. Cheap to clone.
pub struct ProjectionHandle<P> {
    name: Arc<str>,
    state: Arc<RwLock<P>>,
    next: watch::Receiver<u64>,
    journal: Journal,
}

impl<P> Clone for ProjectionHandle<P> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            state: self.state.clone(),
            next: self.next.clone(),
            journal: self.journal.clone(),
        }
    }
}

impl<P: Projection> ProjectionHandle<P> {
    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on the live state. The projection waits while `f` runs, so keep it short
    /// (copy out what you need).
    pub fn read<R>(&self, f: impl FnOnce(&P) -> R) -> R {
        f(&self.state.read())
    }

    /// The next seq the projection will fold: the state covers every entry before it.
    pub fn next_seq(&self) -> u64 {
        *self.next.borrow()
    }

    /// How many entries of the log the state has not folded yet (sequenced length minus
    /// [`ProjectionHandle::next_seq`]); 0 when caught up. For metrics.
    pub fn lag(&self) -> u64 {
        self.journal.len().saturating_sub(self.next_seq())
    }

    /// Resolves once the state covers every entry before `next` (to read one's own write, wait
    /// for its receipt's `seq + 1`). Fails with [`Error::Closed`] when the projection stops
    /// first.
    pub async fn wait_for(&self, next: u64) -> Result<()> {
        let mut rx = self.next.clone();
        rx.wait_for(|n| *n >= next)
            .await
            .map(drop)
            .map_err(|_| Error::Closed)
    }
}

/// Where a projection starts: its saved state when that can be trusted, else `initial` at 0.
fn restore<P: Projection>(journal: &Journal, initial: P) -> Result<(P, u64, Hash)> {
    let name = initial.name().to_owned();
    let rebuild = |initial: P| (initial, 0, [0u8; 32]);
    let saved = match journal.state(&name) {
        Ok(Some(saved)) => saved,
        Ok(None) => return Ok(rebuild(initial)),
        Err(e) => {
            tracing::warn!(projection = %name, error = %e, "cannot read the saved state; rebuilding from seq 0");
            return Ok(rebuild(initial));
        }
    };
    if !saved.matches(journal)? {
        tracing::warn!(projection = %name, next = saved.next, "the saved state folded entries the log no longer holds; rebuilding from seq 0");
        return Ok(rebuild(initial));
    }
    match initial.decode(&saved.bytes) {
        Ok(state) => Ok((state, saved.next, saved.last_hash)),
        Err(reason) => {
            tracing::warn!(projection = %name, %reason, "the saved state does not decode; rebuilding from seq 0");
            Ok(rebuild(initial))
        }
    }
}

/// Restores `initial`'s projection and returns its handle and the task that runs it.
pub(crate) fn start<P: Projection>(
    journal: Journal,
    initial: P,
    opts: &RunnerOptions,
    stop: watch::Receiver<bool>,
) -> Result<(ProjectionHandle<P>, impl Future<Output = ()> + Send)> {
    let name: Arc<str> = initial.name().into();
    let watermark = initial.watermark();
    let (state, next, last_hash) = restore(&journal, initial)?;
    let state = Arc::new(RwLock::new(state));
    let (tx, rx) = watch::channel(next);
    let handle = ProjectionHandle {
        name: name.clone(),
        state: state.clone(),
        next: rx,
        journal: journal.clone(),
    };
    let task = Task {
        sub: journal.subscribe(next, watermark),
        name,
        watermark,
        state,
        next: tx,
        at: (next, last_hash),
        journal,
        every: opts.state_every.max(1),
        interval: opts.state_interval,
        stop,
    };
    Ok((handle, task.run()))
}

struct Task<P> {
    name: Arc<str>,
    watermark: Watermark,
    state: Arc<RwLock<P>>,
    /// Published after each entry: the handle's `next_seq`.
    next: watch::Sender<u64>,
    /// The next seq to fold and the hash of the entry before it.
    at: (u64, Hash),
    journal: Journal,
    sub: Subscription,
    every: u64,
    interval: std::time::Duration,
    stop: watch::Receiver<bool>,
}

impl<P: Projection> Task<P> {
    async fn run(mut self) {
        let mut unsaved = 0u64;
        let mut last_save = Instant::now();
        // When a caught-up projection that saved too recently saves next.
        let mut due: Option<Instant> = None;
        loop {
            let next = tokio::select! {
                biased;
                () = stopped(&mut self.stop) => break,
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    due = None;
                    if !self.save() {
                        return;
                    }
                    (unsaved, last_save) = (0, Instant::now());
                    continue;
                }
                next = self.sub.next() => next,
            };
            let entry = match next {
                Ok(e) => e,
                Err(isnad_journal::Error::Closed) => return,
                Err(e) => {
                    tracing::error!(projection = %self.name, error = %e, "projection cannot read the journal");
                    return;
                }
            };
            if self.state.read().wants(&entry) {
                self.state.write().apply(&entry);
            }
            self.at = (entry.seq + 1, entry.hash);
            self.next.send_replace(entry.seq + 1);
            unsaved += 1;
            let limit = match self.watermark {
                Watermark::Sequenced => self.journal.len(),
                Watermark::Durable => self.journal.durable_len(),
            };
            let caught_up = entry.seq + 1 >= limit;
            if unsaved >= self.every || (caught_up && last_save.elapsed() >= self.interval) {
                due = None;
                if !self.save() {
                    return;
                }
                (unsaved, last_save) = (0, Instant::now());
            } else if caught_up && due.is_none() {
                due = Some(last_save + self.interval);
            }
        }
        if unsaved > 0 {
            self.save();
        }
    }

    /// Queues the state and its position to the journal. False when the journal is closed.
    fn save(&self) -> bool {
        let bytes = match self.state.read().encode() {
            Ok(b) => b,
            Err(reason) => {
                tracing::error!(projection = %self.name, %reason, "cannot encode the state; it is kept in memory and saved later");
                return true;
            }
        };
        let (next, last_hash) = self.at;
        let saved = SavedState {
            next,
            last_hash,
            bytes,
        };
        match self.journal.submit_state(&self.name, &saved) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(projection = %self.name, error = %e, "state not persisted");
                false
            }
        }
    }
}
