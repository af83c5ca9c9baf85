//! Budgets on the request path: the check-and-hold that no concurrency can overshoot.
//!
//! The [`Ledger`] projection folds holds once the journal has sequenced them; a request that
//! checks its budget before then must still see every hold taken before it. So [`Budgets`]
//! keeps the holds it has issued and the projection has not folded yet (the *overlay*), and
//! checks and holds under one lock: available = cap − settled − (held by the ledger ∪ held in
//! the overlay). A hold leaves the overlay once the projection has folded past its entry, so
//! nothing is counted twice for long, and nothing is ever counted zero times: two hundred
//! concurrent requests cannot all see the same remaining budget, which is the
//! check-then-increment race of gateways that read a counter and increment it later.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use isnad_journal::Journal;
use isnad_schemas::{BudgetReserved, BudgetSet, BudgetThresholdCrossedV2, BudgetVoided, NewEvent};
use parking_lot::Mutex;

use super::{
    ledger::{
        cost, day_at, format_offset, minute_at, parse_offset, release, Amount, Budget, Hold,
        Ledger, Period, THRESHOLDS, TPD, TPM,
    },
    limits::{Limited, Limits, Window},
    live::now_us,
    AccessError,
};
use crate::{policy::ModelInfo, Bus, ProjectionHandle, Runner};

/// How budgets hold.
#[derive(Clone, Debug)]
pub struct BudgetOptions {
    /// Completion tokens held for a request that sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// A hold whose request is no longer in flight this long after it was taken is voided.
    pub orphan_after: Duration,
    /// How often orphaned holds and crossed thresholds are looked for.
    pub sweep_every: Duration,
}

impl Default for BudgetOptions {
    fn default() -> Self {
        Self {
            default_max_tokens: 4096,
            orphan_after: Duration::from_secs(30),
            sweep_every: Duration::from_secs(2),
        }
    }
}

/// What a request asks to hold.
#[derive(Clone, Debug)]
pub struct Ask<'a> {
    /// Its request id (the hold's id).
    pub request_id: &'a str,
    /// Its team.
    pub team: Option<&'a str>,
    /// Its key's id.
    pub key_id: Option<&'a str>,
    /// The model the router chose.
    pub model: ModelInfo<'a>,
    /// UTF-8 bytes of everything the model is sent as text.
    pub prompt_bytes: u64,
    /// Messages (or inputs): each may add template tokens.
    pub parts: u64,
    /// `max_tokens` (or `max_completion_tokens`) if set; `Some(0)` for embeddings.
    pub max_tokens: Option<u64>,
    /// The key's token limits (its own, with the configured defaults filled in).
    pub key_limits: Limits,
    /// Its team's token limits.
    pub team_limits: Limits,
}

/// A hold taken: its event, and the token window closest to running out after it.
#[derive(Debug)]
pub struct Reserved {
    /// `budget.reserved`, for the request's group.
    pub event: NewEvent,
    /// The token window with the least left, if any applies.
    pub tokens: Option<Window>,
}

/// A budget a request would overrun.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    /// `team:<id>` or `key:<id>`.
    pub scope: String,
    /// `tokens` or `cost_micros`.
    pub unit: &'static str,
    /// The cap.
    pub limit: u64,
    /// What is left (cap − settled − held).
    pub available: u64,
    /// What the request needs held.
    pub needed: u64,
    /// When the period renews (µs since the Unix epoch).
    pub resets_at_us: i64,
}

/// Why a hold was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// A budget would be overrun.
    #[error("the budget of {} is spent for this period", .0.scope)]
    Exceeded(Exceeded),
    /// A token limit would be overrun.
    #[error("the token limit of {} is reached", .0.scope)]
    Limited(Limited),
    /// The hold's event could not be encoded.
    #[error(transparent)]
    Encode(isnad_schemas::Error),
}

/// Where one budget stands.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Standing {
    /// `team:<id>` or `key:<id>`.
    pub scope: String,
    /// The budget.
    pub period: &'static str,
    /// Its timezone.
    pub timezone: String,
    /// The current period's name.
    pub current: String,
    /// Caps.
    pub limit_tokens: Option<u64>,
    /// Cost cap.
    pub limit_cost_micros: Option<u64>,
    /// Settled.
    pub spent: Amount,
    /// Held by requests in flight.
    pub held: Amount,
    /// Tokens left, if capped.
    pub remaining_tokens: Option<u64>,
    /// Cost left, if capped.
    pub remaining_cost_micros: Option<u64>,
    /// When the period renews (µs).
    pub resets_at_us: i64,
}

/// A token window a request falls under.
struct TokenWindow {
    /// Its key in the ledger (`tpm:key:<id>@2026-12-02T15:47`).
    scope_period: String,
    /// `team:<id>` or `key:<id>`.
    scope: String,
    cap: u64,
    window_s: u64,
    end_us: i64,
    /// Its name in the headers.
    policy: &'static str,
}

impl TokenWindow {
    fn standing(&self, used: u64, now: i64) -> Window {
        Window {
            policy: self.policy,
            unit: "tokens",
            limit: self.cap,
            remaining: self.cap.saturating_sub(used),
            window_s: self.window_s,
            reset_ms: u64::try_from(self.end_us.saturating_sub(now) / 1000).unwrap_or(0),
        }
    }
}

/// The holds this process issued that the ledger has not folded yet, with their sums per
/// `scope@period`.
#[derive(Default)]
struct Overlay {
    /// Hold and, once sequenced, its seq, by request id.
    holds: HashMap<String, (Hold, Option<u64>)>,
    /// Request ids by seq, so that the folded ones leave in order.
    sequenced: BTreeMap<u64, String>,
    /// What the holds hold, by `scope@period`.
    by_scope: BTreeMap<String, Amount>,
}

impl Overlay {
    fn insert(&mut self, id: String, h: Hold) {
        for s in &h.scopes {
            self.by_scope.entry(s.clone()).or_default().add(h.amount);
        }
        if let Some((old, seq)) = self.holds.insert(id, (h, None)) {
            release(&mut self.by_scope, &old);
            if let Some(seq) = seq {
                self.sequenced.remove(&seq);
            }
        }
    }

    fn sequenced(&mut self, id: &str, seq: u64) {
        if let Some(e) = self.holds.get_mut(id) {
            if let Some(old) = e.1.replace(seq) {
                self.sequenced.remove(&old);
            }
            self.sequenced.insert(seq, id.to_owned());
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some((h, seq)) = self.holds.remove(id) {
            release(&mut self.by_scope, &h);
            if let Some(seq) = seq {
                self.sequenced.remove(&seq);
            }
        }
    }

    /// Drops the holds the ledger has folded: those sequenced below `folded`.
    fn prune(&mut self, folded: u64) {
        while let Some((&seq, _)) = self.sequenced.first_key_value() {
            if seq >= folded {
                break;
            }
            if let Some((_, id)) = self.sequenced.pop_first() {
                if let Some((h, _)) = self.holds.remove(&id) {
                    release(&mut self.by_scope, &h);
                }
            }
        }
    }

    fn held(&self, sp: &str) -> Amount {
        self.by_scope.get(sp).copied().unwrap_or_default()
    }
}

/// Budgets and holds, live.
pub struct Budgets {
    ledger: ProjectionHandle<Ledger>,
    /// Holds issued, with their seq once sequenced, that the ledger may not have folded.
    overlay: Mutex<Overlay>,
    journal: Journal,
    bus: Bus,
    opts: BudgetOptions,
    clock: fn() -> i64,
    /// One `PUT` of a budget at a time.
    write: tokio::sync::Mutex<()>,
}

impl Budgets {
    /// Starts the ledger projection on `runner` (from its saved state, then the tail).
    pub fn start(runner: &mut Runner, bus: Bus, opts: BudgetOptions) -> crate::Result<Self> {
        let ledger = runner.project(Ledger::default())?;
        Ok(Self {
            ledger,
            overlay: Mutex::new(Overlay::default()),
            journal: bus.journal().clone(),
            bus,
            opts,
            clock: now_us,
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// The same, with a clock of the caller's (tests).
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    /// The ledger projection.
    pub fn ledger(&self) -> &ProjectionHandle<Ledger> {
        &self.ledger
    }

    fn scopes(team: Option<&str>, key_id: Option<&str>) -> Vec<String> {
        team.map(|t| format!("team:{t}"))
            .into_iter()
            .chain(key_id.map(|k| format!("key:{k}")))
            .collect()
    }

    /// The token windows of a team and a key at `now`.
    fn windows(
        now: i64,
        team: Option<(&str, Limits)>,
        key: Option<(&str, Limits)>,
    ) -> Vec<TokenWindow> {
        let (minute, minute_end) = minute_at(now);
        let (day, day_end) = day_at(now);
        let mut out = Vec::new();
        for (kind, id, l) in [
            team.map(|(id, l)| ("team", id, l)),
            key.map(|(id, l)| ("key", id, l)),
        ]
        .into_iter()
        .flatten()
        {
            let team = kind == "team";
            let scope = format!("{kind}:{id}");
            let mut push = |cap: Option<u64>, prefix: &str, period: &str, secs, end, policy| {
                if let Some(cap) = cap {
                    out.push(TokenWindow {
                        scope_period: format!("{prefix}{scope}@{period}"),
                        scope: scope.clone(),
                        cap,
                        window_s: secs,
                        end_us: end,
                        policy,
                    });
                }
            };
            let (m, d) = if team {
                ("team-tokens-minute", "team-tokens-day")
            } else {
                ("tokens-minute", "tokens-day")
            };
            push(l.tokens_per_minute, TPM, &minute, 60, minute_end, m);
            push(l.tokens_per_day, TPD, &day, 86_400, day_end, d);
        }
        out
    }

    /// What `l` and the unfolded holds of `overlay` count against `sp`: settled plus held.
    fn used(l: &Ledger, overlay: &Overlay, sp: &str) -> Amount {
        let mut used = l.spent(sp);
        used.add(l.held(sp));
        used.add(overlay.held(sp));
        used
    }

    /// Where the token windows of a team and a key stand, the one with the least left first.
    pub fn token_windows(
        &self,
        team: Option<(&str, Limits)>,
        key: Option<(&str, Limits)>,
    ) -> Vec<Window> {
        let now = (self.clock)();
        let windows = Self::windows(now, team, key);
        if windows.is_empty() {
            return Vec::new();
        }
        let mut overlay = self.overlay.lock();
        let mut out: Vec<Window> = self.ledger.read(|l| {
            overlay.prune(self.ledger.next_seq());
            windows
                .into_iter()
                .map(|w| w.standing(Self::used(l, &overlay, &w.scope_period).tokens, now))
                .collect()
        });
        out.sort_by_key(|w| w.remaining);
        out
    }

    /// Checks every budget `ask` falls under and holds its worst case, or says which budget it
    /// would overrun. The event goes into the request's group; tell [`Budgets::sequenced`]
    /// its seq, or [`Budgets::cancel`] if it never reached the journal.
    pub fn reserve(&self, ask: &Ask<'_>) -> Result<Reserved, ReserveError> {
        let now = (self.clock)();
        let prompt = ask
            .prompt_bytes
            .saturating_add(ask.parts.saturating_mul(super::ledger::PER_MESSAGE_TOKENS));
        let completion = ask.max_tokens.unwrap_or(self.opts.default_max_tokens);
        let need = Amount {
            tokens: prompt.saturating_add(completion),
            cost_micros: cost(prompt, ask.model.price_in_micros_per_1k)
                .saturating_add(cost(completion, ask.model.price_out_micros_per_1k)),
        };
        let windows = Self::windows(
            now,
            ask.team.map(|t| (t, ask.team_limits)),
            ask.key_id.map(|k| (k, ask.key_limits)),
        );
        let mut overlay = self.overlay.lock();
        let mut held_scopes = Vec::new();
        let mut tightest: Option<Window> = None;
        self.ledger.read(|l| -> Result<(), ReserveError> {
            overlay.prune(self.ledger.next_seq());
            for w in windows {
                let window = w.standing(Self::used(l, &overlay, &w.scope_period).tokens, now);
                let available = window.remaining;
                if need.tokens > available {
                    return Err(ReserveError::Limited(Limited {
                        retry_after_ms: (need.tokens <= w.cap).then_some(window.reset_ms.max(1)),
                        window,
                        scope: w.scope,
                        needed: need.tokens,
                    }));
                }
                let after = Window {
                    remaining: available - need.tokens,
                    ..window
                };
                if tightest
                    .as_ref()
                    .is_none_or(|t| after.remaining < t.remaining)
                {
                    tightest = Some(after);
                }
                held_scopes.push(w.scope_period);
            }
            for scope in Self::scopes(ask.team, ask.key_id) {
                let Some(b) = l.budgets.get(&scope) else {
                    continue;
                };
                let (period, resets_at_us) = b.period_at(now);
                let sp = format!("{scope}@{period}");
                let used = Self::used(l, &overlay, &sp);
                let over = |unit, limit: Option<u64>, used: u64, needed: u64| {
                    limit.and_then(|limit| {
                        let available = limit.saturating_sub(used);
                        (needed > available).then(|| Exceeded {
                            scope: scope.clone(),
                            unit,
                            limit,
                            available,
                            needed,
                            resets_at_us,
                        })
                    })
                };
                if let Some(e) = over("tokens", b.tokens, used.tokens, need.tokens).or_else(|| {
                    over(
                        "cost_micros",
                        b.cost_micros,
                        used.cost_micros,
                        need.cost_micros,
                    )
                }) {
                    return Err(ReserveError::Exceeded(e));
                }
                held_scopes.push(sp);
            }
            Ok(())
        })?;
        let payload = BudgetReserved {
            hold_id: ask.request_id.to_owned(),
            scopes: held_scopes.clone(),
            key_id: ask.key_id.map(str::to_owned),
            model: ask.model.id.to_owned(),
            tokens: need.tokens,
            cost_micros: need.cost_micros,
            price_in_micros_per_1k: ask.model.price_in_micros_per_1k,
            price_out_micros_per_1k: ask.model.price_out_micros_per_1k,
        };
        let event = NewEvent::new(&payload).map_err(ReserveError::Encode)?;
        overlay.insert(
            ask.request_id.to_owned(),
            Hold {
                scopes: held_scopes,
                amount: need,
                team: ask.team.map(str::to_owned),
                key_id: ask.key_id.map(str::to_owned),
                model: ask.model.id.to_owned(),
                prices: (
                    ask.model.price_in_micros_per_1k,
                    ask.model.price_out_micros_per_1k,
                ),
                at_us: now,
            },
        );
        Ok(Reserved {
            event,
            tokens: tightest,
        })
    }

    /// The hold of `request_id` was sequenced at `seq`.
    pub fn sequenced(&self, request_id: &str, seq: u64) {
        self.overlay.lock().sequenced(request_id, seq);
    }

    /// The hold of `request_id` never reached the journal.
    pub fn cancel(&self, request_id: &str) {
        self.overlay.lock().remove(request_id);
    }

    /// Where the budgets of a team and a key stand now.
    pub fn standing(&self, team: Option<&str>, key_id: Option<&str>) -> Vec<Standing> {
        let now = (self.clock)();
        let mut overlay = self.overlay.lock();
        self.ledger.read(|l| {
            overlay.prune(self.ledger.next_seq());
            Self::scopes(team, key_id)
                .into_iter()
                .filter_map(|scope| {
                    let b = l.budgets.get(&scope)?;
                    let (current, resets_at_us) = b.period_at(now);
                    let sp = format!("{scope}@{current}");
                    let spent = l.spent(&sp);
                    let mut held = l.held(&sp);
                    held.add(overlay.held(&sp));
                    let left =
                        |cap: Option<u64>, s: u64, h: u64| cap.map(|c| c.saturating_sub(s + h));
                    Some(Standing {
                        remaining_tokens: left(b.tokens, spent.tokens, held.tokens),
                        remaining_cost_micros: left(
                            b.cost_micros,
                            spent.cost_micros,
                            held.cost_micros,
                        ),
                        scope,
                        period: b.period.as_str(),
                        timezone: format_offset(b.offset_min),
                        current,
                        limit_tokens: b.tokens,
                        limit_cost_micros: b.cost_micros,
                        spent,
                        held,
                        resets_at_us,
                    })
                })
                .collect()
        })
    }

    /// Sets (or, with neither cap, removes) the budget of `scope`, journaled with `actor`;
    /// returns once the ledger holds it, so the next request is checked against it.
    pub async fn set(
        &self,
        actor: &str,
        scope: &str,
        tokens: Option<u64>,
        cost_micros: Option<u64>,
        period: Period,
        timezone: &str,
    ) -> Result<Option<Budget>, AccessError> {
        let offset = parse_offset(timezone).ok_or_else(|| AccessError::Invalid {
            field: "timezone",
            reason: format!("`{timezone}`: expected `UTC` or an offset such as `+03:00`"),
        })?;
        let _w = self.write.lock().await;
        let ev = NewEvent::new(&BudgetSet {
            scope: scope.into(),
            tokens,
            cost_micros,
            period: period.as_str().into(),
            timezone: format_offset(offset),
        })?
        .actor(actor);
        let r = self.journal.append_one(ev).await?;
        self.ledger
            .wait_for(r.seq + 1)
            .await
            .map_err(|e| AccessError::Conflict(e.to_string()))?;
        Ok(self.ledger.read(|l| l.budgets.get(scope).cloned()))
    }

    /// Voids holds whose requests are gone, and journals thresholds crossed since the last
    /// sweep; returns how many events it journaled. `all_orphans` voids every hold not in
    /// flight, however young (at start, when no request of the last run can still finish).
    pub async fn sweep(&self, all_orphans: bool) -> Result<usize, AccessError> {
        let now = (self.clock)();
        let orphan_us = i64::try_from(self.opts.orphan_after.as_micros()).unwrap_or(i64::MAX);
        let mut events = Vec::new();
        self.ledger.read(|l| -> Result<(), AccessError> {
            for (id, h) in &l.holds {
                let old = all_orphans || now.saturating_sub(h.at_us) > orphan_us;
                if old && self.bus.attachment(id).is_none() {
                    let reason = if all_orphans { "restart" } else { "orphaned" };
                    events.push(
                        NewEvent::new(&BudgetVoided {
                            hold_id: id.clone(),
                            reason: reason.into(),
                        })?
                        .request_id(id.clone())
                        .actor("system"),
                    );
                }
            }
            for (scope, b) in &l.budgets {
                let (period, _) = b.period_at(now);
                let sp = format!("{scope}@{period}");
                let spent = l.spent(&sp);
                for (unit, limit, used) in [
                    ("tokens", b.tokens, spent.tokens),
                    ("cost_micros", b.cost_micros, spent.cost_micros),
                ] {
                    let Some(limit) = limit.filter(|&l| l > 0) else {
                        continue;
                    };
                    // Only the highest threshold newly crossed is journaled with the others
                    // below it, each once.
                    for t in THRESHOLDS {
                        let crossed = u128::from(used) * 100 >= u128::from(limit) * u128::from(t);
                        if crossed && !l.crossed.contains(&(sp.clone(), unit.to_owned(), t)) {
                            let ev = NewEvent::new(&BudgetThresholdCrossedV2 {
                                scope: scope.clone(),
                                period: period.clone(),
                                unit: unit.into(),
                                limit,
                                used,
                                threshold_percent: t,
                            })?
                            .actor("system");
                            let ev = match scope.strip_prefix("team:") {
                                Some(team) => ev.team(team),
                                None => ev,
                            };
                            events.push(ev);
                        }
                    }
                }
            }
            Ok(())
        })?;
        let n = events.len();
        if n > 0 {
            let receipts = self.journal.append(events).await?;
            if let Some(last) = receipts.last() {
                // The next sweep must see these folded, or it would journal them again.
                self.ledger
                    .wait_for(last.seq + 1)
                    .await
                    .map_err(|e| AccessError::Conflict(e.to_string()))?;
            }
        }
        Ok(n)
    }

    /// Sweeps every [`BudgetOptions::sweep_every`] until the journal closes.
    pub fn spawn_sweeper(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.opts.sweep_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match self.sweep(false).await {
                    Ok(_) => {}
                    Err(AccessError::Journal(isnad_journal::Error::Closed)) => return,
                    Err(e) => tracing::warn!(error = %e, "budget sweep failed"),
                }
            }
        })
    }
}
