//! RFC 6962 (RFC 9162 §2.1) Merkle tree over the journal's entries: root hashes, inclusion and
//! consistency proofs, and their verification.
//!
//! Leaf `i` of the tree is the hash of entry `i` (which commits to the whole event), hashed with
//! the `0x00` leaf prefix; interior nodes use the `0x01` prefix.

use sha2::{Digest, Sha256};

/// A 32-byte SHA-256 value.
pub type Hash = [u8; 32];

/// SHA-256 of the empty string: the root of the empty tree.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Largest power of two strictly smaller than `n` (`n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// Index or sizes out of range.
    #[error("invalid proof request: {0}")]
    Invalid(&'static str),
    /// The proof has the wrong number of hashes.
    #[error("proof has {got} hashes, expected {expected}")]
    WrongLength {
        /// Hashes supplied.
        got: usize,
        /// Hashes required.
        expected: usize,
    },
    /// The recomputed root differs.
    #[error("computed root does not match")]
    RootMismatch,
    /// Leaves a pruned tree had to reread could not be read.
    #[error("leaves unavailable: {0}")]
    Unavailable(String),
}

/// Reads the leaf hashes `[start, end)` that a pruned tree no longer holds (from the log).
pub type LeafSource<'a> = &'a dyn Fn(u64, u64) -> Result<Vec<Hash>, ProofError>;

/// Where a pruned tree keeps the hashes of its kept levels (at and above the pruning level)
/// instead of memory: every such hash is a complete subtree's, so each level only ever grows.
pub trait NodeSpill: Send + Sync {
    /// Stores the hash of node `index` of `level`. `false` when it could not be stored (the tree
    /// then keeps it in memory).
    fn put(&self, level: u32, index: u64, hash: &Hash) -> bool;
    /// The hash of node `index` of `level`, stored before.
    fn get(&self, level: u32, index: u64) -> Result<Hash, ProofError>;
}

/// An append-only Merkle tree that keeps complete subtrees' hashes, so that any root and any
/// proof costs `O(log n)` hash lookups plus `O(log n)` hashes for the ragged right edge.
///
/// [`MerkleTree::new`] keeps every level: about 64 bytes per leaf. [`MerkleTree::pruned`]`(k)`
/// keeps the levels below `k` only for the last two blocks of `2^k` leaves, so a long-running
/// log costs about `64 / 2^k` bytes per leaf; a proof or root that reaches into an older block
/// rereads that block's leaves through a [`LeafSource`].
#[derive(Default, Clone)]
pub struct MerkleTree {
    /// `levels[k][i]` is the hash of the complete subtree of `2^k` leaves starting at
    /// `(bases[k] + i) * 2^k`.
    levels: Vec<Vec<Hash>>,
    bases: Vec<u64>,
    /// Levels below this are pruned (0: none).
    prune: u32,
    /// Where the kept levels live, when not in memory (see [`MerkleTree::pruned_with_spill`]).
    spill: Option<std::sync::Arc<dyn NodeSpill>>,
}

/// What a full tree answers when asked for leaves it should hold: never called.
fn no_source(_: u64, _: u64) -> Result<Vec<Hash>, ProofError> {
    Err(ProofError::Unavailable("the tree holds every leaf".into()))
}

/// Root of a perfect tree over `leaves` (a power of two of them).
fn perfect_root(mut level: Vec<Hash>) -> Hash {
    while level.len() > 1 {
        level = level
            .chunks_exact(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
    }
    level[0]
}

impl MerkleTree {
    /// An empty tree that keeps every level.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty tree that keeps the levels below `k` for the last two blocks of `2^k` leaves
    /// only (`k` at most 20).
    pub fn pruned(k: u32) -> Self {
        Self {
            prune: k.min(20),
            ..Self::default()
        }
    }

    /// [`MerkleTree::pruned`] that also keeps its levels at and above `k` in `spill` rather than
    /// in memory, holding only the last few hashes of each: memory stays `O(2^k + log n)`
    /// however long the log grows.
    pub fn pruned_with_spill(k: u32, spill: std::sync::Arc<dyn NodeSpill>) -> Self {
        Self {
            spill: Some(spill),
            ..Self::pruned(k)
        }
    }

    fn count(&self, k: usize) -> u64 {
        self.bases[k] + self.levels[k].len() as u64
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        if self.levels.is_empty() {
            0
        } else {
            self.count(0)
        }
    }

    /// Hashes held in memory (for tests and memory accounting).
    pub fn held(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }

    /// Appends a leaf given its leaf hash (already `0x00`-prefixed).
    pub fn push_leaf_hash(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
            self.bases.push(0);
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        // Bases stay even (they are multiples of whole blocks), so an even count means the
        // level's last two hashes are both held.
        while self.count(level).is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
                self.bases.push(0);
            }
            self.levels[level + 1].push(parent);
            level += 1;
            self.spill_level(level);
        }
        let block = 1u64 << self.prune;
        let size = self.size();
        if self.prune > 0 && size.is_multiple_of(block) && size >= 2 * block {
            // A block just completed: drop the low levels of the blocks before the last two.
            for k in 0..self.prune as usize {
                let base = (size - 2 * block) >> k;
                let drop = (base - self.bases[k]) as usize;
                self.levels[k].drain(..drop);
                self.bases[k] = base;
            }
        }
    }

    /// Hands the newest hash of a kept `level` to the spill, then keeps only what the next
    /// append needs in memory: the last two hashes (bases stay even).
    fn spill_level(&mut self, level: usize) {
        let Some(spill) = &self.spill else { return };
        if level < self.prune as usize || self.prune == 0 {
            return;
        }
        let count = self.count(level);
        let Some(last) = self.levels[level].last() else {
            return;
        };
        if !spill.put(level as u32, count - 1, last) {
            return;
        }
        let keep_from = count.saturating_sub(2) & !1;
        if keep_from > self.bases[level] {
            let drop = (keep_from - self.bases[level]) as usize;
            self.levels[level].drain(..drop);
            self.bases[level] = keep_from;
        }
    }

    /// Hash of leaves `[start, end)`, where the range is an RFC 6962 subtree: `start` is a
    /// multiple of the largest power of two not above `end - start`... or the ragged right edge.
    fn subtree(&self, start: u64, end: u64, src: LeafSource<'_>) -> Result<Hash, ProofError> {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let k = n.trailing_zeros() as usize;
            let index = start >> k;
            if index >= self.bases[k] {
                return Ok(self.levels[k][(index - self.bases[k]) as usize]);
            }
            if let Some(spill) = self.spill.as_ref().filter(|_| k >= self.prune as usize) {
                return spill.get(k as u32, index);
            }
            let leaves = src(start, end)?;
            if leaves.len() as u64 != n {
                return Err(ProofError::Unavailable(format!(
                    "asked for {n} leaves from {start}, got {}",
                    leaves.len()
                )));
            }
            return Ok(perfect_root(leaves));
        }
        let k = split_point(n);
        Ok(node_hash(
            &self.subtree(start, start + k, src)?,
            &self.subtree(start + k, end, src)?,
        ))
    }

    /// Root of the tree made of the first `size` leaves.
    pub fn root(&self, size: u64) -> Option<Hash> {
        self.root_with(size, &no_source).ok().flatten()
    }

    /// [`MerkleTree::root`] for a pruned tree, rereading pruned leaves from `src`.
    pub fn root_with(&self, size: u64, src: LeafSource<'_>) -> Result<Option<Hash>, ProofError> {
        if size > self.size() {
            return Ok(None);
        }
        Ok(Some(if size == 0 {
            EMPTY_ROOT
        } else {
            self.subtree(0, size, src)?
        }))
    }

    /// RFC 6962 audit path for leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.inclusion_proof_with(index, size, &no_source)
    }

    /// [`MerkleTree::inclusion_proof`] for a pruned tree, rereading pruned leaves from `src`.
    pub fn inclusion_proof_with(
        &self,
        index: u64,
        size: u64,
        src: LeafSource<'_>,
    ) -> Result<Vec<Hash>, ProofError> {
        if index >= size || size > self.size() {
            return Err(ProofError::Invalid(
                "leaf index must be below tree size <= log size",
            ));
        }
        let mut out = Vec::new();
        self.path(index, 0, size, src, &mut out)?;
        Ok(out)
    }

    fn path(
        &self,
        m: u64,
        start: u64,
        end: u64,
        src: LeafSource<'_>,
        out: &mut Vec<Hash>,
    ) -> Result<(), ProofError> {
        let n = end - start;
        if n <= 1 {
            return Ok(());
        }
        let k = split_point(n);
        if m < k {
            self.path(m, start, start + k, src, out)?;
            out.push(self.subtree(start + k, end, src)?);
        } else {
            self.path(m - k, start + k, end, src, out)?;
            out.push(self.subtree(start, start + k, src)?);
        }
        Ok(())
    }

    /// RFC 6962 consistency proof between the trees of `old` and `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        self.consistency_proof_with(old, new, &no_source)
    }

    /// [`MerkleTree::consistency_proof`] for a pruned tree, rereading pruned leaves from `src`.
    pub fn consistency_proof_with(
        &self,
        old: u64,
        new: u64,
        src: LeafSource<'_>,
    ) -> Result<Vec<Hash>, ProofError> {
        if old > new || new > self.size() {
            return Err(ProofError::Invalid("need old <= new <= log size"));
        }
        let mut out = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, src, &mut out)?;
        }
        Ok(out)
    }

    fn subproof(
        &self,
        m: u64,
        start: u64,
        end: u64,
        complete: bool,
        src: LeafSource<'_>,
        out: &mut Vec<Hash>,
    ) -> Result<(), ProofError> {
        let n = end - start;
        if m == n {
            if !complete {
                out.push(self.subtree(start, end, src)?);
            }
            return Ok(());
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, start + k, complete, src, out)?;
            out.push(self.subtree(start + k, end, src)?);
        } else {
            self.subproof(m - k, start + k, end, false, src, out)?;
            out.push(self.subtree(start, start + k, src)?);
        }
        Ok(())
    }
}

/// The compact form of a tree (the hashes of its maximal complete subtrees, left to right):
/// enough to append and to compute the root, in `O(log n)` memory. Verifiers stream with this.
#[derive(Default, Clone)]
pub struct CompactTree {
    size: u64,
    /// Subtree hashes, largest (leftmost) first.
    peaks: Vec<Hash>,
}

impl CompactTree {
    /// An empty compact tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push_leaf_hash(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            // Invariant: one peak per set bit of `size`, so a set low bit means a peak to merge.
            let left = self.peaks.pop().unwrap_or(EMPTY_ROOT);
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// Root hash of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.peaks.iter().rev();
        let Some(first) = iter.next() else {
            return EMPTY_ROOT;
        };
        iter.fold(*first, |acc, left| node_hash(left, &acc))
    }
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Invalid("leaf index must be below tree size"));
    }
    let (inner, border) = decomp_inclusion(index, size);
    if proof.len() != inner + border {
        return Err(ProofError::WrongLength {
            got: proof.len(),
            expected: inner + border,
        });
    }
    let mut fn_ = index;
    let mut sn = size - 1;
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn == 0 && r == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

fn decomp_inclusion(index: u64, size: u64) -> (usize, usize) {
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    let border = (index >> inner).count_ones() as usize;
    (inner, border)
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::Invalid("old size above new size"));
    }
    if old == new {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else if !proof.is_empty() {
            Err(ProofError::WrongLength {
                got: proof.len(),
                expected: 0,
            })
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength {
                got: proof.len(),
                expected: 0,
            })
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength {
            got: 0,
            expected: 1,
        });
    }
    let mut path = proof.to_vec();
    if old.is_power_of_two() {
        path.insert(0, *old_root);
    }
    let mut fn_ = old - 1;
    let mut sn = new - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if sn == 0 {
            return Err(ProofError::RootMismatch);
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn == 0 && fr == *old_root && sr == *new_root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The RFC 6962 definition, recursively, straight from the text: the naive reference.
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => EMPTY_ROOT,
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn naive_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n <= 1 {
            return vec![];
        }
        let k = split_point(n as u64) as usize;
        if m < k {
            let mut p = naive_path(m, &leaves[..k]);
            p.push(naive_root(&leaves[k..]));
            p
        } else {
            let mut p = naive_path(m - k, &leaves[k..]);
            p.push(naive_root(&leaves[..k]));
            p
        }
    }

    fn naive_subproof(m: usize, leaves: &[Hash], b: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if b { vec![] } else { vec![naive_root(leaves)] };
        }
        let k = split_point(n as u64) as usize;
        if m <= k {
            let mut p = naive_subproof(m, &leaves[..k], b);
            p.push(naive_root(&leaves[k..]));
            p
        } else {
            let mut p = naive_subproof(m - k, &leaves[k..], false);
            p.push(naive_root(&leaves[..k]));
            p
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u32).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn tree(ls: &[Hash]) -> MerkleTree {
        let mut t = MerkleTree::new();
        for l in ls {
            t.push_leaf_hash(*l);
        }
        t
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn roots_match_naive(n in 0usize..150) {
            let ls = leaves(n);
            let t = tree(&ls);
            let mut c = CompactTree::new();
            for size in 0..=n {
                prop_assert_eq!(t.root(size as u64).unwrap(), naive_root(&ls[..size]));
                prop_assert_eq!(c.root(), naive_root(&ls[..size]));
                if size < n { c.push_leaf_hash(ls[size]); }
            }
        }

        #[test]
        fn inclusion_matches_naive_and_verifies(n in 1usize..200, seed in any::<u64>()) {
            let ls = leaves(n);
            let t = tree(&ls);
            let size = 1 + (seed as usize % n);
            let m = (seed as usize / 7) % size;
            let p = t.inclusion_proof(m as u64, size as u64).unwrap();
            prop_assert_eq!(&p, &naive_path(m, &ls[..size]));
            let root = naive_root(&ls[..size]);
            prop_assert!(verify_inclusion(m as u64, size as u64, &ls[m], &p, &root).is_ok());
            let other = (m + 1) % size;
            if other != m {
                prop_assert!(verify_inclusion(other as u64, size as u64, &ls[m], &p, &root).is_err());
            }
        }

        #[test]
        fn consistency_matches_naive_and_verifies(n in 1usize..200, a in any::<u64>(), b in any::<u64>()) {
            let ls = leaves(n);
            let t = tree(&ls);
            let new = 1 + (a as usize % n);
            let old = 1 + (b as usize % new);
            let p = t.consistency_proof(old as u64, new as u64).unwrap();
            let expected = if old == new { vec![] } else { naive_subproof(old, &ls[..new], true) };
            prop_assert_eq!(&p, &expected);
            let (r1, r2) = (naive_root(&ls[..old]), naive_root(&ls[..new]));
            prop_assert!(verify_consistency(old as u64, new as u64, &r1, &r2, &p).is_ok());
            if old < new {
                prop_assert!(verify_consistency(old as u64, new as u64, &r2, &r1, &p).is_err());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A pruned tree answers every root and proof exactly as the full tree does, rereading
        /// only the leaves it dropped, and holds far fewer hashes.
        #[test]
        fn a_pruned_tree_answers_as_the_full_one(n in 1usize..300, k in 1u32..4, seed in any::<u64>()) {
            let ls = leaves(n);
            let full = tree(&ls);
            let mut pruned = MerkleTree::pruned(k);
            for l in &ls {
                pruned.push_leaf_hash(*l);
            }
            let reads = std::cell::Cell::new(0usize);
            let src = |a: u64, b: u64| -> Result<Vec<Hash>, ProofError> {
                reads.set(reads.get() + 1);
                Ok(ls[a as usize..b as usize].to_vec())
            };
            answers_as(&pruned, &full, &src, n, seed)?;
            // The current root needs nothing from the log.
            reads.set(0);
            prop_assert_eq!(pruned.root_with(n as u64, &src).unwrap(), full.root(n as u64));
            prop_assert_eq!(reads.get(), 0);
            if n >= 4 << k {
                prop_assert!(pruned.held() < full.held());
            }
        }

        #[test]
        fn a_tree_that_spills_its_kept_levels_answers_as_the_full_one(n in 1usize..600, k in 1u32..4, seed in any::<u64>()) {
            let ls = leaves(n);
            let full = tree(&ls);
            let spill = std::sync::Arc::new(MemSpill::default());
            let mut spilled = MerkleTree::pruned_with_spill(k, spill.clone());
            for l in &ls {
                spilled.push_leaf_hash(*l);
            }
            let src = |a: u64, b: u64| -> Result<Vec<Hash>, ProofError> {
                Ok(ls[a as usize..b as usize].to_vec())
            };
            answers_as(&spilled, &full, &src, n, seed)?;
            // In memory: the last two blocks' low levels and a few hashes per kept level.
            let kept_levels = 64 - (n as u64).leading_zeros() as usize;
            prop_assert!(spilled.held() <= 2 * ((2 << k) - 1) + 3 * kept_levels);
        }
    }

    /// `tree` (over the same `n` leaves as `full`, reading pruned ones from `src`) gives the
    /// full tree's root, inclusion proof and consistency proof at sizes and indices drawn from
    /// `seed`.
    fn answers_as(
        tree: &MerkleTree,
        full: &MerkleTree,
        src: LeafSource<'_>,
        n: usize,
        seed: u64,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let size = 1 + (seed as usize % n);
        let m = (seed as usize / 7) % size;
        let old = 1 + (seed as usize / 13) % size;
        prop_assert_eq!(
            tree.root_with(size as u64, src).unwrap(),
            full.root(size as u64)
        );
        prop_assert_eq!(
            tree.inclusion_proof_with(m as u64, size as u64, src)
                .unwrap(),
            full.inclusion_proof(m as u64, size as u64).unwrap()
        );
        prop_assert_eq!(
            tree.consistency_proof_with(old as u64, size as u64, src)
                .unwrap(),
            full.consistency_proof(old as u64, size as u64).unwrap()
        );
        Ok(())
    }

    /// A [`NodeSpill`] in a map.
    #[derive(Default)]
    struct MemSpill(std::sync::Mutex<std::collections::HashMap<(u32, u64), Hash>>);

    impl NodeSpill for MemSpill {
        fn put(&self, level: u32, index: u64, hash: &Hash) -> bool {
            self.0.lock().unwrap().insert((level, index), *hash);
            true
        }
        fn get(&self, level: u32, index: u64) -> Result<Hash, ProofError> {
            self.0
                .lock()
                .unwrap()
                .get(&(level, index))
                .copied()
                .ok_or(ProofError::Unavailable(format!(
                    "no node {index} at level {level}"
                )))
        }
    }

    #[test]
    fn a_pruned_tree_holds_a_fraction_of_the_hashes() {
        let ls = leaves(1 << 14);
        let full = tree(&ls);
        let mut pruned = MerkleTree::pruned(8);
        for l in &ls {
            pruned.push_leaf_hash(*l);
        }
        assert_eq!(full.held(), (1 << 15) - 1);
        // Levels 8 and up (127 hashes) plus levels 0 to 7 of the last two blocks (2 * 510).
        assert_eq!(pruned.held(), 127 + 2 * 510);
        let none = |_: u64, _: u64| Err(ProofError::Unavailable("none".into()));
        assert_eq!(
            pruned.root_with(1 << 14, &none).unwrap(),
            full.root(1 << 14)
        );
        assert!(matches!(
            pruned.root_with(100, &none),
            Err(ProofError::Unavailable(_))
        ));
    }
}
