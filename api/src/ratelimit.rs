//! Rate-limit headers: every response of a request that a limit applies to says where the
//! limit stands, in three dialects clients read.
//!
//! - `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (a Unix timestamp): the
//!   request limit (per key or per address) closest to running out.
//! - OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets as durations
//!   (`1s`, `6m0s`): the request limit and the token limit closest to running out.
//! - `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-11): every
//!   request limit that applies, by name (`"key";q=600;w=60`, `"key";r=599;t=1`).
//!
//! The limits are checked where the request is admitted and where its budget is held; both
//! report into the request's [`RateSlot`], which [`layer`] renders onto the response, whatever
//! the handler answered (a 429 included).

use std::sync::Arc;

use axum::{
    extract::Request,
    http::{HeaderMap, HeaderName, HeaderValue},
    middleware::Next,
    response::Response,
};
use isnad_pipeline::access::Window;
use parking_lot::Mutex;

/// What admission learned about one request, filled while it is served: where its limits
/// stand (for the headers) and who sent it (for the journal, should it be refused later).
#[derive(Clone, Default)]
pub struct RateSlot(Arc<Mutex<Learned>>);

#[derive(Default)]
struct Learned {
    windows: Vec<Window>,
    actor: Option<String>,
}

impl RateSlot {
    /// Notes a limit's standing (a later report of the same policy replaces an earlier one).
    pub fn report(&self, w: Window) {
        let v = &mut self.0.lock().windows;
        v.retain(|o| o.policy != w.policy);
        v.push(w);
    }

    /// Notes the actor the request was admitted as.
    pub fn admitted_as(&self, actor: &str) {
        self.0.lock().actor = Some(actor.to_owned());
    }

    /// The actor the request was admitted as, if it was.
    pub fn actor(&self) -> Option<String> {
        self.0.lock().actor.clone()
    }

    fn take(&self) -> Vec<Window> {
        std::mem::take(&mut self.0.lock().windows)
    }
}

/// Gives each request a [`RateSlot`] and writes what it holds onto the response.
pub async fn layer(mut req: Request, next: Next) -> Response {
    let slot = RateSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut resp = next.run(req).await;
    let windows = slot.take();
    if !windows.is_empty() {
        apply(resp.headers_mut(), &windows, now_s());
    }
    resp
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A duration as OpenAI writes its resets: `250ms`, `1s`, `6m0s`, `1h0m0s`.
pub fn duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms.div_ceil(1000);
    let (h, m, s) = (s / 3600, s % 3600 / 60, s % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// The window with the least left (then the longest to wait) among those of `unit`.
fn tightest<'a>(windows: &'a [Window], unit: &str) -> Option<&'a Window> {
    windows.iter().filter(|w| w.unit == unit).min_by(|a, b| {
        a.remaining
            .cmp(&b.remaining)
            .then(b.reset_ms.cmp(&a.reset_ms))
    })
}

/// Writes the headers of `windows` (at `now_s`, Unix seconds).
pub fn apply(headers: &mut HeaderMap, windows: &[Window], now_s: u64) {
    let mut set = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    if let Some(w) = tightest(windows, "requests") {
        set("x-ratelimit-limit", w.limit.to_string());
        set("x-ratelimit-remaining", w.remaining.to_string());
        set(
            "x-ratelimit-reset",
            (now_s + w.reset_ms.div_ceil(1000)).to_string(),
        );
        set("x-ratelimit-limit-requests", w.limit.to_string());
        set("x-ratelimit-remaining-requests", w.remaining.to_string());
        set("x-ratelimit-reset-requests", duration(w.reset_ms));
    }
    if let Some(w) = tightest(windows, "tokens") {
        set("x-ratelimit-limit-tokens", w.limit.to_string());
        set("x-ratelimit-remaining-tokens", w.remaining.to_string());
        set("x-ratelimit-reset-tokens", duration(w.reset_ms));
    }
    let requests: Vec<&Window> = windows.iter().filter(|w| w.unit == "requests").collect();
    if !requests.is_empty() {
        let policy: Vec<String> = requests
            .iter()
            .map(|w| format!("\"{}\";q={};w={}", w.policy, w.limit, w.window_s))
            .collect();
        let state: Vec<String> = requests
            .iter()
            .map(|w| {
                format!(
                    "\"{}\";r={};t={}",
                    w.policy,
                    w.remaining,
                    w.reset_ms.div_ceil(1000)
                )
            })
            .collect();
        set("ratelimit-policy", policy.join(", "));
        set("ratelimit", state.join(", "));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn w(
        policy: &'static str,
        unit: &'static str,
        limit: u64,
        remaining: u64,
        reset_ms: u64,
    ) -> Window {
        Window {
            policy,
            unit,
            limit,
            remaining,
            window_s: 60,
            reset_ms,
        }
    }

    #[test]
    fn durations_read_like_openais() {
        assert_eq!(duration(0), "0ms");
        assert_eq!(duration(250), "250ms");
        assert_eq!(duration(1000), "1s");
        assert_eq!(duration(1001), "2s");
        assert_eq!(duration(360_000), "6m0s");
        assert_eq!(duration(3_600_000), "1h0m0s");
    }

    #[test]
    fn the_limit_closest_to_running_out_is_reported() {
        let mut h = HeaderMap::new();
        let windows = [
            w("key", "requests", 600, 590, 1000),
            w("address", "requests", 100, 3, 58_000),
            w("tokens-minute", "tokens", 10_000, 4000, 30_000),
            w("team-tokens-day", "tokens", 1_000_000, 900_000, 3_600_000),
        ];
        apply(&mut h, &windows, 1_800_000_000);
        let get = |n: &str| h[n].to_str().unwrap().to_owned();
        assert_eq!(get("x-ratelimit-limit"), "100");
        assert_eq!(get("x-ratelimit-remaining"), "3");
        assert_eq!(get("x-ratelimit-reset"), "1800000058");
        assert_eq!(get("x-ratelimit-reset-requests"), "58s");
        assert_eq!(get("x-ratelimit-remaining-tokens"), "4000");
        assert_eq!(get("x-ratelimit-reset-tokens"), "30s");
        assert_eq!(
            get("ratelimit-policy"),
            "\"key\";q=600;w=60, \"address\";q=100;w=60"
        );
        assert_eq!(get("ratelimit"), "\"key\";r=590;t=1, \"address\";r=3;t=58");
    }

    #[test]
    fn a_later_report_of_a_policy_replaces_the_earlier_one() {
        let slot = RateSlot::default();
        slot.report(w("tokens-minute", "tokens", 10, 9, 1));
        slot.report(w("tokens-minute", "tokens", 10, 5, 1));
        assert_eq!(slot.take().len(), 1);
    }
}
