//! The kept levels of the journal's Merkle tree (see [`crate::merkle::NodeSpill`]) in files of
//! the segment store, `journal/tree/level-NN`, 32 bytes per node: the tree's memory then stays
//! the same however long the log grows, where in memory its kept levels cost about 0.06 bytes an
//! entry (some 20 MB a day at 1,000 requests a second).
//!
//! The files are written afresh at every open, while the journal rebuilds its tree from the log,
//! so nothing in them is trusted from an earlier run and nothing needs to reach the disk: a crash
//! leaves nothing to repair.

use std::{fs::File, os::unix::fs::FileExt as _, path::PathBuf};

use parking_lot::Mutex;

use crate::{
    merkle::{Hash, NodeSpill, ProofError},
    Error, Result,
};

/// See the module documentation.
pub(crate) struct TreeFiles {
    dir: PathBuf,
    levels: Mutex<Vec<Option<File>>>,
}

impl TreeFiles {
    /// Empties (or creates) `dir` for a tree being rebuilt.
    pub(crate) fn create(dir: PathBuf) -> Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self {
            dir,
            levels: Mutex::new(Vec::new()),
        })
    }

    fn path(&self, level: u32) -> PathBuf {
        self.dir.join(format!("level-{level:02}"))
    }
}

impl NodeSpill for TreeFiles {
    fn put(&self, level: u32, index: u64, hash: &Hash) -> bool {
        // Once per 1,024 leaves at most: one lock for everything is plenty.
        let mut levels = self.levels.lock();
        if levels.len() <= level as usize {
            levels.resize_with(level as usize + 1, || None);
        }
        let slot = &mut levels[level as usize];
        let written = match slot {
            Some(f) => f.write_all_at(hash, index * 32),
            None => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.path(level))
                .and_then(|f| slot.insert(f).write_all_at(hash, index * 32)),
        };
        match written {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(level, index, error = %e, "cannot write a Merkle tree node; kept in memory");
                false
            }
        }
    }

    fn get(&self, level: u32, index: u64) -> std::result::Result<Hash, ProofError> {
        let levels = self.levels.lock();
        let file = levels
            .get(level as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| ProofError::Unavailable(format!("no tree level {level}")))?;
        let mut hash = [0u8; 32];
        file.read_exact_at(&mut hash, index * 32).map_err(|e| {
            ProofError::Unavailable(format!("tree node {index} of level {level}: {e}"))
        })?;
        Ok(hash)
    }
}
