//! Access control on the request path, per request: authenticate the key (10,000 managed keys
//! in 100 teams, each with a budget, request and token limits), check the address and key
//! request limits, and take the budget hold (team and key budgets, team and key token windows).
//!
//! Every call is timed on its own and recorded in an HDR histogram (nanoseconds), so the p99
//! is read from the distribution, not inferred from a mean. Holds stay in flight for 256
//! requests before they are released (as the journal would fold them), so a check sees the
//! overlay a loaded server has. Prints p50, p90, p99, p99.9 and max, single-threaded and with
//! two threads at once.
//!
//! `cargo bench -p isnad-benches --bench access`; without `--bench` (as under `cargo test
//! --benches`) it runs a short smoke version.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use isnad_journal::{Journal, Options};
use isnad_pipeline::{
    access::{token, Access, Ask, BudgetOptions, Budgets, LimitDefaults, RequestLimits},
    policy::{ModelInfo, ModelKind, Residency},
    Bus, Runner,
};
use isnad_schemas::{BudgetSet, KeyCreatedV2, LimitsSet, NewEvent, TeamCreated};
use sha2::{Digest as _, Sha256};

const TEAMS: usize = 100;
const KEYS: usize = 10_000;
const IN_FLIGHT: usize = 256;

fn model() -> ModelInfo<'static> {
    ModelInfo {
        id: "m",
        provider: "p",
        kind: ModelKind::Chat,
        residency: Residency::Local,
        supports_tools: false,
        variable_dimensions: false,
        price_in_micros_per_1k: 300,
        price_out_micros_per_1k: 900,
    }
}

struct World {
    access: Access,
    budgets: Budgets,
    limits: RequestLimits,
    tokens: Vec<String>,
    _runner: Runner,
    _journal: Journal,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_dir(dir.path(), Options::default()).unwrap();
    let mut events = Vec::new();
    for t in 0..TEAMS {
        events.push(
            NewEvent::new(&TeamCreated {
                team_id: format!("team{t}"),
                name: format!("Team {t}"),
            })
            .unwrap(),
        );
    }
    let mut tokens = Vec::with_capacity(KEYS);
    for k in 0..KEYS {
        let issued = token::issue();
        let hash = hex::encode(Sha256::digest(issued.token.as_bytes()));
        events.push(
            NewEvent::new(&KeyCreatedV2 {
                key_id: issued.id.clone(),
                sha256: format!("sha256:{hash}"),
                label: format!("key {k}"),
                team: Some(format!("team{}", k % TEAMS)),
                role: "member".into(),
                models: None,
                residency: None,
                expires_at_us: None,
                cidrs: vec!["10.0.0.0/8".into()],
                source: "api".into(),
            })
            .unwrap(),
        );
        events.push(
            NewEvent::new(&LimitsSet {
                scope: format!("key:{}", issued.id),
                requests_per_minute: Some(1_000_000),
                burst: Some(1_000_000),
                tokens_per_minute: Some(1 << 40),
                tokens_per_day: None,
            })
            .unwrap(),
        );
        tokens.push(issued.token);
    }
    for t in 0..TEAMS {
        events.push(
            NewEvent::new(&LimitsSet {
                scope: format!("team:team{t}"),
                requests_per_minute: None,
                burst: None,
                tokens_per_minute: None,
                tokens_per_day: Some(1 << 40),
            })
            .unwrap(),
        );
    }
    for t in 0..TEAMS {
        events.push(budget(format!("team:team{t}"), "month", "+03:00"));
    }
    for tk in &tokens {
        let id = token::id_of(tk).unwrap();
        events.push(budget(format!("key:{id}"), "day", "UTC"));
    }
    for chunk in events.chunks(2000) {
        journal.append(chunk.to_vec()).await.unwrap();
    }
    let access = Access::open(journal.clone()).unwrap();
    let bus = Bus::new(journal.clone());
    let mut runner = Runner::new(bus.clone());
    let budgets = Budgets::start(&mut runner, bus, BudgetOptions::default()).unwrap();
    budgets.ledger().wait_for(journal.len()).await.unwrap();
    World {
        access,
        budgets,
        limits: RequestLimits::new(LimitDefaults {
            address_requests_per_minute: Some(1_000_000_000),
            address_burst: Some(1_000_000_000),
            ..LimitDefaults::default()
        }),
        tokens,
        _runner: runner,
        _journal: journal,
        _dir: dir,
    }
}

fn budget(scope: String, period: &str, timezone: &str) -> NewEvent {
    NewEvent::new(&BudgetSet {
        scope,
        tokens: Some(1 << 40),
        cost_micros: Some(1 << 40),
        period: period.into(),
        timezone: timezone.into(),
    })
    .unwrap()
}

/// One request's access control; returns the hold's id for release.
fn one(w: &World, i: usize, addr: IpAddr, ids: &mut u64) -> String {
    let token = &w.tokens[(i * 7919) % KEYS];
    w.limits.check_address(Some(addr)).unwrap();
    let p = w.access.authenticate(token, Some(addr)).unwrap();
    let key_id = p.key_id.as_deref().unwrap();
    w.limits.check_key(key_id, p.limits).unwrap();
    *ids += 1;
    let request_id = format!("req_{i}_{ids}");
    let ask = Ask {
        request_id: &request_id,
        team: p.team.as_deref(),
        key_id: Some(key_id),
        model: model(),
        prompt_bytes: 600,
        parts: 2,
        max_tokens: Some(256),
        key_limits: p.limits,
        team_limits: p.team_limits,
    };
    let r = w.budgets.reserve(&ask).unwrap();
    std::hint::black_box(r);
    request_id
}

fn run(w: &World, calls: usize, thread: usize) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut flight = VecDeque::with_capacity(IN_FLIGHT + 1);
    let addr = IpAddr::from([10, 0, thread as u8, 1]);
    let mut ids = 0;
    for i in 0..calls {
        let t = Instant::now();
        let id = one(w, i + thread * calls, addr, &mut ids);
        h.record(t.elapsed().as_nanos() as u64).unwrap();
        flight.push_back(id);
        if flight.len() > IN_FLIGHT {
            if let Some(old) = flight.pop_front() {
                w.budgets.cancel(&old);
            }
        }
    }
    for id in flight {
        w.budgets.cancel(&id);
    }
    h
}

fn row(label: &str, h: &Histogram<u64>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{label:<28} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2}",
        h.len(),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let calls = if full { 500_000 } else { 5_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let w = Arc::new(rt.block_on(world()));
    println!(
        "{KEYS} keys in {TEAMS} teams, each with a budget, request and token limits ({:.1} s to set up)",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<28} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "auth + limits + hold", "calls", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    // Warm-up.
    run(&w, calls / 10, 0);
    row("1 thread", &run(&w, calls, 0));
    let handles: Vec<_> = (0..2)
        .map(|t| {
            let w = w.clone();
            std::thread::spawn(move || run(&w, calls, t + 1))
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for h in handles {
        all.add(h.join().unwrap()).unwrap();
    }
    row("2 threads at once", &all);
    std::thread::sleep(Duration::from_millis(10));
}
