//! Rate limits: requests per minute per key and per client address (GCRA), and the limits
//! that keys and teams carry.
//!
//! Two kinds of limit, kept two ways:
//!
//! - **Requests per minute**, per key and per client address, are a GCRA (the `governor`
//!   crate): a request every `60 / rpm` seconds on average, with `burst` at once. Their state is
//!   in memory only: a restart gives every client its full burst again, which can let through
//!   at most one extra burst per restart. They protect the gateway, not a bill.
//! - **Tokens per minute and per day**, per key and per team, are fixed UTC windows in the
//!   [`Ledger`](super::ledger::Ledger): a request holds its worst case against the windows like
//!   a budget hold and settles to its real usage, so they are exact, journaled and the same
//!   after a restart.
//!
//! A key's own limits (`limits.set` with scope `key:<id>`) win over the configured defaults
//! ([`LimitDefaults`]); a team's token limits (`team:<id>`) apply to all its keys together.

use std::{collections::HashMap, net::IpAddr, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::{keyed::DefaultKeyedStateStore, InMemoryState, NotKeyed},
    Quota, RateLimiter,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// The limits of a key or a team (`None`: not limited by this one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute (keys only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Requests at once on top of the average (keys only; default: the per-minute rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Tokens per UTC minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Tokens per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
}

impl Limits {
    /// These limits, with `defaults` where these set none.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute.or(defaults.requests_per_minute),
            burst: self.burst.or(defaults.burst),
            tokens_per_minute: self.tokens_per_minute.or(defaults.tokens_per_minute),
            tokens_per_day: self.tokens_per_day.or(defaults.tokens_per_day),
        }
    }
}

/// The configured defaults: for every key without its own limits, and for client addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitDefaults {
    /// Limits of a key that sets none of its own.
    pub key: Limits,
    /// Requests per minute from one client address (before its key is checked).
    pub address_requests_per_minute: Option<u32>,
    /// Burst of the address limit (default: its per-minute rate).
    pub address_burst: Option<u32>,
}

/// Where one limit stands after a request, for the response headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The policy's name in `RateLimit-Policy` (`key`, `address`, `tokens-minute`, …).
    pub policy: &'static str,
    /// What it counts: `requests` or `tokens`.
    pub unit: &'static str,
    /// Its quota per window.
    pub limit: u64,
    /// What is left now.
    pub remaining: u64,
    /// The window's length in seconds.
    pub window_s: u64,
    /// Until the quota is whole again (or the window ends), in milliseconds.
    pub reset_ms: u64,
}

/// A request over a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    /// The limit and where it stands.
    pub window: Window,
    /// What it limits: `key:<id>`, `team:<id>` or `address:<ip>`.
    pub scope: String,
    /// How long to wait before the request could pass; `None` if it never can (it asks for
    /// more than the whole quota).
    pub retry_after_ms: Option<u64>,
    /// What the request needed (1 for a request limit).
    pub needed: u64,
}

type Direct = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;
type Keyed =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

fn quota(rpm: u32, burst: Option<u32>) -> Option<(Quota, u32)> {
    let rate = NonZeroU32::new(rpm)?;
    let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
    Some((Quota::per_minute(rate).allow_burst(burst), burst.get()))
}

/// A key's limiter, with the quota (and burst) it was built for.
type KeyLimiter = (Quota, u32, Arc<Direct>);

/// The per-key and per-address request limiters.
pub struct RequestLimits {
    defaults: LimitDefaults,
    clock: DefaultClock,
    /// One GCRA per key id, with the quota it was built for (rebuilt if the key's limits change).
    keys: RwLock<HashMap<String, KeyLimiter>>,
    address: Option<(Keyed, u32, u32)>,
}

impl RequestLimits {
    /// Limiters with the configured defaults.
    pub fn new(defaults: LimitDefaults) -> Self {
        let clock = DefaultClock::default();
        let address = defaults
            .address_requests_per_minute
            .and_then(|rpm| quota(rpm, defaults.address_burst).map(|q| (rpm, q)))
            .map(|(rpm, (q, burst))| {
                (
                    RateLimiter::dashmap_with_clock(q, clock.clone())
                        .with_middleware::<StateInformationMiddleware>(),
                    rpm,
                    burst,
                )
            });
        Self {
            defaults,
            clock,
            keys: RwLock::new(HashMap::new()),
            address,
        }
    }

    /// The configured defaults.
    pub fn defaults(&self) -> LimitDefaults {
        self.defaults
    }

    /// Counts one request from `addr` against the address limit.
    pub fn check_address(&self, addr: Option<IpAddr>) -> Result<Option<Window>, Limited> {
        let (Some((lim, rpm, burst)), Some(addr)) = (&self.address, addr) else {
            return Ok(None);
        };
        let w = |remaining: u32| self.window("address", *rpm, *burst, remaining);
        match lim.check_key(&addr) {
            Ok(snap) => Ok(Some(w(snap.remaining_burst_capacity()))),
            Err(not_until) => Err(self.limited(
                w(0),
                format!("address:{addr}"),
                not_until.wait_time_from(self.clock.now()),
            )),
        }
    }

    /// Counts one request of key `key_id` against its limit (`limits`, the key's own; the
    /// defaults fill what it does not set).
    pub fn check_key(&self, key_id: &str, limits: Limits) -> Result<Option<Window>, Limited> {
        let limits = limits.or(self.defaults.key);
        let Some(rpm) = limits.requests_per_minute else {
            return Ok(None);
        };
        let Some((q, burst)) = quota(rpm, limits.burst) else {
            return Ok(None);
        };
        let found = self
            .keys
            .read()
            .get(key_id)
            .filter(|(have, _, _)| *have == q)
            .map(|(_, _, l)| l.clone());
        let lim = match found {
            Some(l) => l,
            None => {
                // Under the write lock, so that two first requests share one bucket.
                let mut keys = self.keys.write();
                let entry = keys
                    .entry(key_id.to_owned())
                    .or_insert_with(|| (q, burst, Arc::new(self.direct(q))));
                if entry.0 != q {
                    *entry = (q, burst, Arc::new(self.direct(q)));
                }
                entry.2.clone()
            }
        };
        let w = |remaining: u32| self.window("key", rpm, burst, remaining);
        match lim.check() {
            Ok(snap) => Ok(Some(w(snap.remaining_burst_capacity()))),
            Err(not_until) => Err(self.limited(
                w(0),
                format!("key:{key_id}"),
                not_until.wait_time_from(self.clock.now()),
            )),
        }
    }

    fn direct(&self, q: Quota) -> Direct {
        RateLimiter::direct_with_clock(q, self.clock.clone())
            .with_middleware::<StateInformationMiddleware>()
    }

    /// Forgets addresses whose limiter is whole again (call now and then).
    pub fn shrink(&self) {
        if let Some((lim, _, _)) = &self.address {
            lim.retain_recent();
            lim.shrink_to_fit();
        }
    }

    fn window(&self, policy: &'static str, rpm: u32, burst: u32, remaining: u32) -> Window {
        // A cell comes back every 60/rpm seconds: the bucket is whole again after the
        // missing cells have come back.
        let per_cell_ms = 60_000 / u64::from(rpm.max(1));
        Window {
            policy,
            unit: "requests",
            limit: u64::from(rpm),
            remaining: u64::from(remaining),
            window_s: 60,
            reset_ms: u64::from(burst.saturating_sub(remaining)) * per_cell_ms,
        }
    }

    fn limited(&self, window: Window, scope: String, wait: Duration) -> Limited {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        Limited {
            window: Window {
                reset_ms: window.reset_ms.max(ms),
                ..window
            },
            scope,
            retry_after_ms: Some(ms),
            needed: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits_for_its_rate() {
        let l = RequestLimits::new(LimitDefaults::default());
        let own = Limits {
            requests_per_minute: Some(60),
            burst: Some(3),
            ..Limits::default()
        };
        let rem: Vec<u64> = (0..3)
            .map(|_| l.check_key("k1", own).unwrap().unwrap().remaining)
            .collect();
        assert_eq!(rem, [2, 1, 0]);
        let over = l.check_key("k1", own).unwrap_err();
        assert_eq!(over.scope, "key:k1");
        let wait = over.retry_after_ms.unwrap();
        assert!((1..=1000).contains(&wait), "one cell a second: {wait} ms");
        assert_eq!(over.window.limit, 60);
        // Another key has its own bucket; a key without limits is not limited.
        assert!(l.check_key("k2", own).is_ok());
        assert_eq!(l.check_key("k3", Limits::default()).unwrap(), None);
    }

    #[test]
    fn defaults_fill_what_a_key_leaves_unset_and_a_change_rebuilds_its_bucket() {
        let l = RequestLimits::new(LimitDefaults {
            key: Limits {
                requests_per_minute: Some(600),
                burst: Some(1),
                ..Limits::default()
            },
            ..LimitDefaults::default()
        });
        assert!(l.check_key("k", Limits::default()).is_ok());
        assert!(l.check_key("k", Limits::default()).is_err(), "burst of 1");
        let more = Limits {
            burst: Some(5),
            ..Limits::default()
        };
        assert_eq!(
            l.check_key("k", more).unwrap().unwrap().remaining,
            4,
            "a new quota starts a new bucket"
        );
    }

    #[test]
    fn addresses_are_limited_apart() {
        let l = RequestLimits::new(LimitDefaults {
            address_requests_per_minute: Some(120),
            address_burst: Some(2),
            ..LimitDefaults::default()
        });
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        assert!(l.check_address(a).is_ok());
        assert!(l.check_address(a).is_ok());
        let e = l.check_address(a).unwrap_err();
        assert_eq!(e.scope, "address:10.0.0.1");
        assert!(l.check_address(b).is_ok());
        assert_eq!(l.check_address(None).unwrap(), None, "no address known");
        l.shrink();
    }
}
