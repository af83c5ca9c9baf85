//! The checkpoint notes of a [`crate::SegmentStore`], in an append-only file of their own.
//!
//! Records are `size u64 | len u32 | crc32(size ‖ len ‖ note) u32 | note`. Only the latest note
//! is kept in memory; the full list is read from the file when asked for (verification and
//! export, which read the whole log anyway). As rows in sled they cost sled's page metadata, about
//! 40 bytes each for as long as the process ran, one row per 1,024 entries.
//!
//! The file is synced before the metadata records how much of it is durable and where its last
//! record starts ([`Mark`]), so on open only what follows the mark is read: a torn record there is
//! cut off, whole ones are kept.

use std::{
    fs::{File, OpenOptions},
    io::{BufReader, Read as _},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

use parking_lot::Mutex;

use crate::{segments::At, Error, Result};

const HEADER: usize = 16;
/// Larger than any note the journal signs; a header claiming more is damage.
const MAX_NOTE: u32 = 64 * 1024;

/// How much of the file is durable, and where its last record starts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Mark {
    pub(crate) len: u64,
    pub(crate) last: Option<u64>,
}

impl Mark {
    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.len.to_le_bytes());
        v[8..].copy_from_slice(&self.last.map_or(u64::MAX, |o| o).to_le_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Option<Self> {
        let len = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
        let last = u64::from_le_bytes(v.get(8..16)?.try_into().ok()?);
        Some(Self {
            len,
            last: (last != u64::MAX).then_some(last),
        })
    }
}

fn crc(size: u64, len: u32, note: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&size.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(note);
    h.finalize()
}

/// Reads one record at the reader's position: `Ok(None)` at a clean end, `Err(why)` when what is
/// there is not a whole, intact record.
fn read_record(
    r: &mut impl std::io::Read,
) -> std::result::Result<Option<(u64, String, u64)>, String> {
    let mut h = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err("record header cut short".into()),
            Ok(n) => got += n,
            Err(e) => return Err(e.to_string()),
        }
    }
    let size = u64::from_le_bytes(h[..8].try_into().unwrap_or_default());
    let len = u32::from_le_bytes(h[8..12].try_into().unwrap_or_default());
    let sum = u32::from_le_bytes(h[12..].try_into().unwrap_or_default());
    if len == 0 || len > MAX_NOTE {
        return Err(format!("record claims a {len}-byte note"));
    }
    let mut note = vec![0u8; len as usize];
    r.read_exact(&mut note).map_err(|e| e.to_string())?;
    if crc(size, len, &note) != sum {
        return Err("record fails its checksum".into());
    }
    let note = String::from_utf8(note).map_err(|_| "note is not UTF-8".to_string())?;
    Ok(Some((size, note, (HEADER as u64) + u64::from(len))))
}

struct State {
    len: u64,
    last: Option<u64>,
    latest: Option<(u64, String)>,
}

/// See the module documentation.
pub(crate) struct CheckpointLog {
    path: PathBuf,
    file: File,
    state: Mutex<State>,
}

impl CheckpointLog {
    /// Opens (or creates) the file at `path`, of which `mark` was recorded durable.
    pub(crate) fn open(path: &Path, mark: Option<Mark>) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        // Without a mark, or with one the file does not reach (it was replaced), read it all.
        let mark = mark.filter(|m| m.len <= file_len).unwrap_or_default();
        let mut r = BufReader::new(At {
            file: &file,
            pos: mark.len,
        });
        let (mut pos, mut last, mut latest) = (mark.len, mark.last, None);
        loop {
            match read_record(&mut r) {
                Ok(Some((size, note, n))) => {
                    last = Some(pos);
                    latest = Some((size, note));
                    pos += n;
                }
                Ok(None) => break,
                Err(why) => {
                    tracing::warn!(
                        at = pos,
                        reason = %why,
                        "cut off a checkpoint note that a crash left incomplete"
                    );
                    break;
                }
            }
        }
        drop(r);
        if file_len > pos {
            file.set_len(pos)
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io(path, e))?;
        }
        if latest.is_none() {
            if let Some(at) = last {
                let mut r = BufReader::new(At {
                    file: &file,
                    pos: at,
                });
                latest = read_record(&mut r)
                    .map_err(|why| Error::Corrupt {
                        seq: 0,
                        reason: format!("latest checkpoint note at byte {at}: {why}"),
                    })?
                    .map(|(size, note, _)| (size, note));
            }
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            state: Mutex::new(State {
                len: pos,
                last,
                latest,
            }),
        })
    }

    /// Appends a note.
    pub(crate) fn append(&self, size: u64, note: &str) -> Result<()> {
        let len = u32::try_from(note.len())
            .ok()
            .filter(|&l| l > 0 && l <= MAX_NOTE)
            .ok_or_else(|| Error::Invalid(format!("a {}-byte checkpoint note", note.len())))?;
        let mut rec = Vec::with_capacity(HEADER + note.len());
        rec.extend_from_slice(&size.to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&crc(size, len, note.as_bytes()).to_le_bytes());
        rec.extend_from_slice(note.as_bytes());
        let mut st = self.state.lock();
        if let Err(e) = self.file.write_all_at(&rec, st.len) {
            let _ = self.file.set_len(st.len);
            return Err(Error::io(&self.path, e));
        }
        st.last = Some(st.len);
        st.len += rec.len() as u64;
        st.latest = Some((size, note.to_owned()));
        Ok(())
    }

    /// Makes every note appended so far durable and returns the mark to record.
    pub(crate) fn sync(&self) -> Result<Mark> {
        let mark = {
            let st = self.state.lock();
            Mark {
                len: st.len,
                last: st.last,
            }
        };
        self.file
            .sync_data()
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(mark)
    }

    /// The latest note.
    pub(crate) fn latest(&self) -> Option<(u64, String)> {
        self.state.lock().latest.clone()
    }

    /// Every note, in the order written (by size).
    pub(crate) fn all(&self) -> Result<Vec<(u64, String)>> {
        let len = self.state.lock().len;
        let mut r = BufReader::new(At {
            file: &self.file,
            pos: 0,
        })
        .take(len);
        let mut out = Vec::new();
        let mut pos = 0u64;
        while let Some((size, note, n)) = read_record(&mut r).map_err(|why| Error::Corrupt {
            seq: out.last().map_or(0, |(s, _): &(u64, String)| *s),
            reason: format!("checkpoint note at byte {pos}: {why}"),
        })? {
            out.push((size, note));
            pos += n;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn notes_survive_reopen_and_a_torn_one_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints");
        let log = CheckpointLog::open(&path, None).unwrap();
        for size in [10u64, 20, 30] {
            log.append(size, &format!("note for {size}\n")).unwrap();
        }
        let mark = log.sync().unwrap();
        log.append(40, "note for 40\n").unwrap();
        drop(log);
        // A crash while the fifth note was being written.
        let f = OpenOptions::new().append(true).open(&path).unwrap();
        use std::io::Write as _;
        (&f).write_all(&50u64.to_le_bytes()).unwrap();
        drop(f);

        let log = CheckpointLog::open(&path, Some(mark)).unwrap();
        assert_eq!(log.latest(), Some((40, "note for 40\n".into())));
        let sizes: Vec<u64> = log.all().unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(sizes, [10, 20, 30, 40]);
        log.append(50, "note for 50\n").unwrap();
        let mark = log.sync().unwrap();
        drop(log);

        // Opened from its mark alone, the latest is read back from where the mark says.
        let log = CheckpointLog::open(&path, Some(mark)).unwrap();
        assert_eq!(log.latest(), Some((50, "note for 50\n".into())));
        assert_eq!(log.all().unwrap().len(), 5);
    }
}
