//! Chat on CPU with the default model (SmolLM2-135M-Instruct, fp32 ONNX with a KV cache), driven
//! through the engine the gateway uses: time to first token for a 50-token prompt, tokens per
//! second for one stream, and for 8 concurrent streams (continuous batching).
//!
//! `scripts/setup-models` first. `ISNAD_BENCH_TOKENS` sets the tokens per stream (default 128).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::PathBuf, time::Instant};

use isnad_inference::local::{
    chat::{ChatEngine, Delta, GenParams},
    runtime::LocalConfig,
    LocalModel,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// (time to the first token in ms, tokens, seconds from first token to the end).
async fn run(c: &ChatEngine, prompt: Vec<u32>, max: usize, seed: u64) -> (f64, usize, f64) {
    let started = Instant::now();
    let mut rx = c
        .generate(
            prompt,
            GenParams {
                max_tokens: Some(max),
                temperature: 0.8,
                seed: Some(seed),
                ..GenParams::default()
            },
        )
        .unwrap();
    let mut first = None;
    loop {
        match rx.recv().await.unwrap() {
            Delta::Text(_) => {
                first.get_or_insert_with(Instant::now);
            }
            Delta::Finish {
                completion_tokens, ..
            } => {
                let first = first.unwrap_or_else(Instant::now);
                return (
                    (first - started).as_secs_f64() * 1e3,
                    completion_tokens,
                    first.elapsed().as_secs_f64(),
                );
            }
            Delta::Error(e) => panic!("{e}"),
        }
    }
}

fn main() {
    let tokens: usize = std::env::var("ISNAD_BENCH_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let models_dir =
        std::env::var_os("ISNAD_MODELS_DIR").map_or_else(|| root().join("models"), PathBuf::from);
    let cfg = LocalConfig {
        models_dir,
        threads: 2,
        max_batch: 8,
        ..LocalConfig::default()
    };
    let loaded = Instant::now();
    let LocalModel::Chat(c) = LocalModel::load(&cfg, "smollm2-135m-instruct").unwrap().0 else {
        panic!("a chat model")
    };
    println!("smollm2-135m-instruct fp32, CPU, 2 intra-op threads; load (sha256 of every file included) {:.0} ms", loaded.elapsed().as_secs_f64() * 1e3);
    let text = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle, \
                the storm that follows, the ships she guides home, and the letter she finally writes back.";
    let chat = c
        .render(&[isnad_inference::local::chat::Message {
            role: "user".into(),
            content: text.into(),
        }])
        .unwrap();
    let mut prompt = c.tokenize(&chat).unwrap();
    assert!(prompt.len() >= 50, "{}", prompt.len());
    let tail = prompt.split_off(prompt.len() - 50);
    let prompt = tail; // the last 50 tokens: the request and the assistant header
    let rt = isnad_benches::driver_runtime().unwrap();
    rt.block_on(async {
        run(&c, prompt.clone(), 4, 0).await; // warm-up
        let mut ttft: Vec<f64> = Vec::new();
        for i in 0..7 {
            ttft.push(run(&c, prompt.clone(), 1, i).await.0);
        }
        ttft.sort_by(f64::total_cmp);
        println!("time to first token, 50-token prompt: median {:.1} ms (min {:.1}, max {:.1}, 7 runs)", ttft[3], ttft[0], ttft[6]);

        let (ttft1, n, secs) = run(&c, prompt.clone(), tokens, 1).await;
        println!("1 stream: {n} tokens, {:.1} tokens/s after a first token at {ttft1:.0} ms", n as f64 / secs);

        let started = Instant::now();
        let streams = futures_util::future::join_all((0..8u64).map(|i| run(&c, prompt.clone(), tokens, 100 + i))).await;
        let wall = started.elapsed().as_secs_f64();
        let total: usize = streams.iter().map(|s| s.1).sum();
        let mut ttfts: Vec<f64> = streams.iter().map(|s| s.0).collect();
        ttfts.sort_by(f64::total_cmp);
        let per_stream: Vec<f64> = streams.iter().map(|s| s.1 as f64 / s.2).collect();
        println!(
            "8 streams: {total} tokens in {wall:.2} s = {:.1} tokens/s aggregate; per stream {:.1}–{:.1} tokens/s; first token {:.0}–{:.0} ms",
            total as f64 / wall,
            per_stream.iter().copied().fold(f64::INFINITY, f64::min),
            per_stream.iter().copied().fold(0.0, f64::max),
            ttfts[0],
            ttfts[7],
        );
    });
}
