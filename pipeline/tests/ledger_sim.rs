//! A seeded simulation of the spending ledger: reserve, settle, void, expire, restart and
//! replay interleaved at random, 3,000 steps a seed. A seed replays the same steps
//! (`ISNAD_SIM_SEED=<n>` reruns one): the ledger is folded before each step, and the clock
//! starts on a whole minute.
//! After every step: spend never exceeds a cap; at the end every hold resolved exactly once;
//! at random steps the live ledger equals the one folded from the journal alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use isnad_journal::{Journal, Options};
use isnad_pipeline::{
    access::{
        ledger::{Ledger, Period},
        Ask, BudgetOptions, Budgets, Limits, ReserveError,
    },
    policy::{ModelInfo, ModelKind, Residency},
    Bus, Projection as _, Runner,
};
use isnad_schemas::{CompletionFinished, NewEvent, RequestRejected};
use rand::{rngs::StdRng, Rng as _, SeedableRng as _};

static NOW: AtomicI64 = AtomicI64::new(0);

fn clock() -> i64 {
    NOW.load(Ordering::SeqCst)
}

const TEAM_CAP: u64 = 20_000;
const KEY_CAP: u64 = 6_000;
const TPM: u64 = 3_000;
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const ORPHAN_AFTER: Duration = Duration::from_secs(30);

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

struct Live {
    journal: Journal,
    runner: Runner,
    budgets: Budgets,
}

async fn open(dir: &Path) -> Live {
    let journal = Journal::open_dir(dir, Options::default()).unwrap();
    let bus = Bus::new(journal.clone());
    let mut runner = Runner::new(bus.clone());
    let budgets = Budgets::start(
        &mut runner,
        bus,
        BudgetOptions {
            default_max_tokens: 200,
            orphan_after: ORPHAN_AFTER,
            sweep_every: Duration::from_secs(3600),
        },
    )
    .unwrap()
    .with_clock(clock);
    budgets.ledger().wait_for(journal.len()).await.unwrap();
    // As the server does at start: what the last run left open is voided.
    budgets.sweep(true).await.unwrap();
    Live {
        journal,
        runner,
        budgets,
    }
}

async fn folded(live: &Live) -> Ledger {
    live.budgets
        .ledger()
        .wait_for(live.journal.len())
        .await
        .unwrap();
    live.budgets.ledger().read(Ledger::clone)
}

fn replayed(journal: &Journal) -> Ledger {
    let mut l = Ledger::default();
    for e in journal.range(0, journal.len()).unwrap() {
        if l.wants(&e) {
            l.apply(&e);
        }
    }
    l
}

/// Spend and holds of every budget and window stay within their caps.
fn check_caps(l: &Ledger, step: usize, seed: u64) {
    for (sp, a) in &l.settled {
        let cap = if sp.starts_with("team:") {
            TEAM_CAP
        } else if sp.starts_with("key:") {
            KEY_CAP
        } else if sp.starts_with("tpm:") {
            TPM
        } else {
            continue;
        };
        let total = a.tokens + l.held(sp).tokens;
        assert!(
            total <= cap,
            "seed {seed} step {step}: {sp} has {total} settled and held, cap {cap}"
        );
    }
}

async fn simulate(seed: u64, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    // From the next whole minute of the real time on (the journal stamps entries with real
    // time), so that every run of a seed meets the same token windows; the same budget days
    // too, unless a run crosses midnight UTC.
    let minute = 60_000_000;
    NOW.store(
        (isnad_pipeline::access::now_us() / minute + 1) * minute,
        Ordering::SeqCst,
    );
    let mut live = open(dir.path()).await;
    live.budgets
        .set("admin", "team:t", Some(TEAM_CAP), None, Period::Day, "UTC")
        .await
        .unwrap();
    for k in KEYS {
        live.budgets
            .set(
                "admin",
                &format!("key:{k}"),
                Some(KEY_CAP),
                None,
                Period::Day,
                "UTC",
            )
            .await
            .unwrap();
    }
    let key_limits = Limits {
        tokens_per_minute: Some(TPM),
        ..Limits::default()
    };
    // Holds the simulation took, with their worst case (tokens) and whether it set max_tokens.
    let mut open_holds: BTreeMap<String, u64> = BTreeMap::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    let mut refused = 0;
    for step in 0..steps {
        match rng.gen_range(0..100) {
            // Reserve.
            0..=44 => {
                let id = format!("req_{step}");
                let key = KEYS[rng.gen_range(0..KEYS.len())];
                let max_tokens = rng.gen_range(0..400);
                let ask = Ask {
                    request_id: &id,
                    team: Some("t"),
                    key_id: Some(key),
                    model: model(),
                    prompt_bytes: rng.gen_range(1..300),
                    parts: rng.gen_range(1..4),
                    max_tokens: Some(max_tokens),
                    key_limits,
                    team_limits: Limits::default(),
                };
                match live.budgets.reserve(&ask) {
                    Ok(r) => {
                        let need = r
                            .event
                            .payload_as::<isnad_schemas::BudgetReserved>()
                            .unwrap()
                            .tokens;
                        let ev = r.event.request_id(id.clone()).team("t").actor(key);
                        let receipt = live.journal.append_one(ev).await.unwrap();
                        live.budgets.sequenced(&id, receipt.seq);
                        open_holds.insert(id.clone(), need);
                        taken.insert(id);
                    }
                    Err(ReserveError::Exceeded(_) | ReserveError::Limited(_)) => refused += 1,
                    Err(e) => panic!("seed {seed} step {step}: {e}"),
                }
            }
            // Settle from usage no larger than the hold.
            45..=69 => {
                if let Some(id) = pick(&mut rng, &open_holds) {
                    let need = open_holds.remove(&id).unwrap();
                    let prompt = rng.gen_range(0..=need);
                    let completion = rng.gen_range(0..=need - prompt);
                    let ev = NewEvent::new(&CompletionFinished {
                        model: "m".into(),
                        prompt_tokens: prompt,
                        completion_tokens: completion,
                        latency_us: 1,
                        ttft_us: None,
                        completion_hash: "sha256:00".into(),
                        finish_reason: "stop".into(),
                    })
                    .unwrap()
                    .request_id(id);
                    live.journal.append_one(ev).await.unwrap();
                }
            }
            // Void: the request failed.
            70..=79 => {
                if let Some(id) = pick(&mut rng, &open_holds) {
                    open_holds.remove(&id);
                    let ev = NewEvent::new(&RequestRejected {
                        endpoint: "/v1/chat/completions".into(),
                        status: 502,
                        code: "upstream_error".into(),
                        message: "upstream failed".into(),
                    })
                    .unwrap()
                    .request_id(id);
                    live.journal.append_one(ev).await.unwrap();
                }
            }
            // Time passes; holds older than the orphan age are swept.
            80..=89 => {
                let secs = rng.gen_range(1..45);
                NOW.fetch_add(secs * 1_000_000, Ordering::SeqCst);
                live.budgets
                    .ledger()
                    .wait_for(live.journal.len())
                    .await
                    .unwrap();
                live.budgets.sweep(false).await.unwrap();
                let l = folded(&live).await;
                open_holds.retain(|id, _| l.holds.contains_key(id));
            }
            // Restart: the projection resumes from its saved state or the log; open holds die.
            90..=94 => {
                live.runner.shutdown().await;
                live.journal.shutdown().await.unwrap();
                drop(live);
                live = open(dir.path()).await;
                open_holds.clear();
            }
            // Replay: the log alone gives the same ledger.
            _ => {
                let l = folded(&live).await;
                assert_eq!(l, replayed(&live.journal), "seed {seed} step {step}");
            }
        }
        check_caps(&folded(&live).await, step, seed);
    }
    // Resolve the rest, then every hold taken is resolved exactly once, in the log.
    live.budgets.sweep(true).await.unwrap();
    let l = folded(&live).await;
    assert!(
        l.holds.is_empty(),
        "seed {seed}: {} holds left",
        l.holds.len()
    );
    assert_eq!(l, replayed(&live.journal), "seed {seed}: final replay");
    let mut resolutions: BTreeMap<String, usize> = BTreeMap::new();
    for e in live.journal.range(0, live.journal.len()).unwrap() {
        let ev = &e.event;
        let resolves = matches!(
            ev.kind.as_str(),
            "completion.finished" | "request.rejected" | "budget.voided"
        );
        if resolves {
            if let Some(id) = &ev.request_id {
                *resolutions.entry(id.clone()).or_default() += 1;
            }
        }
    }
    for id in &taken {
        assert_eq!(
            resolutions.get(id).copied().unwrap_or(0),
            1,
            "seed {seed}: hold {id} resolved once"
        );
    }
    assert!(
        refused > 0,
        "seed {seed}: the caps were never reached; the test would be vacuous"
    );
    live.runner.shutdown().await;
    live.journal.shutdown().await.unwrap();
}

fn pick(rng: &mut StdRng, holds: &BTreeMap<String, u64>) -> Option<String> {
    if holds.is_empty() {
        return None;
    }
    holds.keys().nth(rng.gen_range(0..holds.len())).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_simulation_keeps_every_invariant() {
    let seeds: Vec<u64> = match std::env::var("ISNAD_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("ISNAD_SIM_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        simulate(seed, 3_000).await;
    }
}
