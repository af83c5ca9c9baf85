//! The HTTP server: health, and the activity journal API (entries with filters and pagination,
//! checkpoints, proofs, export). Handlers parse, authorise, call the journal, shape the response.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{rejection::QueryRejection, FromRef, Query, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use isnad_journal::{export::InclusionBundle, Journal};
use isnad_schemas::{NewEvent, NodeStarted};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use axum::serve::ListenerExt as _;
use futures_util::StreamExt as _;

use crate::{
    admission::{Unadmitted, SUMMARY_EVERY},
    auth::{AdminToken, Credentials},
    config::Config,
    error::ApiError,
    gateway::Gateway,
    metrics::Metrics,
};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The journal.
    pub journal: Journal,
    /// The admin token and the configured API keys.
    pub credentials: Arc<Credentials>,
    /// The OpenAI-compatible gateway.
    pub gateway: Gateway,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Requests the gateway serves at once; beyond this it sheds load with 503.
    pub limit: Arc<tokio::sync::Semaphore>,
    /// Time limit to response headers.
    pub request_timeout: Duration,
    /// The projections and stages of the journal the server runs (the budget ledger first);
    /// `serve` adds its own and stops them all at shutdown.
    pub runner: Arc<parking_lot::Mutex<Option<isnad_pipeline::Runner>>>,
}

/// The server's state cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `[pipeline]` is wrong.
    #[error(transparent)]
    Policy(#[from] isnad_pipeline::policy::PolicyConfigError),
    /// A projection could not start.
    #[error(transparent)]
    Pipeline(#[from] isnad_pipeline::Error),
    /// The routing policy or the guardrail's scanner cannot load.
    #[error("{0}")]
    Routing(String),
}

impl AppState {
    /// The state the server runs with, over an open journal: the policy stages that
    /// `config.pipeline` lists, the limits of `config.server`.
    pub fn new(
        config: &Config,
        journal: Journal,
        registry: Arc<isnad_inference::registry::Registry>,
        credentials: Arc<Credentials>,
    ) -> Result<Self, StartError> {
        let policy = isnad_pipeline::policy::LivePolicy::new(
            config
                .routing_policy()
                .map_err(|e| StartError::Routing(e.to_string()))?,
        );
        let scanner =
            isnad_guard::Scanner::new().map_err(|e| StartError::Routing(e.to_string()))?;
        let inputs = isnad_pipeline::policy::StageInputs {
            policy,
            scanner: Arc::new(scanner),
            latencies: Default::default(),
        };
        let stages = isnad_pipeline::policy::build(&config.pipeline, registry.clone(), &inputs)?;
        let bus = isnad_pipeline::Bus::new(journal.clone());
        let mut runner = isnad_pipeline::Runner::new(bus.clone());
        let budgets = isnad_pipeline::access::Budgets::start(
            &mut runner,
            bus.clone(),
            isnad_pipeline::access::BudgetOptions {
                default_max_tokens: config.budgets.default_max_tokens,
                ..Default::default()
            },
        )?;
        let gateway = Gateway {
            bus,
            registry,
            credentials: credentials.clone(),
            budgets: Arc::new(budgets),
            max_body_bytes: config.server.max_body_bytes,
            stages: stages.into(),
            policy: inputs.clone(),
            unadmitted: Arc::new(Unadmitted::default()),
            idempotency: Arc::default(),
        };
        Ok(Self {
            runner: Arc::new(parking_lot::Mutex::new(Some(runner))),
            journal,
            credentials,
            gateway,
            metrics: Arc::new(Metrics::default()),
            limit: Arc::new(tokio::sync::Semaphore::new(
                config.server.max_concurrent_requests.max(1),
            )),
            request_timeout: Duration::from_millis(config.server.request_timeout_ms.max(1)),
        })
    }
}

impl FromRef<AppState> for Arc<Credentials> {
    fn from_ref(s: &AppState) -> Self {
        s.credentials.clone()
    }
}

impl FromRef<AppState> for Arc<Unadmitted> {
    fn from_ref(s: &AppState) -> Self {
        s.gateway.unadmitted.clone()
    }
}

impl FromRef<AppState> for Gateway {
    fn from_ref(s: &AppState) -> Self {
        s.gateway.clone()
    }
}

/// The router, without a socket (tests call it directly).
pub fn app(state: AppState) -> Router {
    let max_body_bytes = state.gateway.max_body_bytes;
    let openai = Router::new()
        .route(
            "/v1/chat/completions",
            post(crate::gateway::chat_completions),
        )
        .route("/v1/embeddings", post(crate::gateway::embeddings))
        .route("/v1/models", get(crate::gateway::models))
        .route_layer(middleware::from_fn_with_state(state.clone(), limits));
    let v1 = Router::new()
        .route("/v1/activity/logs", get(logs_get).post(logs_post))
        .route("/v1/activity/checkpoint", get(checkpoint))
        .route("/v1/activity/proof", get(proof))
        .route("/v1/activity/export", get(export))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_auditor,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            journal_forbidden,
        ));
    let admin = crate::admin::routes().layer(middleware::from_fn_with_state(
        state.clone(),
        journal_refusals,
    ));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1)
        .merge(admin)
        .merge(openai)
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(middleware::from_fn(crate::ratelimit::layer))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// Concurrency limit with load shedding, a time limit to response headers, and HTTP metrics.
/// The concurrency permit is held until a streamed body ends, not just until its headers.
async fn limits(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_owned();
    let Ok(permit) = state.limit.clone().try_acquire_owned() else {
        state.metrics.observe_shed();
        let source = req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        state
            .gateway
            .unadmitted
            .record(source, ApiError::Overloaded.code());
        state.metrics.observe_http(&path, 503, started.elapsed());
        return ApiError::Overloaded.into_response();
    };
    let resp = match tokio::time::timeout(state.request_timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    };
    state
        .metrics
        .observe_http(&path, resp.status().as_u16(), started.elapsed());
    let (parts, body) = resp.into_parts();
    let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    }));
    Response::from_parts(parts, body)
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .metrics
        .render(&state.journal, state.gateway.bus.attachments_in_flight());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Journals every refusal of an admitted request to the admin API (`request.rejected` with its
/// actor, method and path), durably, before answering it: a denied change, and a probe of
/// another team's keys, are what a security review looks for. Refusals before admission are
/// counted in the summaries instead; the gateway journals its own in the request's group.
async fn journal_refusals(State(state): State<AppState>, req: Request, next: Next) -> Response {
    journal_refusal(&state, req, next, |_| true).await
}

/// Journals the 403s of admitted requests to the activity API. An auditor's malformed query
/// is not written to the log it reads.
async fn journal_forbidden(State(state): State<AppState>, req: Request, next: Next) -> Response {
    journal_refusal(&state, req, next, |s| s == StatusCode::FORBIDDEN).await
}

async fn journal_refusal(
    state: &AppState,
    req: Request,
    next: Next,
    wanted: fn(StatusCode) -> bool,
) -> Response {
    let endpoint = format!("{} {}", req.method(), req.uri().path());
    let rate = req
        .extensions()
        .get::<crate::ratelimit::RateSlot>()
        .cloned();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || !wanted(status) {
        return resp;
    }
    let (Some(actor), Some(refused)) = (
        rate.and_then(|r| r.actor()),
        resp.extensions().get::<crate::error::Refused>().cloned(),
    ) else {
        return resp;
    };
    let ev = NewEvent::new(&isnad_schemas::RequestRejected {
        endpoint,
        status: status.as_u16(),
        code: refused.code.into(),
        message: refused.message,
    })
    .map(|e| e.actor(actor));
    match ev {
        Ok(ev) => match state.journal.append_one(ev).await {
            Ok(_) => resp,
            Err(e) => {
                tracing::error!(error = %e, "cannot journal a refusal");
                ApiError::from(e).into_response()
            }
        },
        Err(e) => ApiError::Internal(e.to_string()).into_response(),
    }
}

/// The activity journal is for the `admin` and `auditor` roles.
async fn require_auditor(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let rate = parts
        .extensions
        .get::<crate::ratelimit::RateSlot>()
        .cloned()
        .unwrap_or_default();
    let admitted =
        crate::admission::admit(&state.credentials, &state.gateway.unadmitted, &parts, &rate);
    match admitted {
        Ok((p, _)) if p.role.may_audit() => next.run(Request::from_parts(parts, body)).await,
        Ok((p, _)) => ApiError::role_forbidden(p.role, "read the activity journal").into_response(),
        Err(err) => err.into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    // Ready when the journal still accepts appends and has checkpointed what is durable.
    if state.journal.checkpoint_now().await.is_ok() {
        Json(json!({"status": "ready", "entries": state.journal.durable_len()})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable"})),
        )
            .into_response()
    }
}

/// Filters of `/v1/activity/logs` (query string for GET, JSON body for POST).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// First seq (inclusive).
    pub from_seq: Option<u64>,
    /// Last seq (exclusive).
    pub to_seq: Option<u64>,
    /// RFC 3339 lower time bound (inclusive).
    pub since: Option<String>,
    /// RFC 3339 upper time bound (exclusive).
    pub until: Option<String>,
    /// Event kind.
    pub kind: Option<String>,
    /// Team.
    pub team: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Actor.
    pub actor: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Pagination cursor: continue after this seq (from `next_after`).
    pub after: Option<u64>,
}

/// One entry as the API shows it.
#[derive(Serialize)]
struct LogEntry {
    #[serde(flatten)]
    event: isnad_schemas::EventJson,
    hash: String,
}

const MAX_LIMIT: usize = 1000;
/// Entries examined per request at most, so that a filter matching nothing cannot pin a core.
const SCAN_BUDGET: u64 = 200_000;

fn parse_time(param: &str, s: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_micros())
        .map_err(|e| ApiError::bad(param, format!("{param} must be an RFC 3339 time: {e}")))
}

async fn logs_get(
    State(state): State<AppState>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q?;
    query_logs(&state.journal, q).map(Json)
}

async fn logs_post(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let q: LogQuery = if body.is_empty() {
        LogQuery::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::refuse(
                isnad_schemas::RefusalCode::InvalidRequest,
                format!("invalid JSON body: {e}"),
            )
        })?
    };
    query_logs(&state.journal, q).map(Json)
}

/// Runs a log query against the durable part of the journal.
pub fn query_logs(journal: &Journal, q: LogQuery) -> Result<Value, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad(
            "limit",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let durable = journal.durable_len();
    let mut from = q.from_seq.unwrap_or(0);
    let mut to = q.to_seq.unwrap_or(durable).min(durable);
    if let Some(after) = q.after {
        from = from.max(after.saturating_add(1));
    }
    if let Some(since) = &q.since {
        from = from.max(journal.seq_at_time(parse_time("since", since)?)?);
    }
    if let Some(until) = &q.until {
        to = to.min(journal.seq_at_time(parse_time("until", until)?)?);
    }
    let mut data = Vec::new();
    let mut last_seen = None;
    let scan_to = to.min(from.saturating_add(SCAN_BUDGET));
    let matches = |e: &isnad_schemas::Event| {
        q.kind.as_ref().is_none_or(|k| *k == e.kind)
            && q.team.as_ref().is_none_or(|t| Some(t) == e.team.as_ref())
            && q.request_id
                .as_ref()
                .is_none_or(|r| Some(r) == e.request_id.as_ref())
            && q.actor.as_ref().is_none_or(|a| Some(a) == e.actor.as_ref())
    };
    if from < scan_to {
        journal.scan(from, scan_to, &mut |entry| {
            last_seen = Some(entry.seq);
            if matches(&entry.event) {
                data.push(LogEntry {
                    event: entry.event.to_json(),
                    hash: hex::encode(entry.hash),
                });
            }
            data.len() < limit
        })?;
    }
    let has_more = match last_seen {
        Some(s) => s + 1 < to,
        None => false,
    };
    Ok(json!({
        "object": "list",
        "data": data,
        "has_more": has_more,
        "next_after": if has_more { last_seen } else { None },
        "log_size": durable,
    }))
}

/// The latest signed checkpoint if it covers every durable entry, else a fresh one.
async fn covering_checkpoint(j: &Journal) -> Result<(isnad_journal::Checkpoint, String), ApiError> {
    match j.latest_checkpoint() {
        Some(c) if c.0.size == j.durable_len() => Ok(c),
        _ => j
            .checkpoint_now()
            .await?
            .ok_or_else(|| ApiError::NotFound("the log is empty".into())),
    }
}

async fn checkpoint(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (cp, note) = covering_checkpoint(&state.journal).await?;
    Ok(Json(json!({
        "origin": cp.origin,
        "size": cp.size,
        "root": B64.encode(cp.root),
        "note": note,
        "public_key": B64.encode(state.journal.public_key().as_bytes()),
        "verifier_key": state.journal.verifier_key(),
    })))
}

/// `?seq=N` for an inclusion proof bundle; `?old_size=A&new_size=B` for a consistency proof.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProofQuery {
    seq: Option<u64>,
    old_size: Option<u64>,
    new_size: Option<u64>,
}

async fn proof(
    State(state): State<AppState>,
    q: Result<Query<ProofQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q?;
    let j = &state.journal;
    // Proofs are against a signed checkpoint covering everything durable.
    let (cp, note) = covering_checkpoint(j).await?;
    match (q.seq, q.old_size, q.new_size) {
        (Some(seq), None, None) => {
            if seq >= cp.size {
                return Err(ApiError::bad(
                    "seq",
                    format!("seq {seq} is beyond the {} checkpointed entries", cp.size),
                ));
            }
            let entry = j
                .entry(seq)?
                .ok_or_else(|| ApiError::NotFound(format!("no entry {seq}")))?;
            let prev = if seq == 0 {
                [0u8; 32]
            } else {
                j.entry(seq - 1)?.map(|e| e.hash).unwrap_or_default()
            };
            let path = j.inclusion_proof(seq, cp.size)?;
            let bundle = InclusionBundle::new(&entry, &prev, cp.size, &path, &note)?;
            Ok(Json(
                serde_json::to_value(bundle).map_err(|e| ApiError::Internal(e.to_string()))?,
            ))
        }
        (None, Some(old), new) => {
            let new = new.unwrap_or(cp.size);
            if new != cp.size {
                return Err(ApiError::bad(
                    "new_size",
                    format!("new_size must be the latest checkpoint size {}", cp.size),
                ));
            }
            let path = j.consistency_proof(old, new)?;
            Ok(Json(json!({
                "old_size": old,
                "new_size": new,
                "old_root": B64.encode(j.root(old)?),
                "proof": path.iter().map(hex::encode).collect::<Vec<_>>(),
                "checkpoint": note,
            })))
        }
        _ => Err(ApiError::bad(
            "seq",
            "give either seq, or old_size (and optionally new_size)",
        )),
    }
}

async fn export(State(state): State<AppState>) -> Result<Response, ApiError> {
    let journal = state.journal.clone();
    // Checkpoint first so the export ends with a signed root over all of it.
    journal.checkpoint_now().await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx,
            buf: Vec::with_capacity(64 * 1024),
        };
        if let Err(e) = journal.export(&mut w) {
            tracing::error!(error = %e, "export failed");
            let _ =
                w.tx.blocking_send(Err(std::io::Error::other("export failed")));
        }
        let _ = std::io::Write::flush(&mut w);
    });
    let body = Body::from_stream(tokio_stream_from(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 64 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = Bytes::from(std::mem::take(&mut self.buf));
            self.tx
                .blocking_send(Ok(chunk))
                .map_err(|_| std::io::Error::other("client went away"))?;
        }
        Ok(())
    }
}

/// Runs the server until SIGINT or SIGTERM, then finishes in-flight requests and checkpoints.
pub async fn serve(config: Config, data_dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let tls = match &config.server.tls {
        Some(t) => Some(crate::tls::server_config(t)?),
        None if listen.ip().is_loopback() || config.server.plain_http => None,
        None => anyhow::bail!(
            "refusing plain HTTP on {listen}: configure [server.tls], listen on a loopback address, \
             or set server.plain_http = true"
        ),
    };
    let registry = Arc::new(config.registry()?);
    let journal = Journal::open_dir(data_dir, config.journal.options())?;
    let admin = AdminToken::resolve(config.server.admin_token.as_deref(), data_dir)?;
    let credentials = Arc::new(
        Credentials::open(admin, &config.keys, &*registry, journal.clone())
            .await
            .map_err(crate::config::ConfigError::in_configuration)?
            .trust_proxies(config.server.trusted_proxies.clone())
            .limit(config.limits.defaults()),
    );
    let started = NewEvent::new(&NodeStarted {
        version: env!("CARGO_PKG_VERSION").into(),
        config_hash: config.hash(),
        node_id: journal.node_id(),
        public_key: B64.encode(journal.public_key().as_bytes()),
    })?
    .actor("system");
    journal.append_one(started).await?;
    for m in registry.loaded() {
        let loaded = NewEvent::new(&isnad_schemas::ModelLoaded {
            model: m.name.clone(),
            kind: m.kind.clone(),
            files: m.hashes.clone(),
            source: m.source.clone(),
            device: m.device.as_str().into(),
            load_ms: m.load_ms,
        })?
        .actor("system");
        journal.append_one(loaded).await?;
        tracing::info!(model = %m.name, device = ?m.device, load_ms = m.load_ms, "model loaded");
    }
    let state = AppState::new(&config, journal.clone(), registry, credentials)?;
    let unadmitted = state.gateway.unadmitted.clone();
    let summaries = unadmitted.clone().spawn(journal.clone(), SUMMARY_EVERY);
    // Projections of the journal, resumed from their saved state.
    let mut runner = state
        .runner
        .lock()
        .take()
        .ok_or_else(|| anyhow::anyhow!("the server's runner was taken"))?;
    let models = runner.project(isnad_pipeline::policy::ModelStats::default())?;
    // The `performance` profile reads each model's measured latency from the same projection.
    let stats = models.clone();
    state.gateway.policy.latencies.set(move |id| {
        stats.read(|s| {
            s.models
                .get(id)
                .filter(|m| m.completed > 0)
                .map(|m| m.latency_us)
        })
    });
    state.metrics.show(crate::metrics::Projections {
        usage: runner.project(crate::metrics::Usage::default())?,
        models,
    });
    // Holds that the last run left open belong to requests that died with it: void them once
    // the ledger has caught up, before the first request.
    let budgets = state.gateway.budgets.clone();
    budgets.ledger().wait_for(journal.len()).await?;
    let voided = budgets.sweep(true).await?;
    if voided > 0 {
        tracing::info!(
            voided,
            "voided the budget holds of requests the last run left open"
        );
    }
    let sweeper = budgets.spawn_sweeper();
    // Addresses whose request limit is whole again are forgotten, so the table stays small.
    let creds = state.credentials.clone();
    let shrinker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            creds.limits().shrink();
        }
    });
    let router = app(state);
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, node_id = %journal.node_id(), scheme, "isnad listening");
    // The one line scripts and tests wait for.
    println!("isnad listening on {scheme}://{addr}");
    match tls {
        Some(tls) => crate::tls::serve(listener, tls, router, shutdown).await,
        None => {
            axum::serve(
                listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await?
        }
    }
    tracing::info!("shutting down: checkpointing the journal");
    sweeper.abort();
    shrinker.abort();
    runner.shutdown().await;
    summaries.abort();
    unadmitted.write(&journal).await;
    journal.shutdown().await?;
    Ok(())
}

/// Registers for SIGINT and SIGTERM now (a signal that arrives before registration would kill
/// the process without its final checkpoint) and returns the future that resolves on either.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
