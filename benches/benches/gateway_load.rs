//! Gateway overhead: the same open-loop load tool, in the same run, against the mock upstream
//! directly and against isnad in front of that mock (journaling durably), for non-streaming and
//! streaming chat at fixed offered rates; then the highest sustainable throughput (closed loop)
//! and isnad's resident memory idle and under load.
//!
//! Needs release binaries: `cargo build --release --bins && cargo bench -p isnad-benches --bench
//! gateway_load`. Figures go to `benches/RESULTS.md`.

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

/// Open loop: request i is due at start + i/rate; latency counts from when it was due.
async fn open_loop(client: &reqwest::Client, url: &str, body: &str, rate: u64, secs: u64) -> Stats {
    let n = rate * secs;
    let lat = Arc::new(Mutex::new(Vec::with_capacity(n as usize)));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let (client, url, body, lat, errors) = (
            client.clone(),
            url.to_owned(),
            body.to_owned(),
            lat.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
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
                lat.lock().await.push(due.elapsed().as_secs_f64() * 1000.0);
            } else {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut v = lat.lock().await.clone();
    v.sort_by(f64::total_cmp);
    Stats {
        p50_ms: pct(&v, 0.5),
        p99_ms: pct(&v, 0.99),
        achieved: v.len() as f64 / elapsed,
        errors: errors.load(std::sync::atomic::Ordering::Relaxed),
    }
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
                dir.path().join("data").to_str().unwrap(),
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

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder().pool_max_idle_per_host(4096).tcp_nodelay(true).build().unwrap();
        let direct = format!("{}/v1/chat/completions", mock.base);
        let gateway = format!("{}/v1/chat/completions", isnad.base);
        // Warm both paths.
        open_loop(&client, &direct, &direct_body(false), 200, 1).await;
        open_loop(&client, &gateway, &body(false), 200, 1).await;

        println!("| mode | offered req/s | direct p50 / p99 ms | via isnad p50 / p99 ms | added p50 / p99 ms | isnad achieved req/s | errors |");
        println!("|---|---|---|---|---|---|---|");
        let mut peak_rss = 0.0f64;
        for stream in [false, true] {
            for rate in [500u64, 1000, 2000] {
                let d = open_loop(&client, &direct, &direct_body(stream), rate, secs).await;
                let g = open_loop(&client, &gateway, &body(stream), rate, secs).await;
                peak_rss = peak_rss.max(rss_mb(isnad.child.id()));
                println!(
                    "| {} | {rate} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} | {} |",
                    if stream { "stream" } else { "json" },
                    d.p50_ms, d.p99_ms, g.p50_ms, g.p99_ms, g.p50_ms - d.p50_ms, g.p99_ms - d.p99_ms, g.achieved, d.errors + g.errors
                );
            }
        }
        let (direct_max, de) = closed_loop(&client, &direct, &direct_body(false), 64, secs).await;
        let (gw_max, ge) = closed_loop(&client, &gateway, &body(false), 64, secs).await;
        peak_rss = peak_rss.max(rss_mb(isnad.child.id()));
        println!();
        println!("closed loop, 64 concurrent, non-streaming: direct {direct_max:.0} req/s ({de} errors), via isnad {gw_max:.0} req/s ({ge} errors)");
        let hwm = status_mb(isnad.child.id(), "VmHWM:");
        println!("isnad resident memory: idle {idle_rss:.1} MB, under load {peak_rss:.1} MB (highest at the end of a row), high-water mark {hwm:.1} MB");
    });
}
