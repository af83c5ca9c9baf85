//! In-process sentence embeddings: a tokenizer, one ONNX Runtime session, mean pooling over the
//! attention mask and L2 normalisation. Concurrent requests are batched: the worker takes every
//! request already waiting and, when requests have been arriving together, waits up to
//! `embed_max_wait_us` for more, up to `embed_max_batch` inputs; it sorts the inputs by length so
//! each sub-batch pads little, runs them, and answers every request with its own vectors.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use ort::{session::Session, value::Tensor};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};
use tokio::sync::oneshot;

use crate::{
    local::{manifest::VerifiedModel, runtime, runtime::LocalConfig},
    Error, Result,
};

/// What a client sent to embed.
#[derive(Clone, Debug)]
pub enum EmbedInput {
    /// Text, tokenised by the model's tokenizer.
    Text(String),
    /// Token ids, used as given (truncated to the model's limit).
    Tokens(Vec<u32>),
}

/// Vectors for one request, in input order.
#[derive(Clone, Debug)]
pub struct Embedded {
    /// One unit-length vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens each input used after truncation.
    pub tokens: Vec<usize>,
    /// How many inputs were cut to the model's limit.
    pub truncated: usize,
}

struct Job {
    inputs: Vec<EmbedInput>,
    reply: oneshot::Sender<Result<Embedded>>,
}

/// Static facts about the loaded model.
#[derive(Clone, Debug)]
pub struct EmbedInfo {
    /// Model name.
    pub name: String,
    /// Vector length.
    pub dimensions: usize,
    /// Most tokens per input (longer inputs are truncated).
    pub max_tokens: usize,
    /// `cpu` or `cuda`.
    pub device: runtime::Device,
}

/// A handle to the embedding worker; cheap to clone.
#[derive(Clone)]
pub struct EmbeddingEngine {
    tx: mpsc::SyncSender<Job>,
    tokenizer: std::sync::Arc<Tokenizer>,
    info: EmbedInfo,
    runs: std::sync::Arc<AtomicU64>,
}

impl std::fmt::Debug for EmbeddingEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingEngine")
            .field("info", &self.info)
            .finish()
    }
}

struct Worker {
    session: Session,
    tokenizer: std::sync::Arc<Tokenizer>,
    input_names: Vec<String>,
    info: EmbedInfo,
    max_batch: usize,
    max_wait: Duration,
    cls_id: Option<u32>,
    sep_id: Option<u32>,
    /// Vocabulary size with added tokens (the tokenizer computes it by copying its vocabulary,
    /// so it is asked once).
    vocab_size: u32,
    runs: std::sync::Arc<AtomicU64>,
}

fn load_tokenizer(model: &VerifiedModel) -> Result<Tokenizer> {
    let path = model.file("tokenizer.json")?;
    Tokenizer::from_file(&path).map_err(|e| Error::ModelFiles(format!("{}: {e}", path.display())))
}

impl EmbeddingEngine {
    /// Loads a verified embedding model and starts its worker thread.
    pub fn start(model: &VerifiedModel, cfg: &LocalConfig) -> Result<Self> {
        let name = model.manifest.name.clone();
        let c = &model.manifest.config;
        let dimensions = c["dimensions"].as_u64().unwrap_or(0) as usize;
        let max_tokens = c["max_tokens"].as_u64().unwrap_or(256) as usize;
        if dimensions == 0 {
            return Err(Error::ModelFiles(format!(
                "model {name}: manifest config lacks `dimensions`"
            )));
        }
        let mut tokenizer = load_tokenizer(model)?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::Runtime(format!("model {name}: {e}")))?;
        tokenizer.with_padding(None);
        let tokenizer = std::sync::Arc::new(tokenizer);
        let (session, device) = runtime::session(cfg, &model.file("model.onnx")?)?;
        let input_names: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_owned())
            .collect();
        for required in ["input_ids", "attention_mask"] {
            if !input_names.iter().any(|n| n == required) {
                return Err(Error::ModelFiles(format!(
                    "model {name}: the ONNX graph has no `{required}` input"
                )));
            }
        }
        let info = EmbedInfo {
            name,
            dimensions,
            max_tokens,
            device,
        };
        let runs = std::sync::Arc::new(AtomicU64::new(0));
        let worker = Worker {
            session,
            cls_id: tokenizer.token_to_id("[CLS]"),
            vocab_size: tokenizer.get_vocab_size(true) as u32,
            sep_id: tokenizer.token_to_id("[SEP]"),
            tokenizer: tokenizer.clone(),
            input_names,
            info: info.clone(),
            max_batch: cfg.embed_max_batch.max(1),
            max_wait: Duration::from_micros(cfg.embed_max_wait_us),
            runs: runs.clone(),
        };
        let (tx, rx) = mpsc::sync_channel::<Job>(1024);
        std::thread::Builder::new()
            .name(format!("embed-{}", info.name))
            .spawn(move || worker.run(rx))
            .map_err(|e| Error::Stopped(format!("cannot start the embedding worker: {e}")))?;
        Ok(Self {
            tx,
            tokenizer,
            info,
            runs,
        })
    }

    /// Model runs so far: fewer than the inputs embedded when requests were batched.
    pub fn model_runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// The model's facts.
    pub fn info(&self) -> &EmbedInfo {
        &self.info
    }

    /// The model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Embeds `inputs`, batched with whatever else is waiting.
    pub async fn embed(&self, inputs: Vec<EmbedInput>) -> Result<Embedded> {
        if inputs.is_empty() {
            return Err(Error::BadRequest("`input` must not be empty".into()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(Job { inputs, reply })
            .map_err(|e| match e {
                mpsc::TrySendError::Full(_) => Error::Overloaded(format!(
                    "embedding model {} has too many requests waiting",
                    self.info.name
                )),
                mpsc::TrySendError::Disconnected(_) => {
                    Error::Stopped(format!("embedding model {} stopped", self.info.name))
                }
            })?;
        rx.await
            .map_err(|_| Error::Stopped(format!("embedding model {} stopped", self.info.name)))?
    }
}

/// One input prepared for the model.
struct Prepared {
    job: usize,
    index: usize,
    ids: Vec<i64>,
    truncated: bool,
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        // Whether the last batch had company: only then is waiting for more inputs worth its
        // latency. A lone client is served at once; under concurrent load requests queue up
        // while a batch runs, and the wait gathers the stragglers.
        let mut concurrent = false;
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            let mut n = jobs[0].inputs.len();
            let deadline = Instant::now() + self.max_wait;
            while n < self.max_batch {
                let next = match rx.try_recv() {
                    Ok(j) => Ok(j),
                    Err(_) if !concurrent => break,
                    Err(_) => rx.recv_timeout(deadline.saturating_duration_since(Instant::now())),
                };
                match next {
                    Ok(j) => {
                        n += j.inputs.len();
                        jobs.push(j);
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            concurrent = jobs.len() > 1;
            self.serve(jobs);
        }
    }

    fn serve(&mut self, jobs: Vec<Job>) {
        let mut prepared = Vec::new();
        let mut failed: Vec<Option<Error>> = jobs.iter().map(|_| None).collect();
        for (j, job) in jobs.iter().enumerate() {
            match self.prepare(j, &job.inputs) {
                Ok(p) => prepared.extend(p),
                Err(e) => failed[j] = Some(e),
            }
        }
        // Similar lengths together: each sub-batch pads to its own longest input.
        prepared.sort_by_key(|p| p.ids.len());
        let mut vectors: Vec<Vec<Option<Vec<f32>>>> =
            jobs.iter().map(|j| vec![None; j.inputs.len()]).collect();
        for chunk in prepared.chunks(self.max_batch) {
            match self.forward(chunk) {
                Ok(out) => {
                    for (p, v) in chunk.iter().zip(out) {
                        vectors[p.job][p.index] = Some(v);
                    }
                }
                Err(e) => {
                    for p in chunk {
                        failed[p.job].get_or_insert_with(|| Error::Runtime(e.to_string()));
                    }
                }
            }
        }
        for (j, job) in jobs.into_iter().enumerate() {
            let result = match failed[j].take() {
                Some(e) => Err(e),
                None => {
                    let mine: Vec<&Prepared> = prepared.iter().filter(|p| p.job == j).collect();
                    let mut tokens = vec![0; job.inputs.len()];
                    let mut truncated = 0;
                    for p in mine {
                        tokens[p.index] = p.ids.len();
                        truncated += usize::from(p.truncated);
                    }
                    Ok(Embedded {
                        vectors: std::mem::take(&mut vectors[j])
                            .into_iter()
                            .map(Option::unwrap_or_default)
                            .collect(),
                        tokens,
                        truncated,
                    })
                }
            };
            let _ = job.reply.send(result);
        }
    }

    fn prepare(&self, job: usize, inputs: &[EmbedInput]) -> Result<Vec<Prepared>> {
        let mut out = Vec::with_capacity(inputs.len());
        let texts: Vec<(usize, &str)> = inputs
            .iter()
            .enumerate()
            .filter_map(|(i, x)| match x {
                EmbedInput::Text(t) => Some((i, t.as_str())),
                EmbedInput::Tokens(_) => None,
            })
            .collect();
        if !texts.is_empty() {
            // One by one on this thread: a parallel batch encode would wake a second thread
            // pool that fights ONNX Runtime's for the same cores, for microseconds of work.
            let encodings = texts
                .iter()
                .map(|(_, t)| self.tokenizer.encode(*t, true))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::BadRequest(format!("cannot tokenise input: {e}")))?;
            for ((i, _), enc) in texts.iter().zip(encodings) {
                out.push(Prepared {
                    job,
                    index: *i,
                    truncated: !enc.get_overflowing().is_empty(),
                    ids: enc.get_ids().iter().map(|&t| i64::from(t)).collect(),
                });
            }
        }
        let vocab = self.vocab_size;
        for (i, x) in inputs.iter().enumerate() {
            let EmbedInput::Tokens(ids) = x else { continue };
            if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
                return Err(Error::BadRequest(format!(
                    "input[{i}]: token {bad} is outside the vocabulary (size {vocab})"
                )));
            }
            // Token inputs get the same framing text gets ([CLS] ... [SEP] for BERT models).
            let budget = self.info.max_tokens
                - usize::from(self.cls_id.is_some())
                - usize::from(self.sep_id.is_some());
            let mut v: Vec<i64> = Vec::with_capacity(ids.len().min(budget) + 2);
            v.extend(self.cls_id.map(i64::from));
            v.extend(ids.iter().take(budget).map(|&t| i64::from(t)));
            v.extend(self.sep_id.map(i64::from));
            out.push(Prepared {
                job,
                index: i,
                truncated: ids.len() > budget,
                ids: v,
            });
        }
        if out.iter().any(|p| p.ids.is_empty()) {
            return Err(Error::BadRequest("an input is empty".into()));
        }
        Ok(out)
    }

    fn forward(&mut self, batch: &[Prepared]) -> Result<Vec<Vec<f32>>> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let b = batch.len();
        let s = batch.iter().map(|p| p.ids.len()).max().unwrap_or(0);
        let mut ids = vec![0i64; b * s];
        let mut mask = vec![0i64; b * s];
        for (r, p) in batch.iter().enumerate() {
            ids[r * s..r * s + p.ids.len()].copy_from_slice(&p.ids);
            mask[r * s..r * s + p.ids.len()].fill(1);
        }
        let shape = vec![b as i64, s as i64];
        let err =
            |e: ort::Error| Error::Runtime(format!("embedding model {}: {e}", self.info.name));
        let mut inputs: Vec<(String, ort::session::SessionInputValue<'_>)> = Vec::new();
        for name in &self.input_names {
            let data = match name.as_str() {
                "input_ids" => ids.clone(),
                "attention_mask" => mask.clone(),
                "token_type_ids" => vec![0i64; b * s],
                other => {
                    return Err(Error::ModelFiles(format!(
                        "embedding model {}: unexpected input `{other}`",
                        self.info.name
                    )))
                }
            };
            let t = Tensor::from_array((shape.clone(), data)).map_err(err)?;
            inputs.push((name.clone(), t.into()));
        }
        let outputs = self.session.run(inputs).map_err(err)?;
        let (out_shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
        let dims: Vec<usize> = out_shape.iter().map(|&d| d as usize).collect();
        let h = self.info.dimensions;
        let mut vectors = Vec::with_capacity(b);
        match dims.as_slice() {
            // Token states: mean over the real tokens.
            [ob, os, oh] if *ob == b && *os == s && *oh == h => {
                for r in 0..b {
                    let mut v = vec![0f32; h];
                    let mut count = 0f32;
                    for t in 0..s {
                        if mask[r * s + t] == 0 {
                            continue;
                        }
                        count += 1.0;
                        let row = &data[(r * s + t) * h..(r * s + t + 1) * h];
                        for (a, x) in v.iter_mut().zip(row) {
                            *a += x;
                        }
                    }
                    let inv = 1.0 / count.max(1e-9);
                    v.iter_mut().for_each(|x| *x *= inv);
                    vectors.push(normalised(v));
                }
            }
            // Already pooled.
            [ob, oh] if *ob == b && *oh == h => {
                for r in 0..b {
                    vectors.push(normalised(data[r * h..(r + 1) * h].to_vec()));
                }
            }
            other => {
                return Err(Error::ModelFiles(format!(
                    "embedding model {}: output shape {other:?} is neither [batch, seq, {h}] nor [batch, {h}]",
                    self.info.name
                )))
            }
        }
        Ok(vectors)
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}
