//! `Idempotency-Key`: a retry of a model call is answered with the first call's outcome, and
//! is neither sent to a model again nor charged again.
//!
//! The first request with a key (per calling key, per endpoint) runs; if it is answered (2xx),
//! its status, content type and body (a stream's bytes as they went out) are kept in memory
//! for [`WINDOW`]; a refusal or failure is not kept, as it charged nothing. A retry
//! within the window with the same body gets that answer back with `Idempotent-Replayed: true`;
//! one while the first is still running gets 409; one with a different body gets 400. Only
//! in memory, never at rest: a restart forgets the keys (a retry after a restart runs again),
//! and a first call whose client went away before its answer ended is forgotten too (its
//! usage was charged; the retry runs and is charged again).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt as _;
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;

/// How long an outcome is kept.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Most outcomes kept (the oldest go first).
pub const MAX_ENTRIES: usize = 10_000;
/// Largest answer kept; a larger one is forgotten (its retry runs again).
pub const MAX_BODY: usize = 4 << 20;
/// Longest `Idempotency-Key` accepted.
pub const MAX_KEY: usize = 255;

enum State {
    InFlight,
    Done {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
}

struct Record {
    body_hash: [u8; 32],
    at: Instant,
    state: State,
}

/// (calling key, endpoint, Idempotency-Key)
type Id = (String, &'static str, String);

/// Records by id, and ids in the order they came (for the window and the bound).
type Records = (HashMap<Id, Record>, VecDeque<(Instant, Id)>);

/// The outcomes of recent requests that carried an `Idempotency-Key`.
#[derive(Default)]
pub struct Idempotency {
    inner: Mutex<Records>,
}

/// What to do with a request.
pub enum Begin {
    /// Run it; call [`Idempotency::finish`] with its response.
    Run(Ticket),
    /// Answer this (the first outcome, or why not).
    Answer(Response),
}

/// A request that runs under an `Idempotency-Key`. Dropped without
/// [`Idempotency::finish`] (the client went away first), its key is forgotten, so that a retry
/// runs rather than meeting a 409 for the rest of the window.
pub struct Ticket {
    id: Option<Id>,
    store: Arc<Idempotency>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.store.forget(&id);
        }
    }
}

impl Idempotency {
    /// Looks at the request's `Idempotency-Key`: `None` when it has none.
    pub fn begin(
        self: &Arc<Self>,
        principal: &str,
        endpoint: &'static str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Option<Begin> {
        let key = headers.get("idempotency-key")?;
        let key = match key.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= MAX_KEY => k.to_owned(),
            _ => {
                let err = ApiError::bad(
                    "idempotency-key",
                    format!("Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"),
                );
                return Some(Begin::Answer(err.into_response()));
            }
        };
        let body_hash: [u8; 32] = Sha256::digest(body).into();
        let id = (principal.to_owned(), endpoint, key);
        let now = Instant::now();
        let mut g = self.inner.lock();
        let (map, order) = &mut *g;
        while let Some((at, _)) = order.front() {
            // Old ones go, and the oldest when full; `order` also holds the ids of outcomes
            // already forgotten, so it is bounded on its own too.
            let fresh = now.duration_since(*at) < WINDOW;
            if fresh && map.len() < MAX_ENTRIES && order.len() <= 2 * MAX_ENTRIES {
                break;
            }
            if let Some((at, old)) = order.pop_front() {
                if map.get(&old).is_some_and(|r| r.at == at) {
                    map.remove(&old);
                }
            }
        }
        if let Some(r) = map.get(&id) {
            if r.body_hash != body_hash {
                let err = ApiError::bad(
                    "idempotency-key",
                    "this Idempotency-Key was used with a different request body",
                );
                return Some(Begin::Answer(err.into_response()));
            }
            return Some(Begin::Answer(match &r.state {
                State::InFlight => {
                    ApiError::Conflict("a request with this Idempotency-Key is in flight".into())
                        .into_response()
                }
                State::Done {
                    status,
                    content_type,
                    body,
                } => {
                    let mut resp = (*status, body.clone()).into_response();
                    if let Some(ct) = content_type {
                        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
                    }
                    resp.headers_mut().insert(
                        HeaderName::from_static("idempotent-replayed"),
                        HeaderValue::from_static("true"),
                    );
                    resp
                }
            }));
        }
        map.insert(
            id.clone(),
            Record {
                body_hash,
                at: now,
                state: State::InFlight,
            },
        );
        order.push_back((now, id.clone()));
        Some(Begin::Run(Ticket {
            id: Some(id),
            store: self.clone(),
        }))
    }

    /// Keeps `resp`'s outcome for the ticket's retries as its body goes out.
    pub fn finish(self: &Arc<Self>, mut ticket: Ticket, resp: Response) -> Response {
        let Some(id) = ticket.id.take() else {
            return resp;
        };
        // Only an answer is kept: a refusal or a failure charged nothing, and its retry may
        // well pass (a rate limit renews, an upstream comes back).
        if !resp.status().is_success() {
            self.forget(&id);
            return resp;
        }
        let (parts, body) = resp.into_parts();
        let tee = Tee {
            inner: body.into_data_stream(),
            buf: Some(Vec::new()),
            store: self.clone(),
            id: Some(id),
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
        };
        Response::from_parts(parts, Body::from_stream(tee))
    }

    fn forget(&self, id: &Id) {
        self.inner.lock().0.remove(id);
    }

    fn keep(&self, id: &Id, status: StatusCode, content_type: Option<HeaderValue>, body: Bytes) {
        if let Some(r) = self.inner.lock().0.get_mut(id) {
            r.state = State::Done {
                status,
                content_type,
                body,
            };
        }
    }
}

/// A response body on its way out, copied for the retries; forgotten unless it ends whole.
struct Tee {
    inner: axum::body::BodyDataStream,
    buf: Option<Vec<u8>>,
    store: Arc<Idempotency>,
    id: Option<Id>,
    status: StatusCode,
    content_type: Option<HeaderValue>,
}

impl futures_util::Stream for Tee {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(buf) = this.buf.as_mut() {
                    if buf.len() + b.len() <= MAX_BODY {
                        buf.extend_from_slice(&b);
                    } else {
                        this.buf = None;
                    }
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.buf = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let (Some(buf), Some(id)) = (this.buf.take(), this.id.take()) {
                    let ct = this.content_type.take();
                    this.store.keep(&id, this.status, ct, Bytes::from(buf));
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.store.forget(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    fn headers(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", HeaderValue::from_str(key).unwrap());
        h
    }

    fn run(store: &Arc<Idempotency>, key: &str) -> Ticket {
        match store.begin("k", "/v1/chat/completions", &headers(key), b"{}") {
            Some(Begin::Run(t)) => t,
            _ => panic!("expected to run"),
        }
    }

    #[test]
    fn a_refusal_is_forgotten_and_the_table_stays_bounded() {
        let store = Arc::new(Idempotency::default());
        let t = run(&store, "a");
        match store.begin("k", "/v1/chat/completions", &headers("a"), b"{}") {
            Some(Begin::Answer(r)) => assert_eq!(r.status(), StatusCode::CONFLICT),
            _ => panic!("a retry while the first runs is a conflict"),
        }
        let failed = ApiError::Unavailable.into_response();
        let _ = store.finish(t, failed);
        // A request whose client left (its ticket dropped unfinished) is forgotten too.
        drop(run(&store, "a"));
        drop(run(&store, "a"));
        assert!(store
            .begin("k", "/v1/chat/completions", &HeaderMap::new(), b"{}")
            .is_none());
        for i in 0..(3 * MAX_ENTRIES) {
            let t = run(&store, &format!("k{i}"));
            let _ = store.finish(t, ApiError::Unavailable.into_response());
        }
        let g = store.inner.lock();
        assert!(g.0.len() <= MAX_ENTRIES + 1, "{}", g.0.len());
        assert!(g.1.len() <= 2 * MAX_ENTRIES + 1, "{}", g.1.len());
    }
}
