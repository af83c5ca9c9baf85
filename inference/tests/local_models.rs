//! The in-process models against the assets `scripts/setup-models` installs: embedding parity with
//! Python onnxruntime, the default chat model's answers, the decode loop on the tiny random model
//! (prefill, cache growth, batching), and refusal of a tampered file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::PathBuf, sync::OnceLock};

use futures_util::StreamExt as _;
use isnad_inference::local::{
    chat::{self, ChatEngine, Delta, GenParams, Message},
    embed::{EmbedInput, EmbeddingEngine},
    manifest,
    runtime::LocalConfig,
    LocalModel,
};
use serde_json::{json, Value};

fn models_dir() -> PathBuf {
    std::env::var_os("ISNAD_MODELS_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"),
        PathBuf::from,
    )
}

fn config() -> LocalConfig {
    let dir = models_dir();
    assert!(
        dir.join("onnxruntime/libonnxruntime.so").exists(),
        "{} has no ONNX Runtime: run scripts/setup-models first",
        dir.display()
    );
    LocalConfig {
        models_dir: dir,
        ..LocalConfig::default()
    }
}

fn load(name: &str) -> LocalModel {
    LocalModel::load(&config(), name)
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

fn chat(name: &'static str) -> ChatEngine {
    static CACHE: OnceLock<parking_lot::Mutex<Vec<(&'static str, ChatEngine)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock();
    if let Some((_, e)) = c.iter().find(|(n, _)| *n == name) {
        return e.clone();
    }
    let LocalModel::Chat(e) = load(name) else {
        panic!("{name} is not a chat model")
    };
    c.push((name, e.clone()));
    e
}

fn embedder() -> EmbeddingEngine {
    static E: OnceLock<EmbeddingEngine> = OnceLock::new();
    E.get_or_init(|| match load("all-minilm-l6-v2") {
        LocalModel::Embedding(e) => e,
        LocalModel::Chat(_) => panic!("not an embedding model"),
    })
    .clone()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn reference() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/embeddings_ref.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_python_onnxruntime_batched_and_unbatched() {
    let e = embedder();
    let r = reference();
    let items = r["items"].as_array().unwrap();
    assert!(items.len() >= 16);
    let arabic = items
        .iter()
        .filter(|i| {
            i["text"]
                .as_str()
                .unwrap()
                .chars()
                .any(|c| ('\u{600}'..='\u{6ff}').contains(&c))
        })
        .count();
    assert!(arabic >= 4, "the fixture covers Arabic");
    let texts: Vec<String> = items
        .iter()
        .map(|i| i["text"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<Vec<f32>> = items
        .iter()
        .map(|i| {
            i["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();

    // One request per sentence, one after another: batches of one.
    let mut single = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let out = e.embed(vec![EmbedInput::Text(t.clone())]).await.unwrap();
        assert_eq!(out.vectors[0].len(), 384);
        assert_eq!(
            out.tokens[0] as u64,
            items[i]["tokens"].as_u64().unwrap(),
            "token count of {t:?}"
        );
        let c = cosine(&out.vectors[0], &want[i]);
        assert!(
            c >= 0.99,
            "sentence {i} ({t:?}): cosine {c} against the reference"
        );
        single.push(out);
    }
    // The over-long input was cut to the model's limit and says so.
    let long = single
        .iter()
        .position(|o| o.tokens[0] == 256)
        .expect("a truncated item");
    assert_eq!(single[long].truncated, 1);
    assert_eq!(single[0].truncated, 0);

    // All in one request (padded batches), and all at once from concurrent requests.
    let batched = e
        .embed(texts.iter().cloned().map(EmbedInput::Text).collect())
        .await
        .unwrap();
    assert_eq!(batched.truncated, 1);
    let runs_before = e.model_runs();
    let concurrent = futures_util::future::join_all(
        texts
            .iter()
            .map(|t| e.embed(vec![EmbedInput::Text(t.clone())])),
    )
    .await;
    let runs = e.model_runs() - runs_before;
    assert!(
        runs < texts.len() as u64,
        "{} concurrent requests took {runs} model runs: they were not batched",
        texts.len()
    );
    for i in 0..texts.len() {
        let a = cosine(&batched.vectors[i], &single[i].vectors[0]);
        let b = cosine(
            &concurrent[i].as_ref().unwrap().vectors[0],
            &single[i].vectors[0],
        );
        assert!(
            a > 0.9999 && b > 0.9999,
            "sentence {i}: batched {a}, concurrent {b}"
        );
        assert_eq!(batched.tokens[i], single[i].tokens[0]);
    }
    // Token ids are accepted as input and framed the way text is.
    let ids: Vec<u32> = e
        .tokenizer()
        .encode("Hello, world!", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let by_ids = e.embed(vec![EmbedInput::Tokens(ids)]).await.unwrap();
    assert!(cosine(&by_ids.vectors[0], &single[0].vectors[0]) > 0.9999);
    // Similar sentences are closer than unrelated ones.
    let q = e
        .embed(vec![
            EmbedInput::Text("Where is Paris?".into()),
            EmbedInput::Text("Paris is the capital of France.".into()),
            EmbedInput::Text("I like to eat green apples.".into()),
        ])
        .await
        .unwrap();
    assert!(cosine(&q.vectors[0], &q.vectors[1]) > cosine(&q.vectors[0], &q.vectors[2]) + 0.2);
}

#[tokio::test]
async fn embedding_requests_are_checked() {
    let m = LocalModel::Embedding(embedder());
    for (body, needle) in [
        (json!({"input": []}), "`input`"),
        (json!({"input": ""}), "input[0] is empty"),
        (json!({"input": [1, "a"]}), "`input`"),
        (
            json!({"input": "x", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (json!({"input": "x", "dimensions": 128}), "384 dimensions"),
        (json!({"input": [[999999999]]}), "outside the vocabulary"),
    ] {
        let e = m.json("embeddings", &body).await.unwrap_err();
        assert!(
            matches!(e, isnad_inference::Error::BadRequest(_)),
            "{body}: {e:?}"
        );
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
    let v = m
        .json(
            "embeddings",
            &json!({"input": ["a b", "c"], "encoding_format": "base64"}),
        )
        .await
        .unwrap();
    let b64 = v["data"][1]["embedding"].as_str().unwrap();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(bytes.len(), 384 * 4);
    assert_eq!(v["usage"]["prompt_tokens"], 4 + 3);
    assert_eq!(v["data"][1]["index"], 1);
}

async fn collect(rx: tokio::sync::mpsc::UnboundedReceiver<Delta>) -> (String, &'static str, usize) {
    let c = chat::collect(rx)
        .await
        .unwrap_or_else(|e| panic!("generation failed: {e}"));
    (c.text, c.finish_reason, c.completion_tokens)
}

fn user(text: &str) -> Vec<Message> {
    vec![Message {
        role: "user".into(),
        content: text.into(),
    }]
}

fn greedy(max_tokens: usize) -> GenParams {
    GenParams {
        max_tokens: Some(max_tokens),
        temperature: 0.0,
        ..GenParams::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_model_knows_the_capital_of_france() {
    let c = chat("smollm2-135m-instruct");
    let prompt = c
        .tokenize(&c.render(&user("What is the capital of France?")).unwrap())
        .unwrap();
    let (text, reason, _) = collect(c.generate(prompt, greedy(40)).unwrap()).await;
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(reason, "stop", "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_non_streaming_agree_with_a_seed() {
    let m = LocalModel::Chat(chat("smollm2-135m-instruct"));
    let body = json!({
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Tell me a short story about a cat."}],
        "temperature": 0.9, "top_p": 0.95, "seed": 1234, "max_tokens": 24,
        "stream_options": {"include_usage": true},
    });
    let whole = m.json("chat/completions", &body).await.unwrap();
    let text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 24);
    let mut s = m.stream("chat/completions", &body).await.unwrap();
    let mut chunks: Vec<Value> = Vec::new();
    while let Some(c) = s.next().await {
        chunks.push(serde_json::to_value(c.unwrap()).unwrap());
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text, "same seed, same text");
    assert!(chunks.len() > 5, "token by token, not one block");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 24);
    // Another seed tells another story.
    let mut other = body.clone();
    other["seed"] = json!(99);
    let v = m.json("chat/completions", &other).await.unwrap();
    assert_ne!(
        v["choices"][0]["message"]["content"],
        whole["choices"][0]["message"]["content"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_and_max_tokens_are_honoured() {
    let c = chat("smollm2-135m-instruct");
    let prompt = c
        .tokenize(&c.render(&user("What is the capital of France?")).unwrap())
        .unwrap();
    let (full, _, _) = collect(c.generate(prompt.clone(), greedy(40)).unwrap()).await;
    let cut = full.find("Paris").expect("the greedy answer names Paris");
    let (text, reason, _) = collect(
        c.generate(
            prompt.clone(),
            GenParams {
                stop: vec!["Paris".into()],
                ..greedy(40)
            },
        )
        .unwrap(),
    )
    .await;
    assert_eq!(reason, "stop");
    assert_eq!(
        text,
        full[..cut],
        "the text ends right before the stop sequence"
    );
    let (text, reason, n) = collect(c.generate(prompt, greedy(3)).unwrap()).await;
    assert_eq!((reason, n), ("length", 3), "{text:?}");
    assert!(
        full.starts_with(&text) && text.len() < full.len(),
        "{text:?} vs {full:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiny_model_decodes_batched_exactly_as_alone() {
    let c = chat("tiny-random");
    let prompts: Vec<Vec<u32>> = [
        "a",
        "The quick brown fox jumps over the lazy dog, twice.",
        "مرحبا بكم في الرياض",
        "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
        "short",
    ]
    .iter()
    .map(|t| c.tokenize(&c.render(&user(t)).unwrap()).unwrap())
    .collect();
    // Each alone (greedy, fixed length, so the cache grows well past the prompt).
    let mut alone = Vec::new();
    for p in &prompts {
        alone.push(collect(c.generate(p.clone(), greedy(48)).unwrap()).await);
    }
    assert!(
        alone.iter().all(|(_, r, n)| *r == "length" && *n == 48),
        "{alone:?}"
    );
    assert!(
        alone.iter().any(|a| a.0 != alone[0].0),
        "different prompts, different continuations"
    );
    // All at once, and with staggered lengths so rows join and leave a running batch.
    let together = futures_util::future::join_all(
        prompts
            .iter()
            .map(|p| collect(c.generate(p.clone(), greedy(48)).unwrap())),
    )
    .await;
    assert_eq!(together, alone, "batching changes no token");
    assert!(
        c.peak_batch() >= 2,
        "concurrent requests were decoded together (peak batch {})",
        c.peak_batch()
    );
    let lengths = [48usize, 5, 30, 1, 17];
    let staggered = futures_util::future::join_all(
        prompts
            .iter()
            .zip(lengths)
            .map(|(p, n)| collect(c.generate(p.clone(), greedy(n)).unwrap())),
    )
    .await;
    for (i, (text, _, n)) in staggered.iter().enumerate() {
        assert_eq!(*n, lengths[i]);
        assert!(
            alone[i].0.starts_with(text.as_str()),
            "row {i}: {text:?} vs {:?}",
            alone[i].0
        );
    }
}

#[tokio::test]
async fn the_chat_queue_is_bounded() {
    let cfg = LocalConfig {
        max_batch: 1,
        max_queue: 2,
        ..config()
    };
    let LocalModel::Chat(c) = LocalModel::load(&cfg, "tiny-random").unwrap().0 else {
        panic!("tiny-random is a chat model")
    };
    let p = c.tokenize("hello").unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        match c.generate(p.clone(), greedy(200)) {
            Ok(rx) => accepted.push(rx),
            Err(isnad_inference::Error::Overloaded(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "a full queue refuses at once");
    assert!(accepted.len() >= 2);
    // Every accepted request still finishes.
    for rx in accepted {
        let (_, reason, n) = collect(rx).await;
        assert_eq!((reason, n), ("length", 200));
    }
    let too_long = vec![p[0]; 600];
    let e = c.generate(too_long, greedy(1)).unwrap_err();
    assert!(e.to_string().contains("context of 512 tokens"), "{e}");
}

#[test]
fn a_tampered_model_file_is_refused_by_name() {
    let cfg = config();
    let src = cfg.models_dir.join("tiny-random");
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("tiny-random");
    std::fs::create_dir(&dst).unwrap();
    for f in ["manifest.json", "model.onnx", "tokenizer.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut bytes = std::fs::read(dst.join("model.onnx")).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(dst.join("model.onnx"), bytes).unwrap();
    let e = manifest::verify(&dst).unwrap_err().to_string();
    assert!(
        e.contains("model.onnx") && e.contains("does not match its manifest"),
        "{e}"
    );
}
