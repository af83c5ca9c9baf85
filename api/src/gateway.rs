//! The OpenAI-compatible endpoints. Each handler validates, journals `request.received` with the
//! request attached in RAM, and reads the answer that the pipeline's stages send back; refusals are
//! journaled as `request.rejected`. Nothing is acknowledged before its events are durable.

use std::{convert::Infallible, sync::Arc, time::Instant};

use axum::{
    body::{Body, Bytes},
    extract::{rejection::BytesRejection, State},
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use isnad_inference::{
    registry::{ModelKind, Registry},
    stages::{Endpoint, InferenceRequest, Item, AUTO_ROUTER},
};
use isnad_pipeline::{Attachment, Bus, RequestStage};
use isnad_schemas::{NewEvent, Payload as _, RequestReceived, RequestRejected, RouteSelected};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::{
    auth::{Credentials, Principal},
    error::ApiError,
    tls::ClientIdentity,
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
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// The request path's policy stages (guardrail, router), in order.
    pub stages: Arc<[Arc<dyn RequestStage>]>,
}

const ROLES: &[&str] = &[
    "system",
    "user",
    "assistant",
    "tool",
    "developer",
    "function",
];

fn new_request_id() -> String {
    format!("req_{}", uuid::Uuid::now_v7().simple())
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
    fn apply(&self, headers: &mut HeaderMap) {
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
    }
}

/// Journals a refusal durably, then shapes it.
async fn reject(
    gw: &Gateway,
    trace: &Trace,
    actor: &str,
    endpoint: Endpoint,
    err: ApiError,
) -> Response {
    let (status, code) = err.status_and_code();
    let ev = RequestRejected {
        endpoint: endpoint.path().into(),
        status,
        code: code.into(),
        message: err.to_string(),
    };
    match NewEvent::new(&ev) {
        Ok(ev) => {
            if let Err(e) = gw
                .bus
                .journal()
                .append_one(ev.request_id(&trace.request_id).actor(actor))
                .await
            {
                tracing::error!(error = %e, "cannot journal a refusal");
                return ApiError::Unavailable.into_response();
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode a refusal"),
    }
    let mut resp = err.into_response();
    trace.apply(resp.headers_mut());
    resp
}

fn parse_body(gw: &Gateway, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(gw.max_body_bytes)
        } else {
            ApiError::BadRequest {
                message: r.body_text(),
                param: None,
            }
        }
    })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest {
        message: format!("invalid JSON body: {e}"),
        param: None,
    })?;
    if !v.is_object() {
        return Err(ApiError::BadRequest {
            message: "the body must be a JSON object".into(),
            param: None,
        });
    }
    Ok(v)
}

fn check_number(v: &Value, param: &str, lo: f64, hi: f64) -> Result<(), ApiError> {
    match &v[param] {
        Value::Null => Ok(()),
        Value::Number(n) if n.as_f64().is_some_and(|x| (lo..=hi).contains(&x)) => Ok(()),
        _ => Err(ApiError::bad(
            param,
            format!("{param} must be a number between {lo} and {hi}"),
        )),
    }
}

fn validate_chat(v: &Value) -> Result<(), ApiError> {
    if !v["model"].is_string() {
        return Err(ApiError::bad(
            "model",
            "model is required and must be a string",
        ));
    }
    let msgs = v["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::bad("messages", "messages must be a non-empty array"))?;
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        if !ROLES.contains(&role) {
            return Err(ApiError::bad(
                &format!("messages[{i}].role"),
                format!("messages[{i}].role must be one of {}", ROLES.join(", ")),
            ));
        }
    }
    if !(v["stream"].is_null() || v["stream"].is_boolean()) {
        return Err(ApiError::bad("stream", "stream must be a boolean"));
    }
    check_number(v, "temperature", 0.0, 2.0)?;
    check_number(v, "top_p", 0.0, 1.0)?;
    for p in ["max_tokens", "max_completion_tokens"] {
        if !(v[p].is_null() || v[p].as_u64().is_some_and(|n| n > 0)) {
            return Err(ApiError::bad(p, format!("{p} must be a positive integer")));
        }
    }
    if !(v["tools"].is_null() || v["tools"].is_array()) {
        return Err(ApiError::bad("tools", "tools must be an array"));
    }
    Ok(())
}

fn validate_embeddings(v: &Value) -> Result<(), ApiError> {
    if !v["model"].is_string() {
        return Err(ApiError::bad(
            "model",
            "model is required and must be a string",
        ));
    }
    let ok = match &v["input"] {
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => {
            !a.is_empty()
                && a.len() <= 2048
                && a.iter()
                    .all(|x| x.is_string() || x.is_array() || x.is_u64())
        }
        _ => false,
    };
    if !ok {
        return Err(ApiError::bad(
            "input",
            "input must be a non-empty string or array (at most 2048 items)",
        ));
    }
    match v["encoding_format"].as_str() {
        None if v["encoding_format"].is_null() => {}
        Some("float" | "base64") => {}
        _ => {
            return Err(ApiError::bad(
                "encoding_format",
                "encoding_format must be float or base64",
            ))
        }
    }
    if !(v["dimensions"].is_null() || v["dimensions"].as_u64().is_some_and(|n| n > 0)) {
        return Err(ApiError::bad(
            "dimensions",
            "dimensions must be a positive integer",
        ));
    }
    Ok(())
}

/// 422 when the chosen model cannot honour a parameter (rather than silently dropping it).
fn check_capabilities(registry: &Registry, model: &str, v: &Value) -> Result<(), ApiError> {
    let Some(m) = registry
        .get(model)
        .or_else(|| registry.default_chat().filter(|_| model == AUTO_ROUTER))
    else {
        return Ok(());
    };
    if !m.config.supports_tools {
        for p in ["tools", "tool_choice", "response_format"] {
            if !v[p].is_null() {
                return Err(ApiError::Unprocessable {
                    message: format!("model `{}` does not support `{p}`", m.config.id),
                    param: p.into(),
                });
            }
        }
    }
    if m.config.kind == ModelKind::Embedding
        && !m.config.variable_dimensions
        && !v["dimensions"].is_null()
    {
        return Err(ApiError::Unprocessable {
            message: format!("model `{}` has a fixed number of dimensions", m.config.id),
            param: "dimensions".into(),
        });
    }
    Ok(())
}

/// `POST /v1/chat/completions`
pub async fn chat_completions(
    State(gw): State<Gateway>,
    identity: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(gw, identity, headers, body, Endpoint::Chat).await
}

/// `POST /v1/embeddings`
pub async fn embeddings(
    State(gw): State<Gateway>,
    identity: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(gw, identity, headers, body, Endpoint::Embeddings).await
}

/// The actor journaled for a request: the verified client certificate's identity under mTLS,
/// else the name of its key (`anonymous` before its key is checked).
fn actor(identity: Option<&Extension<ClientIdentity>>, principal: Option<&Principal>) -> String {
    match (identity, principal) {
        (Some(Extension(ClientIdentity(id))), _) => format!("cert:{id}"),
        (None, Some(p)) => p.name.clone(),
        (None, None) => "anonymous".to_owned(),
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

async fn handle(
    gw: Gateway,
    identity: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Response {
    let started = Instant::now();
    let mut trace = Trace {
        request_id: new_request_id(),
        audit: None,
        node_id: gw.bus.journal().node_id(),
        route_policy: None,
        residency: None,
    };
    let Some(principal) = gw.credentials.authenticate(&headers) else {
        let actor = actor(identity.as_ref(), None);
        return reject(&gw, &trace, &actor, endpoint, ApiError::Unauthorized).await;
    };
    let actor = actor(identity.as_ref(), Some(&principal));
    if !principal.role.may_infer() {
        let err = ApiError::role_forbidden(principal.role, "call models");
        return reject(&gw, &trace, &actor, endpoint, err).await;
    }
    let v = match parse_body(&gw, body).and_then(|v| {
        match endpoint {
            Endpoint::Chat => validate_chat(&v)?,
            Endpoint::Embeddings => validate_embeddings(&v)?,
        }
        Ok(v)
    }) {
        Ok(v) => v,
        Err(e) => return reject(&gw, &trace, &actor, endpoint, e).await,
    };
    let model = v["model"].as_str().unwrap_or_default().to_owned();
    let want = if endpoint == Endpoint::Chat {
        ModelKind::Chat
    } else {
        ModelKind::Embedding
    };
    let known = if model == AUTO_ROUTER && endpoint == Endpoint::Chat {
        gw.registry.default_chat().is_some()
    } else {
        gw.registry
            .get(&model)
            .is_some_and(|m| m.config.kind == want)
    };
    if !known {
        return reject(
            &gw,
            &trace,
            &actor,
            endpoint,
            ApiError::ModelNotFound(isnad_inference::stages::model_not_found(&model)),
        )
        .await;
    }
    if let Err(e) = check_capabilities(&gw.registry, &model, &v) {
        return reject(&gw, &trace, &actor, endpoint, e).await;
    }
    let stream = endpoint == Endpoint::Chat && v["stream"].as_bool().unwrap_or(false);
    let prompt = if endpoint == Endpoint::Chat {
        &v["messages"]
    } else {
        &v["input"]
    };
    let prompt_hash = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(prompt.to_string().as_bytes()))
    );

    let (tx, mut rx) = mpsc::channel::<Item>(64);
    let request = InferenceRequest {
        endpoint,
        body: v,
        requested_model: model.clone(),
        stream,
        tx,
        started,
        scope: principal.scope.clone(),
    };
    let received = RequestReceived {
        endpoint: endpoint.path().into(),
        model,
        prompt_hash,
        stream,
        client_ip: None,
    };
    let event = match NewEvent::new(&received) {
        Ok(e) => e.request_id(&trace.request_id).actor(actor.clone()),
        Err(e) => return ApiError::Internal(e.to_string()).into_response(),
    };
    let detach = Detach {
        bus: gw.bus.clone(),
        request_id: trace.request_id.clone(),
    };
    let attachment: Attachment = Arc::new(request);
    let submitted = match gw.bus.submit_request(event, attachment.clone(), &gw.stages) {
        Ok(submitted) => submitted,
        Err(e @ isnad_pipeline::Error::RequestStage { .. }) => {
            tracing::error!(request_id = %trace.request_id, error = %e, "a request-path stage failed");
            let err = ApiError::Internal(e.to_string());
            return reject(&gw, &trace, &actor, endpoint, err).await;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot journal a request");
            return ApiError::Unavailable.into_response();
        }
    };
    let find = |kind: &str| submitted.events().iter().find(|e| e.kind == kind).cloned();
    let (refusal, route) = (find(RequestRejected::KIND), find(RouteSelected::KIND));
    // The model call starts now, while the journal seals the group; the outcome is appended
    // after the group, and nothing is answered before both are durable.
    let dispatched = match (&refusal, route) {
        (Some(_), _) => Ok(()),
        (None, Some(route)) => isnad_inference::stages::dispatch(
            gw.registry.clone(),
            gw.bus.journal().clone(),
            route,
            attachment,
        ),
        (None, None) => Err("the router chose no model".to_owned()),
    };
    let receipts = match submitted.sequenced().await {
        Ok(receipts) => receipts,
        Err(e) => {
            tracing::error!(error = %e, "cannot journal a request");
            return ApiError::Unavailable.into_response();
        }
    };
    if let Some(first) = receipts.first() {
        trace.audit = Some(format!("{}:{}", first.seq, hex::encode(first.hash)));
    }
    if let Some(refusal) = refusal {
        return refused(&trace, &refusal);
    }
    if let Err(e) = dispatched {
        tracing::error!(request_id = %trace.request_id, error = %e, "request not dispatched");
        return reject(&gw, &trace, &actor, endpoint, ApiError::Internal(e)).await;
    }

    match rx.recv().await {
        Some(Item::Routed {
            model: _,
            residency,
            policy,
        }) => {
            trace.route_policy = Some(policy);
            trace.residency = Some(residency);
        }
        other => return unexpected(&trace, other),
    }
    if stream {
        return stream_response(gw, trace, rx, detach);
    }
    let answer = match rx.recv().await {
        Some(Item::Json(v)) => v,
        Some(Item::Failed {
            status,
            code,
            message,
        }) => return finish_failure(&gw, &trace, &mut rx, status, code, message).await,
        other => return unexpected(&trace, other),
    };
    match rx.recv().await {
        Some(Item::Done { seq }) => {
            if gw.bus.journal().wait_durable(seq).await.is_err() {
                return ApiError::Unavailable.into_response();
            }
        }
        other => return unexpected(&trace, other),
    }
    drop(detach);
    let mut resp = Json(answer).into_response();
    trace.apply(resp.headers_mut());
    resp
}

/// A request-path stage refused the request, and its group (the refusal included) is durable:
/// a refused group's receipts only arrive once it is.
fn refused(trace: &Trace, refusal: &NewEvent) -> Response {
    let err = match refusal.payload_as::<RequestRejected>() {
        Ok(r) => ApiError::from_refusal(&r),
        Err(e) => ApiError::Internal(e.to_string()),
    };
    let mut resp = err.into_response();
    trace.apply(resp.headers_mut());
    resp
}

/// The stage ended a request with an error: wait for its event to be durable, then answer.
async fn finish_failure(
    gw: &Gateway,
    trace: &Trace,
    rx: &mut mpsc::Receiver<Item>,
    status: u16,
    code: &'static str,
    message: String,
) -> Response {
    if let Some(Item::Done { seq }) = rx.recv().await {
        let _ = gw.bus.journal().wait_durable(seq).await;
    }
    let mut resp = ApiError::Upstream {
        status,
        code,
        message,
    }
    .into_response();
    trace.apply(resp.headers_mut());
    resp
}

fn unexpected(trace: &Trace, item: Option<Item>) -> Response {
    tracing::error!(request_id = %trace.request_id, ?item, "pipeline answered out of order");
    let mut resp = ApiError::Internal("pipeline answered out of order".into()).into_response();
    trace.apply(resp.headers_mut());
    resp
}

fn stream_response(
    gw: Gateway,
    trace: Trace,
    rx: mpsc::Receiver<Item>,
    detach: Detach,
) -> Response {
    let journal = gw.bus.journal().clone();
    let state = (rx, journal, Some(detach), false);
    let body = futures_util::stream::unfold(state, |(mut rx, journal, detach, ended)| async move {
        if ended {
            return None;
        }
        let frame = match rx.recv().await {
            Some(Item::Chunk(data)) => (format!("data: {data}\n\n"), false),
            Some(Item::Failed {
                status,
                code,
                message,
            }) => {
                // Mid-stream failure: an SSE error object, never a silent close. Wait for the
                // outcome event to be durable first.
                if let Some(Item::Done { seq }) = rx.recv().await {
                    let _ = journal.wait_durable(seq).await;
                }
                let err = json!({"error": {"message": message, "type": "server_error", "param": null, "code": code, "status": status}});
                (format!("data: {err}\n\n"), true)
            }
            Some(Item::Done { seq }) => {
                let ok = journal.wait_durable(seq).await.is_ok();
                if ok {
                    ("data: [DONE]\n\n".to_owned(), true)
                } else {
                    let err = json!({"error": {"message": "the activity journal is unavailable", "type": "server_error", "param": null, "code": "journal_unavailable"}});
                    (format!("data: {err}\n\n"), true)
                }
            }
            Some(other) => {
                tracing::error!(?other, "unexpected item in a stream");
                return None;
            }
            None => return None,
        };
        let detach = if frame.1 { None } else { detach };
        Some((
            Ok::<_, Infallible>(Bytes::from(frame.0)),
            (rx, journal, detach, frame.1),
        ))
    });
    let mut resp = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response();
    trace.apply(resp.headers_mut());
    resp
}

/// `GET /v1/models`
pub async fn models(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    let Some(principal) = gw.credentials.authenticate(&headers) else {
        return ApiError::Unauthorized.into_response();
    };
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
