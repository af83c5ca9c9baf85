//! Admission: the first step of every gateway request, before anything is journaled.
//!
//! A request whose key checks out yields a [`Principal`]; from then on everything that happens
//! to it, refusals included, is journaled as the request's group. A request refused *before*
//! that (a missing or unknown key: 401; load shed at the concurrency limit: 503) is not journaled
//! one entry per request: an anonymous client could otherwise make the journal flush once per
//! request it sends, turning the audit log into a denial of service. Such refusals are counted
//! per source address and code in memory ([`Unadmitted`]) and written as one `requests.refused`
//! summary per source, code and interval ([`Unadmitted::spawn`]), at most
//! [`MAX_SOURCES`] sources an interval (the rest summed under the source `other`), and once more
//! at shutdown. Nothing is acknowledged to such a client, so nothing waits for the summary to be
//! durable.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{ConnectInfo, FromRef, FromRequestParts},
    http::request::Parts,
    response::{IntoResponse, Response},
};
use isnad_journal::Journal;
use isnad_schemas::{NewEvent, RequestsRefused};
use parking_lot::Mutex;

use crate::{
    auth::{Credentials, Principal},
    error::ApiError,
    ratelimit::RateSlot,
    tls::ClientIdentity,
};

/// Most sources summarised one by one per interval; the rest are summed under `other`.
pub const MAX_SOURCES: usize = 1024;
/// How often the counts are written to the journal.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[derive(Default)]
struct Window {
    start_us: i64,
    counts: HashMap<(String, &'static str), u64>,
}

/// Refusals made before admission, counted until the next summary.
pub struct Unadmitted {
    window: Mutex<Window>,
}

impl Default for Unadmitted {
    fn default() -> Self {
        Self {
            window: Mutex::new(Window {
                start_us: now_us(),
                counts: HashMap::new(),
            }),
        }
    }
}

impl Unadmitted {
    /// Counts one refusal (by its error code) of a request from `source`.
    pub fn record(&self, source: Option<IpAddr>, code: &'static str) {
        let mut w = self.window.lock();
        let mut source = source.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        if w.counts.len() >= MAX_SOURCES && !w.counts.contains_key(&(source.clone(), code)) {
            source = "other".to_owned();
        }
        *w.counts.entry((source, code)).or_default() += 1;
    }

    /// The summaries of the interval that ends now, and a fresh interval.
    pub fn drain(&self) -> Vec<RequestsRefused> {
        let end_us = now_us();
        let w = std::mem::replace(
            &mut *self.window.lock(),
            Window {
                start_us: end_us,
                counts: HashMap::new(),
            },
        );
        let mut out: Vec<RequestsRefused> = w
            .counts
            .into_iter()
            .map(|((source, code), count)| RequestsRefused {
                code: code.to_owned(),
                source,
                count,
                window_start_us: w.start_us,
                window_end_us: end_us,
            })
            .collect();
        out.sort_by(|a, b| (&a.source, &a.code).cmp(&(&b.source, &b.code)));
        out
    }

    /// Writes the current summaries to `journal` (without waiting for them to be durable).
    pub async fn write(&self, journal: &Journal) {
        let events: Vec<NewEvent> = self
            .drain()
            .iter()
            .filter_map(|s| NewEvent::new(s).ok().map(|e| e.actor("system")))
            .collect();
        if events.is_empty() {
            return;
        }
        if let Err(e) = journal.append_sequenced(events).await {
            tracing::error!(error = %e, "cannot journal the refusals summary");
        }
    }

    /// Writes the summaries every `every` until the journal closes.
    pub fn spawn(
        self: Arc<Self>,
        journal: Journal,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                self.write(&journal).await;
            }
        })
    }
}

/// The address a request came from, where the server knows it.
pub fn source_of(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// A request whose credentials check out.
pub struct Admitted {
    /// Who sent it.
    pub principal: Arc<Principal>,
    /// The actor journaled for it: the verified client certificate's identity under mTLS, else
    /// the name of its key.
    pub actor: String,
    /// The client's address (through trusted proxies), where the server knows it.
    pub source: Option<IpAddr>,
    /// Where the request's limits stand, for its response headers.
    pub rate: RateSlot,
}

/// Checks a request's address limit, its key and its key's request limit, reporting each
/// limit's standing into `rate`; a refusal is counted in `unadmitted`, not journaled one by one.
pub fn admit(
    credentials: &Credentials,
    unadmitted: &Unadmitted,
    parts: &Parts,
    rate: &RateSlot,
) -> Result<(Arc<Principal>, Option<IpAddr>), ApiError> {
    let source = credentials.client_addr(&parts.headers, source_of(parts));
    let refuse = |err: ApiError| {
        unadmitted.record(source, err.code());
        err
    };
    let limited = |l: isnad_pipeline::access::Limited| {
        rate.report(l.window.clone());
        refuse(ApiError::RateLimited(l))
    };
    match credentials.limits().check_address(source) {
        Ok(Some(w)) => rate.report(w),
        Ok(None) => {}
        Err(l) => return Err(limited(l)),
    }
    let principal = credentials
        .authenticate(&parts.headers, source)
        .map_err(|d| refuse(ApiError::denied(d)))?;
    if let Some(id) = &principal.key_id {
        match credentials.limits().check_key(id, principal.limits) {
            Ok(Some(w)) => rate.report(w),
            Ok(None) => {}
            Err(l) => return Err(limited(l)),
        }
    }
    rate.admitted_as(&principal.name);
    Ok((principal, source))
}

impl<S> FromRequestParts<S> for Admitted
where
    Arc<Credentials>: FromRef<S>,
    Arc<Unadmitted>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let credentials = Arc::<Credentials>::from_ref(state);
        let unadmitted = Arc::<Unadmitted>::from_ref(state);
        let rate = parts
            .extensions
            .get::<RateSlot>()
            .cloned()
            .unwrap_or_default();
        let (principal, source) =
            admit(&credentials, &unadmitted, parts, &rate).map_err(IntoResponse::into_response)?;
        let actor = match parts.extensions.get::<ClientIdentity>() {
            Some(ClientIdentity(id)) => format!("cert:{id}"),
            None => principal.name.clone(),
        };
        rate.admitted_as(&actor);
        Ok(Self {
            principal,
            actor,
            source,
            rate,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn counts_are_per_source_and_code_and_bounded_in_sources() {
        let u = Unadmitted::default();
        let ip = |i: u32| Some(IpAddr::from(i.to_be_bytes()));
        for _ in 0..5 {
            u.record(ip(1), "invalid_api_key");
        }
        u.record(ip(1), "server_overloaded");
        for i in 0..(MAX_SOURCES as u32 + 500) {
            u.record(ip(100 + i), "invalid_api_key");
        }
        let rows = u.drain();
        assert_eq!(rows.len(), MAX_SOURCES + 1, "bounded, plus `other`");
        let one = rows
            .iter()
            .find(|r| r.source == "0.0.0.1" && r.code == "invalid_api_key")
            .unwrap();
        assert_eq!(one.count, 5);
        let total: u64 = rows.iter().map(|r| r.count).sum();
        assert_eq!(total, 5 + 1 + MAX_SOURCES as u64 + 500);
        assert!(u.drain().is_empty(), "a new interval starts empty");
    }
}
