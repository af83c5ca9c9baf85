//! The journal's own log files: entries in append-only segment files, one `fdatasync` per flush,
//! and memory that does not grow with the log.
//!
//! ```text
//! journal/
//!   log/00000000000000000000.seg   records: len u32 | flags u32 | crc32 u32 | stored entry
//!   log/00000000000000000000.off   one u64 file offset per entry of the segment
//!   ids/*.ids                      the event-id index (see `ids.rs`)
//!   checkpoints                    signed checkpoint notes (see `checkpoint_log.rs`)
//!   tree/level-NN                  the Merkle tree's upper levels (see `tree_files.rs`)
//!   meta/                          sled: cursors, log metadata
//! ```
//!
//! A record's checksum covers its seq, header and bytes. The last record of every `append` call
//! carries the end-of-batch flag; on open, the last segment is read through and cut back to the
//! end of its last whole batch (nothing after it was acknowledged: a flush only starts after the
//! batch is written), and its offsets file is rebuilt from it. Older segments and their offsets
//! were made durable when the next segment started. A batch never spans two segments.
//!
//! Segments are zero-filled ahead of use by a background thread (the spare, `log/next.spare`),
//! and the store moves onto the spare as soon as it is ready: an append into a zero-filled file
//! changes no size and allocates no block, so a flush's `fdatasync` is one device write, not a
//! write and a filesystem journal commit (benches/RESULTS.md has the difference). The zero fill
//! after the last record is not a torn write: on open it stays, and appends go on into it.
//!
//! A clean close ([`LogStore::close`]) records the active segment's end in the metadata, so the
//! next open knows what follows it is zero fill without reading it. Otherwise (a kill or crash)
//! open reads past the last whole batch: non-zero bytes there are a torn write, which a writable
//! open cuts back (zeroing it inside zero fill) and reports with its segment, offset and length;
//! a read-only open ([`SegmentStore::open_read_only`], the auditor's tools) reports it through
//! [`LogStore::torn_tail`] and changes nothing.
//!
//! Flushing syncs the active segment only. Offsets and the id index are derived from the log and
//! rebuilt on open; checkpoint notes and the metadata in sled are synced by a background thread
//! every [`META_SYNC_EVERY`] and by [`LogStore::sync`]. A cursor that a crash left ahead of the recovered
//! log reads back as the log's end.
//!
//! Why not rows in sled, as [`crate::SledStore`] keeps them: sled 0.34 keeps metadata in memory
//! for every page of the tree and splits leaves at 16 rows, so a gateway's resident memory grew by
//! about 37 bytes per entry for as long as it ran; and its flush costs two device round trips
//! (`sync_file_range`, then the `fdatasync` that durability needs) where a segment costs one.

use std::{
    fs::{File, OpenOptions},
    io::BufReader,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use isnad_schemas::EventId;
use parking_lot::{Mutex, RwLock};

use crate::{
    checkpoint_log::{CheckpointLog, Mark},
    ids::IdIndex,
    store::{open_sled, MetaRows, TornTail},
    Error, LogStore, Result,
};

/// A segment is closed and the next one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// A spare segment is prepared once the active one holds this many bytes.
const PREPARE_AFTER: u64 = 1024 * 1024;
/// Name of the prepared spare segment, and of the file it is prepared in.
const SPARE: &str = "next.spare";
const SPARE_TMP: &str = "next.spare.tmp";

/// Event ids the index keeps in memory before it moves them to a file of their own.
pub const IDS_PER_CHUNK: usize = crate::ids::CHUNK_IDS;
/// How often the background thread makes changed metadata (checkpoints, cursors) durable.
pub const META_SYNC_EVERY: Duration = Duration::from_millis(200);

/// Bytes of a record's header.
pub(crate) const RECORD_HEADER: usize = 12;
const HEADER: usize = RECORD_HEADER;
const END_OF_BATCH: u32 = 1;
/// Larger than any entry the journal writes; a header claiming more is damage.
const MAX_RECORD: u32 = 64 * 1024 * 1024;

/// Tuning of a [`SegmentStore`].
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    /// See [`SEGMENT_BYTES`].
    pub segment_bytes: u64,
    /// sled's page cache for the metadata.
    pub meta_cache_bytes: u64,
    /// Whether segments are zero-filled ahead of use (see [`SegmentStore`]).
    pub preallocate: bool,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            segment_bytes: SEGMENT_BYTES,
            meta_cache_bytes: 4 * 1024 * 1024,
            preallocate: true,
        }
    }
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn off_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.off"))
}

fn record_crc(seq: u64, header: &[u8], bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&header[..8]);
    h.update(bytes);
    h.finalize()
}

pub(crate) fn encode_record(out: &mut Vec<u8>, seq: u64, bytes: &[u8], flags: u32) {
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    header[4..8].copy_from_slice(&flags.to_le_bytes());
    let crc = record_crc(seq, &header, bytes);
    header[8..].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(bytes);
}

/// Parses a record header: `(payload length, flags, crc)`, or `None` when it cannot be one.
fn parse_header(h: &[u8; HEADER]) -> Option<(u32, u32, u32)> {
    let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let (len, flags, crc) = (word(0), word(4), word(8));
    (len > 0 && len <= MAX_RECORD && flags & !END_OF_BATCH == 0).then_some((len, flags, crc))
}

/// Reads the record of `seq` at the reader's position into `buf`, checking it. Returns its flags,
/// or why what is there is not a whole, intact record.
pub(crate) fn next_record(
    r: &mut impl std::io::Read,
    seq: u64,
    buf: &mut Vec<u8>,
) -> std::result::Result<u32, String> {
    let mut h = [0u8; HEADER];
    r.read_exact(&mut h)
        .map_err(|e| format!("record header unreadable: {e}"))?;
    let (len, flags, crc) = parse_header(&h).ok_or("record header is damaged")?;
    buf.resize(len as usize, 0);
    r.read_exact(buf)
        .map_err(|e| format!("record unreadable: {e}"))?;
    if record_crc(seq, &h, buf) != crc {
        return Err("record fails its checksum".into());
    }
    Ok(flags)
}

/// [`next_record`] for a record the log holds: anything wrong with it is corruption at `seq`.
fn read_record(r: &mut impl std::io::Read, seq: u64, buf: &mut Vec<u8>) -> Result<()> {
    next_record(r, seq, buf)
        .map(drop)
        .map_err(|reason| Error::Corrupt { seq, reason })
}

/// Reads from a shared file at a position of its own.
pub(crate) struct At<'a> {
    pub(crate) file: &'a File,
    pub(crate) pos: u64,
}

impl std::io::Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A segment's entry offsets: its `.off` file, or (read-only, for the last segment, whose file
/// only a writable open rebuilds) the offsets found by reading the segment through.
enum Offsets {
    File(Arc<File>),
    Memory(Vec<u64>),
}

/// The segment being appended to.
struct Active {
    first: u64,
    seg: Arc<File>,
    off: Offsets,
}

impl Active {
    /// The offsets file, to write.
    fn off_file(&self) -> Result<&File> {
        match &self.off {
            Offsets::File(f) => Ok(f),
            Offsets::Memory(_) => Err(Error::ReadOnly),
        }
    }
}

struct Writer {
    active: Arc<Active>,
    /// Bytes in the active segment.
    len: u64,
    /// Entries in the active segment.
    count: u64,
    /// Whether the active segment was zero-filled ahead of use.
    preallocated: bool,
    records: Vec<u8>,
    offsets: Vec<u8>,
}

struct Meta {
    rows: MetaRows,
    checkpoints: CheckpointLog,
    /// `(segment, bytes)` that the last flush made durable, recorded as [`META_FLUSHED`]: on
    /// open, damage before it is damage, not a torn write.
    flushed: Mutex<(u64, u64)>,
    dirty: AtomicBool,
}

impl Meta {
    /// Syncs the checkpoint notes, then records how far they and the active segment are durable
    /// with the rest of the metadata.
    fn sync(&self) -> Result<()> {
        self.dirty.store(false, Ordering::Release);
        let mark = self.checkpoints.sync()?;
        self.rows.set_meta(META_CHECKPOINTS, &mark.encode())?;
        let (first, len) = *self.flushed.lock();
        self.rows.set_meta(META_FLUSHED, &u64_pair(first, len))?;
        self.rows.sync()
    }
}

/// Two numbers as a metadata value.
pub(crate) fn u64_pair(a: u64, b: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&a.to_le_bytes());
    v[8..].copy_from_slice(&b.to_le_bytes());
    v
}

/// The two numbers of a [`u64_pair`] value.
pub(crate) fn from_u64_pair(v: &[u8]) -> Option<(u64, u64)> {
    let a = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let b = u64::from_le_bytes(v.get(8..16)?.try_into().ok()?);
    Some((a, b))
}

/// Metadata key: the [`Mark`] of the checkpoint notes file.
const META_CHECKPOINTS: &str = "checkpoints_synced";

/// Entries in segment files, metadata in sled. See the module documentation.
pub struct SegmentStore {
    log_dir: PathBuf,
    opts: SegmentOptions,
    meta: Arc<Meta>,
    writer: Mutex<Writer>,
    /// First seq of every segment, ascending; the last is the active one.
    segments: RwLock<Vec<u64>>,
    /// Read handles of the active segment.
    active: RwLock<Arc<Active>>,
    next: AtomicU64,
    /// The event-id index; `None` read-only, where [`LogStore::seq_of`] scans instead.
    ids: Option<IdIndex>,
    syncer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// The next segment, zero-filled ahead of use.
    spare: Mutex<Spare>,
    /// Opened by [`SegmentStore::open_read_only`].
    read_only: bool,
    /// What open found past the last whole batch.
    torn: Option<TornTail>,
}

enum Spare {
    None,
    Preparing(JoinHandle<bool>),
    Ready,
    /// Preparing it failed at this instant; tried again a while later.
    Failed(std::time::Instant),
}

impl Spare {
    /// Collects a finished preparation.
    fn poll(&mut self) {
        if matches!(self, Spare::Preparing(h) if h.is_finished()) {
            if let Spare::Preparing(h) = std::mem::replace(self, Spare::None) {
                *self = if h.join().unwrap_or(false) {
                    Spare::Ready
                } else {
                    Spare::Failed(std::time::Instant::now())
                };
            }
        }
    }
}

/// Metadata key: the active segment and how many of its bytes a flush made durable.
const META_FLUSHED: &str = "segment_flushed";
/// Metadata key: the active segment and its length when [`LogStore::close`] closed the log; the
/// next writable open removes it before anything is appended.
const META_CLOSED: &str = "segment_closed";

impl SegmentStore {
    /// Opens (or creates) the store in `path` with default options.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, SegmentOptions::default())
    }

    /// Opens (or creates) the store in `path`: takes the directory's lock (sled's, on `meta/`),
    /// cuts a torn batch off the last segment, rebuilds its offsets and the id index's tail.
    pub fn open_with(path: &Path, opts: SegmentOptions) -> Result<Self> {
        Self::open_in(path, opts, true)
    }

    /// Opens the store in `path` for reading only, as the auditor's tools do: nothing under
    /// `path` is written, created, cut or deleted, and no lock is taken, so it needs no write
    /// permission. The metadata is read from a private copy (sled cannot open read-only); the
    /// last segment's offsets are found by reading it through; a write that a crash left
    /// incomplete at its end is reported by [`LogStore::torn_tail`] and left where it is. Every
    /// write is refused with [`Error::ReadOnly`].
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.join("log").is_dir() {
            return Err(Error::NotFound(format!(
                "no journal segments in {}",
                path.display()
            )));
        }
        Self::open_in(path, SegmentOptions::default(), false)
    }

    fn open_in(path: &Path, opts: SegmentOptions, writable: bool) -> Result<Self> {
        let meta_dir = path.join("meta");
        let rows = if writable {
            MetaRows::new(open_sled(&meta_dir, opts.meta_cache_bytes)?, &meta_dir)?
        } else {
            MetaRows::open_copy(&meta_dir, opts.meta_cache_bytes)?
        };
        let mark = rows.meta(META_CHECKPOINTS)?.and_then(|v| Mark::decode(&v));
        let checkpoints = CheckpointLog::open(&path.join("checkpoints"), mark, writable)?;
        let log_dir = path.join("log");
        let mut spare = Spare::None;
        if writable {
            std::fs::create_dir_all(&log_dir).map_err(|e| Error::io(&log_dir, e))?;
            sync_dir(path)?;
            let _ = std::fs::remove_file(log_dir.join(SPARE_TMP));
            // A spare is renamed into place only once it is whole and durable.
            let ready = log_dir.join(SPARE);
            match std::fs::metadata(&ready) {
                Ok(m) if m.len() == opts.segment_bytes => spare = Spare::Ready,
                Ok(_) => {
                    let _ = std::fs::remove_file(&ready);
                }
                Err(_) => {}
            }
        }
        let mut firsts = list_segments(&log_dir)?;
        if firsts.is_empty() {
            if !writable {
                return Err(Error::NotFound(format!(
                    "no journal segments in {}",
                    log_dir.display()
                )));
            }
            create_segment(&log_dir, 0)?;
            firsts.push(0);
        }
        // Closed segments: their offsets were made durable before the next segment began.
        for pair in firsts.windows(2) {
            let path = off_path(&log_dir, pair[0]);
            let len = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len();
            if len % 8 != 0 || pair[0] + len / 8 != pair[1] {
                return Err(Error::Corrupt {
                    seq: pair[0] + len / 8,
                    reason: format!(
                        "segment {} holds {} entries by its offsets, but the next starts at {}",
                        pair[0],
                        len / 8,
                        pair[1]
                    ),
                });
            }
        }
        let first = *firsts.last().unwrap_or(&0);
        let flushed = rows
            .meta(META_FLUSHED)?
            .and_then(|v| from_u64_pair(&v))
            .unwrap_or((first, 0));
        let durable = if flushed.0 == first { flushed.1 } else { 0 };
        let closed = rows.meta(META_CLOSED)?.and_then(|v| from_u64_pair(&v));
        let found = read_last(&log_dir, first, durable, closed)?;
        let seg_file = seg_path(&log_dir, first);
        let off_file = off_path(&log_dir, first);
        let open_file = |p: &Path| if writable { open_rw(p) } else { open_ro(p) };
        let (len, count, off, file_len) = match found.damaged {
            // Left exactly as it is, its entries counted by its offsets file, for verification
            // to report the damage at its seq.
            Some(kept) => (
                found.file_len,
                kept,
                Offsets::File(Arc::new(open_file(&off_file)?)),
                found.file_len,
            ),
            None if writable => {
                let file_len = repair_last(&log_dir, first, &found)?;
                let off = Offsets::File(Arc::new(open_rw(&off_file)?));
                (found.whole_len, found.offsets.len() as u64, off, file_len)
            }
            None => {
                if let Some(t) = found.torn {
                    tracing::warn!(
                        segment = t.segment,
                        offset = t.offset,
                        bytes = t.bytes,
                        "the log ends in a write a crash left incomplete: not part of the log, left as it is (`isnad serve` cuts it back)"
                    );
                }
                let n = found.offsets.len() as u64;
                (
                    found.whole_len,
                    n,
                    Offsets::Memory(found.offsets),
                    found.file_len,
                )
            }
        };
        if writable {
            if found.torn.is_none() && found.damaged.is_none() {
                if found.clean {
                    tracing::debug!(segment = first, "the journal was closed cleanly");
                } else {
                    tracing::info!(
                        segment = first,
                        "the journal was not closed cleanly (the process was killed or crashed); its end was whole, nothing was cut"
                    );
                }
            }
            if closed.is_some() {
                // Appends follow: the mark must not outlive the state it describes.
                rows.set_meta(META_CLOSED, &[])?;
                rows.sync()?;
            }
        }
        let meta = Arc::new(Meta {
            rows,
            checkpoints,
            flushed: Mutex::new((first, durable.min(len))),
            dirty: AtomicBool::new(false),
        });
        let active = Arc::new(Active {
            first,
            seg: Arc::new(open_file(&seg_file)?),
            off,
        });
        let next = first + count;

        let (ids, rebuild_from, syncer) = if writable {
            let (ids, from) = IdIndex::open(&path.join("ids"), next)?;
            let (tx, rx) = mpsc::channel::<()>();
            let syncer_meta = meta.clone();
            let syncer = std::thread::Builder::new()
                .name("isnad-journal-meta".into())
                .spawn(move || sync_meta_until_closed(&syncer_meta, &rx))
                .map_err(|e| Error::Storage(format!("cannot start the metadata thread: {e}")))?;
            (Some(ids), from, Some((tx, syncer)))
        } else {
            (None, next, None)
        };
        let store = Self {
            log_dir,
            opts,
            meta,
            writer: Mutex::new(Writer {
                active: active.clone(),
                len,
                count,
                // Zero-filled past its data: appends go on into it (a closed or killed log's
                // spare stays one across a restart).
                preallocated: file_len > len,
                records: Vec::new(),
                offsets: Vec::new(),
            }),
            segments: RwLock::new(firsts),
            active: RwLock::new(active),
            next: AtomicU64::new(next),
            ids,
            syncer,
            spare: Mutex::new(spare),
            read_only: !writable,
            torn: found.torn,
        };
        match store.rebuild_ids(rebuild_from, next) {
            Ok(()) => {}
            // Opened all the same, for verification to report it; the journal refuses to open
            // a log that does not verify.
            Err(Error::Corrupt { seq, reason }) => {
                tracing::error!(seq, %reason, "the id index stops before a damaged entry");
            }
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    fn rebuild_ids(&self, from: u64, to: u64) -> Result<()> {
        let Some(ids) = &self.ids else {
            return Ok(());
        };
        let mut batch: Vec<(EventId, u64)> = Vec::new();
        let mut bad = None;
        self.scan(
            from,
            to,
            &mut |seq, bytes| match crate::Entry::from_stored(seq, bytes) {
                Ok(e) => {
                    batch.push((e.event.id, seq));
                    if batch.len() == 4096 {
                        ids.insert(&batch);
                        batch.clear();
                    }
                    true
                }
                Err(reason) => {
                    bad = Some(Error::Corrupt { seq, reason });
                    false
                }
            },
        )?;
        ids.insert(&batch);
        bad.map_or(Ok(()), Err)
    }

    /// The segment files, oldest first (for tests that damage the log as an attacker would).
    pub fn segment_files(&self) -> Vec<PathBuf> {
        self.segments
            .read()
            .iter()
            .map(|&f| seg_path(&self.log_dir, f))
            .collect()
    }

    /// Id index chunk files on disk and ids it holds in memory.
    pub fn id_index_footprint(&self) -> (usize, usize) {
        self.ids.as_ref().map_or((0, 0), IdIndex::footprint)
    }

    /// Waits until id index chunks being written are on disk.
    pub fn finish_background_writes(&self) {
        if let Some(ids) = &self.ids {
            ids.finish_writes();
        }
    }

    /// The files holding `seq`: the active segment's shared handles, or an older segment's.
    fn files_for(&self, seq: u64) -> Result<Arc<Active>> {
        let active = self.active.read().clone();
        if seq >= active.first {
            return Ok(active);
        }
        let first = {
            let segs = self.segments.read();
            let i = segs.partition_point(|&f| f <= seq);
            segs[i.saturating_sub(1)]
        };
        let seg = seg_path(&self.log_dir, first);
        let off = off_path(&self.log_dir, first);
        Ok(Arc::new(Active {
            first,
            seg: Arc::new(open_ro(&seg)?),
            off: Offsets::File(Arc::new(open_ro(&off)?)),
        }))
    }

    fn offset_of(files: &Active, seq: u64) -> Result<u64> {
        let i = seq - files.first;
        let unreadable = |why: String| Error::Corrupt {
            seq,
            reason: format!("offset unreadable: {why}"),
        };
        match &files.off {
            Offsets::File(f) => {
                let mut b = [0u8; 8];
                f.read_exact_at(&mut b, i * 8)
                    .map_err(|e| unreadable(e.to_string()))?;
                Ok(u64::from_le_bytes(b))
            }
            Offsets::Memory(v) => usize::try_from(i)
                .ok()
                .and_then(|i| v.get(i).copied())
                .ok_or_else(|| unreadable("past the segment's last entry".into())),
        }
    }

    /// Closes the active segment (durably, offsets included) and starts the next at `first`, in
    /// the prepared spare when there is one.
    fn roll(&self, w: &mut Writer, first: u64) -> Result<()> {
        let old = &w.active;
        let old_off = old.off_file()?;
        old.seg
            .sync_data()
            .and_then(|()| old_off.sync_data())
            .map_err(|e| Error::Storage(format!("closing segment {}: {e}", old.first)))?;
        let preallocated = self.take_spare(first)?;
        if !preallocated {
            create_segment(&self.log_dir, first)?;
        }
        let active = Arc::new(Active {
            first,
            seg: Arc::new(open_rw(&seg_path(&self.log_dir, first))?),
            off: Offsets::File(Arc::new(open_rw(&off_path(&self.log_dir, first))?)),
        });
        self.segments.write().push(first);
        *self.active.write() = active.clone();
        w.active = active;
        w.len = 0;
        w.count = 0;
        w.preallocated = preallocated;
        Ok(())
    }

    /// Whether a prepared spare is waiting.
    fn spare_ready(&self) -> bool {
        let mut spare = self.spare.lock();
        spare.poll();
        matches!(*spare, Spare::Ready)
    }

    /// Makes the prepared spare (if any) the segment starting at `first`.
    fn take_spare(&self, first: u64) -> Result<bool> {
        let mut spare = self.spare.lock();
        spare.poll();
        if !matches!(*spare, Spare::Ready) {
            return Ok(false);
        }
        *spare = Spare::None;
        let seg = seg_path(&self.log_dir, first);
        std::fs::rename(self.log_dir.join(SPARE), &seg).map_err(|e| Error::io(&seg, e))?;
        let off = off_path(&self.log_dir, first);
        File::create(&off).map_err(|e| Error::io(&off, e))?;
        sync_dir(&self.log_dir)?;
        Ok(true)
    }

    /// Starts zero-filling a spare segment in the background, unless one is there or under way.
    fn prepare_spare(&self) {
        let mut spare = self.spare.lock();
        match *spare {
            Spare::None => {}
            Spare::Failed(at) if at.elapsed() > Duration::from_secs(30) => {}
            _ => return,
        }
        let dir = self.log_dir.clone();
        let bytes = self.opts.segment_bytes;
        let spawned = std::thread::Builder::new()
            .name("isnad-journal-spare".into())
            .spawn(move || match zero_fill_spare(&dir, bytes) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot prepare a spare journal segment");
                    false
                }
            });
        *spare = match spawned {
            Ok(h) => Spare::Preparing(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the spare segment thread");
                Spare::Failed(std::time::Instant::now())
            }
        };
    }
}

/// Writes a segment's worth of zeros to a file that becomes [`SPARE`] once it is durable.
///
/// Appends into a zero-filled file change no file size and allocate no block, so the
/// `fdatasync` of a flush writes the data and nothing else: one device round trip instead of a
/// data write followed by a filesystem journal commit. It is written in steps, each made durable
/// before the next, so that it never holds a burst of dirty pages for a flush to wait behind.
fn zero_fill_spare(dir: &Path, bytes: u64) -> std::io::Result<()> {
    let tmp = dir.join(SPARE_TMP);
    let file = File::create(&tmp)?;
    let zeros = vec![0u8; 256 * 1024];
    let mut at = 0;
    while at < bytes {
        let n = (zeros.len() as u64).min(bytes - at);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
        file.sync_data()?;
        // Leave the disk to the flushes most of the time.
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(file);
    std::fs::rename(&tmp, dir.join(SPARE))?;
    File::open(dir)?.sync_all()
}

impl Drop for SegmentStore {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.syncer.take() {
            drop(tx);
            let _ = handle.join();
        }
        self.finish_background_writes();
        if let Spare::Preparing(h) = std::mem::replace(self.spare.get_mut(), Spare::None) {
            let _ = h.join();
        }
    }
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn open_ro(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io(path, e))
}

/// The first seq of every segment file in `log_dir`, ascending.
fn list_segments(log_dir: &Path) -> Result<Vec<u64>> {
    let mut firsts = Vec::new();
    for item in std::fs::read_dir(log_dir).map_err(|e| Error::io(log_dir, e))? {
        let name = item.map_err(|e| Error::io(log_dir, e))?.file_name();
        let name = name.to_string_lossy();
        if let Some(first) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
        {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

fn create_segment(dir: &Path, first: u64) -> Result<()> {
    for path in [off_path(dir, first), seg_path(dir, first)] {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
    }
    sync_dir(dir)
}

/// The last segment as open found it, before anything was changed.
struct Found {
    file_len: u64,
    /// Offsets of the entries of its whole batches.
    offsets: Vec<u64>,
    /// End of its last whole batch.
    whole_len: u64,
    /// A record the log had made durable is damaged: the entries its offsets file counts.
    damaged: Option<u64>,
    /// Non-zero bytes past the last whole batch.
    torn: Option<TornTail>,
    /// The log was closed cleanly at exactly this end.
    clean: bool,
}

/// Reads the last segment through to the end of its last whole batch, changing nothing.
///
/// Only a torn write is past that end: a bad record inside the first `durable` bytes (what a
/// flush made durable) is damage. Past the end there is zero fill (a segment prepared ahead of
/// use), a torn write, or both; the bytes up to the last non-zero one are the torn write. When
/// `closed` records a clean close at exactly this end, the zero fill is not read.
fn read_last(dir: &Path, first: u64, durable: u64, closed: Option<(u64, u64)>) -> Result<Found> {
    let path = seg_path(dir, first);
    let file = open_ro(&path)?;
    let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
    let mut r = BufReader::with_capacity(1 << 20, &file);
    let (mut pos, mut whole_len, mut whole_count) = (0u64, 0u64, 0usize);
    let mut offsets: Vec<u64> = Vec::new();
    let mut buf = Vec::new();
    // Up to the first record that is not whole: the end of the log, or a torn write.
    while let Ok(flags) = next_record(&mut r, first + offsets.len() as u64, &mut buf) {
        offsets.push(pos);
        pos += (HEADER + buf.len()) as u64;
        if flags & END_OF_BATCH != 0 {
            whole_len = pos;
            whole_count = offsets.len();
        }
    }
    drop(r);
    let mut found = Found {
        file_len,
        offsets,
        whole_len,
        damaged: None,
        torn: None,
        clean: false,
    };
    if pos < durable.min(file_len) {
        let off = off_path(dir, first);
        let kept = std::fs::metadata(&off).map_or(0, |m| m.len() / 8);
        tracing::error!(
            segment = first,
            seq = first + found.offsets.len() as u64,
            "a record the log had made durable is damaged; the segment is left as it is"
        );
        found.damaged = Some(kept.max(found.offsets.len() as u64));
        return Ok(found);
    }
    found.offsets.truncate(whole_count);
    found.clean = closed == Some((first, whole_len));
    if !found.clean {
        let end = last_nonzero_end(&file, whole_len, file_len).map_err(|e| Error::io(&path, e))?;
        found.torn = (end > whole_len).then_some(TornTail {
            segment: first,
            offset: whole_len,
            bytes: end - whole_len,
        });
    }
    Ok(found)
}

/// One past the last non-zero byte of `file` in `[from, to)`, or `from` when all are zero.
fn last_nonzero_end(file: &File, from: u64, to: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut end) = (from, from);
    while at < to {
        let n = (buf.len() as u64).min(to - at) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            end = at + i as u64 + 1;
        }
        at += n as u64;
    }
    Ok(end)
}

/// Makes the last segment end at its last whole batch (zeroing a torn write that zero fill
/// follows, so the segment stays prepared; cutting the file back otherwise) and rewrites its
/// offsets file. Returns the segment file's length.
fn repair_last(dir: &Path, first: u64, found: &Found) -> Result<u64> {
    let path = seg_path(dir, first);
    let mut file_len = found.file_len;
    if let Some(t) = found.torn {
        let file = open_rw(&path)?;
        let done = if t.offset + t.bytes < file_len {
            let zeros = vec![0u8; (t.bytes as usize).min(1 << 20)];
            let mut at = t.offset;
            let end = t.offset + t.bytes;
            let mut r = Ok(());
            while at < end && r.is_ok() {
                let n = (zeros.len() as u64).min(end - at) as usize;
                r = file.write_all_at(&zeros[..n], at);
                at += n as u64;
            }
            r
        } else {
            file_len = found.whole_len;
            file.set_len(found.whole_len)
        };
        done.and_then(|()| file.sync_data())
            .map_err(|e| Error::io(&path, e))?;
        tracing::warn!(
            segment = t.segment,
            offset = t.offset,
            bytes = t.bytes,
            "cut back a write that a crash left incomplete at the end of the log; none of it was acknowledged"
        );
    }
    let off = off_path(dir, first);
    let bytes: Vec<u8> = found.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&off)
        .map_err(|e| Error::io(&off, e))?;
    f.write_all_at(&bytes, 0)
        .and_then(|()| f.sync_data())
        .map_err(|e| Error::io(&off, e))?;
    Ok(file_len)
}

fn sync_meta_until_closed(meta: &Meta, stop: &mpsc::Receiver<()>) {
    loop {
        let closing = matches!(
            stop.recv_timeout(META_SYNC_EVERY),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        if meta.dirty.load(Ordering::Acquire) || closing {
            if let Err(e) = meta.sync() {
                tracing::error!(error = %e, "cannot sync the journal's metadata");
            }
        }
        if closing {
            return;
        }
    }
}

impl LogStore for SegmentStore {
    fn append(&self, entries: &[(u64, Vec<u8>)], ids: &[(EventId, u64)]) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        let Some(&(first, _)) = entries.first() else {
            return Ok(());
        };
        let mut w = self.writer.lock();
        let expected = w.active.first + w.count;
        if entries
            .iter()
            .enumerate()
            .any(|(i, (seq, _))| *seq != expected + i as u64)
        {
            return Err(Error::Storage(format!(
                "append of seqs from {first} where the log continues at {expected}"
            )));
        }
        // Move to a zero-filled segment as soon as one is ready (the first segment, and the one
        // a restart left active, are not).
        if w.len >= self.opts.segment_bytes || (!w.preallocated && w.len > 0 && self.spare_ready())
        {
            self.roll(&mut w, first)?;
        }
        let w = &mut *w;
        w.records.clear();
        w.offsets.clear();
        let last = entries.len() - 1;
        for (i, (seq, bytes)) in entries.iter().enumerate() {
            w.offsets
                .extend_from_slice(&(w.len + w.records.len() as u64).to_le_bytes());
            let flags = if i == last { END_OF_BATCH } else { 0 };
            encode_record(&mut w.records, *seq, bytes, flags);
        }
        let seg = &w.active.seg;
        let off = w.active.off_file()?;
        let written = seg
            .write_all_at(&w.records, w.len)
            .and_then(|()| off.write_all_at(&w.offsets, w.count * 8));
        if let Err(e) = written {
            // Leave no partial batch behind for a later append to follow.
            let _ = seg.set_len(w.len);
            let _ = off.set_len(w.count * 8);
            return Err(Error::Storage(format!(
                "writing segment {}: {e}",
                w.active.first
            )));
        }
        w.len += w.records.len() as u64;
        w.count += entries.len() as u64;
        if self.opts.preallocate && w.len >= PREPARE_AFTER.min(self.opts.segment_bytes / 2) {
            self.prepare_spare();
        }
        if let Some(index) = &self.ids {
            index.insert(ids);
        }
        self.next
            .store(first + entries.len() as u64, Ordering::Release);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        // Everything appended before this call is in this segment or in one that `roll` synced.
        let (first, len, seg) = {
            let w = self.writer.lock();
            (w.active.first, w.len, w.active.seg.clone())
        };
        seg.sync_data()
            .map_err(|e| Error::Storage(format!("fdatasync: {e}")))?;
        // Written to the metadata by its next sync, off the path that waits for this flush.
        let mut flushed = self.meta.flushed.lock();
        if (first, len) > *flushed {
            *flushed = (first, len);
            self.meta.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush()?;
        self.meta.sync()
    }

    fn close(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.flush()?;
        let (first, len) = {
            let w = self.writer.lock();
            (w.active.first, w.len)
        };
        self.meta
            .rows
            .set_meta(META_CLOSED, &u64_pair(first, len))?;
        self.meta.sync()
    }

    fn torn_tail(&self) -> Option<TornTail> {
        self.torn
    }

    fn get(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        if seq >= self.next.load(Ordering::Acquire) {
            return Ok(None);
        }
        let files = self.files_for(seq)?;
        let pos = Self::offset_of(&files, seq)?;
        let mut buf = Vec::new();
        read_record(
            &mut At {
                file: &files.seg,
                pos,
            },
            seq,
            &mut buf,
        )?;
        Ok(Some(buf))
    }

    fn scan(&self, from: u64, to: u64, f: &mut dyn FnMut(u64, &[u8]) -> bool) -> Result<()> {
        let to = to.min(self.next.load(Ordering::Acquire));
        let mut seq = from;
        let mut buf = Vec::new();
        while seq < to {
            let files = self.files_for(seq)?;
            let end = {
                let segs = self.segments.read();
                let i = segs.partition_point(|&f| f <= files.first);
                segs.get(i).copied().unwrap_or(u64::MAX).min(to)
            };
            let at = At {
                file: &files.seg,
                pos: Self::offset_of(&files, seq)?,
            };
            let mut r = BufReader::with_capacity(256 * 1024, at);
            while seq < end {
                read_record(&mut r, seq, &mut buf)?;
                if !f(seq, &buf) {
                    return Ok(());
                }
                seq += 1;
            }
        }
        Ok(())
    }

    fn next_seq(&self) -> Result<u64> {
        Ok(self.next.load(Ordering::Acquire))
    }

    fn seq_of(&self, id: &EventId) -> Result<Option<u64>> {
        let next = self.next.load(Ordering::Acquire);
        if let Some(index) = &self.ids {
            return Ok(index.get(id)?.filter(|&seq| seq < next));
        }
        // Read-only: no index is built for the few lookups a tool makes.
        let mut found = None;
        self.scan(0, next, &mut |seq, bytes| {
            if crate::Entry::from_stored(seq, bytes).is_ok_and(|e| e.event.id == *id) {
                found = Some(seq);
            }
            found.is_none()
        })?;
        Ok(found)
    }

    fn put_checkpoint(&self, size: u64, note: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        self.meta.checkpoints.append(size, note)?;
        self.meta.dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn checkpoints(&self) -> Result<Vec<(u64, String)>> {
        self.meta.checkpoints.all()
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, String)>> {
        Ok(self.meta.checkpoints.latest())
    }

    fn tree_spill(&self) -> Result<Option<Arc<dyn crate::merkle::NodeSpill>>> {
        if self.read_only {
            return Ok(None);
        }
        let files = crate::tree_files::TreeFiles::create(self.log_dir.with_file_name("tree"))?;
        Ok(Some(Arc::new(files)))
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.meta.rows.meta(key)
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.meta.rows.set_meta(key, value)?;
        self.meta.dirty.store(true, Ordering::Release);
        Ok(())
    }

    fn cursor(&self, name: &str) -> Result<Option<u64>> {
        // The metadata may have reached the disk before the entries a crash then cut off.
        let next = self.next.load(Ordering::Acquire);
        Ok(self.meta.rows.cursor(name)?.map(|c| c.min(next)))
    }

    fn set_cursor(&self, name: &str, seq: u64) -> Result<()> {
        self.meta.rows.set_cursor(name, seq)?;
        self.meta.dirty.store(true, Ordering::Release);
        Ok(())
    }
}
