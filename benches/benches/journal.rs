//! Micro benchmarks of the journal (criterion, `Throughput::Elements`, so criterion reports
//! entries per second):
//!
//! - `seal/*`: what the sequencer spends per appended event, piece by piece: the canonical rkyv
//!   encoding, the chained SHA-256, the Ed25519 signature, and `Entry::seal` (all three), plus
//!   `Entry::from_stored` (the decode every read pays);
//! - `verify/*`: one Ed25519 batch of 256 signatures on one core, the streaming `ChainVerifier`
//!   over entries already in memory, and `export::verify_store` over a 200,000-entry log
//!   (the `isnad journal verify` path: read, decode, hash chain, batched signatures on rayon,
//!   checkpoints);
//! - `store/*`: the storage work the sequencer and flusher do per event: an id-index lookup that
//!   misses (every append checks idempotency), a 64-event batch write (entry and id rows), and the
//!   same followed by the blocking `flush()` that a group commit waits for;
//! - `read/*`: replay of the same 200,000-entry log: the raw store scan, `Journal::scan` (which
//!   decodes each entry), and `Journal::range` in chunks of 1024 as a lagging consumer reads.
//!
//! Each of the two on-disk stores is measured in turn: `segments` (the gateway's: segment files,
//! ids in memory and on-disk chunks) and `sled` (rows in sled, the format of older logs). Its log
//! is built once (through the journal, batches of 4096) in a temporary directory and stays in the
//! page cache, so the read figures are for a warm log.

// `criterion_group!` generates a public function without docs.
#![allow(missing_docs)]

use std::sync::Arc;

use criterion::{
    black_box, criterion_group, criterion_main, measurement::WallTime, BatchSize, Bencher,
    BenchmarkGroup, Criterion, Throughput,
};
use ed25519_dalek::{Signature, Signer as _};
use isnad_benches::{bench_key, fill, request_event, CpuSample, DiskLog};
use isnad_journal::{
    entry::{entry_hash, Entry, GENESIS},
    export::verify_store,
    verify::ChainVerifier,
    LogStore, SegmentStore, SledStore,
};

/// Entries in the log that the verify and read benches go over.
const LOG_ENTRIES: u64 = 200_000;
/// Entries fed to the in-memory `ChainVerifier` bench.
const MEM_ENTRIES: u64 = 20_000;
/// Chunk size of the `range` bench.
const RANGE_CHUNK: u64 = 1024;

fn sealed(n: u64) -> Vec<Entry> {
    let key = bench_key();
    let mut prev = GENESIS;
    (0..n)
        .map(|i| {
            let e = Entry::seal(
                request_event(i).sequence(i, 1_700_000_000_000_000 + i as i64),
                &prev,
                key.signing(),
            )
            .unwrap_or_else(|e| unreachable!("seal failed: {e}"));
            prev = e.hash;
            e
        })
        .collect()
}

/// `g.bench_function`, then a line with the CPU used by this process and by other processes
/// while it ran: the bench machine is shared, and a figure means little without that.
fn timed<F: FnMut(&mut Bencher<'_, WallTime>)>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    f: F,
) {
    let before = CpuSample::now();
    let t = std::time::Instant::now();
    g.bench_function(name, f);
    if let (Some(a), Some(b), true) = (before, CpuSample::now(), t.elapsed().as_millis() > 500) {
        let (ours, others) = b.since(&a);
        println!("  [{name}: this process used {ours:.2} cores, other processes {others:.2}]");
    }
}

fn seal(c: &mut Criterion) {
    let key = bench_key();
    let event = request_event(1).sequence(1, 1_700_000_000_000_000);
    let canonical = event.canonical_bytes().unwrap_or_default();
    let entry =
        Entry::seal(event.clone(), &GENESIS, key.signing()).unwrap_or_else(|e| unreachable!("{e}"));
    let stored = entry.to_stored();
    println!(
        "event canonical size: {} bytes; stored entry: {} bytes",
        canonical.len(),
        stored.len()
    );

    let mut g = c.benchmark_group("seal");
    g.throughput(Throughput::Elements(1));
    timed(&mut g, "canonical_bytes", |b| {
        b.iter(|| black_box(&event).canonical_bytes())
    });
    timed(&mut g, "entry_hash", |b| {
        b.iter(|| entry_hash(black_box(1), &GENESIS, black_box(&canonical)))
    });
    timed(&mut g, "ed25519_sign", |b| {
        b.iter(|| key.signing().sign(black_box(&entry.hash)))
    });
    timed(&mut g, "entry_seal", |b| {
        b.iter_batched(
            || event.clone(),
            |ev| Entry::seal(ev, &GENESIS, key.signing()),
            BatchSize::SmallInput,
        )
    });
    timed(&mut g, "entry_from_stored", |b| {
        b.iter(|| Entry::from_stored(1, black_box(&stored)))
    });
    g.finish();
}

fn verify(c: &mut Criterion) {
    let entries = sealed(MEM_ENTRIES);
    let stored: Vec<Vec<u8>> = entries.iter().map(Entry::to_stored).collect();
    let key = bench_key().verifying();

    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(256));
    let chunk = &entries[..256];
    let msgs: Vec<&[u8]> = chunk.iter().map(|e| e.hash.as_slice()).collect();
    let sigs: Vec<Signature> = chunk
        .iter()
        .map(|e| Signature::from_bytes(&e.sig))
        .collect();
    let keys = vec![key; 256];
    timed(&mut g, "ed25519_verify_batch_256_one_core", |b| {
        b.iter(|| ed25519_dalek::verify_batch(black_box(&msgs), &sigs, &keys))
    });

    g.throughput(Throughput::Elements(MEM_ENTRIES));
    g.sample_size(10);
    timed(&mut g, "chain_verifier_in_memory_20k", |b| {
        b.iter(|| {
            let mut v = ChainVerifier::new(key, None, Vec::new());
            for (seq, bytes) in stored.iter().enumerate() {
                if let Err(p) = v.push(seq as u64, bytes) {
                    unreachable!("verification failed: {p}");
                }
            }
            v.finish()
        })
    });
    g.finish();
}

fn on_disk_log(c: &mut Criterion) {
    on_disk_log_in(c, "segments");
    on_disk_log_in(c, "sled");
}

/// The on-disk benches over one store: `segments` (the gateway's) or `sled` (older logs).
fn on_disk_log_in(c: &mut Criterion, kind: &str) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("tempdir: {e}"));
    let log = if kind == "sled" {
        DiskLog::open_sled(dir.path())
    } else {
        DiskLog::open(dir.path())
    }
    .unwrap_or_else(|e| unreachable!("open: {e}"));
    let t = std::time::Instant::now();
    let n = fill(&log.journal, LOG_ENTRIES, 4096).unwrap_or_else(|e| unreachable!("fill: {e}"));
    println!("built a {n}-entry {kind} log in {:.1?}", t.elapsed());
    let store: Arc<dyn LogStore> = log.store.clone();

    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(20));
    timed(&mut g, &format!("verify_store_{kind}_200k"), |b| {
        b.iter(|| match verify_store(&*store, None, &mut |_, _| {}) {
            Ok(Ok(summary)) => summary,
            other => unreachable!("verify_store: {other:?}"),
        })
    });
    g.finish();

    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(n));
    g.sample_size(10);
    g.measurement_time(std::time::Duration::from_secs(8));
    timed(&mut g, &format!("store_scan_raw_{kind}_200k"), |b| {
        b.iter(|| {
            let mut bytes = 0usize;
            let _ = store.scan(0, n, &mut |_, v| {
                bytes += v.len();
                true
            });
            bytes
        })
    });
    timed(&mut g, &format!("journal_scan_{kind}_200k"), |b| {
        b.iter(|| {
            let mut count = 0u64;
            let _ = log.journal.scan(0, n, &mut |e| {
                count += black_box(e.event.seq) & 1;
                true
            });
            count
        })
    });
    timed(
        &mut g,
        &format!("journal_range_chunks_1024_{kind}_200k"),
        |b| {
            b.iter(|| {
                let mut from = 0;
                let mut count = 0usize;
                while from < n {
                    let chunk = log
                        .journal
                        .range(from, from + RANGE_CHUNK)
                        .unwrap_or_default();
                    count += chunk.len();
                    from += RANGE_CHUNK;
                }
                count
            })
        },
    );
    g.finish();

    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    timed(&mut g, &format!("{kind}_seq_of_miss_200k_log"), |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let id = isnad_schemas::EventId::derived(1_700_000_000_000 + i, &i.to_le_bytes());
            store.seq_of(black_box(&id))
        })
    });
    drop(log);

    // Batch writes go to a separate, fresh store so they do not disturb the log above.
    let wdir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("tempdir: {e}"));
    let wstore: Box<dyn LogStore> = if kind == "sled" {
        Box::new(SledStore::open(&wdir.path().join("w")).unwrap_or_else(|e| unreachable!("{e}")))
    } else {
        Box::new(SegmentStore::open(&wdir.path().join("w")).unwrap_or_else(|e| unreachable!("{e}")))
    };
    let rows: Vec<(Vec<u8>, isnad_schemas::EventId)> = sealed(64)
        .iter()
        .map(|e| (e.to_stored(), e.event.id))
        .collect();
    let mut next = 0u64;
    let batch = |next: &mut u64| {
        let entries: Vec<(u64, Vec<u8>)> = rows
            .iter()
            .enumerate()
            .map(|(k, (b, _))| (*next + k as u64, b.clone()))
            .collect();
        let ids: Vec<(isnad_schemas::EventId, u64)> = rows
            .iter()
            .enumerate()
            .map(|(k, (_, id))| {
                let mut id = *id;
                id.0[8..16].copy_from_slice(&(*next + k as u64).to_be_bytes());
                (id, *next + k as u64)
            })
            .collect();
        *next += rows.len() as u64;
        (entries, ids)
    };
    g.throughput(Throughput::Elements(rows.len() as u64));
    timed(&mut g, &format!("{kind}_append_batch_64"), |b| {
        b.iter_batched(
            || batch(&mut next),
            |(entries, ids)| wstore.append(&entries, &ids),
            BatchSize::SmallInput,
        )
    });
    timed(&mut g, &format!("{kind}_append_batch_64_and_flush"), |b| {
        b.iter_batched(
            || batch(&mut next),
            |(entries, ids)| {
                let _ = wstore.append(&entries, &ids);
                wstore.flush()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = seal, verify, on_disk_log
}
criterion_main!(benches);
