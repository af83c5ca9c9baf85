//! `isnad-mock-upstream`: an OpenAI-compatible server that answers deterministically, for tests
//! and load benchmarks. Nothing here is a model: completions echo the last user message.
//!
//! The model name selects a failure mode, so one mock serves every scenario:
//!
//! | model name contains | behaviour |
//! |---|---|
//! | `error` | 500 with an OpenAI error body |
//! | `rate-limit` | 429 with `retry-after: 0` |
//! | `flaky` | 503 on every other request (a retry succeeds) |
//! | `hang` | accepts the request, never answers |
//! | `cut` | streams three chunks, then drops the connection |
//! | `slow` | a token every 200 ms |
//!
//! `--latency-ms` delays every answer; `--tokens-per-sec` paces streamed tokens.
//! `GET /mock/last-request` returns the body of the last chat or embeddings request as
//! received, so tests can check what a gateway sent upstream.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::serve::ListenerExt as _;
use axum::{
    body::{Body, Bytes},
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use clap::Parser;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[derive(Parser, Clone)]
#[command(
    name = "isnad-mock-upstream",
    about = "OpenAI-compatible mock upstream"
)]
struct Args {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Streamed tokens per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    tokens_per_sec: u64,
    /// Models listed by /v1/models.
    #[arg(long, default_value = "mock-small,mock-large")]
    models: String,
}

#[derive(Clone)]
struct Mock {
    args: Args,
    requests: Arc<AtomicU64>,
    last: Arc<std::sync::Mutex<Bytes>>,
}

impl Mock {
    fn record(&self, body: &Bytes) {
        if let Ok(mut last) = self.last.lock() {
            *last = body.clone();
        }
    }
}

async fn last_request(State(m): State<Mock>) -> Response {
    let body = m.last.lock().map(|b| b.clone()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mock = Mock {
        args: args.clone(),
        requests: Arc::default(),
        last: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/mock/last-request", get(last_request))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(mock);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!(
        "mock upstream listening on http://{}",
        listener.local_addr()?
    );
    // Small SSE frames must not wait for Nagle's algorithm.
    axum::serve(
        listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        }),
        app,
    )
    .await?;
    Ok(())
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}))).into_response()
}

async fn models(State(m): State<Mock>) -> Json<Value> {
    let data: Vec<Value> = m
        .args
        .models
        .split(',')
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Words of the last user message: the completion's tokens.
fn completion_words(req: &Value) -> (Vec<String>, u64) {
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| {
            m["content"]
                .as_str()
                .map_or(1, |c| c.split_whitespace().count() as u64)
        })
        .sum();
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let mut words = vec!["Mock".to_owned(), "reply:".to_owned()];
    words.extend(last.split_whitespace().map(str::to_owned));
    let max = req["max_tokens"]
        .as_u64()
        .or(req["max_completion_tokens"].as_u64())
        .unwrap_or(256) as usize;
    words.truncate(max.max(1));
    (words, prompt_tokens)
}

fn wants_tool(req: &Value) -> Option<String> {
    let tools = req["tools"].as_array()?;
    if req["tool_choice"] == "none" {
        return None;
    }
    tools.first()?["function"]["name"]
        .as_str()
        .map(str::to_owned)
}

async fn chat(State(m): State<Mock>, body: Bytes) -> Response {
    let n = m.requests.fetch_add(1, Ordering::Relaxed);
    m.record(&body);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let model = req["model"].as_str().unwrap_or("mock").to_owned();
    if m.args.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(m.args.latency_ms)).await;
    }
    if model.contains("error") {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "mock failure");
    }
    if model.contains("rate-limit") {
        let mut r = error(StatusCode::TOO_MANY_REQUESTS, "mock rate limit");
        r.headers_mut()
            .insert("retry-after", header::HeaderValue::from_static("0"));
        return r;
    }
    if model.contains("flaky") && n % 2 == 0 {
        return error(StatusCode::SERVICE_UNAVAILABLE, "mock flake");
    }
    if model.contains("hang") {
        std::future::pending::<()>().await;
    }
    let (words, prompt_tokens) = completion_words(&req);
    let tool = wants_tool(&req);
    let id = format!("chatcmpl-mock{n}");
    if req["stream"].as_bool().unwrap_or(false) {
        return stream(m, req, model, id, words, prompt_tokens, tool);
    }
    let completion_tokens = words.len() as u64;
    let message = match &tool {
        Some(name) => json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_mock0", "type": "function", "function": {"name": name, "arguments": "{\"city\":\"Riyadh\"}"}}]}),
        None => json!({"role": "assistant", "content": words.join(" ")}),
    };
    Json(json!({
        "id": id, "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": if tool.is_some() { "tool_calls" } else { "stop" }}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response()
}

fn stream(
    m: Mock,
    req: Value,
    model: String,
    id: String,
    words: Vec<String>,
    prompt_tokens: u64,
    tool: Option<String>,
) -> Response {
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let cut = model.contains("cut");
    let pace = if model.contains("slow") {
        Some(Duration::from_millis(200))
    } else {
        1_000_000u64
            .checked_div(m.args.tokens_per_sec)
            .map(Duration::from_micros)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(32);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let send = |v: Value| Ok(Bytes::from(format!("data: {v}\n\n")));
        let mut frames = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        let completion_tokens = words.len() as u64;
        match &tool {
            Some(name) => {
                frames.push(chunk(json!({"tool_calls": [{"index": 0, "id": "call_mock0", "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
                frames.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":\"Riyadh\"}"}}]}), None));
                frames.push(chunk(json!({}), Some("tool_calls")));
            }
            None => {
                for (i, w) in words.iter().enumerate() {
                    let text = if i == 0 { w.clone() } else { format!(" {w}") };
                    frames.push(chunk(json!({"content": text}), None));
                }
                frames.push(chunk(json!({}), Some("stop")));
            }
        }
        for (i, f) in frames.into_iter().enumerate() {
            if cut && i == 3 {
                // Let the first frames reach the client, then break the connection.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send(Err(std::io::Error::other("mock cut"))).await;
                return;
            }
            if let Some(p) = pace {
                tokio::time::sleep(p).await;
            }
            if tx.send(send(f)).await.is_err() {
                return;
            }
        }
        if include_usage {
            let usage = json!({"id": id, "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}});
            let _ = tx.send(send(usage)).await;
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let mut rx = rx;
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A deterministic unit vector from the text.
fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dims)
        .map(|i| {
            let h = Sha256::digest(format!("{i}:{text}").as_bytes());
            f32::from(h[0]) - 127.5
        })
        .collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

async fn embeddings(State(m): State<Mock>, body: Bytes) -> Response {
    m.record(&body);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    if m.args.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(m.args.latency_ms)).await;
    }
    let model = req["model"].as_str().unwrap_or("mock-embed").to_owned();
    if model.contains("error") {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "mock failure");
    }
    let inputs: Vec<String> = match &req["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "input must be a string or an array",
            )
        }
    };
    let dims = req["dimensions"].as_u64().unwrap_or(16) as usize;
    let base64 = req["encoding_format"] == "base64";
    let mut tokens = 0u64;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            tokens += t.split_whitespace().count() as u64;
            let v = embed(t, dims);
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(B64.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Json(json!({"object": "list", "model": model, "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})).into_response()
}
