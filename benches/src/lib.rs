//! Fixtures shared by the isnad benchmarks: events of a realistic size (about 300 canonical
//! bytes), a fixed node key, and journals filled to a given length.
//!
//! The benchmarks themselves are in `benches/`; their figures are in `RESULTS.md`.

use std::{path::Path, sync::Arc, time::Duration};

use isnad_journal::{Journal, LogStore, NodeKey, Options, SledStore};
use isnad_schemas::{NewEvent, RequestReceived};

/// The event every benchmark appends: a `request.received` as the gateway writes it for a chat
/// completion, with team, actor and request id set. Its canonical size is printed by the benches
/// (about 300 bytes).
pub fn request_event(i: u64) -> NewEvent {
    let payload = RequestReceived {
        endpoint: "/v1/chat/completions".into(),
        model: "llama-3.1-8b-instruct".into(),
        prompt_hash: format!("sha256:{:064x}", u128::from(i as u32).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        stream: i % 2 == 0,
        client_ip: Some(format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)),
    };
    // Encoding a fixed payload type cannot fail; an empty event would only skew the figures.
    #[allow(clippy::expect_used)]
    let ev = NewEvent::new(&payload).expect("RequestReceived encodes");
    ev.team("team-research")
        .actor(format!("apikey:ak_{:012}", i % 1000))
        .request_id(uuid::Uuid::from_u64_pair(0x0190_0000_0000_7000, i).to_string())
}

/// A fixed node key, so runs are comparable.
pub fn bench_key() -> NodeKey {
    NodeKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[7; 32]))
}

/// Journal options used by the benchmarks: the defaults (checkpoint every 1024 entries or 1 s,
/// batches of up to 8192 events).
pub fn bench_options() -> Options {
    Options { checkpoint_interval: Duration::from_millis(1000), ..Options::default() }
}

/// A sled-backed journal in `dir`, with the store handle kept so that benches can also use it
/// directly (for `verify_store` or raw scans) while the journal is open.
pub struct SledLog {
    /// The open journal.
    pub journal: Journal,
    /// The store beneath it.
    pub store: Arc<SledStore>,
}

impl SledLog {
    /// Opens (or creates) the log under `dir/journal`.
    pub fn open(dir: &Path) -> isnad_journal::Result<Self> {
        let store = Arc::new(SledStore::open(&isnad_journal::store_path(dir))?);
        let journal = Journal::open(store.clone() as Arc<dyn LogStore>, bench_key(), bench_options())?;
        Ok(Self { journal, store })
    }
}

/// Appends `n` request events to `journal` in batches of `batch`, from a thread outside any
/// async runtime. Returns the journal's length afterwards.
pub fn fill(journal: &Journal, n: u64, batch: u64) -> isnad_journal::Result<u64> {
    let start = journal.len();
    let mut i = 0;
    while i < n {
        let k = batch.min(n - i);
        journal.append_blocking((start + i..start + i + k).map(request_event).collect())?;
        i += k;
    }
    Ok(journal.len())
}
