//! The checkpoint notes of a [`crate::SegmentStore`], in an append-only file of their own.
//!
//! Records have the segments' framing (`len u32 | flags u32 | crc32 u32 | bytes`, see
//! `segments.rs`, with 0 for the seq the checksum covers); their bytes are the checkpoint's size
//! (`u64`, little-endian) and then the note. Only the latest note is kept in memory; the full list
//! is read from the file when asked for (verification and export, which read the whole log
//! anyway). As rows in sled they cost sled's page metadata, about 40 bytes each for as long as the
//! process ran, one row per 1,024 entries.
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

use crate::{
    segments::{encode_record, from_u64_pair, next_record, u64_pair, At, RECORD_HEADER},
    Error, Result,
};

/// How much of the file is durable, and where its last record starts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Mark {
    pub(crate) len: u64,
    pub(crate) last: Option<u64>,
}

impl Mark {
    pub(crate) fn encode(&self) -> [u8; 16] {
        u64_pair(self.len, self.last.unwrap_or(u64::MAX))
    }

    pub(crate) fn decode(v: &[u8]) -> Option<Self> {
        let (len, last) = from_u64_pair(v)?;
        Some(Self {
            len,
            last: (last != u64::MAX).then_some(last),
        })
    }
}

/// Reads the note at the reader's position: `(size, note, record length)`.
fn read_note(r: &mut impl std::io::Read) -> std::result::Result<(u64, String, u64), String> {
    let mut bytes = Vec::new();
    next_record(r, 0, &mut bytes)?;
    let (size, note) = bytes
        .split_at_checked(8)
        .ok_or("record too short for a note")?;
    let size = u64::from_le_bytes(size.try_into().unwrap_or_default());
    let note = String::from_utf8(note.to_vec()).map_err(|_| "note is not UTF-8".to_string())?;
    Ok((size, note, (RECORD_HEADER + bytes.len()) as u64))
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
    /// Opens (or, when `writable`, creates) the file at `path`, of which `mark` was recorded
    /// durable. Read-only, a note that a crash left incomplete is left where it is.
    pub(crate) fn open(path: &Path, mark: Option<Mark>, writable: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .create(writable)
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
        // Up to the end of the file, or a note that a crash left incomplete.
        while let Ok((size, note, n)) = read_note(&mut r) {
            last = Some(pos);
            latest = Some((size, note));
            pos += n;
        }
        drop(r);
        if file_len > pos && !writable {
            tracing::warn!(
                at = pos,
                "the checkpoint notes end in one a crash left incomplete; left as it is"
            );
        } else if file_len > pos {
            tracing::warn!(
                at = pos,
                "cut off a checkpoint note that a crash left incomplete"
            );
            file.set_len(pos)
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io(path, e))?;
        }
        if let (None, Some(at)) = (&latest, last) {
            let (size, note, _) = read_note(&mut BufReader::new(At {
                file: &file,
                pos: at,
            }))
            .map_err(|why| Error::Corrupt {
                seq: 0,
                reason: format!("latest checkpoint note at byte {at}: {why}"),
            })?;
            latest = Some((size, note));
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
        let mut bytes = size.to_le_bytes().to_vec();
        bytes.extend_from_slice(note.as_bytes());
        let mut rec = Vec::with_capacity(RECORD_HEADER + bytes.len());
        encode_record(&mut rec, 0, &bytes, 0);
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
        let (mut out, mut pos) = (Vec::new(), 0u64);
        while pos < len {
            let (size, note, n) = read_note(&mut r).map_err(|why| Error::Corrupt {
                // The entries the last good note covers are the last known good.
                seq: out.last().map_or(0, |(s, _): &(u64, String)| *s),
                reason: format!("checkpoint note at byte {pos}: {why}"),
            })?;
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
        let log = CheckpointLog::open(&path, None, true).unwrap();
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

        let log = CheckpointLog::open(&path, Some(mark), true).unwrap();
        assert_eq!(log.latest(), Some((40, "note for 40\n".into())));
        let sizes: Vec<u64> = log.all().unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(sizes, [10, 20, 30, 40]);
        log.append(50, "note for 50\n").unwrap();
        let mark = log.sync().unwrap();
        drop(log);

        // Opened from its mark alone, the latest is read back from where the mark says.
        let log = CheckpointLog::open(&path, Some(mark), true).unwrap();
        assert_eq!(log.latest(), Some((50, "note for 50\n".into())));
        assert_eq!(log.all().unwrap().len(), 5);
    }
}
