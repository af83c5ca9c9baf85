//! Load test of durable appends on a sled journal (a plain bench binary; prints a table).
//!
//! 1. **Closed-loop throughput**: N tokio tasks (N = 1, 4, 16, 64), each looping
//!    `append_one(event)` on one shared journal; each append resolves only after the group commit
//!    holding it was flushed to disk. Reports acknowledged appends per second over the measured
//!    window (after a warm-up), and the mean and p99 time of one `append_one`. Two reference rows
//!    follow: 64 tasks appending batches of 16 events per call (sequencer-bound rather than
//!    flush-bound) and 64 tasks on an in-memory store (no disk at all).
//! 2. **Open-loop latency**: appends arrive at a fixed rate (10,000/s, one every 100 µs) whether or
//!    not earlier ones were acknowledged; a generator thread spawns each `append_one` at its
//!    scheduled instant. Latency runs from the *scheduled* send time to the acknowledgement, so a
//!    stalled journal cannot hide its queueing delay (no coordinated omission). The first second
//!    is a warm-up and is not counted; percentiles come from sorting every measured latency.
//!
//! Events are `request.received` events of about 300 canonical bytes (printed). Run with
//! `cargo bench -p isnad-benches --bench journal_load`; without `--bench` (as under
//! `cargo test --benches`) it runs a short smoke version.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use isnad_benches::{bench_key, bench_options, request_event, SledLog};
use isnad_journal::{Journal, LogStore, MemStore};
use tokio::runtime::Runtime;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Durations {
    warm: Duration,
    measure: Duration,
    latency_warm: Duration,
    latency_measure: Duration,
}

struct ThroughputRow {
    label: String,
    acked_per_s: f64,
    mean_us: f64,
    p99_us: f64,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs `writers` tasks, each appending `per_call` events per call, for warm-up plus measure.
fn closed_loop(
    rt: &Runtime,
    journal: &Journal,
    label: &str,
    writers: usize,
    per_call: usize,
    d: &Durations,
) -> AnyResult<ThroughputRow> {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(journal.len() + 1_000_000_000));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (j, stop, measuring, acked, next_id) =
            (journal.clone(), stop.clone(), measuring.clone(), acked.clone(), next_id.clone());
        tasks.push(rt.spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let base = next_id.fetch_add(per_call as u64, Ordering::Relaxed);
                let events: Vec<_> = (base..base + per_call as u64).map(request_event).collect();
                let t = Instant::now();
                let receipts = j.append(events).await?;
                let took = t.elapsed();
                if measuring.load(Ordering::Relaxed) {
                    acked.fetch_add(receipts.len() as u64, Ordering::Relaxed);
                    lat.push(took.as_micros() as u64);
                }
            }
            Ok::<_, isnad_journal::Error>(lat)
        }));
    }
    std::thread::sleep(d.warm);
    let before = acked.load(Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(d.measure);
    let count = acked.load(Ordering::Relaxed) - before;
    let elapsed = t0.elapsed();
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(rt.block_on(t)??);
    }
    lat.sort_unstable();
    let mean = lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64;
    Ok(ThroughputRow {
        label: label.to_owned(),
        acked_per_s: count as f64 / elapsed.as_secs_f64(),
        mean_us: mean,
        p99_us: percentile(&lat, 0.99) as f64,
    })
}

struct LatencyResult {
    offered_per_s: f64,
    measured: usize,
    achieved_per_s: f64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
    generator_lag_p99: u64,
}

/// Open loop: one append every `interval`, each spawned at its scheduled time; latency from the
/// scheduled time to the acknowledgement.
fn open_loop(rt: &Runtime, journal: &Journal, interval: Duration, d: &Durations) -> AnyResult<LatencyResult> {
    let total = ((d.latency_warm + d.latency_measure).as_nanos() / interval.as_nanos()) as u64;
    let warm_n = (d.latency_warm.as_nanos() / interval.as_nanos()) as u64;
    let base = journal.len() + 2_000_000_000;
    // Events are made before the clock starts so the generator only schedules.
    let mut events: Vec<_> = (0..total).map(|i| request_event(base + i)).collect();
    events.reverse();
    let mut handles = Vec::with_capacity(total as usize);
    let mut lags = Vec::with_capacity(total as usize);
    let start = Instant::now() + Duration::from_millis(20);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        lags.push(scheduled.elapsed().as_micros() as u64);
        let j = journal.clone();
        let ev = events.pop().ok_or("ran out of events")?;
        handles.push(rt.spawn(async move {
            j.append_one(ev).await?;
            Ok::<_, isnad_journal::Error>(Instant::now())
        }));
    }
    let mut lat = Vec::with_capacity(handles.len());
    let mut last_ack = start;
    for (i, h) in handles.into_iter().enumerate() {
        let acked = rt.block_on(h)??;
        if i as u64 >= warm_n {
            let scheduled = start + interval * i as u32;
            lat.push(acked.duration_since(scheduled).as_micros() as u64);
            if std::env::var_os("ISNAD_LOAD_DEBUG").is_some() && *lat.last().unwrap_or(&0) > 5000 {
                eprintln!("slow: t={:.3}s lat={}us", scheduled.duration_since(start).as_secs_f64(), lat.last().unwrap_or(&0));
            }
            last_ack = last_ack.max(acked);
        }
    }
    lat.sort_unstable();
    lags.drain(..warm_n as usize);
    lags.sort_unstable();
    let first_measured = start + interval * warm_n as u32;
    Ok(LatencyResult {
        offered_per_s: 1.0 / interval.as_secs_f64(),
        measured: lat.len(),
        achieved_per_s: lat.len() as f64 / last_ack.duration_since(first_measured).as_secs_f64().max(1e-9),
        p50: percentile(&lat, 0.50),
        p90: percentile(&lat, 0.90),
        p99: percentile(&lat, 0.99),
        p999: percentile(&lat, 0.999),
        max: lat.last().copied().unwrap_or(0),
        generator_lag_p99: percentile(&lags, 0.99),
    })
}

fn main() -> AnyResult<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let d = if full {
        Durations {
            warm: Duration::from_millis(500),
            measure: Duration::from_secs(3),
            latency_warm: Duration::from_secs(1),
            latency_measure: Duration::from_secs(5),
        }
    } else {
        Durations {
            warm: Duration::from_millis(50),
            measure: Duration::from_millis(200),
            latency_warm: Duration::from_millis(100),
            latency_measure: Duration::from_millis(300),
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let canonical = request_event(0).sequence(0, 0).canonical_bytes()?.len();
    println!("journal_load: {} mode, events of {canonical} canonical bytes", if full { "full" } else { "smoke" });

    // One fresh log per row, so every row starts from the same (empty) state.
    let mut rows = Vec::new();
    for writers in [1usize, 4, 16, 64] {
        let dir = tempfile::tempdir()?;
        let log = SledLog::open(dir.path())?;
        rows.push(closed_loop(&rt, &log.journal, &format!("{writers} writers x append_one, sled"), writers, 1, &d)?);
        drop(log);
    }
    {
        let dir = tempfile::tempdir()?;
        let log = SledLog::open(dir.path())?;
        rows.push(closed_loop(&rt, &log.journal, "64 writers x append(16 events), sled", 64, 16, &d)?);
    }
    {
        let store: Arc<dyn LogStore> = Arc::new(MemStore::new());
        let journal = Journal::open(store, bench_key(), bench_options())?;
        rows.push(closed_loop(&rt, &journal, "64 writers x append_one, memory store", 64, 1, &d)?);
    }

    println!();
    println!("Durable appends, closed loop ({:?} measured after {:?} warm-up)", d.measure, d.warm);
    println!("{:<42} {:>14} {:>14} {:>12}", "workload", "acked events/s", "mean call µs", "p99 call µs");
    for r in &rows {
        println!("{:<42} {:>14.0} {:>14.0} {:>12.0}", r.label, r.acked_per_s, r.mean_us, r.p99_us);
    }

    let dir = tempfile::tempdir()?;
    let log = SledLog::open(dir.path())?;
    let l = open_loop(&rt, &log.journal, Duration::from_micros(100), &d)?;
    println!();
    println!(
        "Open-loop acknowledgement latency, sled ({} appends measured after {:?} warm-up)",
        l.measured, d.latency_warm
    );
    println!("{:<18} {:>14}", "offered", format!("{:.0}/s", l.offered_per_s));
    println!("{:<18} {:>14}", "acknowledged", format!("{:.0}/s", l.achieved_per_s));
    for (name, v) in
        [("p50", l.p50), ("p90", l.p90), ("p99", l.p99), ("p99.9", l.p999), ("max", l.max), ("generator lag p99", l.generator_lag_p99)]
    {
        println!("{name:<18} {:>11.2} ms", v as f64 / 1000.0);
    }
    rt.block_on(log.journal.shutdown())?;
    Ok(())
}
