//! The journal: one sequencer thread, two flusher threads, group commit, an in-memory tail for
//! subscribers, and the Merkle tree for checkpoints and proofs.
//!
//! ```text
//! append() ──► sequencer: idempotency, seq + time, seal (hash, sign), store.append, tree, ring
//!                   │  (a batch forms from every command that queued while the last one ran)
//!                   ▼
//!              flusher: store.flush() (blocking) ─► durable watermark ─► acknowledge ─► checkpoint
//! ```
//!
//! While a flusher waits on the disk, the sequencer already seals the next batch, so the two
//! overlap and a batch is whatever arrived during the previous flush. A second flusher may start
//! the next flush while the first still waits: a flush covers everything stored before it began,
//! so the durable watermark is the highest one any finished flush reached. A batch with a durable
//! append in it is handed to the flusher at once; sequenced-only appends wait up to
//! [`Options::flush_delay`] to share a flush with whatever comes next.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ed25519_dalek::VerifyingKey;
use isnad_schemas::{EventId, NewEvent};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, watch};

use crate::{
    checkpoint::{verifier_key, Checkpoint},
    entry::{split_stored, Entry, GENESIS},
    keys::NodeKey,
    merkle::{leaf_hash, Hash, LeafSource, MerkleTree, ProofError},
    segments::{SegmentOptions, SegmentStore},
    store::{LogStore, SledStore},
    verify::ChainVerifier,
    Error, Result,
};

/// Metadata key of the public key that signs this log.
const META_PUBLIC_KEY: &str = "public_key";
/// Metadata key of the log's origin.
const META_ORIGIN: &str = "origin";
/// Metadata key prefix of projection states: `projection/<name>`.
const META_PROJECTION: &str = "projection/";

/// Metadata key of projection `name`'s state.
fn projection_key(name: &str) -> String {
    format!("{META_PROJECTION}{name}")
}

/// Tuning of a journal.
#[derive(Clone, Debug)]
pub struct Options {
    /// Checkpoint origin; defaults to `isnad.local/<node id>`. Fixed at the log's creation.
    pub origin: Option<String>,
    /// A checkpoint after this many new durable entries.
    pub checkpoint_every: u64,
    /// A checkpoint after this long with new durable entries.
    pub checkpoint_interval: Duration,
    /// Entries kept in memory for subscribers (stages read from here; a subscriber that falls
    /// further behind catches up from disk).
    pub ring_capacity: usize,
    /// sled's page cache for [`Journal::open_dir`]. Appends only touch the log's tail, so a
    /// small cache costs writes nothing; whole-log scans are what a larger one speeds up.
    pub cache_bytes: u64,
    /// Most events in one group commit.
    pub max_batch: usize,
    /// Size at which [`Journal::open_dir`]'s segment files are closed and the next begun.
    pub segment_bytes: u64,
    /// Longest that entries appended without waiting for durability
    /// ([`Journal::append_sequenced`]) stay unflushed, so that they share a flush with later
    /// appends. Durable appends are flushed at once, together with whatever is pending.
    pub flush_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            origin: None,
            checkpoint_every: 1024,
            checkpoint_interval: Duration::from_millis(1000),
            ring_capacity: 4_096,
            max_batch: 8192,
            cache_bytes: 12 * 1024 * 1024,
            flush_delay: Duration::from_millis(2),
            segment_bytes: crate::segments::SEGMENT_BYTES,
        }
    }
}

/// What an append returns for each event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// Sequence number of the event (the original one for a retried id).
    pub seq: u64,
    /// Entry hash.
    pub hash: Hash,
    /// True when the id was already in the log and nothing new was written.
    pub duplicate: bool,
}

/// How far along the log a reader may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watermark {
    /// Entries sequenced in memory (may still be lost in a crash).
    Sequenced,
    /// Entries on disk.
    Durable,
}

/// A projection's folded state and the position in the log it folded up to, persisted as one
/// metadata value so that the two can never disagree.
///
/// The hash of the last entry folded binds the state to the log it came from: after a crash cut
/// off entries that the state had already folded, or when the log beneath was replaced, the entry
/// at `next - 1` is missing or differs, and the state must be rebuilt rather than trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedState {
    /// The next seq the projection has to fold: every entry below it is in `bytes`.
    pub next: u64,
    /// Hash of entry `next - 1`; all zeros when `next` is 0.
    pub last_hash: Hash,
    /// The projection's own encoding of its state.
    pub bytes: Vec<u8>,
}

impl SavedState {
    /// `next` (8 bytes, big-endian) ‖ `last_hash` (32 bytes) ‖ `bytes`.
    fn to_value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 32 + self.bytes.len());
        v.extend_from_slice(&self.next.to_be_bytes());
        v.extend_from_slice(&self.last_hash);
        v.extend_from_slice(&self.bytes);
        v
    }

    fn from_value(name: &str, v: &[u8]) -> Result<Self> {
        let bad = || Error::Storage(format!("state of projection {name} is malformed"));
        let next: [u8; 8] = v.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
        let last_hash: Hash = v
            .get(8..40)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        Ok(Self {
            next: u64::from_be_bytes(next),
            last_hash,
            bytes: v.get(40..).ok_or_else(bad)?.to_vec(),
        })
    }

    /// True when the log still holds the entry this state ends at, unchanged: a state that
    /// does not match folded entries the log no longer has.
    pub fn matches(&self, journal: &Journal) -> Result<bool> {
        if self.next == 0 {
            return Ok(true);
        }
        Ok(journal
            .entry(self.next - 1)?
            .is_some_and(|e| e.hash == self.last_hash))
    }
}

type Reply = oneshot::Sender<Result<Vec<Receipt>>>;

enum Cmd {
    Cursor {
        name: String,
        next: u64,
    },
    /// A metadata value written in order with the appends, like a cursor.
    Meta {
        key: String,
        value: Vec<u8>,
    },
    Append {
        events: Vec<NewEvent>,
        durable: bool,
        reply: Reply,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<Option<(Checkpoint, String)>>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<()>>,
    },
}

enum FlushJob {
    Flush {
        upto: u64,
        waiters: Vec<(Reply, Vec<Receipt>)>,
    },
    Checkpoint {
        reply: oneshot::Sender<Result<Option<(Checkpoint, String)>>>,
    },
    Shutdown {
        reply: oneshot::Sender<Result<()>>,
    },
}

struct Ring {
    base: u64,
    entries: VecDeque<Arc<Entry>>,
    capacity: usize,
}

impl Ring {
    fn get(&self, seq: u64) -> Option<Arc<Entry>> {
        let i = seq.checked_sub(self.base)?;
        self.entries.get(i as usize).cloned()
    }

    fn push(&mut self, e: Arc<Entry>) {
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.base += 1;
        }
        self.entries.push_back(e);
    }
}

struct Shared {
    store: Arc<dyn LogStore>,
    key: NodeKey,
    origin: String,
    opts: Options,
    sequenced: watch::Sender<u64>,
    durable: watch::Sender<u64>,
    ring: RwLock<Ring>,
    tree: RwLock<MerkleTree>,
    closed: AtomicBool,
    latest_checkpoint: Mutex<Option<(Checkpoint, String)>>,
}

struct Handle {
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Last handle gone without `shutdown()`: close the queue; the threads drain it, checkpoint
        // and exit. Joining makes the final checkpoint durable before the process moves on.
        if let Some(tx) = self.tx.lock().take() {
            let (reply, _rx) = oneshot::channel();
            let _ = tx.send(Cmd::Shutdown { reply });
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

/// A handle to an open journal. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Journal {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("origin", &self.handle.shared.origin)
            .finish()
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Path of the journal's storage inside a data directory.
pub fn store_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("journal")
}

/// Opens the journal's storage in `data_dir`: a [`SegmentStore`], or the [`SledStore`] of a log
/// written before segment files existed (recognised by sled's `db` file), which stays as it is.
/// `cache_bytes` is sled's page cache.
pub fn open_store(data_dir: &Path, cache_bytes: u64) -> Result<Arc<dyn LogStore>> {
    open_store_with(
        data_dir,
        SegmentOptions {
            meta_cache_bytes: cache_bytes,
            ..SegmentOptions::default()
        },
    )
}

fn open_store_with(data_dir: &Path, opts: SegmentOptions) -> Result<Arc<dyn LogStore>> {
    let path = store_path(data_dir);
    if path.join("db").is_file() {
        return Ok(Arc::new(SledStore::open_with_cache(
            &path,
            opts.meta_cache_bytes,
        )?));
    }
    Ok(Arc::new(SegmentStore::open_with(&path, opts)?))
}

/// Opens the journal's storage in `data_dir` for reading only, as the auditor's tools do:
/// nothing in `data_dir` is written, and no write permission is needed (see
/// [`SegmentStore::open_read_only`] and [`SledStore::open_read_only`]). Every write is refused.
pub fn open_store_read_only(data_dir: &Path) -> Result<Arc<dyn LogStore>> {
    let path = store_path(data_dir);
    if path.join("db").is_file() {
        return Ok(Arc::new(SledStore::open_read_only(&path)?));
    }
    Ok(Arc::new(SegmentStore::open_read_only(&path)?))
}

impl Journal {
    /// Opens the journal in `data_dir` ([`open_store`] under `journal/`, node key beside it).
    pub fn open_dir(data_dir: &Path, opts: Options) -> Result<Self> {
        let key = NodeKey::load_or_create(data_dir)?;
        let store = open_store_with(
            data_dir,
            SegmentOptions {
                meta_cache_bytes: opts.cache_bytes,
                segment_bytes: opts.segment_bytes,
                ..SegmentOptions::default()
            },
        )?;
        Self::open(store, key, opts)
    }

    /// Opens a journal over `store`, signing with `key`. Refuses a log written by another key and
    /// verifies the tail since the last checkpoint before accepting any append.
    pub fn open(store: Arc<dyn LogStore>, key: NodeKey, opts: Options) -> Result<Self> {
        let public = key.verifying();
        let next = store.next_seq()?;
        match store.meta(META_PUBLIC_KEY)? {
            Some(k) if k.as_slice() != public.as_bytes() => {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD;
                return Err(Error::KeyMismatch {
                    expected: b64.encode(&k),
                    found: key.public_base64(),
                });
            }
            Some(_) => {}
            None if next == 0 => store.set_meta(META_PUBLIC_KEY, public.as_bytes())?,
            None => {
                return Err(Error::Corrupt {
                    seq: 0,
                    reason: "entries exist but no public key is recorded".into(),
                })
            }
        }
        let origin = match store.meta(META_ORIGIN)? {
            Some(o) => {
                String::from_utf8(o).map_err(|_| Error::Storage("origin is not UTF-8".into()))?
            }
            None => {
                let o = opts
                    .origin
                    .clone()
                    .unwrap_or_else(|| format!("isnad.local/{}", key.node_id()));
                store.set_meta(META_ORIGIN, o.as_bytes())?;
                o
            }
        };
        store.sync()?;

        let (tree, latest, prev, last_ts) = recover(&*store, &public, next)?;
        let shared = Arc::new(Shared {
            store,
            key,
            origin,
            ring: RwLock::new(Ring {
                base: next,
                entries: VecDeque::new(),
                capacity: opts.ring_capacity.max(1),
            }),
            opts,
            sequenced: watch::channel(next).0,
            durable: watch::channel(next).0,
            tree: RwLock::new(tree),
            closed: AtomicBool::new(false),
            latest_checkpoint: Mutex::new(latest),
        });
        let (tx, rx) = mpsc::channel();
        let (ftx, frx) = mpsc::channel();
        let seq_state = SeqState {
            next,
            prev,
            last_ts,
        };
        let last_size = shared
            .latest_checkpoint
            .lock()
            .as_ref()
            .map_or(0, |(cp, _)| cp.size);
        let flushers = Arc::new(Flushers {
            jobs: Mutex::new(frx),
            checkpoints: Mutex::new(CheckpointSchedule {
                last_size,
                last_at: Instant::now(),
            }),
            fatal: Mutex::new(None),
            running: AtomicUsize::new(FLUSHERS),
        });
        let s1 = shared.clone();
        let mut threads = vec![std::thread::Builder::new()
            .name("journal-sequencer".into())
            .spawn(move || sequencer(&s1, rx, ftx, seq_state))
            .map_err(|e| Error::Storage(format!("cannot start sequencer: {e}")))?];
        for i in 0..FLUSHERS {
            let (s, f) = (shared.clone(), flushers.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("journal-flusher-{i}"))
                    .spawn(move || flusher(&s, &f))
                    .map_err(|e| Error::Storage(format!("cannot start flusher: {e}")))?,
            );
        }
        Ok(Self {
            handle: Arc::new(Handle {
                shared,
                tx: Mutex::new(Some(tx)),
                threads: Mutex::new(threads),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        let guard = self.handle.tx.lock();
        guard
            .as_ref()
            .ok_or(Error::Closed)?
            .send(cmd)
            .map_err(|_| Error::Closed)
    }

    /// Appends events and resolves once they are durable. Events of one call are consecutive.
    /// An event whose id is already in the log is not written again: its receipt carries the
    /// original seq and `duplicate: true`.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<Receipt>> {
        self.append_with(events, true).await
    }

    /// Appends one event durably.
    pub async fn append_one(&self, event: NewEvent) -> Result<Receipt> {
        self.append(vec![event]).await?.pop().ok_or(Error::Closed)
    }

    /// Appends events and resolves once they are sequenced (visible to subscribers), before they
    /// are durable. Pair with [`Journal::wait_durable`] before acknowledging anything outside;
    /// they become durable with the next durable append, or within [`Options::flush_delay`].
    pub async fn append_sequenced(&self, events: Vec<NewEvent>) -> Result<Vec<Receipt>> {
        self.append_with(events, false).await
    }

    async fn append_with(&self, events: Vec<NewEvent>, durable: bool) -> Result<Vec<Receipt>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Append {
            events,
            durable,
            reply,
        })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Queues events for appending and returns at once; the receiver resolves once they are
    /// sequenced. Events submitted one after another from one task are sequenced in that order,
    /// so a stage can hand over its outputs without waiting for each round trip.
    pub fn submit_sequenced(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<oneshot::Receiver<Result<Vec<Receipt>>>> {
        self.submit(events, false)
    }

    /// [`Journal::submit_sequenced`], but the receiver resolves once the events are durable,
    /// and their flush starts at once rather than after [`Options::flush_delay`].
    pub fn submit_durable(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<oneshot::Receiver<Result<Vec<Receipt>>>> {
        self.submit(events, true)
    }

    fn submit(
        &self,
        events: Vec<NewEvent>,
        durable: bool,
    ) -> Result<oneshot::Receiver<Result<Vec<Receipt>>>> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Append {
            events,
            durable,
            reply,
        })?;
        Ok(rx)
    }

    /// Queues a cursor update behind everything submitted before it: the cursor is written in the
    /// same order as the appends, so after a crash it never points past an input whose outputs
    /// were lost.
    pub fn submit_cursor(&self, name: &str, next: u64) -> Result<()> {
        self.send(Cmd::Cursor {
            name: name.to_owned(),
            next,
        })
    }

    /// Queues projection `name`'s state behind everything submitted before it, as
    /// [`Journal::submit_cursor`] queues a cursor: one metadata value, `projection/<name>`,
    /// holds the state together with the position it folded up to, so that a crash between the
    /// two cannot leave a cursor that disagrees with its state. Durable with the metadata's next
    /// sync; a state may reach the disk before the entries it folded (see
    /// [`SavedState::matches`]).
    pub fn submit_state(&self, name: &str, state: &SavedState) -> Result<()> {
        self.send(Cmd::Meta {
            key: projection_key(name),
            value: state.to_value(),
        })
    }

    /// Projection `name`'s last persisted state, as written by [`Journal::submit_state`];
    /// `None` when it has none (or it was cleared). A malformed value is an error.
    pub fn state(&self, name: &str) -> Result<Option<SavedState>> {
        match self.shared().store.meta(&projection_key(name))? {
            Some(v) if !v.is_empty() => SavedState::from_value(name, &v).map(Some),
            _ => Ok(None),
        }
    }

    /// Forgets projection `name`'s state at once, so that it rebuilds from seq 0 when it next
    /// starts. Call it while the projection is stopped: a running one writes its state back.
    pub fn clear_state(&self, name: &str) -> Result<()> {
        // The store has no delete; an empty value reads as no state.
        self.shared().store.set_meta(&projection_key(name), &[])
    }

    /// Blocking append, for threads outside an async runtime.
    pub fn append_blocking(&self, events: Vec<NewEvent>) -> Result<Vec<Receipt>> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Append {
            events,
            durable: true,
            reply,
        })?;
        rx.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// Resolves once entry `seq` is durable.
    pub async fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut rx = self.shared().durable.subscribe();
        loop {
            if *rx.borrow_and_update() > seq {
                return Ok(());
            }
            if self.shared().closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            rx.changed().await.map_err(|_| Error::Closed)?;
        }
    }

    /// Number of sequenced entries.
    pub fn len(&self) -> u64 {
        *self.shared().sequenced.borrow()
    }

    /// True when the log has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of durable entries.
    pub fn durable_len(&self) -> u64 {
        *self.shared().durable.borrow()
    }

    /// The entry at `seq`, from memory when recent, else from disk.
    pub fn entry(&self, seq: u64) -> Result<Option<Arc<Entry>>> {
        if seq >= self.len() {
            return Ok(None);
        }
        if let Some(e) = self.shared().ring.read().get(seq) {
            return Ok(Some(e));
        }
        match self.shared().store.get(seq)? {
            Some(bytes) => Ok(Some(Arc::new(decode(seq, &bytes)?))),
            None => Ok(None),
        }
    }

    /// Entries in `[from, to)` (clamped to the sequenced length), in order.
    pub fn range(&self, from: u64, to: u64) -> Result<Vec<Arc<Entry>>> {
        let mut out = Vec::new();
        self.scan(from, to, &mut |e| {
            out.push(e);
            true
        })?;
        Ok(out)
    }

    /// Calls `f` for each entry in `[from, to)` until it returns false.
    pub fn scan(&self, from: u64, to: u64, f: &mut dyn FnMut(Arc<Entry>) -> bool) -> Result<()> {
        let to = to.min(self.len());
        let mut err = None;
        let mut expected = from;
        self.shared().store.scan(from, to, &mut |seq, bytes| {
            if seq != expected {
                err = Some(Error::Corrupt {
                    seq: expected,
                    reason: "entry missing".into(),
                });
                return false;
            }
            expected += 1;
            match decode(seq, bytes) {
                Ok(e) => f(Arc::new(e)),
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        err.map_or(Ok(()), Err)
    }

    /// A subscription that yields every entry from `from` on, in order, as it reaches `watermark`.
    pub fn subscribe(&self, from: u64, watermark: Watermark) -> Subscription {
        let rx = match watermark {
            Watermark::Sequenced => self.shared().sequenced.subscribe(),
            Watermark::Durable => self.shared().durable.subscribe(),
        };
        Subscription {
            journal: self.clone(),
            next: from,
            rx,
            buf: VecDeque::new(),
        }
    }

    /// The persisted cursor of consumer `name`: the next seq it has to process.
    pub fn cursor(&self, name: &str) -> Result<u64> {
        Ok(self.shared().store.cursor(name)?.unwrap_or(0))
    }

    /// Persists consumer `name`'s cursor (durable with the next flush: consumers must tolerate
    /// seeing an event again after a crash).
    pub fn set_cursor(&self, name: &str, next: u64) -> Result<()> {
        self.shared().store.set_cursor(name, next)
    }

    /// The log's origin (checkpoint first line and key name).
    pub fn origin(&self) -> &str {
        &self.shared().origin
    }

    /// The node's public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.shared().key.verifying()
    }

    /// The node id.
    pub fn node_id(&self) -> String {
        self.shared().key.node_id()
    }

    /// Signed-note verifier key for this log's checkpoints.
    pub fn verifier_key(&self) -> String {
        verifier_key(&self.shared().origin, &self.public_key())
    }

    /// The latest checkpoint and its signed note.
    pub fn latest_checkpoint(&self) -> Option<(Checkpoint, String)> {
        self.shared().latest_checkpoint.lock().clone()
    }

    /// All stored checkpoints, by size.
    pub fn checkpoints(&self) -> Result<Vec<(u64, String)>> {
        self.shared().store.checkpoints()
    }

    /// Forces a checkpoint of everything durable now (after flushing what is queued).
    pub async fn checkpoint_now(&self) -> Result<Option<(Checkpoint, String)>> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Checkpoint { reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Root of the tree of the first `size` durable entries.
    pub fn root(&self, size: u64) -> Result<Hash> {
        self.check_durable(size)?;
        with_tree(self.shared(), |tree, src| tree.root_with(size, src))?
            .ok_or(Error::Invalid("size beyond log".into()))
    }

    /// Inclusion proof of entry `index` in the tree of `size` durable entries.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        self.check_durable(size)?;
        with_tree(self.shared(), |tree, src| {
            tree.inclusion_proof_with(index, size, src)
        })
    }

    /// Consistency proof between trees of `old` and `new` durable entries.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        self.check_durable(new)?;
        with_tree(self.shared(), |tree, src| {
            tree.consistency_proof_with(old, new, src)
        })
    }

    fn check_durable(&self, size: u64) -> Result<()> {
        let durable = self.durable_len();
        if size > durable {
            return Err(Error::Invalid(format!(
                "tree size {size} is beyond the {durable} durable entries"
            )));
        }
        Ok(())
    }

    /// Writes an export of every durable entry (see [`crate::export`]) and returns how many.
    pub fn export(&self, out: &mut dyn std::io::Write) -> Result<u64> {
        crate::export::export_store(&*self.shared().store, Some(self.durable_len()), out)
    }

    /// Finds the first seq whose timestamp is at or after `timestamp_us`, by binary search (entry
    /// times never decrease along the log). Returns the log length when there is none.
    pub fn seq_at_time(&self, timestamp_us: i64) -> Result<u64> {
        let (mut lo, mut hi) = (0u64, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let ts = self.entry(mid)?.map_or(i64::MAX, |e| e.event.timestamp_us);
            if ts < timestamp_us {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Flushes, writes a final checkpoint and stops the writer. Later appends fail with `Closed`.
    pub async fn shutdown(&self) -> Result<()> {
        let tx = self.handle.tx.lock().take();
        let Some(tx) = tx else { return Ok(()) };
        let (reply, rx) = oneshot::channel();
        tx.send(Cmd::Shutdown { reply })
            .map_err(|_| Error::Closed)?;
        let result = rx.await.map_err(|_| Error::Closed)?;
        let threads: Vec<_> = self.handle.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        result
    }
}

fn decode(seq: u64, bytes: &[u8]) -> Result<Entry> {
    Entry::from_stored(seq, bytes).map_err(|reason| Error::Corrupt { seq, reason })
}

/// Rebuilds the Merkle tree from stored hashes, checks the latest checkpoint against it, and fully
/// verifies the tail written since that checkpoint.
#[allow(clippy::type_complexity)]
fn recover(
    store: &dyn LogStore,
    key: &VerifyingKey,
    next: u64,
) -> Result<(MerkleTree, Option<(Checkpoint, String)>, Hash, i64)> {
    let mut tree = match store.tree_spill()? {
        Some(spill) => MerkleTree::pruned_with_spill(TREE_PRUNED_LEVELS, spill),
        None => MerkleTree::pruned(TREE_PRUNED_LEVELS),
    };
    let mut err = None;
    store.scan(0, next, &mut |seq, bytes| {
        if seq != tree.size() {
            err = Some(Error::Corrupt {
                seq: tree.size(),
                reason: format!("entry missing (next entry found is seq {seq})"),
            });
            return false;
        }
        match split_stored(bytes) {
            Ok((hash, _, _)) => {
                tree.push_leaf_hash(leaf_hash(&hash));
                true
            }
            Err(reason) => {
                err = Some(Error::Corrupt { seq, reason });
                false
            }
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    if tree.size() != next {
        return Err(Error::Corrupt {
            seq: tree.size(),
            reason: "entry missing".into(),
        });
    }

    let latest = match store.latest_checkpoint()?.as_ref() {
        None => None,
        Some((size, note)) => {
            let bad = |reason: String| Error::Corrupt {
                seq: size.saturating_sub(1),
                reason,
            };
            if *size > next {
                return Err(Error::Corrupt {
                    seq: next,
                    reason: format!(
                        "log ends at {next} entries but a checkpoint was signed at size {size}"
                    ),
                });
            }
            let cp = Checkpoint::open(note, key)
                .map_err(|e| bad(format!("checkpoint at size {size}: {e}")))?;
            let src = |a, b| stored_leaves(store, a, b);
            if cp.size != *size || Some(cp.root) != tree.root_with(*size, &src)? {
                return Err(bad(format!(
                    "checkpoint at size {size} does not match the entries"
                )));
            }
            Some((cp, note.clone()))
        }
    };

    let start = latest.as_ref().map_or(0, |(cp, _)| cp.size);
    let (prev, last_ts) = if start == 0 {
        (GENESIS, i64::MIN)
    } else {
        let bytes = store.get(start - 1)?.ok_or(Error::Corrupt {
            seq: start - 1,
            reason: "entry missing".into(),
        })?;
        let e = decode(start - 1, &bytes)?;
        (e.hash, e.event.timestamp_us)
    };
    let mut verifier = ChainVerifier::resume(*key, start, prev, last_ts);
    let mut problem = None;
    store.scan(
        start,
        next,
        &mut |seq, bytes| match verifier.push(seq, bytes) {
            Ok(()) => true,
            Err(p) => {
                problem = Some(p);
                false
            }
        },
    )?;
    let summary = match problem {
        Some(p) => Err(p),
        None => verifier.finish(),
    }
    .map_err(|p| Error::Corrupt {
        seq: p.seq,
        reason: p.reason,
    })?;
    let last_ts = if next > start {
        let bytes = store.get(next - 1)?.ok_or(Error::Corrupt {
            seq: next - 1,
            reason: "entry missing".into(),
        })?;
        decode(next - 1, &bytes)?.event.timestamp_us
    } else {
        last_ts
    };
    Ok((tree, latest, summary.last_hash, last_ts))
}

struct SeqState {
    next: u64,
    prev: Hash,
    last_ts: i64,
}

fn sequencer(
    shared: &Shared,
    rx: mpsc::Receiver<Cmd>,
    ftx: mpsc::Sender<FlushJob>,
    mut st: SeqState,
) {
    let mut fatal: Option<String> = None;
    let mut flushed_upto = st.next;
    // Since when entries nobody waits on have been written but not flushed.
    let mut unflushed_since: Option<Instant> = None;
    loop {
        let first = match unflushed_since {
            Some(since) => {
                let left = shared.opts.flush_delay.saturating_sub(since.elapsed());
                match rx.recv_timeout(left) {
                    Ok(c) => Some(c),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            None => match rx.recv() {
                Ok(c) => Some(c),
                Err(_) => break,
            },
        };
        let mut cmds: Vec<Cmd> = first.into_iter().collect();
        let mut count = 0usize;
        while count < shared.opts.max_batch {
            match rx.try_recv() {
                Ok(c) => {
                    if let Cmd::Append { events, .. } = &c {
                        count += events.len();
                    }
                    cmds.push(c);
                }
                Err(_) => break,
            }
        }
        let mut waiters = Vec::new();
        let mut control = Vec::new();
        let mut appends = Vec::new();
        let mut cursors: Vec<(String, u64)> = Vec::new();
        let mut metas: Vec<(String, Vec<u8>)> = Vec::new();
        for c in cmds {
            match c {
                Cmd::Cursor { name, next } => cursors.push((name, next)),
                Cmd::Meta { key, value } => metas.push((key, value)),
                Cmd::Append {
                    events,
                    durable,
                    reply,
                } => appends.push((events, durable, reply)),
                Cmd::Checkpoint { reply } => control.push(FlushJob::Checkpoint { reply }),
                Cmd::Shutdown { reply } => control.push(FlushJob::Shutdown { reply }),
            }
        }
        if let Some(why) = &fatal {
            for (_, _, reply) in appends {
                let _ = reply.send(Err(Error::Storage(why.clone())));
            }
        } else if !appends.is_empty() {
            match seal_batch(shared, &mut st, appends) {
                Ok(ready) => {
                    for (reply, receipts, durable) in ready {
                        if durable {
                            waiters.push((reply, receipts));
                        } else {
                            let _ = reply.send(Ok(receipts));
                        }
                    }
                }
                Err(why) => {
                    tracing::error!(error = %why, "journal write failed; no further appends are accepted");
                    fatal = Some(why);
                }
            }
        }
        // Cursors and projection states go to the store after the appends queued with them.
        if fatal.is_none() {
            for (name, next) in cursors {
                if let Err(e) = shared.store.set_cursor(&name, next) {
                    tracing::error!(cursor = %name, error = %e, "cannot persist cursor");
                }
            }
            for (key, value) in metas {
                if let Err(e) = shared.store.set_meta(&key, &value) {
                    tracing::error!(%key, error = %e, "cannot persist metadata");
                }
            }
        }
        // A batch that someone waits on is flushed at once. Entries appended without a waiter
        // (sequenced-only) wait up to `flush_delay` to share a flush with what comes next: a
        // flush in progress when an awaited entry arrives doubles that entry's wait, so flushes
        // nobody needs yet are the ones to hold back.
        if st.next > flushed_upto && unflushed_since.is_none() {
            unflushed_since = Some(Instant::now());
        }
        let overdue = unflushed_since.is_some_and(|t| t.elapsed() >= shared.opts.flush_delay);
        if !waiters.is_empty() || !control.is_empty() || overdue {
            if st.next > flushed_upto || !waiters.is_empty() {
                flushed_upto = st.next;
                let _ = ftx.send(FlushJob::Flush {
                    upto: st.next,
                    waiters,
                });
            }
            unflushed_since = None;
        }
        let stop = control
            .iter()
            .any(|c| matches!(c, FlushJob::Shutdown { .. }));
        for c in control {
            let _ = ftx.send(c);
        }
        if stop {
            break;
        }
    }
    shared.closed.store(true, Ordering::Release);
    shared.sequenced.send_modify(|_| {});
}

type Ready = Vec<(Reply, Vec<Receipt>, bool)>;

/// Seals and writes one group commit. Returns the replies to send, or a fatal storage error after
/// answering every caller in the batch with it.
fn seal_batch(
    shared: &Shared,
    st: &mut SeqState,
    appends: Vec<(Vec<NewEvent>, bool, Reply)>,
) -> Result<Ready, String> {
    let saved = SeqState {
        next: st.next,
        prev: st.prev,
        last_ts: st.last_ts,
    };
    let mut rows: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut ids: Vec<(EventId, u64)> = Vec::new();
    let mut sealed: Vec<Arc<Entry>> = Vec::new();
    let mut unsigned: Vec<(EventId, Entry)> = Vec::new();
    let mut in_batch: HashMap<EventId, (u64, Hash)> = HashMap::new();
    let mut ready: Ready = Vec::new();

    for (events, durable, reply) in appends {
        // Seal one caller's events tentatively: they go in all together or not at all.
        let mut tmp = SeqState {
            next: st.next,
            prev: st.prev,
            last_ts: st.last_ts,
        };
        let mut mine = Vec::new();
        let mut receipts = Vec::with_capacity(events.len());
        let mut failure = None;
        let mut mine_ids: HashMap<EventId, (u64, Hash)> = HashMap::new();
        for ev in events {
            if let Some(&(seq, hash)) = in_batch.get(&ev.id).or_else(|| mine_ids.get(&ev.id)) {
                receipts.push(Receipt {
                    seq,
                    hash,
                    duplicate: true,
                });
                continue;
            }
            match existing(&*shared.store, &ev.id) {
                Ok(Some((seq, hash))) => {
                    receipts.push(Receipt {
                        seq,
                        hash,
                        duplicate: true,
                    });
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            let ts = now_us().max(tmp.last_ts);
            let id = ev.id;
            match Entry::chain(ev.sequence(tmp.next, ts), &tmp.prev) {
                Ok(entry) => {
                    receipts.push(Receipt {
                        seq: entry.seq,
                        hash: entry.hash,
                        duplicate: false,
                    });
                    mine_ids.insert(id, (entry.seq, entry.hash));
                    tmp = SeqState {
                        next: tmp.next + 1,
                        prev: entry.hash,
                        last_ts: ts,
                    };
                    mine.push((id, entry));
                }
                Err(e) => {
                    failure = Some(Error::from(e));
                    break;
                }
            }
        }
        if let Some(e) = failure {
            let _ = reply.send(Err(e));
            continue;
        }
        for (id, entry) in mine {
            in_batch.insert(id, (entry.seq, entry.hash));
            unsigned.push((id, entry));
        }
        *st = tmp;
        ready.push((reply, receipts, durable));
    }

    // One signature per batch, on its last entry: it covers every entry before it through the
    // chain, and the store keeps batches whole across a crash, so every stored entry is covered.
    // A signature costs about 13 µs, a fifth of the gateway's CPU per request when every entry
    // carried its own (benches/RESULTS.md).
    if let Some((_, last)) = unsigned.last_mut() {
        last.sign(shared.key.signing());
    }
    for (id, entry) in unsigned {
        rows.push((entry.seq, entry.to_stored()));
        ids.push((id, entry.seq));
        sealed.push(Arc::new(entry));
    }

    if !rows.is_empty() {
        if let Err(e) = shared.store.append(&rows, &ids) {
            let why = e.to_string();
            for (reply, _, _) in ready {
                let _ = reply.send(Err(Error::Storage(why.clone())));
            }
            *st = saved;
            return Err(why);
        }
        {
            let mut tree = shared.tree.write();
            for e in &sealed {
                tree.push_leaf_hash(e.leaf());
            }
        }
        {
            let mut ring = shared.ring.write();
            for e in sealed {
                ring.push(e);
            }
        }
        shared.sequenced.send_replace(st.next);
    }
    Ok(ready)
}

/// The live tree keeps its levels below this for the last two blocks of 1,024 entries only:
/// about 0.06 bytes a leaf instead of 64, so memory no longer grows with the log at the rate it
/// is written (a million entries took 64 MB). Roots and proofs reaching into an older block
/// reread its entries' hashes from the store (a millisecond or two, warm).
const TREE_PRUNED_LEVELS: u32 = 10;

/// Runs `f` on the live tree, with the stored leaf hashes of whatever old blocks it needs. The
/// store is read outside the tree's lock, which the sequencer takes for every batch: `f` runs
/// under the read lock with the blocks fetched so far, and when it asks for another one, the
/// lock is let go, the block is read, and `f` runs again. Old blocks never change, and a proof
/// reaches into at most a few of them.
fn with_tree<T>(
    shared: &Shared,
    f: impl Fn(&MerkleTree, LeafSource<'_>) -> std::result::Result<T, ProofError>,
) -> Result<T> {
    let mut fetched: HashMap<(u64, u64), Vec<Hash>> = HashMap::new();
    loop {
        let wanted = std::cell::Cell::new(None);
        let src = |a: u64, b: u64| match fetched.get(&(a, b)) {
            Some(leaves) => Ok(leaves.clone()),
            None => {
                wanted.set(Some((a, b)));
                Err(ProofError::Unavailable("leaves not fetched yet".into()))
            }
        };
        let result = f(&shared.tree.read(), &src);
        match wanted.get() {
            Some((a, b)) => {
                let leaves = stored_leaves(&*shared.store, a, b)?;
                fetched.insert((a, b), leaves);
            }
            _ => return Ok(result?),
        }
    }
}

/// Leaf hashes `[start, end)` from the store, for what the pruned tree no longer holds.
fn stored_leaves(
    store: &dyn LogStore,
    start: u64,
    end: u64,
) -> std::result::Result<Vec<Hash>, ProofError> {
    let mut out = Vec::with_capacity((end - start) as usize);
    let mut bad = None;
    store
        .scan(start, end, &mut |seq, bytes| match split_stored(bytes) {
            Ok((hash, _, _)) => {
                out.push(leaf_hash(&hash));
                true
            }
            Err(reason) => {
                bad = Some(format!("seq {seq}: {reason}"));
                false
            }
        })
        .map_err(|e| ProofError::Unavailable(e.to_string()))?;
    match bad {
        Some(why) => Err(ProofError::Unavailable(why)),
        None => Ok(out),
    }
}

fn existing(store: &dyn LogStore, id: &EventId) -> Result<Option<(u64, Hash)>> {
    let Some(seq) = store.seq_of(id)? else {
        return Ok(None);
    };
    let bytes = store.get(seq)?.ok_or(Error::Corrupt {
        seq,
        reason: "indexed id without entry".into(),
    })?;
    let (hash, _, _) = split_stored(&bytes).map_err(|reason| Error::Corrupt { seq, reason })?;
    Ok(Some((seq, hash)))
}

/// What the flushers share: the job queue (whoever holds its lock is the next to take jobs), the
/// checkpoint schedule and the first fatal error.
struct Flushers {
    jobs: Mutex<mpsc::Receiver<FlushJob>>,
    checkpoints: Mutex<CheckpointSchedule>,
    fatal: Mutex<Option<String>>,
    /// Workers still running; the last one out makes the final flush.
    running: AtomicUsize,
}

struct CheckpointSchedule {
    last_size: u64,
    last_at: Instant,
}

/// Flushes that may be in progress at once. A flush covers everything written to the store
/// before it starts, so a second flush can start while the first waits on the disk: an awaited
/// entry that arrives mid-flush waits for one flush of its own, not for the rest of another one
/// first.
const FLUSHERS: usize = 2;

fn flusher(shared: &Shared, f: &Flushers) {
    loop {
        // Take every job queued so far. Holding the queue's lock while waiting makes this worker
        // the next to take jobs; the lock is released before the flush.
        let jobs = {
            let rx = f.jobs.lock();
            let first = match rx.recv_timeout(shared.opts.checkpoint_interval) {
                Ok(j) => Some(j),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut jobs: Vec<FlushJob> = first.into_iter().collect();
            while let Ok(j) = rx.try_recv() {
                jobs.push(j);
            }
            jobs
        };
        let forced = jobs.iter().any(|j| !matches!(j, FlushJob::Flush { .. }));
        let mut upto = jobs
            .iter()
            .filter_map(|j| match j {
                FlushJob::Flush { upto, .. } => Some(*upto),
                _ => None,
            })
            .max();
        if forced {
            // A checkpoint or shutdown covers everything sequenced, even what another worker is
            // still flushing.
            upto = upto.max(Some(*shared.sequenced.borrow()));
        }
        let fatal = f.fatal.lock().clone();
        let fatal = match (upto, fatal) {
            (Some(upto), None) => match shared.store.flush() {
                Ok(()) => {
                    // Flushes may finish out of order; the watermark only moves forward.
                    shared.durable.send_if_modified(|d| {
                        let moved = upto > *d;
                        *d = (*d).max(upto);
                        moved
                    });
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal flush failed; no further appends are acknowledged");
                    Some(f.fatal.lock().get_or_insert(e.to_string()).clone())
                }
            },
            (_, fatal) => fatal,
        };
        let cp_result = {
            let mut sched = f.checkpoints.lock();
            let durable = *shared.durable.borrow();
            let due = durable > sched.last_size
                && (forced
                    || durable - sched.last_size >= shared.opts.checkpoint_every
                    || sched.last_at.elapsed() >= shared.opts.checkpoint_interval);
            if due && fatal.is_none() {
                let written = write_checkpoint(shared, durable, upto.is_none() || forced);
                match &written {
                    Ok(_) => {
                        sched.last_size = durable;
                        sched.last_at = Instant::now();
                    }
                    Err(e) => tracing::error!(error = %e, "checkpoint failed"),
                }
                written
            } else {
                Ok(shared.latest_checkpoint.lock().clone())
            }
        };
        let mut stop = false;
        for job in jobs {
            match job {
                FlushJob::Flush { waiters, .. } => {
                    for (reply, receipts) in waiters {
                        let _ = reply.send(match &fatal {
                            None => Ok(receipts),
                            Some(why) => Err(Error::Storage(why.clone())),
                        });
                    }
                }
                FlushJob::Checkpoint { reply } => {
                    let _ = reply.send(clone_result(&cp_result));
                }
                FlushJob::Shutdown { reply } => {
                    stop = true;
                    let _ = reply.send(clone_result(&cp_result).map(|_| ()));
                }
            }
        }
        if stop {
            break;
        }
    }
    if f.running.fetch_sub(1, Ordering::AcqRel) == 1 {
        // A checkpoint written on the busy path waits for the next flush; make it durable now,
        // and record the clean close, unless a flush failed: then what is on disk is not known,
        // and the next open must read the log's end for itself.
        let failed = f.fatal.lock().is_some();
        let closed = if failed { Ok(()) } else { shared.store.close() };
        if let Err(e) = closed {
            tracing::error!(error = %e, "final journal flush failed");
        }
        shared.closed.store(true, Ordering::Release);
        shared.durable.send_modify(|_| {});
    }
}

fn clone_result(r: &Result<Option<(Checkpoint, String)>>) -> Result<Option<(Checkpoint, String)>> {
    match r {
        Ok(v) => Ok(v.clone()),
        Err(e) => Err(Error::Storage(e.to_string())),
    }
}

fn write_checkpoint(
    shared: &Shared,
    size: u64,
    flush: bool,
) -> Result<Option<(Checkpoint, String)>> {
    let root = with_tree(shared, |tree, src| tree.root_with(size, src))?
        .ok_or(Error::Invalid("checkpoint beyond tree".into()))?;
    let cp = Checkpoint {
        origin: shared.origin.clone(),
        size,
        root,
    };
    let note = cp.sign(shared.key.signing());
    shared.store.put_checkpoint(size, &note)?;
    // On the busy path the note rides along with the next batch's flush; when idle (timer,
    // explicit request, shutdown) it is flushed now.
    if flush {
        shared.store.sync()?;
    }
    let latest = Some((cp, note));
    *shared.latest_checkpoint.lock() = latest.clone();
    Ok(latest)
}

/// An ordered stream of entries from a starting seq, served from memory while the consumer keeps
/// up and from disk when it lags behind the in-memory tail.
pub struct Subscription {
    journal: Journal,
    next: u64,
    rx: watch::Receiver<u64>,
    buf: VecDeque<Arc<Entry>>,
}

impl Subscription {
    /// The seq the next call to [`Subscription::next`] will return.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next entry; waits for it to be appended. Fails with `Closed` after shutdown.
    pub async fn next(&mut self) -> Result<Arc<Entry>> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                self.next = e.seq + 1;
                return Ok(e);
            }
            let limit = *self.rx.borrow_and_update();
            if self.next < limit {
                if let Some(e) = self.journal.shared().ring.read().get(self.next) {
                    self.next += 1;
                    return Ok(e);
                }
                let to = limit.min(self.next + 1024);
                self.buf = self.journal.range(self.next, to)?.into();
                if self.buf.is_empty() {
                    return Err(Error::Corrupt {
                        seq: self.next,
                        reason: "entry missing".into(),
                    });
                }
                continue;
            }
            if self.journal.shared().closed.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            self.rx.changed().await.map_err(|_| Error::Closed)?;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::{MemStore, NodeKey};
    use isnad_schemas::KeyRevoked;

    fn key() -> NodeKey {
        NodeKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[3; 32]))
    }

    fn event(i: u32) -> NewEvent {
        NewEvent::new(&KeyRevoked {
            key_id: format!("k{i}"),
            reason: "test".into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_projection_state_is_written_behind_the_appends_and_survives_a_reopen() {
        let store = Arc::new(MemStore::new());
        let journal = Journal::open(store.clone(), key(), Options::default()).unwrap();
        assert_eq!(journal.state("usage").unwrap(), None);
        let receipts = journal.append(vec![event(0), event(1)]).await.unwrap();
        let saved = SavedState {
            next: 2,
            last_hash: receipts[1].hash,
            bytes: b"two".to_vec(),
        };
        journal.submit_state("usage", &saved).unwrap();
        // Queued behind the state, so it is stored once this append is.
        journal.append(vec![event(2)]).await.unwrap();
        assert_eq!(journal.state("usage").unwrap().as_ref(), Some(&saved));
        assert!(saved.matches(&journal).unwrap());
        journal.shutdown().await.unwrap();
        drop(journal);

        let journal = Journal::open(store, key(), Options::default()).unwrap();
        assert_eq!(journal.state("usage").unwrap().as_ref(), Some(&saved));
        let elsewhere = SavedState {
            last_hash: [9; 32],
            ..saved.clone()
        };
        assert!(!elsewhere.matches(&journal).unwrap(), "bound to its entry");
        let beyond = SavedState { next: 10, ..saved };
        assert!(
            !beyond.matches(&journal).unwrap(),
            "folded entries the log lacks"
        );
        journal.clear_state("usage").unwrap();
        assert_eq!(journal.state("usage").unwrap(), None);
        journal.shutdown().await.unwrap();
    }

    #[test]
    fn a_malformed_state_is_an_error_not_a_state() {
        assert!(SavedState::from_value("x", &[1, 2, 3]).is_err());
        let s = SavedState {
            next: 7,
            last_hash: [1; 32],
            bytes: vec![],
        };
        assert_eq!(SavedState::from_value("x", &s.to_value()).unwrap(), s);
    }
}
