//! Gateway overhead: one open-loop load tool sends, interleaved in the same run, to the mock
//! upstream directly and to isnad in front of that mock (journaling durably), for non-streaming
//! and streaming chat at fixed offered rates; then the highest sustainable throughput (closed
//! loop), isnad's CPU per request, and its resident memory idle and under load.
//!
//! Needs release binaries: `cargo build --release --bins && cargo bench -p isnad-benches --bench
//! gateway_load`. Figures go to `benches/RESULTS.md`.
//!
//! Knobs (environment): `ISNAD_BENCH_SECS` per row; `ISNAD_BENCH_ONLY=closed` or `=json:1000`
//! (one part only); `ISNAD_BENCH_CONNS` for the closed loop; `ISNAD_BENCH_HOLD_SECS` keeps isnad
//! loaded after the run for a profiler; `ISNAD_BENCH_KEEP_DATA=DIR` keeps its journal there (entry
//! timestamps give each step's delay); `ISNAD_BENCH_RSS_EVERY_SECS=N` prints isnad's resident
//! memory every N seconds of the closed loop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Mutex;

const TOKEN: &str = "bench-token";

fn release_bin(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let p = target.join("release").join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --release --bins` first",
        p.display()
    );
    p
}

struct Proc {
    child: Child,
    base: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn spawn(mut cmd: Command, prefix: &str) -> Proc {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Owned by `Proc` from the start, so every exit path below stops and reaps it.
    let mut proc = Proc {
        child,
        base: String::new(),
    };
    let out = proc.child.stdout.take().unwrap();
    let mut reader = BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("the process exited before printing {prefix:?}");
        }
        if let Some(b) = line.trim().strip_prefix(prefix) {
            proc.base = b.to_owned();
            std::thread::spawn(move || for _ in reader.lines() {});
            return proc;
        }
    }
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

/// A size line of `/proc/PID/status` in MB (`VmRSS:` now, `VmHWM:` the peak since start).
fn status_mb(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn body(stream: bool) -> String {
    format!(
        r#"{{"model":"{}","stream":{stream},"max_tokens":16,"messages":[{{"role":"user","content":"one two three four five six seven eight nine ten"}}]}}"#,
        "small"
    )
}

fn direct_body(stream: bool) -> String {
    body(stream).replace("\"small\"", "\"mock-small\"")
}

struct Stats {
    p50_ms: f64,
    p99_ms: f64,
    achieved: f64,
    errors: usize,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Open loop against two targets at once, `rate` requests/s each, interleaved: request i goes to
/// target i % 2 and is due at start + i / (2 × rate). Both targets therefore see the same machine,
/// load tool and moment, so their difference is what the gateway adds, not what the machine did
/// between two runs. Latency counts from the moment a request is handed to the client; the due
/// time only paces the sends (tokio's timer wakes up to 1 ms late, which would otherwise land
/// in both figures as noise).
async fn open_loop_pair(
    client: &reqwest::Client,
    targets: [(&str, &str); 2],
    rate: u64,
    secs: u64,
) -> [Stats; 2] {
    let n = 2 * rate * secs;
    let lat: [Arc<Mutex<Vec<f64>>>; 2] = Default::default();
    let errors: [Arc<std::sync::atomic::AtomicUsize>; 2] = Default::default();
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / (2 * rate));
        tokio::time::sleep_until(due.into()).await;
        let t = (i % 2) as usize;
        let (url, body) = targets[t];
        let (client, url, body, lat, errors) = (
            client.clone(),
            url.to_owned(),
            body.to_owned(),
            lat[t].clone(),
            errors[t].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = match client
                .post(&url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            if ok {
                lat.lock().await.push(sent.elapsed().as_secs_f64() * 1000.0);
            } else {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut out = Vec::new();
    for t in 0..2 {
        let mut v = lat[t].lock().await.clone();
        v.sort_by(f64::total_cmp);
        out.push(Stats {
            p50_ms: pct(&v, 0.5),
            p99_ms: pct(&v, 0.99),
            achieved: v.len() as f64 / elapsed,
            errors: errors[t].load(std::sync::atomic::Ordering::Relaxed),
        });
    }
    let gateway = out.pop().unwrap();
    let direct = out.pop().unwrap();
    [direct, gateway]
}

/// Closed loop with `conns` concurrent workers for `secs`: completed requests per second.
async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    conns: usize,
    secs: u64,
) -> (f64, usize) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (client, url, body) = (client.clone(), url.to_owned(), body.to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err) = (0usize, 0usize);
            while Instant::now() < deadline {
                match client
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => {
                        if r.bytes().await.is_ok() {
                            ok += 1;
                        } else {
                            err += 1;
                        }
                    }
                    _ => err += 1,
                }
            }
            (ok, err)
        }));
    }
    let (mut ok, mut err) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.unwrap();
        ok += o;
        err += e;
    }
    (ok as f64 / secs as f64, err)
}

fn main() {
    let secs: u64 = std::env::var("ISNAD_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mock = spawn(
        {
            let mut c = Command::new(release_bin("isnad-mock-upstream"));
            c.args(["--listen", "127.0.0.1:0"]);
            c
        },
        "mock upstream listening on ",
    );
    let dir = tempfile::tempdir().unwrap();
    if let Ok(keep) = std::env::var("ISNAD_BENCH_KEEP_DATA") {
        // The journal stays behind for analysis (entry timestamps give each stage hop's delay).
        println!("data directory kept: {keep}");
    }
    let cfg = dir.path().join("isnad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nmax_concurrent_requests = 4096\n[journal]\ncheckpoint_every = 4096\n[providers.mock]\nbase_url = \"{}/v1\"\nmax_retries = 0\n\
             [[models]]\nid = \"small\"\nprovider = \"mock\"\nupstream_model = \"mock-small\"\nresidency = \"local\"\n",
            mock.base
        ),
    )
    .unwrap();
    let isnad = spawn(
        {
            let mut c = Command::new(release_bin("isnad"));
            c.args([
                "--config",
                cfg.to_str().unwrap(),
                "serve",
                "--data-dir",
                &std::env::var("ISNAD_BENCH_KEEP_DATA")
                    .unwrap_or_else(|_| dir.path().join("data").to_str().unwrap().to_owned()),
                "--listen",
                "127.0.0.1:0",
            ])
            .env("ISNAD_ADMIN_KEY", TOKEN)
            .env("RUST_LOG", "warn");
            c
        },
        "isnad listening on ",
    );
    std::thread::sleep(Duration::from_millis(500));
    let idle_rss = rss_mb(isnad.child.id());

    let rt = isnad_benches::driver_runtime().unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(4096).tcp_nodelay(true).build().unwrap();
        let direct = format!("{}/v1/chat/completions", mock.base);
        let gateway = format!("{}/v1/chat/completions", isnad.base);
        // Warm both paths.
        let (db, gb) = (direct_body(false), body(false));
        open_loop_pair(&client, [(&direct, &db), (&gateway, &gb)], 200, 1).await;

        println!("| mode | offered req/s | direct p50 / p99 ms | via isnad p50 / p99 ms | added p50 / p99 ms | isnad achieved req/s | errors |");
        println!("|---|---|---|---|---|---|---|");
        let mut peak_rss = 0.0f64;
        // `ISNAD_BENCH_ONLY=closed` skips the open-loop rows, `=json:1000` keeps one of them
        // (for profiling and for repeating one figure).
        let only = std::env::var("ISNAD_BENCH_ONLY").unwrap_or_default();
        let keep = |stream: bool, rate: u64| {
            only.is_empty()
                || only == format!("{}:{rate}", if stream { "stream" } else { "json" })
        };
        for stream in [false, true] {
            for rate in [500u64, 1000, 2000] {
                if !keep(stream, rate) {
                    continue;
                }
                let (db, gb) = (direct_body(stream), body(stream));
                let [d, g] =
                    open_loop_pair(&client, [(&direct, &db), (&gateway, &gb)], rate, secs).await;
                peak_rss = peak_rss.max(rss_mb(isnad.child.id()));
                println!(
                    "| {} | {rate} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {} |",
                    if stream { "stream" } else { "json" },
                    d.p50_ms, d.p99_ms, g.p50_ms, g.p99_ms, g.p50_ms - d.p50_ms, g.p99_ms - d.p99_ms, g.achieved, d.errors + g.errors
                );
            }
        }
        if !only.is_empty() && only != "closed" {
            return;
        }
        let conns: usize = std::env::var("ISNAD_BENCH_CONNS").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
        let (direct_max, de) = closed_loop(&client, &direct, &direct_body(false), conns, secs).await;
        // `ISNAD_BENCH_RSS_EVERY_SECS=N` samples isnad's resident memory every N seconds of the
        // closed loop, to see whether it levels off under sustained load.
        let sampler = std::env::var("ISNAD_BENCH_RSS_EVERY_SECS")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .map(|every| {
                let pid = isnad.child.id();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut tick = tokio::time::interval(Duration::from_secs(every));
                    tick.tick().await;
                    for _ in 0..secs / every {
                        tick.tick().await;
                        samples.push(rss_mb(pid));
                    }
                    samples
                })
            });
        let cpu0 = cpu_secs(isnad.child.id());
        let (gw_max, ge) = closed_loop(&client, &gateway, &body(false), conns, secs).await;
        let cpu = cpu_secs(isnad.child.id()) - cpu0;
        if let Some(sampler) = sampler {
            let samples: Vec<String> = sampler.await.unwrap().iter().map(|mb| format!("{mb:.0}")).collect();
            println!("isnad resident memory during the closed loop, MB: {}", samples.join(", "));
        }
        peak_rss = peak_rss.max(rss_mb(isnad.child.id()));
        println!();
        println!("closed loop, {conns} concurrent, non-streaming: direct {direct_max:.0} req/s ({de} errors), via isnad {gw_max:.0} req/s ({ge} errors); isnad used {:.2} cores, {:.0} µs of CPU per request", cpu / secs as f64, cpu * 1e6 / (gw_max * secs as f64));
        let hwm = status_mb(isnad.child.id(), "VmHWM:");
        if let Ok(wait) = std::env::var("ISNAD_BENCH_HOLD_SECS") {
            // Keeps isnad up after the run so that a profiler can attach to a second closed loop.
            println!("isnad pid {}", isnad.child.id());
            let (again, _) = closed_loop(&client, &gateway, &body(false), conns, wait.parse().unwrap_or(5)).await;
            println!("second closed loop via isnad: {again:.0} req/s");
        }
        println!("isnad resident memory: idle {idle_rss:.1} MB, under load {peak_rss:.1} MB (highest at the end of a row), high-water mark {hwm:.1} MB");
    });
}
