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
}

/// An append-only Merkle tree that keeps every complete subtree's hash, so that any root and any
/// proof costs `O(log n)` hash lookups plus `O(log n)` hashes for the ragged right edge.
///
/// Memory is about 64 bytes per leaf (leaves plus interior levels).
#[derive(Default, Clone)]
pub struct MerkleTree {
    /// `levels[k][i]` is the hash of the complete subtree of `2^k` leaves starting at `i * 2^k`.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf given its leaf hash (already `0x00`-prefixed).
    pub fn push_leaf_hash(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    /// Drops every leaf from `size` on (used when a batch could not be written).
    pub fn truncate(&mut self, size: u64) {
        for (k, level) in self.levels.iter_mut().enumerate() {
            level.truncate((size >> k) as usize);
        }
    }

    /// Leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()
            .and_then(|l| l.get(index as usize))
            .copied()
    }

    /// Hash of leaves `[start, end)`, where the range is an RFC 6962 subtree: `start` is a
    /// multiple of the largest power of two not above `end - start`... or the ragged right edge.
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let k = n.trailing_zeros() as usize;
            return self.levels[k][(start >> k) as usize];
        }
        let k = split_point(n);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// Root of the tree made of the first `size` leaves.
    pub fn root(&self, size: u64) -> Option<Hash> {
        if size > self.size() {
            return None;
        }
        Some(if size == 0 {
            EMPTY_ROOT
        } else {
            self.subtree(0, size)
        })
    }

    /// RFC 6962 audit path for leaf `index` in the tree of `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        if index >= size || size > self.size() {
            return Err(ProofError::Invalid(
                "leaf index must be below tree size <= log size",
            ));
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out);
        Ok(out)
    }

    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split_point(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.subtree(start, start + k));
        }
    }

    /// RFC 6962 consistency proof between the trees of `old` and `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        if old > new || new > self.size() {
            return Err(ProofError::Invalid("need old <= new <= log size"));
        }
        let mut out = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut out);
        }
        Ok(out)
    }

    fn subproof(&self, m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !complete {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, start, start + k, complete, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
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

    #[test]
    fn truncate_restores_earlier_tree() {
        let ls = leaves(37);
        let mut t = tree(&ls);
        t.truncate(20);
        assert_eq!(t.size(), 20);
        assert_eq!(t.root(20).unwrap(), naive_root(&ls[..20]));
        for l in &ls[20..] {
            t.push_leaf_hash(*l);
        }
        assert_eq!(t.root(37).unwrap(), naive_root(&ls));
    }
}
