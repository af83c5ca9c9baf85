//! The OpenAI-compatible endpoints. Each handler reads top to bottom: parse the body into the
//! typed wire request, admit it (the key was checked by the [`Admitted`] extractor; the role is
//! checked here), submit it (the policy stages decide, and the request's group goes to the
//! journal while the model is called), respond. Every refusal after admission, whichever step
//! makes it, is journaled in one shape: `request.received`, the events of the steps that ran,
//! `request.rejected` with its code. Nothing is acknowledged before its events are durable.

use std::{convert::Infallible, sync::Arc, time::Instant};

use axum::{
    body::{Body, Bytes},
    extract::{rejection::BytesRejection, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use isnad_inference::{
    registry::Registry,
    stages::{InferenceRequest, Item},
};
use isnad_pipeline::{
    access::{Ask, Budgets, ReserveError},
    derive_output_of_event,
    policy::{self, Endpoint, RequestContext, RequestStage, AUTO_ROUTER},
    Attachment, Bus,
};
use isnad_schemas::{
    openai::{
        self, ChatCompletionRequest, EmbeddingInput, EmbeddingsRequest, IsnadOptions,
        MessageContent,
    },
    NewEvent, Payload as _, RefusalCode, RequestReceived, RequestRejected, RouteSelected,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::{
    admission::{Admitted, Unadmitted},
    auth::Credentials,
    error::ApiError,
    idempotency::{Begin, Idempotency},
};

/// What the gateway handlers share.
#[derive(Clone)]
pub struct Gateway {
    /// The bus (and through it the journal).
    pub bus: Bus,
    /// Models.
    pub registry: Arc<Registry>,
    /// The admin token and the configured API keys.
    pub credentials: Arc<Credentials>,
    /// Budgets and their holds.
    pub budgets: Arc<Budgets>,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// The request path's policy stages, in the configured order.
    pub stages: Arc<[Arc<dyn RequestStage>]>,
    /// What the stages read: the live routing policy, the scanner, measured latencies.
    pub policy: policy::StageInputs,
    /// Refusals before admission, counted for the journal's summaries.
    pub unadmitted: Arc<Unadmitted>,
    /// Outcomes of recent requests with an `Idempotency-Key`.
    pub idempotency: Arc<Idempotency>,
}

/// Headers every gateway response carries.
struct Trace {
    request_id: String,
    audit: Option<String>,
    node_id: String,
    route_policy: Option<String>,
    residency: Option<&'static str>,
}

impl Trace {
    fn apply(&self, mut resp: Response) -> Response {
        let headers = resp.headers_mut();
        let mut set = |name: &'static str, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set("x-request-id", &self.request_id);
        set("x-sovereign-id", &self.node_id);
        if let Some(a) = &self.audit {
            set("x-audit-trace-id", a);
        }
        if let Some(p) = &self.route_policy {
            set("x-route-policy", p);
        }
        if let Some(r) = self.residency {
            set("x-data-residency", r);
        }
        resp
    }
}

/// Longest client-chosen request id accepted.
const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-Id` if it is usable (1 to [`MAX_REQUEST_ID`] visible ASCII
/// characters), a fresh one if it sent none, or the refusal of one it cannot have.
fn request_id(headers: &HeaderMap) -> (String, Option<ApiError>) {
    let fresh = || format!("req_{}", uuid::Uuid::now_v7().simple());
    let Some(v) = headers.get("x-request-id") else {
        return (fresh(), None);
    };
    match v.to_str() {
        Ok(id)
            if (1..=MAX_REQUEST_ID).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            (id.to_owned(), None)
        }
        _ => (
            fresh(),
            Some(ApiError::bad(
                "x-request-id",
                format!("X-Request-Id must be 1 to {MAX_REQUEST_ID} visible ASCII characters"),
            )),
        ),
    }
}

fn sha256_tag(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A request body, parsed and checked: what the policy stages and the model call need.
struct Parsed {
    model: String,
    stream: bool,
    /// The client asked for the usage chunk of a stream (isnad asks the upstream for it anyway).
    forward_usage: bool,
    prompt_hash: String,
    /// What the model is sent: the client's fields, unknown ones included, isnad's own removed.
    body: Value,
    uses_tools: Option<&'static str>,
    uses_dimensions: bool,
    options: IsnadOptions,
    /// The text a model would see, for the policy stages (RAM only).
    prompt: Vec<String>,
}

fn parse_chat(bytes: &[u8]) -> Result<Parsed, ApiError> {
    let mut req: ChatCompletionRequest = openai::parse_json(bytes)?;
    req.validate()?;
    let options = req.take_isnad_options()?;
    let stream = req.stream == Some(true);
    // A stream's token counts come from its usage chunk: asked for on isnad's own account, and
    // passed on only to a client that asked too.
    let forward_usage = req.with_upstream_usage();
    let uses_tools = [
        ("tools", req.tools.is_some()),
        ("tool_choice", req.tool_choice.is_some()),
        ("response_format", req.response_format.is_some()),
    ]
    .into_iter()
    .find_map(|(p, set)| set.then_some(p));
    let prompt = req
        .messages
        .iter()
        .flat_map(|m| match &m.content {
            Some(MessageContent::Text(t)) => vec![t.clone()],
            Some(MessageContent::Parts(parts)) => {
                parts.iter().filter_map(|p| p.text.clone()).collect()
            }
            None => vec![],
        })
        .collect();
    Ok(Parsed {
        prompt,
        prompt_hash: sha256_tag(&serde_json::to_vec(&req.messages).map_err(internal)?),
        model: req.model.clone(),
        stream,
        forward_usage,
        uses_tools,
        uses_dimensions: false,
        body: serde_json::to_value(&req).map_err(internal)?,
        options,
    })
}

fn parse_embeddings(bytes: &[u8]) -> Result<Parsed, ApiError> {
    let mut req: EmbeddingsRequest = openai::parse_json(bytes)?;
    req.validate()?;
    let options = req.take_isnad_options()?;
    let prompt = match &req.input {
        EmbeddingInput::Text(t) => vec![t.clone()],
        EmbeddingInput::Texts(ts) => ts.clone(),
        EmbeddingInput::Tokens(_) | EmbeddingInput::TokenArrays(_) => vec![],
    };
    Ok(Parsed {
        prompt,
        prompt_hash: sha256_tag(&serde_json::to_vec(&req.input).map_err(internal)?),
        model: req.model.clone(),
        stream: false,
        forward_usage: false,
        uses_tools: None,
        uses_dimensions: req.dimensions.is_some(),
        body: serde_json::to_value(&req).map_err(internal)?,
        options,
    })
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

fn body_rejection(r: BytesRejection, limit: usize) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::refuse(
            RefusalCode::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    } else {
        ApiError::refuse(RefusalCode::InvalidRequest, r.body_text())
    }
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(gw): State<Gateway>,
    admitted: Admitted,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    idempotent(gw, admitted, headers, body, Endpoint::Chat, parse_chat).await
}

/// `POST /v1/embeddings`
pub async fn embeddings(
    State(gw): State<Gateway>,
    admitted: Admitted,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    idempotent(
        gw,
        admitted,
        headers,
        body,
        Endpoint::Embeddings,
        parse_embeddings,
    )
    .await
}

/// Serves a model call, or answers a retry of one with its first outcome (`Idempotency-Key`).
async fn idempotent(
    gw: Gateway,
    admitted: Admitted,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
    parse: fn(&[u8]) -> Result<Parsed, ApiError>,
) -> Response {
    let begun = body.as_ref().ok().and_then(|b| {
        gw.idempotency
            .begin(&admitted.principal.name, endpoint.path(), &headers, b)
    });
    let ticket = match begun {
        None => None,
        Some(Begin::Answer(r)) => return r,
        Some(Begin::Run(t)) => Some(t),
    };
    let store = gw.idempotency.clone();
    let resp = Call::new(gw, admitted, &headers, endpoint)
        .serve(body, parse)
        .await;
    match ticket {
        Some(t) => store.finish(t, resp),
        None => resp,
    }
}

/// Detaches the request's attachment however the response ends (including a client that leaves).
struct Detach {
    bus: Bus,
    request_id: String,
}

impl Drop for Detach {
    fn drop(&mut self) {
        self.bus.detach(&self.request_id);
    }
}

/// One admitted request, from its body to its answer.
struct Call {
    gw: Gateway,
    endpoint: Endpoint,
    trace: Trace,
    admitted: Admitted,
    started: Instant,
    /// A refusal found before the body was read (an unusable `X-Request-Id`).
    early: Option<ApiError>,
    /// The client asked for a stream.
    stream: bool,
    /// The client sent `X-Route-Policy: local-only`.
    local_only: bool,
    /// Placeholders the guardrail put in the prompt, restored in the answer (RAM only).
    vault: policy::Vault,
}

/// Whether the client asked for local models only (`X-Route-Policy: local-only`), or the
/// error for a value isnad does not know.
fn route_policy_header(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers.get("x-route-policy").map(|v| v.to_str()) {
        None => Ok(false),
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case(policy::LOCAL_ONLY) => Ok(true),
        Some(_) => Err(ApiError::refuse(
            RefusalCode::InvalidRequest,
            "X-Route-Policy: the only value is `local-only`",
        )),
    }
}

/// Puts the guardrail's redacted `prompt` back in `body`, part for part, in the order the
/// parts were read (chat message contents and text parts; embedding inputs).
fn rewrite_prompt(endpoint: Endpoint, body: &mut Value, prompt: &[String]) {
    let mut parts = prompt.iter();
    let mut put = |slot: &mut Value| {
        if let (Value::String(s), Some(p)) = (&mut *slot, parts.next()) {
            s.clone_from(p);
        }
    };
    match endpoint {
        Endpoint::Chat => {
            let Some(Value::Array(messages)) = body.get_mut("messages") else {
                return;
            };
            for m in messages {
                match m.get_mut("content") {
                    Some(c @ Value::String(_)) => put(c),
                    Some(Value::Array(items)) => {
                        for item in items {
                            if let Some(t @ Value::String(_)) = item.get_mut("text") {
                                put(t);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Endpoint::Embeddings => match body.get_mut("input") {
            Some(t @ Value::String(_)) => put(t),
            Some(Value::Array(items)) => items.iter_mut().for_each(&mut put),
            _ => {}
        },
    }
}

/// Restores the vault's placeholders in every choice's message content of an answer.
fn restore_answer(vault: &policy::Vault, answer: &mut Value) {
    if vault.is_empty() {
        return;
    }
    if let Some(Value::Array(choices)) = answer.get_mut("choices") {
        for c in choices {
            if let Some(Value::String(text)) = c.pointer_mut("/message/content") {
                *text = vault.restore(text);
            }
        }
    }
}

impl Call {
    fn new(gw: Gateway, admitted: Admitted, headers: &HeaderMap, endpoint: Endpoint) -> Self {
        let (request_id, mut early) = request_id(headers);
        let local_only = route_policy_header(headers).unwrap_or_else(|e| {
            early = early.take().or(Some(e));
            false
        });
        let trace = Trace {
            request_id,
            audit: None,
            node_id: gw.bus.journal().node_id(),
            route_policy: None,
            residency: None,
        };
        Self {
            gw,
            endpoint,
            trace,
            admitted,
            started: Instant::now(),
            early,
            stream: false,
            local_only,
            vault: policy::Vault::new(),
        }
    }

    /// Parse, admit, submit, respond.
    async fn serve(
        mut self,
        body: Result<Bytes, BytesRejection>,
        parse: fn(&[u8]) -> Result<Parsed, ApiError>,
    ) -> Response {
        let bytes = match body {
            Ok(b) => b,
            Err(r) => {
                let err = body_rejection(r, self.gw.max_body_bytes);
                return self.refuse_unparsed(&[], err).await;
            }
        };
        let role = self.admitted.principal.role;
        let early = match self.early.take() {
            Some(e) => Some(e),
            None if !role.may_infer() => Some(ApiError::role_forbidden(role, "call models")),
            None => None,
        };
        if let Some(err) = early {
            return self.refuse_unparsed(&bytes, err).await;
        }
        let parsed = match parse(&bytes) {
            Ok(p) => p,
            Err(err) => {
                return self.refuse_unparsed(&bytes, err).await;
            }
        };
        self.submit(parsed).await
    }

    fn received(
        &self,
        model: &str,
        prompt_hash: String,
        stream: bool,
    ) -> Result<NewEvent, ApiError> {
        let ev = NewEvent::new(&RequestReceived {
            endpoint: self.endpoint.path().into(),
            model: model.to_owned(),
            prompt_hash,
            stream,
            client_ip: self.admitted.source.map(|a| a.to_string()),
        })
        .map_err(internal)?
        .request_id(&self.trace.request_id)
        .actor(self.admitted.actor.clone());
        Ok(match &self.admitted.principal.team {
            Some(team) => ev.team(team.clone()),
            None => ev,
        })
    }

    /// Refuses a request whose body was not parsed (or not read): its `request.received` has
    /// the body's hash and no model.
    async fn refuse_unparsed(self, bytes: &[u8], err: ApiError) -> Response {
        let received = self.received("", sha256_tag(bytes), false);
        self.refuse(received, vec![], "gateway", err).await
    }

    /// Journals the refusal as the request's group (the request, the steps' `events`, then
    /// `request.rejected` from `stage`), durably, then answers it.
    async fn refuse(
        mut self,
        received: Result<NewEvent, ApiError>,
        events: Vec<NewEvent>,
        stage: &str,
        err: ApiError,
    ) -> Response {
        let received = match received {
            Ok(r) => r,
            Err(e) => return self.trace.apply(e.into_response()),
        };
        let rejected = NewEvent::new(&RequestRejected {
            endpoint: self.endpoint.path().into(),
            status: err.status().as_u16(),
            code: err.code().into(),
            message: err.to_string(),
        })
        .map(|ev| derive_output_of_event(stage, &received, events.len(), ev));
        let rejected = match rejected {
            Ok(r) => r,
            Err(e) => return self.trace.apply(internal(e).into_response()),
        };
        let mut group = Vec::with_capacity(events.len() + 2);
        group.push(received);
        group.extend(events);
        group.push(rejected);
        let receipts = match self.gw.bus.submit_group(group, None, true) {
            Ok(submitted) => submitted.sequenced().await,
            Err(e) => Err(e),
        };
        match receipts {
            Ok(receipts) => {
                self.set_audit(&receipts);
                self.trace.apply(err.into_response())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot journal a refusal");
                self.trace.apply(ApiError::from(e).into_response())
            }
        }
    }

    fn set_audit(&mut self, receipts: &[isnad_journal::Receipt]) {
        if let Some(first) = receipts.first() {
            self.trace.audit = Some(format!("{}:{}", first.seq, hex::encode(first.hash)));
        }
    }

    /// Runs the policy stages, journals the request's group and calls the model the router
    /// chose while the journal seals it.
    async fn submit(mut self, parsed: Parsed) -> Response {
        let received = match self.received(&parsed.model, parsed.prompt_hash.clone(), parsed.stream)
        {
            Ok(r) => r,
            Err(e) => return self.trace.apply(e.into_response()),
        };
        let principal = self.admitted.principal.clone();
        self.stream = parsed.stream;
        let mut ctx = RequestContext::new(parsed.prompt, self.endpoint, parsed.model.clone());
        ctx.team = principal.team.clone();
        ctx.key = principal.key_id.clone();
        ctx.local_only = principal.scope.local_only || self.local_only;
        ctx.scope = principal.scope.clone();
        ctx.uses_tools = parsed.uses_tools;
        ctx.uses_dimensions = parsed.uses_dimensions;
        ctx.profile = parsed
            .options
            .routing
            .as_ref()
            .and_then(|r| r.profile)
            .or(parsed.options.routing_preference);
        let evaluated = match policy::evaluate(&self.gw.stages, &received, &mut ctx) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(request_id = %self.trace.request_id, error = %e, "a request-path stage failed");
                return self
                    .refuse(Ok(received), vec![], "gateway", internal(e))
                    .await;
            }
        };
        if let Some((stage, refusal)) = evaluated.refusal {
            return self
                .refuse(Ok(received), evaluated.events, &stage, refusal.into())
                .await;
        }
        let Some(route) = evaluated
            .events
            .iter()
            .find(|e| e.kind == RouteSelected::KIND)
            .cloned()
        else {
            let err = internal("the router chose no model");
            return self
                .refuse(Ok(received), evaluated.events, "gateway", err)
                .await;
        };
        let mut events = evaluated.events;
        let max_tokens = requested_max_tokens(self.endpoint, &parsed.body);
        let hold = match self.hold(&received, &route, max_tokens, &ctx, events.len()) {
            Ok(h) => h,
            Err(err) => return self.refuse(Ok(received), events, "budget", err).await,
        };
        let hold_at = events.len() + 1;
        events.push(hold);
        let (tx, rx) = mpsc::channel::<Item>(64);
        let mut body = parsed.body;
        if !ctx.vault.is_empty() {
            rewrite_prompt(self.endpoint, &mut body, &ctx.prompt);
            self.vault = std::mem::take(&mut ctx.vault);
        }
        let attachment: Attachment = Arc::new(InferenceRequest {
            endpoint: self.endpoint,
            body,
            fallbacks: std::mem::take(&mut ctx.route.fallbacks),
            requested_model: parsed.model,
            stream: parsed.stream,
            forward_usage: parsed.forward_usage,
            tx,
            started: self.started,
            scope: policy::Scope {
                local_only: ctx.local_only,
                ..ctx.scope
            },
            classify: crate::error::classify,
        });
        // Attached before the group is built, so that a request id already in flight is
        // refused like any other step's refusal, with the group journaled.
        if let Err(e) = self
            .gw
            .bus
            .attach_new(&self.trace.request_id, attachment.clone())
        {
            self.gw.budgets.cancel(&self.trace.request_id);
            events.pop();
            return self.refuse(Ok(received), events, "gateway", e.into()).await;
        }
        let detach = Detach {
            bus: self.gw.bus.clone(),
            request_id: self.trace.request_id.clone(),
        };
        let mut group = vec![received];
        group.extend(events);
        let submitted = match self.gw.bus.submit_group(group, None, false) {
            Ok(s) => s,
            Err(e) => {
                self.gw.budgets.cancel(&self.trace.request_id);
                tracing::error!(error = %e, "cannot journal a request");
                return self.trace.apply(ApiError::from(e).into_response());
            }
        };
        // The model call starts now, while the journal seals the group; the outcome is appended
        // after the group, and nothing is answered before both are durable.
        let dispatched = isnad_inference::stages::dispatch(
            self.gw.registry.clone(),
            self.gw.bus.journal().clone(),
            route,
            attachment,
        );
        match submitted.sequenced().await {
            Ok(receipts) => {
                if let Some(r) = receipts.get(hold_at) {
                    self.gw.budgets.sequenced(&self.trace.request_id, r.seq);
                }
                self.set_audit(&receipts);
            }
            Err(e) => {
                self.gw.budgets.cancel(&self.trace.request_id);
                tracing::error!(error = %e, "cannot journal a request");
                return self.trace.apply(ApiError::from(e).into_response());
            }
        }
        if let Err(e) = dispatched {
            tracing::error!(request_id = %self.trace.request_id, error = %e, "request not dispatched");
            return self.trace.apply(internal(e).into_response());
        }
        self.respond(rx, detach).await
    }

    /// The budget hold of the request (`budget.reserved`, the group's next event), or the
    /// 429 of the budget it would overrun.
    fn hold(
        &self,
        received: &NewEvent,
        route: &NewEvent,
        max_tokens: Option<u64>,
        ctx: &RequestContext,
        index: usize,
    ) -> Result<NewEvent, ApiError> {
        let chosen = route.payload_as::<RouteSelected>().map_err(internal)?.model;
        let model = policy::ModelCatalog::model(&*self.gw.registry, &chosen)
            .ok_or_else(|| internal(format!("the router chose an unknown model `{chosen}`")))?;
        let principal = &self.admitted.principal;
        let ask = Ask {
            request_id: &self.trace.request_id,
            team: principal.team.as_deref(),
            key_id: principal.key_id.as_deref(),
            model,
            prompt_bytes: ctx.prompt.iter().map(|p| p.len() as u64).sum(),
            parts: ctx.prompt.len() as u64,
            max_tokens,
            key_limits: self.gw.credentials.key_limits(principal),
            team_limits: principal.team_limits,
        };
        match self.gw.budgets.reserve(&ask) {
            Ok(r) => {
                if let Some(w) = r.tokens {
                    self.admitted.rate.report(w);
                }
                Ok(derive_output_of_event("budget", received, index, r.event))
            }
            Err(ReserveError::Exceeded(e)) => Err(ApiError::budget_exceeded(&e)),
            Err(ReserveError::Limited(l)) => {
                self.admitted.rate.report(l.window.clone());
                Err(ApiError::RateLimited(l))
            }
            Err(ReserveError::Encode(e)) => Err(internal(e)),
        }
    }

    /// Reads the inference stage's items and shapes the answer.
    async fn respond(mut self, mut rx: mpsc::Receiver<Item>, detach: Detach) -> Response {
        match rx.recv().await {
            Some(Item::Routed {
                model: _,
                residency,
                policy,
            }) => {
                self.trace.route_policy = Some(policy);
                self.trace.residency = Some(residency);
            }
            other => return self.unexpected(other),
        }
        if self.stream {
            return stream_response(self.gw, self.trace, rx, detach, self.vault);
        }
        let mut answer = match rx.recv().await {
            Some(Item::Json(v)) => v,
            Some(Item::Failed(e)) => {
                return self.finish_failure(&mut rx, ApiError::from(&e)).await;
            }
            other => return self.unexpected(other),
        };
        match rx.recv().await {
            Some(Item::Done { seq }) => {
                if self.gw.bus.journal().wait_durable(seq).await.is_err() {
                    return self.trace.apply(ApiError::Unavailable.into_response());
                }
            }
            // The answer came, but its outcome could not be journaled: it is not released.
            Some(Item::Failed(e)) => return self.trace.apply(ApiError::from(&e).into_response()),
            other => return self.unexpected(other),
        }
        drop(detach);
        restore_answer(&self.vault, &mut answer);
        self.trace.apply(Json(answer).into_response())
    }

    /// The stage ended a request with an error: wait for its event to be durable, then answer.
    async fn finish_failure(self, rx: &mut mpsc::Receiver<Item>, err: ApiError) -> Response {
        if let Some(Item::Done { seq }) = rx.recv().await {
            let _ = self.gw.bus.journal().wait_durable(seq).await;
        }
        self.trace.apply(err.into_response())
    }

    fn unexpected(self, item: Option<Item>) -> Response {
        tracing::error!(request_id = %self.trace.request_id, ?item, "pipeline answered out of order");
        self.trace
            .apply(internal("pipeline answered out of order").into_response())
    }
}

/// The completion tokens a request allows (`max_completion_tokens`, else `max_tokens`); none
/// for an embedding.
fn requested_max_tokens(endpoint: Endpoint, body: &Value) -> Option<u64> {
    match endpoint {
        Endpoint::Embeddings => Some(0),
        Endpoint::Chat => ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_u64)),
    }
}

fn stream_response(
    gw: Gateway,
    trace: Trace,
    rx: mpsc::Receiver<Item>,
    detach: Detach,
    vault: policy::Vault,
) -> Response {
    let journal = gw.bus.journal().clone();
    let restore = StreamRestore::new(vault);
    let state = (rx, journal, Some(detach), false, restore);
    let body = futures_util::stream::unfold(
        state,
        |(mut rx, journal, detach, ended, mut restore)| async move {
            if ended {
                return None;
            }
            let (frame, last) = match rx.recv().await {
                Some(Item::Chunk(mut chunk)) => {
                    restore.chunk(&mut chunk);
                    match serde_json::to_string(&chunk) {
                        Ok(data) => (format!("data: {data}\n\n"), false),
                        Err(e) => (internal(e).sse_frame(), true),
                    }
                }
                Some(Item::Failed(e)) => {
                    // Mid-stream failure: an SSE error object, never a silent close. Wait for the
                    // outcome event to be durable first.
                    if let Some(Item::Done { seq }) = rx.recv().await {
                        let _ = journal.wait_durable(seq).await;
                    }
                    (ApiError::from(&e).sse_frame(), true)
                }
                Some(Item::Done { seq }) => match journal.wait_durable(seq).await {
                    Ok(_) => (format!("{}data: [DONE]\n\n", restore.finish()), true),
                    Err(_) => (ApiError::Unavailable.sse_frame(), true),
                },
                Some(other) => {
                    tracing::error!(?other, "unexpected item in a stream");
                    return None;
                }
                None => return None,
            };
            let detach = if last { None } else { detach };
            Some((
                Ok::<_, Infallible>(Bytes::from(frame)),
                (rx, journal, detach, last, restore),
            ))
        },
    );
    let resp = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response();
    trace.apply(resp)
}

/// Restores placeholders in a stream's content deltas, holding back a placeholder split
/// across chunks until it is whole (one restorer per choice).
struct StreamRestore {
    vault: policy::Vault,
    held: std::collections::BTreeMap<u32, String>,
    /// The stream's id, creation time and model, for the chunk that flushes what is held.
    header: (String, u64, String),
}

impl StreamRestore {
    fn new(vault: policy::Vault) -> Self {
        Self {
            vault,
            held: Default::default(),
            header: Default::default(),
        }
    }

    fn chunk(&mut self, chunk: &mut isnad_schemas::openai::ChatCompletionChunk) {
        if self.vault.is_empty() {
            return;
        }
        if self.header.0.is_empty() {
            self.header = (chunk.id.clone(), chunk.created, chunk.model.clone());
        }
        for choice in &mut chunk.choices {
            if let Some(text) = choice.delta.content.as_mut() {
                let held = self.held.entry(choice.index).or_default();
                held.push_str(text);
                let (ready, rest) = self.vault.split_ready(held);
                *text = self.vault.restore(&ready);
                *held = rest;
            }
        }
    }

    /// What is still held at the end of the stream, as last content chunks (empty if none).
    fn finish(&mut self) -> String {
        let (id, created, model) = &self.header;
        std::mem::take(&mut self.held)
            .into_iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(index, text)| {
                let chunk = json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": index, "delta": {"content": self.vault.restore(&text)}, "finish_reason": null}],
                });
                format!("data: {chunk}\n\n")
            })
            .collect()
    }
}

/// `GET /v1/models`
pub async fn models(State(gw): State<Gateway>, admitted: Admitted) -> Response {
    let principal = admitted.principal;
    // A key sees the models it may use.
    let mut data: Vec<Value> = gw
        .registry
        .all()
        .iter()
        .filter(|m| principal.scope.permits(&m.config.id))
        .map(|m| {
            json!({
                "id": m.config.id, "object": "model", "created": 0, "owned_by": m.provider_name,
                "residency": m.config.residency.as_str(), "kind": m.config.kind,
                "languages": m.config.languages, "context_length": m.config.context_length,
            })
        })
        .collect();
    if let Some(d) = gw.registry.default_chat() {
        data.push(json!({"id": AUTO_ROUTER, "object": "model", "created": 0, "owned_by": "isnad", "routes_to": d.config.id}));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}
