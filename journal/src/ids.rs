//! The event-id index of [`crate::SegmentStore`]: the seq that holds an event id, in memory that
//! does not grow with the log.
//!
//! Ids of the newest entries sit in a hash map. Every [`CHUNK_IDS`] ids the map is sealed into an
//! immutable chunk file (an open-addressing hash table on disk, written by a background thread)
//! and a fresh map starts. What stays in memory per chunk is its header: the seq range it covers
//! and the range of UUIDv7 milliseconds of its ids. A lookup reads only the chunks whose
//! millisecond range holds the id's own: for a fresh id (the common case, and every miss of the
//! gateway's request path) that is none of them.
//!
//! The index is derived data. Chunk files are made durable before they count; on open, any chunk
//! that reaches past the recovered log, does not check out, or leaves a gap is deleted, and the
//! map is rebuilt from the log after the last good chunk.

use std::{
    collections::HashMap,
    fs::File,
    io::Write as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
};

use isnad_schemas::EventId;
use parking_lot::Mutex;

use crate::{Error, Result};

/// Ids per chunk: the in-memory map holds at most this many (about 2 MiB).
pub const CHUNK_IDS: usize = 1 << 16;

const MAGIC: &[u8; 8] = b"ISNADID1";
const HEADER: usize = 64;
const SLOT: usize = 24;
/// Slots read per `pread` while probing.
const PROBE_SLOTS: u64 = 16;

/// What a chunk file's header says about it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ChunkMeta {
    /// First seq covered.
    first: u64,
    /// One past the last seq covered.
    end: u64,
    /// Ids stored.
    count: u64,
    /// Hash slots (a power of two).
    slots: u64,
    /// Smallest and largest UUIDv7 millisecond field among the ids.
    min_ms: u64,
    max_ms: u64,
}

impl ChunkMeta {
    fn encode(&self) -> [u8; HEADER] {
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        for (i, v) in [
            self.first,
            self.end,
            self.count,
            self.slots,
            self.min_ms,
            self.max_ms,
        ]
        .iter()
        .enumerate()
        {
            h[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&h[..56]);
        h[56..60].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER]) -> Option<Self> {
        if &h[..8] != MAGIC || crc32fast::hash(&h[..56]).to_le_bytes() != h[56..60] {
            return None;
        }
        let f =
            |i: usize| u64::from_le_bytes(h[8 + i * 8..16 + i * 8].try_into().unwrap_or_default());
        let m = Self {
            first: f(0),
            end: f(1),
            count: f(2),
            slots: f(3),
            min_ms: f(4),
            max_ms: f(5),
        };
        (m.slots.is_power_of_two() && m.count <= m.slots / 2 && m.first <= m.end).then_some(m)
    }

    fn file_len(&self) -> u64 {
        HEADER as u64 + self.slots * SLOT as u64
    }
}

/// The UUIDv7 millisecond field (any other id gives some number: ranges stay correct, just wider).
fn id_ms(id: &EventId) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&id.0[..6]);
    u64::from_be_bytes(b)
}

/// A fixed mix of the id's bytes: part of the file format, so not `std`'s hasher.
fn slot_hash(id: &EventId) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let a = u64::from_le_bytes(id.0[..8].try_into().unwrap_or_default());
    let b = u64::from_le_bytes(id.0[8..].try_into().unwrap_or_default());
    mix(a ^ mix(b))
}

fn chunk_name(first: u64) -> String {
    format!("{first:020}.ids")
}

/// A sealed map, in memory until its file is durable.
struct Sealed {
    meta: ChunkMeta,
    map: HashMap<EventId, u64>,
}

#[derive(Default)]
struct State {
    /// Ids of entries from `active_from` on.
    active: HashMap<EventId, u64>,
    active_from: u64,
    active_ms: Option<(u64, u64)>,
    /// Sealed maps whose files are being written.
    sealing: Vec<Arc<Sealed>>,
    /// Chunk files, by seq.
    chunks: Vec<ChunkMeta>,
    writers: Vec<JoinHandle<()>>,
}

/// See the module documentation.
pub(crate) struct IdIndex {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
}

impl IdIndex {
    /// Opens the index in `dir` for a log of `next` entries. Returns it with the seq from which
    /// the caller must re-[`insert`](Self::insert) the log's ids.
    pub(crate) fn open(dir: &Path, next: u64) -> Result<(Self, u64)> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut found = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let path = item.map_err(|e| Error::io(dir, e))?.path();
            let named = |m: &ChunkMeta| {
                path.file_name()
                    .is_some_and(|n| n.to_string_lossy() == chunk_name(m.first))
            };
            match read_meta(&path).filter(named) {
                Some(m) => found.push(m),
                // A half-written chunk, or one that does not check out: derived data, rebuilt.
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        found.sort_by_key(|m| m.first);
        let mut chunks: Vec<ChunkMeta> = Vec::new();
        for m in found {
            let expected = chunks.last().map_or(0, |c| c.end);
            if m.first == expected && m.end <= next {
                chunks.push(m);
            } else {
                // Past the recovered log (a crash cut it back), or after a gap.
                let path = dir.join(chunk_name(m.first));
                let _ = std::fs::remove_file(&path);
            }
        }
        let from = chunks.last().map_or(0, |c| c.end);
        let index = Self {
            dir: dir.to_owned(),
            state: Arc::new(Mutex::new(State {
                active_from: from,
                chunks,
                ..State::default()
            })),
        };
        Ok((index, from))
    }

    /// Records the seqs of event ids (consecutive entries, oldest first).
    pub(crate) fn insert(&self, ids: &[(EventId, u64)]) {
        let mut st = self.state.lock();
        for (id, seq) in ids {
            st.active.insert(*id, *seq);
            let ms = id_ms(id);
            st.active_ms = Some(match st.active_ms {
                None => (ms, ms),
                Some((lo, hi)) => (lo.min(ms), hi.max(ms)),
            });
        }
        if st.active.len() >= CHUNK_IDS {
            let end = ids.last().map_or(st.active_from, |(_, s)| s + 1);
            self.seal(&mut st, end);
        }
    }

    /// Moves the active map into a chunk covering `[active_from, end)` and starts its file.
    fn seal(&self, st: &mut State, end: u64) {
        let map = std::mem::take(&mut st.active);
        let (min_ms, max_ms) = st.active_ms.take().unwrap_or((0, 0));
        let count = map.len() as u64;
        let sealed = Arc::new(Sealed {
            meta: ChunkMeta {
                first: st.active_from,
                end,
                count,
                slots: (count * 2).next_power_of_two().max(16),
                min_ms,
                max_ms,
            },
            map,
        });
        st.active_from = end;
        st.sealing.push(sealed.clone());
        st.writers.retain(|h| !h.is_finished());
        let dir = self.dir.clone();
        let state = self.state.clone();
        let spawned = std::thread::Builder::new()
            .name("isnad-journal-ids".into())
            .spawn(move || {
                let written = write_chunk(&dir, &sealed);
                let mut st = state.lock();
                match written {
                    Ok(()) => {
                        st.sealing.retain(|s| !Arc::ptr_eq(s, &sealed));
                        st.chunks.push(sealed.meta);
                        st.chunks.sort_by_key(|m| m.first);
                    }
                    // It stays in memory: lookups stay right, and the next open rebuilds it.
                    Err(e) => tracing::error!(error = %e, "cannot write an id index chunk"),
                }
            });
        match spawned {
            Ok(h) => st.writers.push(h),
            Err(e) => tracing::error!(error = %e, "cannot start the id index writer"),
        }
    }

    /// The seq recorded for `id`.
    pub(crate) fn get(&self, id: &EventId) -> Result<Option<u64>> {
        let ms = id_ms(id);
        let candidates: Vec<ChunkMeta> = {
            let st = self.state.lock();
            if let Some(&seq) = st.active.get(id) {
                return Ok(Some(seq));
            }
            for s in &st.sealing {
                if let Some(&seq) = s.map.get(id) {
                    return Ok(Some(seq));
                }
            }
            st.chunks
                .iter()
                .rev()
                .filter(|m| m.min_ms <= ms && ms <= m.max_ms)
                .copied()
                .collect()
        };
        for m in candidates {
            if let Some(seq) = self.probe_file(&m, id)? {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    fn probe_file(&self, m: &ChunkMeta, id: &EventId) -> Result<Option<u64>> {
        let path = self.dir.join(chunk_name(m.first));
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mask = m.slots - 1;
        let mut pos = slot_hash(id) & mask;
        let mut buf = vec![0u8; PROBE_SLOTS as usize * SLOT];
        let mut looked = 0;
        while looked < m.slots {
            let n = PROBE_SLOTS.min(m.slots - pos);
            let bytes = &mut buf[..n as usize * SLOT];
            file.read_exact_at(bytes, HEADER as u64 + pos * SLOT as u64)
                .map_err(|e| Error::io(&path, e))?;
            for slot in bytes.chunks_exact(SLOT) {
                let stored = u64::from_le_bytes(slot[16..].try_into().unwrap_or_default());
                if stored == 0 {
                    return Ok(None);
                }
                if slot[..16] == id.0 {
                    return Ok(Some(stored - 1));
                }
            }
            looked += n;
            pos = (pos + n) & mask;
        }
        Ok(None)
    }

    /// Waits for chunk files being written (so that a reopen in this process finds them).
    pub(crate) fn finish_writes(&self) {
        let writers = std::mem::take(&mut self.state.lock().writers);
        for h in writers {
            let _ = h.join();
        }
    }

    /// Chunk files on disk and ids held in memory (for tests and the benches).
    pub(crate) fn footprint(&self) -> (usize, usize) {
        let st = self.state.lock();
        let in_memory = st.active.len() + st.sealing.iter().map(|s| s.map.len()).sum::<usize>();
        (st.chunks.len(), in_memory)
    }
}

fn read_meta(path: &Path) -> Option<ChunkMeta> {
    let file = File::open(path).ok()?;
    let mut h = [0u8; HEADER];
    file.read_exact_at(&mut h, 0).ok()?;
    let m = ChunkMeta::decode(&h)?;
    (file.metadata().ok()?.len() == m.file_len()).then_some(m)
}

/// Writes `sealed` to a temporary file, makes it durable, then gives it its name.
fn write_chunk(dir: &Path, sealed: &Sealed) -> Result<()> {
    let m = &sealed.meta;
    let mut table = vec![0u8; (m.slots as usize) * SLOT];
    let mask = m.slots - 1;
    for (id, seq) in &sealed.map {
        let mut pos = slot_hash(id) & mask;
        loop {
            let at = pos as usize * SLOT;
            if table[at + 16..at + SLOT] == [0u8; 8] {
                table[at..at + 16].copy_from_slice(&id.0);
                table[at + 16..at + SLOT].copy_from_slice(&(seq + 1).to_le_bytes());
                break;
            }
            pos = (pos + 1) & mask;
        }
    }
    let tmp = dir.join(format!("{}.tmp", chunk_name(m.first)));
    let path = dir.join(chunk_name(m.first));
    let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(&m.encode())
        .and_then(|()| file.write_all(&table))
        .and_then(|()| file.sync_data())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn id(n: u64, ms: u64) -> EventId {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[8..].copy_from_slice(&n.to_le_bytes());
        EventId(b)
    }

    #[test]
    fn ids_are_found_in_memory_in_chunk_files_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let total = CHUNK_IDS as u64 * 2 + 100;
        let (index, from) = IdIndex::open(dir.path(), 0).unwrap();
        assert_eq!(from, 0);
        for batch in (0..total).collect::<Vec<_>>().chunks(1024) {
            let ids: Vec<_> = batch.iter().map(|&n| (id(n, 1_000 + n / 10), n)).collect();
            index.insert(&ids);
        }
        index.finish_writes();
        assert_eq!(index.footprint(), (2, 100));
        for n in [0, 1, CHUNK_IDS as u64 - 1, CHUNK_IDS as u64 + 7, total - 1] {
            assert_eq!(
                index.get(&id(n, 1_000 + n / 10)).unwrap(),
                Some(n),
                "id {n}"
            );
        }
        assert_eq!(
            index.get(&id(total, 1_000)).unwrap(),
            None,
            "a miss in range"
        );
        assert_eq!(
            index.get(&id(3, 99_999_999)).unwrap(),
            None,
            "a miss out of range"
        );
        drop(index);

        // The log was cut back into the second chunk: it goes, and the caller rebuilds from the
        // end of the first.
        let (index, from) = IdIndex::open(dir.path(), CHUNK_IDS as u64 + 10).unwrap();
        assert_eq!(from, CHUNK_IDS as u64);
        assert_eq!(index.get(&id(5, 1_000)).unwrap(), Some(5));
        assert_eq!(index.footprint(), (1, 0));
    }

    #[test]
    fn a_damaged_chunk_is_dropped_with_everything_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (index, _) = IdIndex::open(dir.path(), 0).unwrap();
        let n = CHUNK_IDS as u64 * 3;
        let ids: Vec<_> = (0..n).map(|s| (id(s, 5), s)).collect();
        for b in ids.chunks(CHUNK_IDS) {
            index.insert(b);
        }
        index.finish_writes();
        assert_eq!(index.footprint().0, 3);
        drop(index);
        let second = dir.path().join(chunk_name(CHUNK_IDS as u64));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&second)
            .unwrap();
        f.write_all_at(b"X", 20).unwrap();
        let (index, from) = IdIndex::open(dir.path(), n).unwrap();
        assert_eq!(
            from, CHUNK_IDS as u64,
            "rebuild starts at the damaged chunk"
        );
        assert_eq!(index.footprint(), (1, 0));
        assert!(!second.exists());
        assert!(!dir.path().join(chunk_name(2 * CHUNK_IDS as u64)).exists());
    }
}
