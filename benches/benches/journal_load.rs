//! Load test of durable appends on the on-disk journal (segment files; a plain bench binary; prints tables).
//!
//! 1. **Closed-loop throughput**: N tokio tasks (N = 1, 4, 16, 64), each looping
//!    `append_one(event)` on one shared journal; each append resolves only after the group commit
//!    holding it was flushed to disk. Reports acknowledged appends per second over the measured
//!    window (after a warm-up), and the mean and p99 time of one call. Two reference rows follow:
//!    64 tasks appending batches of 16 events per call, and 64 tasks on an in-memory store (no
//!    disk at all), which separate the cost of the disk from the cost of sealing.
//! 2. **Open-loop latency**: appends arrive at a fixed rate (10,000/s, one every 100 µs) whether or
//!    not earlier ones were acknowledged; a generator thread spawns each `append_one` at its
//!    scheduled instant. Latency runs from the *scheduled* send time to the acknowledgement, so a
//!    stalled journal cannot hide its queueing delay (no coordinated omission). The first second
//!    is a warm-up and is not counted; percentiles come from sorting every measured latency. The
//!    same run on an in-memory store is printed beside it.
//!
//! Every row also prints the CPU (in cores) used by this process and by *other* processes while
//! it was measured: the bench machine has two cores and is shared, and the figures are only
//! meaningful next to that.
//!
//! Events are `request.received` events of about 300 canonical bytes (printed). Each row gets a
//! fresh journal in a temporary directory. Run with
//! `cargo bench -p isnad-benches --bench journal_load`; without `--bench` (as under
//! `cargo test --benches`) it runs a short smoke version. A further argument runs only the rows
//! whose label contains it (`-- --bench "64 writers"`, `-- --bench open-loop`).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use isnad_benches::{bench_key, bench_options, request_event, CpuSample, DiskLog};
use isnad_journal::{Journal, LogStore, MemStore};
use tokio::runtime::Runtime;

type AnyResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Durations {
    warm: Duration,
    measure: Duration,
    latency_warm: Duration,
    latency_measure: Duration,
}

/// Cores used by this process and by other processes between two samples (0 where unknown).
fn cpu_between(a: Option<CpuSample>, b: Option<CpuSample>) -> (f64, f64) {
    match (a, b) {
        (Some(a), Some(b)) => b.since(&a),
        _ => (0.0, 0.0),
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

struct ThroughputRow {
    label: String,
    acked_per_s: f64,
    mean_us: f64,
    p99_us: f64,
    cpu: (f64, f64),
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
    let next_id = Arc::new(AtomicU64::new(1_000_000_000));
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let j = journal.clone();
        let (stop, measuring) = (stop.clone(), measuring.clone());
        let (acked, next_id) = (acked.clone(), next_id.clone());
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
    let cpu0 = CpuSample::now();
    std::thread::sleep(d.measure);
    let count = acked.load(Ordering::Relaxed) - before;
    let elapsed = t0.elapsed();
    let cpu = cpu_between(cpu0, CpuSample::now());
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(rt.block_on(t)??);
    }
    lat.sort_unstable();
    Ok(ThroughputRow {
        label: label.to_owned(),
        acked_per_s: count as f64 / elapsed.as_secs_f64(),
        mean_us: lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64,
        p99_us: percentile(&lat, 0.99) as f64,
        cpu,
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
    over_5ms: usize,
    generator_lag_p99: u64,
    cpu: (f64, f64),
}

/// Open loop: one append every `interval`, each spawned at its scheduled time; latency from the
/// scheduled time to the acknowledgement.
fn open_loop(
    rt: &Runtime,
    journal: &Journal,
    interval: Duration,
    d: &Durations,
) -> AnyResult<LatencyResult> {
    let total = ((d.latency_warm + d.latency_measure).as_nanos() / interval.as_nanos()) as u64;
    let warm_n = (d.latency_warm.as_nanos() / interval.as_nanos()) as u64;
    // Events are made before the clock starts so the generator only schedules.
    let mut events: Vec<_> = (0..total)
        .rev()
        .map(|i| request_event(2_000_000_000 + i))
        .collect();
    let mut handles = Vec::with_capacity(total as usize);
    let mut lags = Vec::with_capacity(total as usize);
    let start = Instant::now() + Duration::from_millis(20);
    let at = |i: u64| start + Duration::from_nanos(interval.as_nanos() as u64 * i);
    let mut cpu0 = None;
    for i in 0..total {
        let scheduled = at(i);
        if i == warm_n {
            cpu0 = CpuSample::now();
        }
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
            lat.push(acked.duration_since(at(i as u64)).as_micros() as u64);
            last_ack = last_ack.max(acked);
        }
    }
    let cpu = cpu_between(cpu0, CpuSample::now());
    lat.sort_unstable();
    lags.drain(..warm_n as usize);
    lags.sort_unstable();
    let span = last_ack.duration_since(at(warm_n)).as_secs_f64().max(1e-9);
    Ok(LatencyResult {
        offered_per_s: 1.0 / interval.as_secs_f64(),
        measured: lat.len(),
        achieved_per_s: lat.len() as f64 / span,
        p50: percentile(&lat, 0.50),
        p90: percentile(&lat, 0.90),
        p99: percentile(&lat, 0.99),
        p999: percentile(&lat, 0.999),
        max: lat.last().copied().unwrap_or(0),
        over_5ms: lat.iter().filter(|&&l| l > 5000).count(),
        generator_lag_p99: percentile(&lags, 0.99),
        cpu,
    })
}

fn main() -> AnyResult<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let filter = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_default();
    let wanted = |label: &str| label.contains(filter.as_str());
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let canonical = request_event(0).sequence(0, 0).canonical_bytes()?.len();
    let mode = if full { "full" } else { "smoke" };
    println!("journal_load: {mode} mode, events of {canonical} canonical bytes");

    // (writers, events per call, on the in-memory store)
    let configs = [
        (1, 1, false),
        (4, 1, false),
        (16, 1, false),
        (64, 1, false),
        (64, 16, false),
        (64, 1, true),
    ];
    let mut rows = Vec::new();
    for (writers, per_call, memory) in configs {
        let call = if per_call == 1 {
            "append_one".to_owned()
        } else {
            format!("append({per_call} events)")
        };
        let label = format!(
            "{writers} writers x {call}, {}",
            if memory { "memory store" } else { "segments" }
        );
        if !wanted(&label) {
            continue;
        }
        // A fresh log for every row.
        let dir = tempfile::tempdir()?;
        let (journal, _log) = if memory {
            let store: Arc<dyn LogStore> = Arc::new(MemStore::new());
            (Journal::open(store, bench_key(), bench_options())?, None)
        } else {
            let log = DiskLog::open(dir.path())?;
            (log.journal.clone(), Some(log))
        };
        rows.push(closed_loop(&rt, &journal, &label, writers, per_call, &d)?);
        rt.block_on(journal.shutdown())?;
    }

    println!();
    println!(
        "Durable appends, closed loop ({:?} measured after {:?} warm-up)",
        d.measure, d.warm
    );
    println!(
        "{:<40} {:>14} {:>13} {:>12} {:>10} {:>12}",
        "workload", "acked events/s", "mean call µs", "p99 call µs", "cpu: ours", "cpu: others"
    );
    for r in &rows {
        println!(
            "{:<40} {:>14.0} {:>13.0} {:>12.0} {:>10.2} {:>12.2}",
            r.label, r.acked_per_s, r.mean_us, r.p99_us, r.cpu.0, r.cpu.1
        );
    }

    if !wanted("open-loop") {
        return Ok(());
    }
    let interval = Duration::from_micros(100);
    let dir = tempfile::tempdir()?;
    let log = DiskLog::open(dir.path())?;
    let disk = open_loop(&rt, &log.journal, interval, &d)?;
    rt.block_on(log.journal.shutdown())?;
    let store: Arc<dyn LogStore> = Arc::new(MemStore::new());
    let journal = Journal::open(store, bench_key(), bench_options())?;
    let mem = open_loop(&rt, &journal, interval, &d)?;
    rt.block_on(journal.shutdown())?;

    println!();
    println!(
        "Open-loop acknowledgement latency, from scheduled send to ack \
         ({} appends measured per store after {:?} warm-up)",
        disk.measured, d.latency_warm
    );
    println!("{:<22} {:>12} {:>14}", "", "segments", "memory store");
    let pair = |name: &str, a: String, b: String| println!("{name:<22} {a:>12} {b:>14}");
    let rate = |v: f64| format!("{v:.0}/s");
    pair("offered", rate(disk.offered_per_s), rate(mem.offered_per_s));
    pair(
        "acknowledged",
        rate(disk.achieved_per_s),
        rate(mem.achieved_per_s),
    );
    let ms = |v: u64| format!("{:.2} ms", v as f64 / 1000.0);
    for (name, a, b) in [
        ("p50", disk.p50, mem.p50),
        ("p90", disk.p90, mem.p90),
        ("p99", disk.p99, mem.p99),
        ("p99.9", disk.p999, mem.p999),
        ("max", disk.max, mem.max),
        (
            "generator lag p99",
            disk.generator_lag_p99,
            mem.generator_lag_p99,
        ),
    ] {
        pair(name, ms(a), ms(b));
    }
    pair(
        "acks over 5 ms",
        disk.over_5ms.to_string(),
        mem.over_5ms.to_string(),
    );
    let cores = |v: f64| format!("{v:.2}");
    pair("cpu: ours (cores)", cores(disk.cpu.0), cores(mem.cpu.0));
    pair("cpu: others (cores)", cores(disk.cpu.1), cores(mem.cpu.1));
    Ok(())
}
