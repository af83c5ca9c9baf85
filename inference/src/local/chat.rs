//! In-process chat: a decoder-only model on ONNX Runtime with a key/value cache, the model's chat
//! template, sampling, and continuous batching.
//!
//! One worker thread owns the session. Sequences run together in one batched cache laid out
//! `[batch, kv_heads, time, head_dim]` and right-aligned: a row whose history is shorter than the
//! batch's is padded on the left and masked. Every iteration the worker admits at most one waiting
//! request (prefilled alone, then merged into the batch), decodes one token for every running row,
//! and drops rows that finished. Admission is first-come first-served, so no request starves; the
//! waiting queue is bounded and a full queue is refused at once (backpressure) rather than grown.
//! The cache is only re-laid out when the batch changes; between changes each step's `present`
//! outputs feed the next step as they are.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    mpsc, Arc,
};

use ort::{
    session::{Session, SessionInputValue},
    value::{DynValue, Tensor},
};
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use serde::Serialize;
use tokenizers::Tokenizer;
use tokio::sync::mpsc as tmpsc;

use crate::{
    local::{manifest::VerifiedModel, runtime, runtime::LocalConfig},
    Error, Result,
};

/// Sampling and stopping settings of one request.
#[derive(Clone, Debug)]
pub struct GenParams {
    /// Most tokens to generate (capped by the context length).
    pub max_tokens: Option<usize>,
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: f32,
    /// Seed for reproducible sampling.
    pub seed: Option<u64>,
    /// Stop sequences; the text stops before the first one found.
    pub stop: Vec<String>,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            max_tokens: None,
            temperature: 1.0,
            top_p: 1.0,
            seed: None,
            stop: vec![],
        }
    }
}

/// What the worker streams back for one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    /// New text.
    Text(String),
    /// The end: `stop`, `length`, or `error`.
    Finish {
        /// Why generation ended.
        reason: &'static str,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens.
        completion_tokens: usize,
    },
    /// The model failed.
    Error(String),
}

/// Static facts about the loaded chat model.
#[derive(Clone, Debug, Serialize)]
pub struct ChatInfo {
    /// Model name.
    pub name: String,
    /// Context length in tokens.
    pub context_length: usize,
    /// Layers.
    pub num_layers: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Head width.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Device the session runs on.
    pub device: runtime::Device,
}

struct Job {
    prompt: Vec<u32>,
    params: GenParams,
    tx: tmpsc::UnboundedSender<Delta>,
}

/// A handle to the chat worker; cheap to clone.
#[derive(Clone)]
pub struct ChatEngine {
    tx: mpsc::SyncSender<Job>,
    peak_batch: Arc<AtomicUsize>,
    tokenizer: Arc<Tokenizer>,
    template: Arc<minijinja::Environment<'static>>,
    info: ChatInfo,
    bos: Option<String>,
    eos: Option<String>,
}

impl std::fmt::Debug for ChatEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatEngine")
            .field("info", &self.info)
            .finish()
    }
}

/// A whole generation, collected.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The text.
    pub text: String,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// Reads a generation's deltas to the end.
pub async fn collect(mut rx: tmpsc::UnboundedReceiver<Delta>) -> Result<Completion> {
    let mut text = String::new();
    while let Some(d) = rx.recv().await {
        match d {
            Delta::Text(t) => text.push_str(&t),
            Delta::Finish {
                reason,
                prompt_tokens,
                completion_tokens,
            } => {
                return Ok(Completion {
                    text,
                    finish_reason: reason,
                    prompt_tokens,
                    completion_tokens,
                })
            }
            Delta::Error(e) => return Err(Error::Stream(e)),
        }
    }
    Err(Error::Stream("the chat worker stopped".into()))
}

/// A chat message for the template.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// Text.
    pub content: String,
}

fn cfg_usize(c: &serde_json::Value, key: &str, name: &str) -> Result<usize> {
    c[key]
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| Error::ModelFiles(format!("model {name}: manifest config lacks `{key}`")))
}

impl ChatEngine {
    /// Loads a verified chat model and starts its worker thread.
    pub fn start(model: &VerifiedModel, cfg: &LocalConfig) -> Result<Self> {
        let name = model.manifest.name.clone();
        let c = &model.manifest.config;
        let num_layers = cfg_usize(c, "num_layers", &name)?;
        let num_kv_heads = cfg_usize(c, "num_kv_heads", &name)?;
        let head_dim = cfg_usize(c, "head_dim", &name)?;
        let vocab_size = cfg_usize(c, "vocab_size", &name)?;
        let context_length = cfg_usize(c, "context_length", &name)?;
        let eos_ids: Vec<u32> = c["eos_token_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64())
                    .map(|v| v as u32)
                    .collect()
            })
            .unwrap_or_default();
        let template_src = c["chat_template"].as_str().ok_or_else(|| {
            Error::ModelFiles(format!(
                "model {name}: manifest config lacks `chat_template`"
            ))
        })?;
        let mut env = minijinja::Environment::new();
        env.add_template_owned("chat", template_src.to_owned())
            .map_err(|e| Error::ModelFiles(format!("model {name}: chat template: {e}")))?;
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        let path = model.file("tokenizer.json")?;
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| Error::ModelFiles(format!("{}: {e}", path.display())))?;
        let token_text = |key: &str| {
            c[key]
                .as_u64()
                .and_then(|id| tokenizer.id_to_token(id as u32))
        };
        let bos = token_text("bos_token_id");
        let eos = eos_ids.first().and_then(|&id| tokenizer.id_to_token(id));
        let tokenizer = Arc::new(tokenizer);
        let (session, device) = runtime::session(cfg, &model.file("model.onnx")?)?;
        let info = ChatInfo {
            name,
            context_length,
            num_layers,
            num_kv_heads,
            head_dim,
            vocab_size,
            device,
        };
        let peak_batch = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            session,
            tokenizer: tokenizer.clone(),
            info: info.clone(),
            eos: eos_ids,
            max_batch: cfg.max_batch.max(1),
            rows: Vec::new(),
            kv: Vec::new(),
            peak_batch: peak_batch.clone(),
        };
        let (tx, rx) = mpsc::sync_channel::<Job>(cfg.max_queue.max(1));
        std::thread::Builder::new()
            .name(format!("chat-{}", info.name))
            .spawn(move || worker.run(rx))
            .map_err(|e| Error::Stopped(format!("cannot start the chat worker: {e}")))?;
        Ok(Self {
            tx,
            peak_batch,
            tokenizer,
            template: Arc::new(env),
            info,
            bos,
            eos,
        })
    }

    /// The model's facts.
    pub fn info(&self) -> &ChatInfo {
        &self.info
    }

    /// The most sequences one decode step has run together so far.
    pub fn peak_batch(&self) -> usize {
        self.peak_batch.load(Ordering::Relaxed)
    }

    /// The prompt text the chat template makes of `messages`.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        let tmpl = self
            .template
            .get_template("chat")
            .map_err(|e| Error::Runtime(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
        })
        .map_err(|e| {
            Error::BadRequest(format!(
                "messages do not fit the model's chat template: {e}"
            ))
        })
    }

    /// Token ids of `text` (special tokens in the text are recognised).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::BadRequest(format!("cannot tokenise the prompt: {e}")))
    }

    /// Queues a generation; deltas arrive on the returned channel, ending with
    /// [`Delta::Finish`] or [`Delta::Error`].
    pub fn generate(
        &self,
        prompt: Vec<u32>,
        params: GenParams,
    ) -> Result<tmpsc::UnboundedReceiver<Delta>> {
        if prompt.is_empty() {
            return Err(Error::BadRequest("the prompt is empty".into()));
        }
        if prompt.len() >= self.info.context_length {
            return Err(Error::BadRequest(format!(
                "the prompt has {} tokens; model {} has a context of {} tokens",
                prompt.len(),
                self.info.name,
                self.info.context_length
            )));
        }
        let (tx, rx) = tmpsc::unbounded_channel();
        if let Err(e) = self.tx.try_send(Job { prompt, params, tx }) {
            return Err(match e {
                mpsc::TrySendError::Full(_) => Error::Overloaded(format!(
                    "chat model {} has too many requests waiting",
                    self.info.name
                )),
                mpsc::TrySendError::Disconnected(_) => {
                    Error::Stopped(format!("chat model {} stopped", self.info.name))
                }
            });
        }
        Ok(rx)
    }
}

/// One running sequence.
struct Row {
    tx: tmpsc::UnboundedSender<Delta>,
    params: GenParams,
    rng: StdRng,
    prompt_tokens: usize,
    max_new: usize,
    generated: Vec<u32>,
    /// The token to feed next.
    next: u32,
    /// Position of `next`.
    pos: i64,
    /// Mask over the cache, right-aligned with it.
    mask: Vec<i64>,
    text: TextState,
    finished: bool,
}

impl Row {
    /// Releases any text held back for a possible stop sequence, then ends the stream.
    fn finish(&mut self, reason: &'static str) {
        if let Some(rest) = self.text.flush() {
            let _ = self.tx.send(Delta::Text(rest));
        }
        self.finished = true;
        let _ = self.tx.send(Delta::Finish {
            reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.generated.len(),
        });
    }
}

struct Worker {
    session: Session,
    tokenizer: Arc<Tokenizer>,
    info: ChatInfo,
    eos: Vec<u32>,
    max_batch: usize,
    rows: Vec<Row>,
    /// `2 * layers` values (key, value per layer), `[rows, kv_heads, time, head_dim]`.
    kv: Vec<DynValue>,
    peak_batch: Arc<AtomicUsize>,
}

type Named<'a> = Vec<(String, SessionInputValue<'a>)>;

fn ort_err(name: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Runtime(format!("chat model {name}: {e}"))
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            let job = if self.rows.is_empty() {
                match rx.recv() {
                    Ok(j) => Some(j),
                    Err(_) => return,
                }
            } else if self.rows.len() < self.max_batch {
                rx.try_recv().ok()
            } else {
                None
            };
            if let Some(job) = job {
                self.admit(job);
            }
            if !self.rows.is_empty() {
                if let Err(e) = self.step() {
                    self.fail_all("decode step", &e);
                }
            }
            if let Err(e) = self.reap() {
                self.fail_all("cache re-layout", &e);
            }
        }
    }

    /// Ends every running sequence with `e` and drops the cache.
    fn fail_all(&mut self, what: &str, e: &Error) {
        tracing::error!(error = %e, "chat {what} failed");
        for row in self.rows.drain(..) {
            let _ = row.tx.send(Delta::Error(e.to_string()));
        }
        self.kv.clear();
    }

    fn empty_past(&self, rows: usize) -> Result<Vec<DynValue>> {
        let shape = vec![
            rows as i64,
            self.info.num_kv_heads as i64,
            0,
            self.info.head_dim as i64,
        ];
        (0..2 * self.info.num_layers)
            .map(|_| {
                Tensor::from_array((shape.clone(), Vec::<f32>::new()))
                    .map(|t| t.into_dyn())
                    .map_err(ort_err(&self.info.name))
            })
            .collect()
    }

    /// Runs the model on `ids` (`rows × seq`) over the past `kv`; returns last-position logits
    /// and the new cache.
    fn forward(
        &mut self,
        rows: usize,
        ids: Vec<i64>,
        mask: Vec<i64>,
        positions: Vec<i64>,
        kv: &[DynValue],
    ) -> Result<(Vec<f32>, Vec<DynValue>)> {
        let seq = ids.len() / rows;
        let total = mask.len() / rows;
        let name = self.info.name.clone();
        let err = ort_err(&name);
        let mut inputs: Named<'_> = vec![
            (
                "input_ids".into(),
                Tensor::from_array((vec![rows as i64, seq as i64], ids))
                    .map_err(&err)?
                    .into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array((vec![rows as i64, total as i64], mask))
                    .map_err(&err)?
                    .into(),
            ),
            (
                "position_ids".into(),
                Tensor::from_array((vec![rows as i64, seq as i64], positions))
                    .map_err(&err)?
                    .into(),
            ),
        ];
        for l in 0..self.info.num_layers {
            inputs.push((format!("past_key_values.{l}.key"), (&kv[2 * l]).into()));
            inputs.push((
                format!("past_key_values.{l}.value"),
                (&kv[2 * l + 1]).into(),
            ));
        }
        let mut out = self.session.run(inputs).map_err(&err)?;
        let logits = {
            let (shape, data) = out["logits"].try_extract_tensor::<f32>().map_err(&err)?;
            if shape.len() != 2 || shape[0] as usize != rows {
                return Err(Error::ModelFiles(format!(
                    "chat model {name}: logits have shape {shape:?}, expected [{rows}, vocab]"
                )));
            }
            data.to_vec()
        };
        let mut present = Vec::with_capacity(2 * self.info.num_layers);
        for l in 0..self.info.num_layers {
            for part in ["key", "value"] {
                let v = out.remove(format!("present.{l}.{part}")).ok_or_else(|| {
                    Error::ModelFiles(format!("chat model {name}: no output present.{l}.{part}"))
                })?;
                present.push(v);
            }
        }
        Ok((logits, present))
    }

    fn admit(&mut self, job: Job) {
        let Job { prompt, params, tx } = job;
        if tx.is_closed() {
            return;
        }
        let n = prompt.len();
        let max_new = params
            .max_tokens
            .unwrap_or(usize::MAX)
            .min(self.info.context_length.saturating_sub(n))
            .max(1);
        let seed = params.seed.unwrap_or_else(rand::random);
        let mut row = Row {
            tx,
            rng: StdRng::seed_from_u64(seed),
            prompt_tokens: n,
            max_new,
            generated: Vec::new(),
            next: 0,
            pos: n as i64,
            mask: vec![1; n],
            text: TextState::new(params.stop.clone()),
            params,
            finished: false,
        };
        let result = self.empty_past(1).and_then(|past| {
            self.forward(
                1,
                prompt.iter().map(|&t| i64::from(t)).collect(),
                vec![1; n],
                (0..n as i64).collect(),
                &past,
            )
        });
        let (logits, present) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = row.tx.send(Delta::Error(e.to_string()));
                return;
            }
        };
        self.accept(&mut row, &logits);
        if row.finished {
            return;
        }
        // Merge: the running rows keep their places, the new row goes last.
        let mut sources: Vec<(usize, usize)> = (0..self.rows.len()).map(|r| (0, r)).collect();
        sources.push((1, 0));
        let caches = [std::mem::take(&mut self.kv), present];
        let mut masks: Vec<&mut Vec<i64>> = self.rows.iter_mut().map(|r| &mut r.mask).collect();
        masks.push(&mut row.mask);
        match relayout(&self.info, &caches, &sources, &mut masks) {
            Ok(kv) => {
                self.kv = kv;
                self.rows.push(row);
            }
            Err(e) => {
                let _ = row.tx.send(Delta::Error(e.to_string()));
                self.fail_all("cache merge", &e);
            }
        }
    }

    /// One token for every running row.
    fn step(&mut self) -> Result<()> {
        let b = self.rows.len();
        self.peak_batch.fetch_max(b, Ordering::Relaxed);
        let ids: Vec<i64> = self.rows.iter().map(|r| i64::from(r.next)).collect();
        let positions: Vec<i64> = self.rows.iter().map(|r| r.pos).collect();
        let mut mask = Vec::with_capacity(b * (self.rows[0].mask.len() + 1));
        for r in &self.rows {
            mask.extend_from_slice(&r.mask);
            mask.push(1);
        }
        let kv = std::mem::take(&mut self.kv);
        let (logits, present) = self.forward(b, ids, mask, positions, &kv)?;
        self.kv = present;
        let v = logits.len() / b;
        let mut rows = std::mem::take(&mut self.rows);
        for (i, row) in rows.iter_mut().enumerate() {
            row.mask.push(1);
            row.pos += 1;
            if !row.finished {
                self.accept(row, &logits[i * v..(i + 1) * v]);
            }
        }
        self.rows = rows;
        Ok(())
    }

    /// Samples the row's next token from `logits` and streams what it adds.
    fn accept(&self, row: &mut Row, logits: &[f32]) {
        if row.tx.is_closed() {
            row.finished = true;
            return;
        }
        let token = sample(
            logits,
            row.params.temperature,
            row.params.top_p,
            &mut row.rng,
        );
        if self.eos.contains(&token) {
            row.finish("stop");
            return;
        }
        row.generated.push(token);
        row.next = token;
        let text = self
            .tokenizer
            .decode(&row.generated, true)
            .unwrap_or_default();
        let (delta, stopped) = row.text.advance(&text);
        if !delta.is_empty() {
            let _ = row.tx.send(Delta::Text(delta));
        }
        if stopped {
            // The text was cut at the stop sequence: nothing held back is released.
            row.text.clear_held();
            row.finish("stop");
        } else if row.generated.len() >= row.max_new
            || row.pos as usize + 1 >= self.info.context_length
        {
            row.finish("length");
        }
    }

    /// Drops finished rows and the left padding no running row needs.
    fn reap(&mut self) -> Result<()> {
        if self.rows.iter().all(|r| !r.finished) {
            return Ok(());
        }
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&i| !self.rows[i].finished)
            .collect();
        if keep.is_empty() {
            self.rows.clear();
            self.kv.clear();
            return Ok(());
        }
        let sources: Vec<(usize, usize)> = keep.iter().map(|&r| (0, r)).collect();
        let caches = [std::mem::take(&mut self.kv), Vec::new()];
        let mut rows: Vec<Row> = std::mem::take(&mut self.rows)
            .into_iter()
            .filter(|r| !r.finished)
            .collect();
        let mut masks: Vec<&mut Vec<i64>> = rows.iter_mut().map(|r| &mut r.mask).collect();
        self.kv = relayout(&self.info, &caches, &sources, &mut masks)?;
        self.rows = rows;
        Ok(())
    }
}

/// Builds a batched cache whose row `i` is row `sources[i].1` of cache `caches[sources[i].0]`,
/// right-aligned to the longest real history among them; `masks[i]` (row `i`'s mask before)
/// is re-aligned the same way.
#[allow(clippy::needless_range_loop)] // one layer of every source cache per output value
fn relayout(
    info: &ChatInfo,
    caches: &[Vec<DynValue>],
    sources: &[(usize, usize)],
    masks: &mut [&mut Vec<i64>],
) -> Result<Vec<DynValue>> {
    let err = ort_err(&info.name);
    let real = |m: &Vec<i64>| m.len() - m.iter().take_while(|&&x| x == 0).count();
    let new_t = masks.iter().map(|m| real(m)).max().unwrap_or(0);
    let (h, d) = (info.num_kv_heads, info.head_dim);
    let b = sources.len();
    let mut out = Vec::with_capacity(2 * info.num_layers);
    for layer_part in 0..2 * info.num_layers {
        let mut data = vec![0f32; b * h * new_t * d];
        for (dst, &(cache, row)) in sources.iter().enumerate() {
            let (shape, src) = caches[cache][layer_part]
                .try_extract_tensor::<f32>()
                .map_err(&err)?;
            let src_t = shape[2] as usize;
            let len = src_t.min(new_t);
            for head in 0..h {
                let s0 = ((row * h + head) * src_t + (src_t - len)) * d;
                let d0 = ((dst * h + head) * new_t + (new_t - len)) * d;
                data[d0..d0 + len * d].copy_from_slice(&src[s0..s0 + len * d]);
            }
        }
        let shape = vec![b as i64, h as i64, new_t as i64, d as i64];
        out.push(Tensor::from_array((shape, data)).map_err(&err)?.into_dyn());
    }
    for m in masks.iter_mut() {
        let len = m.len();
        let mut aligned = vec![0i64; new_t];
        let keep = len.min(new_t);
        aligned[new_t - keep..].copy_from_slice(&m[len - keep..]);
        **m = aligned;
    }
    Ok(out)
}

/// Greedy at temperature 0; otherwise softmax with temperature, then nucleus (`top_p`).
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i, x)
                } else {
                    best
                }
            })
            .0 as u32
    };
    if temperature <= 1e-5 || !temperature.is_finite() {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i as u32, ((x - max) / temperature).exp()))
        .filter(|&(_, p)| p > 1e-9)
        .collect();
    probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let total: f32 = probs.iter().map(|p| p.1).sum();
    let top_p = if top_p > 0.0 && top_p < 1.0 {
        top_p
    } else {
        1.0
    };
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1 / total;
        if mass >= top_p {
            break;
        }
    }
    probs.truncate(kept.max(1));
    let total: f32 = probs.iter().map(|p| p.1).sum();
    let mut x = rng.gen::<f32>() * total;
    for &(id, p) in &probs {
        if x < p {
            return id;
        }
        x -= p;
    }
    probs.last().map_or_else(argmax, |p| p.0)
}

/// Turns the growing decoded text into deltas: holds back incomplete UTF-8 and any tail that
/// may be the start of a stop sequence, and cuts the text at the first stop sequence.
#[derive(Debug)]
pub struct TextState {
    stop: Vec<String>,
    emitted: usize,
    text: String,
}

impl TextState {
    /// A state watching for `stop`.
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            emitted: 0,
            text: String::new(),
        }
    }

    /// `text` is everything decoded so far; returns the new delta and whether a stop sequence
    /// ended the text.
    pub fn advance(&mut self, text: &str) -> (String, bool) {
        self.text = text.to_owned();
        if let Some(cut) = self.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            let delta = text.get(self.emitted..cut).unwrap_or_default().to_owned();
            self.emitted = cut.max(self.emitted);
            return (delta, true);
        }
        // A replacement character at the end is a multi-byte character still being decoded.
        let base = text.trim_end_matches('\u{FFFD}').len();
        let mut safe = base;
        for s in &self.stop {
            // The longest proper prefix of a stop sequence the text ends with is held back.
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text[..base].ends_with(&s[..k]) {
                    safe = safe.min(base - k);
                    break;
                }
            }
        }
        if safe <= self.emitted || !text.is_char_boundary(safe) {
            return (String::new(), false);
        }
        let delta = text[self.emitted..safe].to_owned();
        self.emitted = safe;
        (delta, false)
    }

    /// Forgets what was held back (the text ended at a stop sequence).
    pub fn clear_held(&mut self) {
        self.emitted = self.text.len();
    }

    /// What was held back, when generation ends for another reason than a stop sequence.
    pub fn flush(&mut self) -> Option<String> {
        let rest = self
            .text
            .get(self.emitted..)?
            .trim_end_matches('\u{FFFD}')
            .to_owned();
        self.emitted = self.text.len();
        (!rest.is_empty()).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_sequences_cut_and_hold_back() {
        let mut t = TextState::new(vec!["END".into()]);
        assert_eq!(t.advance("Hello"), ("Hello".into(), false));
        assert_eq!(
            t.advance("Hello E"),
            (" ".into(), false),
            "a possible stop start is held"
        );
        assert_eq!(t.advance("Hello EN"), (String::new(), false));
        assert_eq!(
            t.advance("Hello ENX"),
            ("ENX".into(), false),
            "released when it is not a stop"
        );
        assert_eq!(t.advance("Hello ENX END more"), (" ".into(), true));
        let mut t = TextState::new(vec![]);
        assert_eq!(t.advance("مر\u{FFFD}"), ("مر".into(), false));
        assert_eq!(t.advance("مرح"), ("ح".into(), false));
        let mut t = TextState::new(vec!["xyz".into()]);
        assert_eq!(t.advance("abx"), ("ab".into(), false));
        assert_eq!(t.flush(), Some("x".into()));
    }

    #[test]
    fn sampling_is_greedy_at_zero_and_reproducible_with_a_seed() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(sample(&logits, 0.0, 1.0, &mut rng), 1);
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..32)
                .map(|_| sample(&logits, 1.0, 1.0, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let d = draw(7);
        assert!(d.contains(&1) && d.contains(&2), "{d:?}");
        // top_p small enough keeps only the most likely token.
        let mut rng = StdRng::seed_from_u64(3);
        assert!((0..50).all(|_| sample(&logits, 1.0, 0.3, &mut rng) == 1));
    }
}
