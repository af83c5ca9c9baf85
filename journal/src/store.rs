//! Where entries live: the [`LogStore`] trait, its sled implementation and an in-memory one.
//!
//! Invariants every implementation keeps (and the conformance suite checks):
//! - entry keys are consecutive sequence numbers from 0, no holes, written only by
//!   [`LogStore::append`], whose entries and id-index rows become visible together or not at all;
//! - after [`LogStore::flush`] returns, everything appended before it survives a crash;
//! - after a crash the entries present are a prefix of those appended.

use std::{collections::BTreeMap, path::Path};

use isnad_schemas::EventId;
use parking_lot::Mutex;

use crate::{Error, Result};

const ENTRY: u8 = b'e';
const ID: u8 = b'i';
const CHECKPOINT: u8 = b'k';
const META: u8 = b'm';
const CURSOR: u8 = b'c';
/// Meta row: one past the last entry of the last whole batch.
const SEALED: &[u8] = b"sealed";

/// Storage beneath the journal. The journal alone decides what to write; stores only keep it.
pub trait LogStore: Send + Sync + 'static {
    /// Writes entries (stored form, consecutive seqs) and their id-index rows as a whole: after
    /// a crash, a reopened store holds all of one call's rows or none of them.
    fn append(&self, entries: &[(u64, Vec<u8>)], ids: &[(EventId, u64)]) -> Result<()>;
    /// Blocks until every entry appended so far is durable.
    fn flush(&self) -> Result<()>;
    /// Blocks until everything written so far is durable: entries, checkpoints, metadata and
    /// cursors. A store may make the last three durable later than [`LogStore::flush`] does.
    fn sync(&self) -> Result<()> {
        self.flush()
    }
    /// The stored entry at `seq`.
    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>>;
    /// Calls `f` for entries in `[from, to)` in order until it returns `false`.
    fn scan(&self, from: u64, to: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<()>;
    /// One past the highest stored seq (0 when empty).
    fn next_seq(&self) -> Result<u64>;
    /// Sequence number recorded for an event id.
    fn seq_of(&self, id: &EventId) -> Result<Option<u64>>;
    /// Stores a signed checkpoint note for `size`.
    fn put_checkpoint(&self, size: u64, note: &str) -> Result<()>;
    /// All checkpoints, by size.
    fn checkpoints(&self) -> Result<Vec<(u64, String)>>;
    /// The checkpoint of the largest size, if any.
    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>> {
        Ok(self.checkpoints()?.pop())
    }
    /// Where the journal's Merkle tree may keep its upper levels instead of memory, emptied for
    /// a rebuild. `None`: in memory.
    fn tree_spill(&self) -> Result<Option<std::sync::Arc<dyn crate::merkle::NodeSpill>>> {
        Ok(None)
    }
    /// A metadata value.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Sets a metadata value.
    fn set_meta(&self, key: &str, value: &[u8]) -> Result<()>;
    /// A consumer cursor: the last seq the consumer finished.
    fn cursor(&self, name: &str) -> Result<Option<u64>>;
    /// Sets a consumer cursor.
    fn set_cursor(&self, name: &str, seq: u64) -> Result<()>;
    /// Makes everything durable, as [`LogStore::sync`], and records that the log was closed
    /// cleanly, so that the next open knows its end is not a crash's. Nothing is appended after.
    fn close(&self) -> Result<()> {
        self.sync()
    }
    /// What opening the store found past the log's last whole batch: a write a crash left
    /// incomplete. A writable store has cut it off by the time this is asked; a read-only one
    /// leaves it where it is.
    fn torn_tail(&self) -> Option<TornTail> {
        None
    }
}

/// A write that a crash left incomplete at the end of the log: never acknowledged, not part of
/// the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment it is in (its first seq).
    pub segment: u64,
    /// Where in the segment it starts: the end of the last whole batch.
    pub offset: u64,
    /// How many of its bytes were written (up to its last non-zero byte).
    pub bytes: u64,
}

impl std::fmt::Display for TornTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "segment {} at byte {}: {} bytes of an unfinished write",
            self.segment, self.offset, self.bytes
        )
    }
}

fn key(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

fn seq_key(seq: u64) -> Vec<u8> {
    key(ENTRY, &seq.to_be_bytes())
}

fn be_u64(bytes: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Storage(format!("expected 8 bytes, found {}", bytes.len())))
}

/// Opens the sled database at `path`.
///
/// sled releases its file lock from a background thread shortly after the previous handle in
/// this process is dropped, so a lock conflict is retried for up to two seconds before it is
/// reported (another process holding the log keeps it for longer than that).
pub(crate) fn open_sled(path: &Path, cache_bytes: u64) -> Result<sled::Db> {
    let mut tries = 0;
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            // sled's own background flush is not our durability: `flush()` is.
            .flush_every_ms(None)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_conflict(&e) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) if is_lock_conflict(&e) => {
                return Err(Error::Storage(format!(
                    "{} is in use by another process (is `isnad serve` running?)",
                    path.display()
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Checkpoints, metadata and cursors as rows of a sled database, and how to make them durable.
pub(crate) struct MetaRows {
    db: sled::Db,
    /// sled's log file. `Db::flush` writes with `sync_file_range`, which neither flushes the
    /// disk's write cache nor the file's size; `fdatasync` on this handle after it does.
    data_file: std::fs::File,
    /// The private copy this was opened from, for a read-only view (see [`open_sled_copy`]).
    _copy: Option<tempfile::TempDir>,
}

/// Opens a private copy of the sled database in `path`, leaving the original untouched.
///
/// sled 0.34 has no read-only mode: opening a database takes its lock and may write (recovery,
/// a new log segment). The auditor's tools must not change what they check, so they read a
/// copy, which sled recovers as it would the original after a crash. The copy is deleted with the
/// returned guard.
pub(crate) fn open_sled_copy(
    path: &Path,
    cache_bytes: u64,
) -> Result<(sled::Db, tempfile::TempDir)> {
    let tmp = tempfile::Builder::new()
        .prefix("isnad-meta-")
        .tempdir()
        .map_err(|e| Error::io(&std::env::temp_dir(), e))?;
    let copy = tmp.path().join("db");
    copy_dir(path, &copy)?;
    let db = sled::Config::new()
        .path(&copy)
        .cache_capacity(cache_bytes)
        .flush_every_ms(None)
        .open()?;
    Ok((db, tmp))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for item in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let item = item.map_err(|e| Error::io(from, e))?;
        let (src, dst) = (item.path(), to.join(item.file_name()));
        let kind = item.file_type().map_err(|e| Error::io(&src, e))?;
        if kind.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}

impl MetaRows {
    /// Opens a private copy of the metadata in `dir`, which stays untouched (see
    /// [`open_sled_copy`]).
    pub(crate) fn open_copy(dir: &Path, cache_bytes: u64) -> Result<Self> {
        let (db, copy) = open_sled_copy(dir, cache_bytes)?;
        let mut rows = Self::new(db, &copy.path().join("db"))?;
        rows._copy = Some(copy);
        Ok(rows)
    }

    /// Wraps `db`, the sled database in `dir`.
    pub(crate) fn new(db: sled::Db, dir: &Path) -> Result<Self> {
        let data = dir.join("db");
        let data_file = std::fs::File::open(&data).map_err(|e| Error::io(&data, e))?;
        // Make the files' creation itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(Self {
            db,
            data_file,
            _copy: None,
        })
    }

    /// Makes every row written so far durable.
    pub(crate) fn sync(&self) -> Result<()> {
        self.db.flush()?;
        // sled frees replaced pages and sealed IO buffers (512 KiB each) through crossbeam's
        // epoch collector, one thread-local bag of 64 at a time. A flush seals a buffer from this
        // thread, which allocates little else, so without this its bag filled slowly and held
        // dozens of dead buffers: the gateway's resident memory kept rising under load.
        crossbeam_epoch::pin().flush();
        self.data_file
            .sync_data()
            .map_err(|e| Error::Storage(format!("fdatasync: {e}")))
    }

    /// Refuses a write to a read-only view.
    pub(crate) fn writable(&self) -> Result<()> {
        match self._copy {
            Some(_) => Err(Error::ReadOnly),
            None => Ok(()),
        }
    }

    pub(crate) fn put_checkpoint(&self, size: u64, note: &str) -> Result<()> {
        self.writable()?;
        self.db
            .insert(key(CHECKPOINT, &size.to_be_bytes()), note.as_bytes())?;
        Ok(())
    }

    pub(crate) fn checkpoints(&self) -> Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        for row in self.db.scan_prefix([CHECKPOINT]) {
            let (k, v) = row?;
            let note = String::from_utf8(v.to_vec())
                .map_err(|_| Error::Storage("checkpoint note is not UTF-8".into()))?;
            out.push((be_u64(&k[1..])?, note));
        }
        Ok(out)
    }

    pub(crate) fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key(META, name.as_bytes()))?.map(|v| v.to_vec()))
    }

    pub(crate) fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.writable()?;
        self.db.insert(key(META, name.as_bytes()), value)?;
        Ok(())
    }

    pub(crate) fn cursor(&self, name: &str) -> Result<Option<u64>> {
        self.db
            .get(key(CURSOR, name.as_bytes()))?
            .map(|v| be_u64(&v))
            .transpose()
    }

    pub(crate) fn set_cursor(&self, name: &str, seq: u64) -> Result<()> {
        self.writable()?;
        self.db
            .insert(key(CURSOR, name.as_bytes()), &seq.to_be_bytes())?;
        Ok(())
    }
}

/// The journal on sled 0.34, as logs written before [`crate::SegmentStore`] keep it: one tree,
/// one key space with a one-byte prefix per kind of row. A batch of entries and their id-index
/// rows is made whole by an end-of-batch marker row (see `append`), not by a sled batch.
///
/// Its memory grows with the log (see [`crate::segments`]); new logs are segment files.
pub struct SledStore {
    db: sled::Db,
    rows: MetaRows,
}

/// sled's page cache for [`SledStore::open`].
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledStore {
    /// Opens (or creates) the sled database at `path`, with a page cache of
    /// [`DEFAULT_CACHE_BYTES`]: sized for the offline tools, which scan the whole log; a server
    /// picks its own with [`SledStore::open_with_cache`].
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the sled database at `path` with a page cache of `cache_bytes`.
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self> {
        let db = open_sled(path, cache_bytes)?;
        let store = Self {
            rows: MetaRows::new(db.clone(), path)?,
            db,
        };
        store.cut_torn_batch()?;
        Ok(store)
    }

    /// Opens the log at `path` read-only: from a private copy, leaving `path` untouched (see
    /// [`open_sled_copy`]). A batch a crash cut short is cut from the copy only.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let rows = MetaRows::open_copy(path, DEFAULT_CACHE_BYTES)?;
        let store = Self {
            db: rows.db.clone(),
            rows,
        };
        let cut = store.cut_torn_batch()?;
        if cut > 0 {
            tracing::warn!(
                entries = cut,
                "the log ends in a batch a crash left incomplete: not part of the log, left as it is"
            );
        }
        Ok(store)
    }

    /// Removes the entries (and their id rows) of a batch that a crash cut short: everything from
    /// the last whole batch's end marker on. None of it was acknowledged as durable: a flush
    /// only starts after its batches' markers are written. Returns how many entries were cut.
    fn cut_torn_batch(&self) -> Result<u64> {
        let next = self.next_seq()?;
        let sealed = match self.db.get(key(META, SEALED))? {
            Some(v) => be_u64(&v)?,
            // A log written before the marker existed: its batches were atomic sled batches.
            None => {
                if next > 0 {
                    self.db.insert(key(META, SEALED), &next.to_be_bytes())?;
                }
                return Ok(0);
            }
        };
        if sealed >= next {
            return Ok(0);
        }
        for seq in sealed..next {
            if let Some(bytes) = self.db.get(seq_key(seq))? {
                // The id row exists only if every entry of the batch does (ids come after the
                // entries in the log); an entry that does not decode has none to remove.
                if let Ok(entry) = crate::Entry::from_stored(seq, &bytes) {
                    self.db.remove(key(ID, &entry.event.id.0))?;
                }
            }
            self.db.remove(seq_key(seq))?;
        }
        tracing::warn!(
            from = sealed,
            entries = next - sealed,
            "cut back the entries of a batch that a crash left incomplete; none was acknowledged"
        );
        self.flush()?;
        Ok(next - sealed)
    }

    /// The raw sled database, for tests that tamper with the log as an attacker with disk access.
    pub fn raw(&self) -> &sled::Db {
        &self.db
    }

    /// Raw key of the marker after the last whole batch (for crash tests).
    pub fn sealed_key() -> Vec<u8> {
        key(META, SEALED)
    }

    /// Raw key of an entry row.
    pub fn entry_key(seq: u64) -> Vec<u8> {
        seq_key(seq)
    }
}

impl LogStore for SledStore {
    fn append(&self, entries: &[(u64, Vec<u8>)], ids: &[(EventId, u64)]) -> Result<()> {
        self.rows.writable()?;
        // One insert per row rather than `apply_batch`: sled 0.34 rolls its IO buffer before and
        // after every batch, which writes it out with `sync_file_range` each time (about four
        // device syncs per flush of ours, measured with strace). A batch is made whole another
        // way: sled recovers a prefix of its log, and the marker written last says where the
        // last whole batch ends; `open` cuts back anything after it.
        for (seq, bytes) in entries {
            self.db.insert(seq_key(*seq), bytes.as_slice())?;
        }
        for (id, seq) in ids {
            self.db.insert(key(ID, &id.0), &seq.to_be_bytes())?;
        }
        if let Some((last, _)) = entries.last() {
            self.db
                .insert(key(META, SEALED), &(last + 1).to_be_bytes())?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.rows.sync()
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(seq_key(seq))?.map(|v| v.to_vec()))
    }

    fn scan(&self, from: u64, to: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        for row in self.db.range(seq_key(from)..seq_key(to)) {
            let (k, v) = row?;
            if !f(be_u64(&k[1..])?, &v) {
                break;
            }
        }
        Ok(())
    }

    fn next_seq(&self) -> Result<u64> {
        match self.db.range(vec![ENTRY]..vec![ENTRY + 1]).next_back() {
            Some(row) => Ok(be_u64(&row?.0[1..])? + 1),
            None => Ok(0),
        }
    }

    fn seq_of(&self, id: &EventId) -> Result<Option<u64>> {
        self.db.get(key(ID, &id.0))?.map(|v| be_u64(&v)).transpose()
    }

    fn put_checkpoint(&self, size: u64, note: &str) -> Result<()> {
        self.rows.put_checkpoint(size, note)
    }

    fn checkpoints(&self) -> Result<Vec<(u64, String)>> {
        self.rows.checkpoints()
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.rows.meta(name)
    }

    fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.rows.set_meta(name, value)
    }

    fn cursor(&self, name: &str) -> Result<Option<u64>> {
        self.rows.cursor(name)
    }

    fn set_cursor(&self, name: &str, seq: u64) -> Result<()> {
        self.rows.set_cursor(name, seq)
    }
}

fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

/// An in-memory store: the same contract without a disk, for tests and ephemeral nodes.
#[derive(Default)]
pub struct MemStore {
    rows: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl LogStore for MemStore {
    fn append(&self, entries: &[(u64, Vec<u8>)], ids: &[(EventId, u64)]) -> Result<()> {
        let mut rows = self.rows.lock();
        for (seq, bytes) in entries {
            rows.insert(seq_key(*seq), bytes.clone());
        }
        for (id, seq) in ids {
            rows.insert(key(ID, &id.0), seq.to_be_bytes().to_vec());
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.rows.lock().get(&seq_key(seq)).cloned())
    }

    fn scan(&self, from: u64, to: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<()> {
        if from >= to {
            return Ok(());
        }
        // Copy out under the lock so that `f` may call back into the store.
        let rows: Vec<(u64, Vec<u8>)> = {
            let guard = self.rows.lock();
            guard
                .range(seq_key(from)..seq_key(to))
                .map(|(k, v)| Ok((be_u64(&k[1..])?, v.clone())))
                .collect::<Result<_>>()?
        };
        for (seq, v) in rows {
            if !f(seq, &v) {
                break;
            }
        }
        Ok(())
    }

    fn next_seq(&self) -> Result<u64> {
        match self
            .rows
            .lock()
            .range(vec![ENTRY]..vec![ENTRY + 1])
            .next_back()
        {
            Some((k, _)) => Ok(be_u64(&k[1..])? + 1),
            None => Ok(0),
        }
    }

    fn seq_of(&self, id: &EventId) -> Result<Option<u64>> {
        self.rows
            .lock()
            .get(&key(ID, &id.0))
            .map(|v| be_u64(v))
            .transpose()
    }

    fn put_checkpoint(&self, size: u64, note: &str) -> Result<()> {
        self.rows.lock().insert(
            key(CHECKPOINT, &size.to_be_bytes()),
            note.as_bytes().to_vec(),
        );
        Ok(())
    }

    fn checkpoints(&self) -> Result<Vec<(u64, String)>> {
        let rows = self.rows.lock();
        rows.range(vec![CHECKPOINT]..vec![CHECKPOINT + 1])
            .map(|(k, v)| {
                let note = String::from_utf8(v.clone())
                    .map_err(|_| Error::Storage("checkpoint note is not UTF-8".into()))?;
                Ok((be_u64(&k[1..])?, note))
            })
            .collect()
    }

    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.rows.lock().get(&key(META, name.as_bytes())).cloned())
    }

    fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.rows
            .lock()
            .insert(key(META, name.as_bytes()), value.to_vec());
        Ok(())
    }

    fn cursor(&self, name: &str) -> Result<Option<u64>> {
        self.rows
            .lock()
            .get(&key(CURSOR, name.as_bytes()))
            .map(|v| be_u64(v))
            .transpose()
    }

    fn set_cursor(&self, name: &str, seq: u64) -> Result<()> {
        self.rows
            .lock()
            .insert(key(CURSOR, name.as_bytes()), seq.to_be_bytes().to_vec());
        Ok(())
    }
}

impl<S: LogStore + ?Sized> LogStore for std::sync::Arc<S> {
    fn append(&self, entries: &[(u64, Vec<u8>)], ids: &[(EventId, u64)]) -> Result<()> {
        (**self).append(entries, ids)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn sync(&self) -> Result<()> {
        (**self).sync()
    }
    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        (**self).get(seq)
    }
    fn scan(&self, from: u64, to: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<()> {
        (**self).scan(from, to, f)
    }
    fn next_seq(&self) -> Result<u64> {
        (**self).next_seq()
    }
    fn seq_of(&self, id: &EventId) -> Result<Option<u64>> {
        (**self).seq_of(id)
    }
    fn put_checkpoint(&self, size: u64, note: &str) -> Result<()> {
        (**self).put_checkpoint(size, note)
    }
    fn checkpoints(&self) -> Result<Vec<(u64, String)>> {
        (**self).checkpoints()
    }
    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>> {
        (**self).latest_checkpoint()
    }
    fn tree_spill(&self) -> Result<Option<std::sync::Arc<dyn crate::merkle::NodeSpill>>> {
        (**self).tree_spill()
    }
    fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        (**self).meta(name)
    }
    fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        (**self).set_meta(name, value)
    }
    fn cursor(&self, name: &str) -> Result<Option<u64>> {
        (**self).cursor(name)
    }
    fn set_cursor(&self, name: &str, seq: u64) -> Result<()> {
        (**self).set_cursor(name, seq)
    }
    fn close(&self) -> Result<()> {
        (**self).close()
    }
    fn torn_tail(&self) -> Option<TornTail> {
        (**self).torn_tail()
    }
}
