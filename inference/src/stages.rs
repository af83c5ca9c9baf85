//! The inference stage: calls the model a request was routed to (the policy stages that route it
//! live in `isnad_pipeline::policy`).
//!
//! ```text
//! handler: request.received ─► guardrail ─► guardrail.evaluated ─► router ─► route.selected
//!          (one atomic group, evaluated in the request's task and queued to the   │
//!           journal; the model call starts while the journal seals it)  dispatch ◄─┘
//!        completion.finished / model.fallback / request.rejected ◄── (own task)
//! ```
//!
//! The request itself (body, response channel) rides along as an in-RAM [`InferenceRequest`]
//! attachment; events carry only hashes and counts. [`dispatch`] serves each request in its own
//! task, so one slow upstream never holds up the others and a client that goes away does not
//! stop the outcome from being journaled.

use std::{sync::Arc, time::Instant};

use futures_util::StreamExt as _;
use isnad_journal::Journal;
pub use isnad_pipeline::policy::{Endpoint, Scope, AUTO_ROUTER, LOCAL_ONLY};
use isnad_pipeline::Attachment;
use isnad_schemas::{CompletionFinished, ModelFallback, NewEvent, RequestRejected, RouteSelected};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::{
    registry::{Model, Registry, Residency},
    Error,
};

/// What the inference stage sends back to the waiting handler, in order.
#[derive(Debug)]
pub enum Item {
    /// The route chosen (first item).
    Routed {
        /// Model id.
        model: String,
        /// `local` or `external`.
        residency: &'static str,
        /// Route or policy name.
        policy: String,
    },
    /// A complete non-streaming answer.
    Json(Value),
    /// One chunk of a streamed answer (the API encodes it as an SSE event).
    Chunk(isnad_schemas::openai::ChatCompletionChunk),
    /// The request failed; nothing (more) will come from the model. The API decides what the
    /// client is told.
    Failed(Error),
    /// Everything is journaled; the handler waits for `seq` to be durable, then finishes.
    Done {
        /// Seq of the request's last event.
        seq: u64,
    },
}

/// The in-RAM attachment of a chat or embeddings request.
pub struct InferenceRequest {
    /// Endpoint.
    pub endpoint: Endpoint,
    /// The client's body, passed through (with `model` replaced by the upstream's name).
    pub body: Value,
    /// Model the client asked for.
    pub requested_model: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the client asked for a stream's usage chunk. The gateway asks the model for it
    /// on its own account (its token counts come from it); a client that did not ask does not
    /// get it.
    pub forward_usage: bool,
    /// Back to the handler.
    pub tx: mpsc::Sender<Item>,
    /// When the request arrived.
    pub started: Instant,
    /// What the client's credentials allow; `local_only` also when the request's data must stay
    /// inside the boundary.
    pub scope: Scope,
    /// The chosen route's own fallbacks, tried before the model's.
    pub fallbacks: Vec<String>,
    /// The HTTP status and code a failure is answered with (the API's one mapping), for the
    /// `request.rejected` that journals it.
    pub classify: fn(&Error) -> (u16, &'static str),
}

/// Most models one request tries: the chosen one and its fallbacks.
pub const MAX_HOPS: usize = 4;

fn request_of(a: Option<&Attachment>) -> Option<&InferenceRequest> {
    a.and_then(|a| a.downcast_ref::<InferenceRequest>())
}

fn sha256_tag(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Serves a routed request in a task of its own: calls the chosen model (and its fallbacks in
/// turn), streams the answer back to the handler and journals the outcome. `route` is the
/// request's `route.selected` event, submitted to the journal (it may still be being sealed:
/// the outcome, appended later, is sequenced after it).
pub fn dispatch(
    registry: Arc<Registry>,
    journal: Journal,
    route: NewEvent,
    attachment: Attachment,
) -> Result<(), String> {
    let payload: RouteSelected = route.payload_as().map_err(|e| e.to_string())?;
    if request_of(Some(&attachment)).is_none() {
        return Err("not an inference request".into());
    }
    tokio::spawn(async move {
        if let Some(req) = request_of(Some(&attachment)) {
            serve(registry, journal, route, payload, req).await;
        }
    });
    Ok(())
}

/// Outcome events get ids derived from the route event, so they are unique and stable.
fn outcome(input: &NewEvent, n: usize, ev: NewEvent) -> NewEvent {
    isnad_pipeline::derive_output_of_event("inference", input, n, ev)
}

async fn serve(
    registry: Arc<Registry>,
    journal: Journal,
    input: NewEvent,
    route: RouteSelected,
    req: &InferenceRequest,
) {
    let tx = &req.tx;
    // The route's fallbacks, then the model's (each model once: no cycles), at most
    // `MAX_HOPS` tries; they keep to the client's scope and, for data that must stay inside
    // the boundary, to local models.
    let mut chain: Vec<&Model> = Vec::new();
    let heads =
        std::iter::once(route.model.as_str()).chain(req.fallbacks.iter().map(String::as_str));
    for head in heads {
        for m in registry.with_fallbacks(head) {
            let eligible = chain.is_empty()
                || (req.scope.permits(&m.config.id)
                    && (!req.scope.local_only || m.config.residency == Residency::Local));
            if eligible && !chain.iter().any(|c| c.config.id == m.config.id) {
                chain.push(m);
            }
        }
    }
    chain.truncate(MAX_HOPS);
    let Some(first) = chain.first() else { return };
    let _ = tx
        .send(Item::Routed {
            model: first.config.id.clone(),
            residency: first.config.residency.as_str(),
            policy: route.policy.clone(),
        })
        .await;
    let mut n = 0usize;
    let mut last_error = None;
    for (i, model) in chain.iter().enumerate() {
        let mut body = req.body.clone();
        body["model"] = Value::String(model.upstream_model().to_owned());
        let path = req.endpoint.upstream_path();
        let result = if req.stream {
            stream_one(&model.backend, path, &body, req, &model.config.id).await
        } else {
            json_one(&model.backend, path, &body, req, &model.config.id).await
        };
        match result {
            Ok(done) => {
                let ev = CompletionFinished {
                    model: model.config.id.clone(),
                    prompt_tokens: done.prompt_tokens,
                    completion_tokens: done.completion_tokens,
                    latency_us: req.started.elapsed().as_micros() as u64,
                    ttft_us: done.ttft_us,
                    completion_hash: done.hash,
                    finish_reason: done.finish_reason,
                };
                finish(
                    &journal,
                    tx,
                    NewEvent::new(&ev).map(|ev| outcome(&input, n, ev)),
                )
                .await;
                return;
            }
            Err(Attempt::Retryable(e)) => {
                if let Some(next) = chain.get(i + 1) {
                    let fb = ModelFallback {
                        from_model: model.config.id.clone(),
                        to_model: next.config.id.clone(),
                        error: e.to_string(),
                    };
                    if let Ok(ev) = NewEvent::new(&fb) {
                        let _ = journal.append_sequenced(vec![outcome(&input, n, ev)]).await;
                        n += 1;
                    }
                }
                last_error = Some(e);
            }
            Err(Attempt::Final {
                finish_reason,
                error,
                partial,
            }) => {
                // Some of the answer already reached the client: no fallback can take it back.
                if let Some(e) = error {
                    let _ = tx.send(Item::Failed(e)).await;
                }
                let ev = CompletionFinished {
                    model: model.config.id.clone(),
                    prompt_tokens: partial.prompt_tokens,
                    completion_tokens: partial.completion_tokens,
                    latency_us: req.started.elapsed().as_micros() as u64,
                    ttft_us: partial.ttft_us,
                    completion_hash: partial.hash,
                    finish_reason,
                };
                finish(
                    &journal,
                    tx,
                    NewEvent::new(&ev).map(|ev| outcome(&input, n, ev)),
                )
                .await;
                return;
            }
        }
    }
    let e = last_error.unwrap_or(Error::Internal("no model to try".into()));
    let (status, code) = (req.classify)(&e);
    let rejected = RequestRejected {
        endpoint: req.endpoint.path().into(),
        status,
        code: code.into(),
        message: e.to_string(),
    };
    let _ = tx.send(Item::Failed(e)).await;
    finish(
        &journal,
        tx,
        NewEvent::new(&rejected).map(|ev| outcome(&input, n, ev)),
    )
    .await;
}

/// Appends a request's outcome durably (the journal flushes at once for it, with everything
/// still pending before it), then tells the handler, which may answer at once.
async fn finish(journal: &Journal, tx: &mpsc::Sender<Item>, ev: isnad_schemas::Result<NewEvent>) {
    let appended = match ev {
        Ok(ev) => journal.append(vec![ev]).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match appended {
        Ok(r) => {
            let _ = tx.send(Item::Done { seq: r[0].seq }).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot journal the outcome of a request");
            let _ = tx.send(Item::Failed(Error::Journal(e))).await;
        }
    }
}

#[derive(Default)]
struct Done {
    prompt_tokens: u64,
    completion_tokens: u64,
    ttft_us: Option<u64>,
    hash: String,
    finish_reason: String,
}

enum Attempt {
    /// Nothing reached the client: the next fallback may try.
    Retryable(Error),
    /// Part of the answer reached the client (or the client left).
    Final {
        finish_reason: String,
        error: Option<Error>,
        partial: Done,
    },
}

fn usage(v: &Value) -> (u64, u64) {
    (
        v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        v["usage"]["completion_tokens"].as_u64().unwrap_or(0),
    )
}

async fn json_one(
    up: &crate::registry::Backend,
    path: &str,
    body: &Value,
    req: &InferenceRequest,
    model_id: &str,
) -> Result<Done, Attempt> {
    let mut v = up.json(path, body).await.map_err(Attempt::Retryable)?;
    let (prompt_tokens, completion_tokens) = usage(&v);
    let text = v["choices"][0]["message"].to_string();
    let finish_reason = v["choices"][0]["finish_reason"]
        .as_str()
        .unwrap_or(if req.endpoint == Endpoint::Embeddings {
            "embedding"
        } else {
            "stop"
        })
        .to_owned();
    let hash = sha256_tag(
        if req.endpoint == Endpoint::Embeddings {
            v["data"].to_string()
        } else {
            text
        }
        .as_bytes(),
    );
    let Some(answer) = v.as_object_mut() else {
        return Err(Attempt::Retryable(Error::Stream(
            "the upstream's answer is not a JSON object".into(),
        )));
    };
    answer.insert("model".into(), Value::String(model_id.to_owned()));
    if req.tx.send(Item::Json(v)).await.is_err() {
        return Err(Attempt::Final {
            finish_reason: "client_disconnected".into(),
            error: None,
            partial: Done {
                prompt_tokens,
                completion_tokens,
                ttft_us: None,
                hash,
                finish_reason: String::new(),
            },
        });
    }
    Ok(Done {
        prompt_tokens,
        completion_tokens,
        ttft_us: None,
        hash,
        finish_reason,
    })
}

async fn stream_one(
    up: &crate::registry::Backend,
    path: &str,
    body: &Value,
    req: &InferenceRequest,
    model_id: &str,
) -> Result<Done, Attempt> {
    let mut chunks_in = up.stream(path, body).await.map_err(Attempt::Retryable)?;
    let mut hasher = Sha256::new();
    let mut done = Done {
        finish_reason: "stop".into(),
        ..Done::default()
    };
    let mut chunks = 0u64;
    // Without a usage chunk (an upstream that ignores `stream_options.include_usage`), the
    // tokens are counted here rather than charged as nothing: at least one per content chunk,
    // and at least one per 4 bytes of text either way (the prompt from the request's JSON).
    let prompt_bytes = body
        .get("messages")
        .map_or(0, |m| m.to_string().len() as u64);
    let mut usage_seen = false;
    let mut content_bytes = 0u64;
    let finalise = |mut d: Done, h: Sha256, usage_seen: bool, content_bytes: u64| {
        d.hash = format!("sha256:{}", hex::encode(h.finalize()));
        if !usage_seen {
            d.prompt_tokens = prompt_bytes.div_ceil(4);
            d.completion_tokens = d.completion_tokens.max(content_bytes.div_ceil(4));
        }
        d
    };
    while let Some(chunk) = chunks_in.next().await {
        let mut chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                // Nothing reached the client yet: another model may answer. Otherwise the client
                // gets an SSE error, and what was sent is journaled.
                if chunks == 0 {
                    return Err(Attempt::Retryable(e));
                }
                return Err(Attempt::Final {
                    finish_reason: "error".into(),
                    error: Some(e),
                    partial: finalise(done, hasher, usage_seen, content_bytes),
                });
            }
        };
        if done.ttft_us.is_none() {
            done.ttft_us = Some(req.started.elapsed().as_micros() as u64);
        }
        if let Some(choice) = chunk.choices.first() {
            if let Some(c) = &choice.delta.content {
                hasher.update(c.as_bytes());
                content_bytes += c.len() as u64;
                done.completion_tokens += 1;
            }
            for call in choice.delta.tool_calls.iter().flatten() {
                if let Some(args) = call["function"]["arguments"].as_str() {
                    hasher.update(args.as_bytes());
                }
            }
            if let Some(f) = &choice.finish_reason {
                done.finish_reason = f.clone();
            }
        }
        if let Some(u) = &chunk.usage {
            usage_seen = true;
            done.prompt_tokens = u.prompt_tokens;
            done.completion_tokens = u.completion_tokens;
        }
        if !req.forward_usage && chunk.usage.take().is_some() && chunk.choices.is_empty() {
            continue;
        }
        chunk.model = model_id.to_owned();
        chunks += 1;
        if req.tx.send(Item::Chunk(chunk)).await.is_err() {
            return Err(Attempt::Final {
                finish_reason: "client_disconnected".into(),
                error: None,
                partial: finalise(done, hasher, usage_seen, content_bytes),
            });
        }
    }
    Ok(finalise(done, hasher, usage_seen, content_bytes))
}
