//! Embedding throughput: isnad's in-process engine against the Python onnxruntime package on the
//! same model file, batch by batch, in the same run (`scripts/embed_bench.py` is the Python side).
//!
//! `scripts/setup-models` first (it also makes the Python venv). `ISNAD_BENCH_SECS` sets the time
//! per measurement (default 5).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use isnad_inference::local::{embed::EmbedInput, runtime::LocalConfig, LocalModel};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn main() {
    let secs: f64 = std::env::var("ISNAD_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let threads = 2;
    let models_dir =
        std::env::var_os("ISNAD_MODELS_DIR").map_or_else(|| root().join("models"), PathBuf::from);
    let cfg = LocalConfig {
        models_dir: models_dir.clone(),
        threads,
        ..LocalConfig::default()
    };
    let LocalModel::Embedding(engine) = LocalModel::load(&cfg, "all-minilm-l6-v2").unwrap().0
    else {
        panic!("all-minilm-l6-v2 is an embedding model")
    };
    let corpus: Vec<String> = std::fs::read_to_string(root().join("benches/data/sentences.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let python = root().join("target/setupenv/bin/python");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    println!("embeddings, all-minilm-l6-v2 int8, {threads} intra-op threads, {secs} s per cell, {} sentences cycled", corpus.len());
    println!(
        "{:>6} {:>16} {:>16} {:>8}",
        "batch", "isnad sent/s", "python sent/s", "ratio"
    );
    for batch in [1usize, 8, 32, 64] {
        let mut offset = 0;
        let mut next = || {
            let v: Vec<EmbedInput> = (0..batch)
                .map(|i| EmbedInput::Text(corpus[(offset + i) % corpus.len()].clone()))
                .collect();
            offset = (offset + batch) % corpus.len();
            v
        };
        rt.block_on(engine.embed(next())).unwrap();
        let started = Instant::now();
        let mut n = 0usize;
        while started.elapsed() < Duration::from_secs_f64(secs) {
            rt.block_on(engine.embed(next())).unwrap();
            n += batch;
        }
        let ours = n as f64 / started.elapsed().as_secs_f64();
        let out = Command::new(&python)
            .arg(root().join("scripts/embed_bench.py"))
            .args([
                "--batch",
                &batch.to_string(),
                "--seconds",
                &secs.to_string(),
            ])
            .args(["--threads", &threads.to_string()])
            .arg("--models-dir")
            .arg(&models_dir)
            .output()
            .expect("run scripts/embed_bench.py (scripts/setup-models makes its venv)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(
            out.stdout
                .split(|&b| b == b'\n')
                .find(|l| l.starts_with(b"{"))
                .unwrap(),
        )
        .unwrap();
        let theirs = v["sentences_per_sec"].as_f64().unwrap();
        println!(
            "{batch:>6} {ours:>16.1} {theirs:>16.1} {:>8.2}",
            ours / theirs
        );
    }
}
