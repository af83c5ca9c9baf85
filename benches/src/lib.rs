//! Fixtures shared by the isnad benchmarks: events of a realistic size (about 300 canonical
//! bytes), a fixed node key, and journals filled to a given length.
//!
//! The benchmarks themselves are in `benches/`; their figures are in `RESULTS.md`.

use std::{path::Path, sync::Arc};

use isnad_journal::{Journal, LogStore, NodeKey, Options, SledStore};
use isnad_schemas::{NewEvent, RequestReceived};

/// The event every benchmark appends: a `request.received` as the gateway writes it for a chat
/// completion, with team, actor and request id set. Its canonical size is printed by the benches
/// (about 300 bytes).
pub fn request_event(i: u64) -> NewEvent {
    let payload = RequestReceived {
        endpoint: "/v1/chat/completions".into(),
        model: "llama-3.1-8b-instruct".into(),
        prompt_hash: format!(
            "sha256:{:064x}",
            u128::from(i as u32).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ),
        stream: i.is_multiple_of(2),
        client_ip: Some(format!(
            "10.{}.{}.{}",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        )),
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
    Options::default()
}

/// A journal on disk in `dir`, with the store handle kept so that benches can also use it
/// directly (for `verify_store` or raw scans) while the journal is open.
pub struct DiskLog {
    /// The open journal.
    pub journal: Journal,
    /// The store beneath it.
    pub store: Arc<dyn LogStore>,
}

impl DiskLog {
    /// Opens (or creates) the log under `dir/journal` in the gateway's format (segment files).
    pub fn open(dir: &Path) -> isnad_journal::Result<Self> {
        Self::over(isnad_journal::open_store(
            dir,
            Options::default().cache_bytes,
        )?)
    }

    /// Opens (or creates) the log under `dir/journal` as rows in sled, the format of logs written
    /// before segment files, for comparison.
    pub fn open_sled(dir: &Path) -> isnad_journal::Result<Self> {
        Self::over(Arc::new(SledStore::open(&isnad_journal::store_path(dir))?))
    }

    fn over(store: Arc<dyn LogStore>) -> isnad_journal::Result<Self> {
        let journal = Journal::open(store.clone(), bench_key(), bench_options())?;
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

/// CPU accounting for a noisy, shared machine: how much CPU everything *else* used while a
/// benchmark ran, from `/proc/stat` (all CPUs) minus `/proc/self/stat` (this process).
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    busy_ticks: u64,
    own_ticks: u64,
    at: std::time::Instant,
}

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`, 100 on Linux).
const CLK_TCK: f64 = 100.0;

impl CpuSample {
    /// Reads the counters now; `None` where `/proc` is not available.
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let busy_ticks = cpu
            .iter()
            .take(8)
            .enumerate()
            .filter(|(i, _)| *i != 3 && *i != 4)
            .map(|(_, v)| v)
            .sum();
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = own.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let own_ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(Self {
            busy_ticks,
            own_ticks,
            at: std::time::Instant::now(),
        })
    }

    /// Cores' worth of CPU used by this process and by all other processes since `earlier`.
    pub fn since(&self, earlier: &Self) -> (f64, f64) {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(1e-9);
        let own = self.own_ticks.saturating_sub(earlier.own_ticks) as f64 / CLK_TCK / secs;
        let busy = self.busy_ticks.saturating_sub(earlier.busy_ticks) as f64 / CLK_TCK / secs;
        (own, (busy - own).max(0.0))
    }
}

/// The runtime a benchmark's driver runs on: one worker thread, so that on the 2-core bench
/// machine the driver leaves as much as it can to what it measures.
pub fn driver_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}
