//! Models that run inside the process on ONNX Runtime, answering the same OpenAI-shaped requests
//! an upstream would: [`chat`] (a decoder with a key/value cache, continuous batching, sampling,
//! streaming) and [`embed`] (batched sentence embeddings). [`manifest`] pins every model file by
//! SHA-256; [`runtime`] loads ONNX Runtime from the library the setup step unpacked.

pub mod chat;
pub mod embed;
pub mod manifest;
pub mod runtime;

use std::{
    pin::Pin,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use futures_util::Stream;
use isnad_schemas::openai::{ChatCompletionChunk, ChunkChoice, Delta as ChunkDelta, Role, Usage};
use serde_json::{json, Value};

use crate::{registry::ModelKind, Error, Result};
use chat::{ChatEngine, Delta, GenParams, Message};
use embed::{EmbedInput, EmbeddingEngine};
use runtime::{Device, LocalConfig};

/// The provider name that means "in this process".
pub const LOCAL_PROVIDER: &str = "local";

/// A loaded in-process model.
#[derive(Clone, Debug)]
pub enum LocalModel {
    /// A chat model.
    Chat(ChatEngine),
    /// An embedding model.
    Embedding(EmbeddingEngine),
}

/// What loading a model found, for `model.loaded`.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Model name.
    pub name: String,
    /// `chat` or `embedding`.
    pub kind: String,
    /// `file=sha256:...` per file.
    pub hashes: Vec<String>,
    /// Where the package came from.
    pub source: String,
    /// CPU or CUDA.
    pub device: Device,
    /// Load time (verification included).
    pub load_ms: u64,
}

/// A chat model's streamed answer: typed chunks, in order, the stream's end being the answer's
/// end (an upstream's SSE is parsed by its provider; a local engine builds the chunks itself).
/// The API encodes them as SSE once, for the client.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatCompletionChunk>> + Send + 'static>>;

impl LocalModel {
    /// Verifies `models_dir/name` against its manifest and starts its engine.
    pub fn load(cfg: &LocalConfig, name: &str) -> Result<(Self, LoadReport)> {
        let started = Instant::now();
        let dir = cfg.models_dir().join(name);
        let verified = manifest::verify(&dir)?;
        let (model, device) = match verified.manifest.kind.as_str() {
            "chat" => {
                let e = ChatEngine::start(&verified, cfg)?;
                let d = e.info().device;
                (Self::Chat(e), d)
            }
            "embedding" => {
                let e = EmbeddingEngine::start(&verified, cfg)?;
                let d = e.info().device;
                (Self::Embedding(e), d)
            }
            other => {
                return Err(Error::ModelFiles(format!(
                    "model {name}: unknown kind \"{other}\" in its manifest"
                )))
            }
        };
        let report = LoadReport {
            name: verified.manifest.name.clone(),
            kind: verified.manifest.kind.clone(),
            hashes: verified.hashes(),
            source: verified.manifest.source.clone(),
            device,
            load_ms: started.elapsed().as_millis() as u64,
        };
        Ok((model, report))
    }

    /// `chat` or `embedding`.
    pub fn kind(&self) -> ModelKind {
        match self {
            Self::Chat(_) => ModelKind::Chat,
            Self::Embedding(_) => ModelKind::Embedding,
        }
    }

    /// Answers a non-streaming request for `path` (`chat/completions` or `embeddings`).
    pub async fn json(&self, path: &str, body: &Value) -> Result<Value> {
        match (self, path) {
            (Self::Chat(c), "chat/completions") => chat_json(c, body).await,
            (Self::Embedding(e), "embeddings") => embeddings_json(e, body).await,
            _ => Err(Error::BadRequest(format!(
                "model {} does not serve /v1/{path}",
                body["model"].as_str().unwrap_or_default()
            ))),
        }
    }

    /// Answers a streaming request as typed chunks.
    pub async fn stream(&self, path: &str, body: &Value) -> Result<ChunkStream> {
        match (self, path) {
            (Self::Chat(c), "chat/completions") => chat_stream(c, body),
            _ => Err(Error::BadRequest(format!(
                "model {} cannot stream /v1/{path}",
                body["model"].as_str().unwrap_or_default()
            ))),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::now_v7().simple())
}

/// The text of a message's `content`: a string, or the `text` parts of an array.
fn content_text(v: &Value, i: usize) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match p["type"].as_str() {
                    Some("text") => out.push_str(p["text"].as_str().unwrap_or_default()),
                    other => {
                        return Err(Error::BadRequest(format!(
                            "messages[{i}].content[{j}]: part type {} is not supported by local models (text only)",
                            other.unwrap_or("(missing)")
                        )))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(Error::BadRequest(format!(
            "messages[{i}].content must be a string or an array of parts"
        ))),
    }
}

/// The prompt tokens and sampling settings of a chat request.
fn chat_request(c: &ChatEngine, body: &Value) -> Result<(Vec<u32>, GenParams, bool)> {
    let Some(msgs) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Err(Error::BadRequest(
            "`messages` must be a non-empty array".into(),
        ));
    };
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"]
            .as_str()
            .ok_or_else(|| Error::BadRequest(format!("messages[{i}].role must be a string")))?;
        let role = if role == "developer" { "system" } else { role };
        messages.push(Message {
            role: role.to_owned(),
            content: content_text(&m["content"], i)?,
        });
    }
    if body["n"].as_u64().is_some_and(|n| n != 1) {
        return Err(Error::BadRequest(
            "local models return one choice: `n` must be 1".into(),
        ));
    }
    let float = |key: &str, default: f32, lo: f32, hi: f32| -> Result<f32> {
        match &body[key] {
            Value::Null => Ok(default),
            v => v
                .as_f64()
                .map(|x| x as f32)
                .filter(|x| (lo..=hi).contains(x))
                .ok_or_else(|| {
                    Error::BadRequest(format!("`{key}` must be a number in [{lo}, {hi}]"))
                }),
        }
    };
    let max_tokens = match (&body["max_completion_tokens"], &body["max_tokens"]) {
        (Value::Null, Value::Null) => None,
        (v, Value::Null) | (Value::Null, v) | (v, _) => {
            Some(v.as_u64().filter(|&n| n >= 1).ok_or_else(|| {
                Error::BadRequest("`max_tokens` must be a positive integer".into())
            })? as usize)
        }
    };
    let stop = match &body["stop"] {
        Value::Null => vec![],
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if a.len() <= 4 && a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => {
            return Err(Error::BadRequest(
                "`stop` must be a string or an array of at most 4 strings".into(),
            ))
        }
    };
    let seed = match &body["seed"] {
        Value::Null => None,
        v => Some(
            v.as_i64()
                .map(|s| s as u64)
                .ok_or_else(|| Error::BadRequest("`seed` must be an integer".into()))?,
        ),
    };
    let params = GenParams {
        max_tokens,
        temperature: float("temperature", 1.0, 0.0, 2.0)?,
        top_p: float("top_p", 1.0, 0.0, 1.0)?,
        seed,
        stop,
    };
    let prompt = c.tokenize(&c.render(&messages)?)?;
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    Ok((prompt, params, include_usage))
}

fn usage_json(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

async fn chat_json(c: &ChatEngine, body: &Value) -> Result<Value> {
    let (prompt, params, _) = chat_request(c, body)?;
    let done = chat::collect(c.generate(prompt, params)?).await?;
    Ok(json!({
        "id": completion_id(),
        "object": "chat.completion",
        "created": now_secs(),
        "model": c.info().name,
        "system_fingerprint": format!("isnad-local-{}", c.info().name),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": done.text, "refusal": null},
            "logprobs": null,
            "finish_reason": done.finish_reason,
        }],
        "usage": usage_json(done.prompt_tokens, done.completion_tokens),
    }))
}

fn chat_stream(c: &ChatEngine, body: &Value) -> Result<ChunkStream> {
    let (prompt, params, include_usage) = chat_request(c, body)?;
    let rx = c.generate(prompt, params)?;
    let head = ChatCompletionChunk {
        id: completion_id(),
        object: "chat.completion.chunk".into(),
        created: now_secs(),
        model: c.info().name.clone(),
        choices: vec![],
        usage: None,
        extra: Default::default(),
    };
    let chunk = move |delta: ChunkDelta, finish: Option<&str>| ChatCompletionChunk {
        choices: vec![ChunkChoice {
            index: 0,
            delta,
            finish_reason: finish.map(str::to_owned),
            logprobs: None,
            extra: Default::default(),
        }],
        ..head.clone()
    };
    struct State<F> {
        rx: tokio::sync::mpsc::UnboundedReceiver<Delta>,
        chunk: F,
        started: bool,
        pending: std::collections::VecDeque<Result<ChatCompletionChunk>>,
        done: bool,
        include_usage: bool,
    }
    let state = State {
        rx,
        chunk,
        started: false,
        pending: Default::default(),
        done: false,
        include_usage,
    };
    let text = |t: Option<String>| ChunkDelta {
        content: t,
        ..ChunkDelta::default()
    };
    let stream = futures_util::stream::unfold(state, move |mut s| async move {
        loop {
            if let Some(item) = s.pending.pop_front() {
                return Some((item, s));
            }
            if s.done {
                return None;
            }
            if !s.started {
                s.started = true;
                let first = ChunkDelta {
                    role: Some(Role::Assistant),
                    ..text(Some(String::new()))
                };
                s.pending.push_back(Ok((s.chunk)(first, None)));
                continue;
            }
            match s.rx.recv().await {
                Some(Delta::Text(t)) => {
                    s.pending.push_back(Ok((s.chunk)(text(Some(t)), None)));
                }
                Some(Delta::Finish {
                    reason,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    s.pending.push_back(Ok((s.chunk)(text(None), Some(reason))));
                    if s.include_usage {
                        let mut u = (s.chunk)(text(None), None);
                        u.choices.clear();
                        u.usage = Some(Usage {
                            prompt_tokens: prompt_tokens as u64,
                            completion_tokens: completion_tokens as u64,
                            total_tokens: (prompt_tokens + completion_tokens) as u64,
                            extra: Default::default(),
                        });
                        s.pending.push_back(Ok(u));
                    }
                    s.done = true;
                }
                Some(Delta::Error(e)) => {
                    s.pending.push_back(Err(Error::Stream(e)));
                    s.done = true;
                }
                None => {
                    s.pending
                        .push_back(Err(Error::Stream("the chat worker stopped".into())));
                    s.done = true;
                }
            }
        }
    });
    Ok(Box::pin(stream))
}

fn embed_inputs(v: &Value) -> Result<Vec<EmbedInput>> {
    let bad = || {
        Error::BadRequest(
            "`input` must be a string, an array of strings, an array of token ids, or an array of arrays of token ids"
                .into(),
        )
    };
    let tokens = |a: &Vec<Value>| -> Option<Vec<u32>> {
        a.iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect()
    };
    let inputs = match v {
        Value::String(s) => vec![EmbedInput::Text(s.clone())],
        Value::Array(a) if a.is_empty() => return Err(bad()),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(|s| s.as_str().map(|s| EmbedInput::Text(s.to_owned())))
            .collect(),
        Value::Array(a) if a.iter().all(Value::is_number) => {
            vec![EmbedInput::Tokens(tokens(a).ok_or_else(bad)?)]
        }
        Value::Array(a) if a.iter().all(Value::is_array) => a
            .iter()
            .map(|x| {
                x.as_array()
                    .and_then(tokens)
                    .map(EmbedInput::Tokens)
                    .ok_or_else(bad)
            })
            .collect::<Result<_>>()?,
        _ => return Err(bad()),
    };
    if inputs.len() > 2048 {
        return Err(Error::BadRequest("at most 2048 inputs per request".into()));
    }
    for (i, x) in inputs.iter().enumerate() {
        let empty = match x {
            EmbedInput::Text(t) => t.is_empty(),
            EmbedInput::Tokens(t) => t.is_empty(),
        };
        if empty {
            return Err(Error::BadRequest(format!("input[{i}] is empty")));
        }
    }
    Ok(inputs)
}

async fn embeddings_json(e: &EmbeddingEngine, body: &Value) -> Result<Value> {
    let inputs = embed_inputs(&body["input"])?;
    let base64 = match body["encoding_format"].as_str() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "`encoding_format` must be float or base64, not {other}"
            )))
        }
    };
    if let Some(d) = body["dimensions"].as_u64() {
        if d as usize != e.info().dimensions {
            return Err(Error::BadRequest(format!(
                "model {} has {} dimensions",
                e.info().name,
                e.info().dimensions
            )));
        }
    }
    let out = e.embed(inputs).await?;
    let data: Vec<Value> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: usize = out.tokens.iter().sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": e.info().name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "truncated_inputs": out.truncated},
    }))
}
