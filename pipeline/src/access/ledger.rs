//! The spending ledger: budgets, holds and usage, folded from the journal.
//!
//! Budgets are two-phase, like a card authorisation (or TigerBeetle's pending transfers):
//!
//! 1. **Reserve.** Before a request's model is called, the gateway holds its worst case
//!    (`budget.reserved`, in the request's group): the prompt's upper bound in tokens (its UTF-8
//!    bytes plus [`PER_MESSAGE_TOKENS`] a message: a byte-level tokenizer never makes more
//!    tokens than bytes) plus `max_tokens`, or the configured default when the request sets
//!    none, times the chosen model's prices. It is refused (429 `budget_exceeded`) if any
//!    budget it falls under would go over: available = cap − settled − held.
//! 2. **Settle** from the real usage of `completion.finished`, or **void** on
//!    `request.rejected` or `budget.voided` (a hold whose request died with a process or
//!    outlived it).
//!
//! The fold is a pure function of the log: replaying from seq 0 gives the same ledger, which
//! is what `isnad journal replay` prints and what `/v1/usage` serves.
//!
//! Every request that reaches a model takes a hold, with or without a budget: the hold
//! carries the key, team, model and prices, so usage and its cost are attributed from the
//! log alone.

use std::collections::{BTreeMap, BTreeSet};

use isnad_journal::Entry;
use isnad_schemas::{
    BudgetReserved, BudgetSet, BudgetThresholdCrossedV2, BudgetVoided, CompletionFinished, Payload,
    RequestRejected,
};
use serde::{Deserialize, Serialize};

use crate::Projection;

/// Tokens a chat template may add per message, on top of its text.
pub const PER_MESSAGE_TOKENS: u64 = 8;
/// The thresholds that are journaled when crossed.
pub const THRESHOLDS: [u8; 3] = [50, 80, 100];

/// How often a budget renews.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// Every day at midnight in the budget's timezone.
    Day,
    /// On the first of every month.
    Month,
}

impl Period {
    /// `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }
}

/// A budget's caps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Tokens per period.
    pub tokens: Option<u64>,
    /// Cost per period, in millionths.
    pub cost_micros: Option<u64>,
    /// The period.
    pub period: Period,
    /// Offset from UTC, in minutes, that periods are counted in.
    pub offset_min: i32,
}

/// Parses `UTC`, `Z`, `+HH:MM` or `-HH:MM` into minutes east of UTC.
pub fn parse_offset(tz: &str) -> Option<i32> {
    if tz.eq_ignore_ascii_case("utc") || tz == "Z" || tz == "+00:00" {
        return Some(0);
    }
    let (sign, rest) = match tz.as_bytes().first()? {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => return None,
    };
    let (h, m) = rest.split_once(':')?;
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60 && rest.len() == 5).then_some(sign * (h * 60 + m))
}

/// `+HH:MM` for an offset in minutes.
pub fn format_offset(min: i32) -> String {
    if min == 0 {
        return "UTC".into();
    }
    let sign = if min < 0 { '-' } else { '+' };
    format!("{sign}{:02}:{:02}", min.abs() / 60, min.abs() % 60)
}

impl Budget {
    /// The period that `at_us` falls in (`2026-12-02` or `2026-12`), and when it ends (µs).
    pub fn period_at(&self, at_us: i64) -> (String, i64) {
        let shift = i64::from(self.offset_min) * 60_000_000;
        let local = at_us + shift;
        let days = local.div_euclid(86_400_000_000);
        let (y, m, d) = civil_from_days(days);
        match self.period {
            Period::Day => (
                format!("{y:04}-{m:02}-{d:02}"),
                (days + 1) * 86_400_000_000 - shift,
            ),
            Period::Month => {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    format!("{y:04}-{m:02}"),
                    days_from_civil(ny, nm, 1) * 86_400_000_000 - shift,
                )
            }
        }
    }
}

// Howard Hinnant's civil-date algorithms (days since 1970-01-01 <-> proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Tokens and cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    /// Tokens.
    pub tokens: u64,
    /// Cost, in millionths.
    pub cost_micros: u64,
}

impl Amount {
    /// Adds `o`, saturating.
    pub fn add(&mut self, o: Amount) {
        self.tokens = self.tokens.saturating_add(o.tokens);
        self.cost_micros = self.cost_micros.saturating_add(o.cost_micros);
    }

    /// Takes `o` away, saturating.
    pub fn sub(&mut self, o: Amount) {
        self.tokens = self.tokens.saturating_sub(o.tokens);
        self.cost_micros = self.cost_micros.saturating_sub(o.cost_micros);
    }

    /// Whether it is nothing.
    pub fn is_zero(self) -> bool {
        self == Self::default()
    }
}

/// Takes hold `h` out of the per-scope sums `held_by`.
pub fn release(held_by: &mut BTreeMap<String, Amount>, h: &Hold) {
    for s in &h.scopes {
        if let Some(a) = held_by.get_mut(s) {
            a.sub(h.amount);
            if a.is_zero() {
                held_by.remove(s);
            }
        }
    }
}

/// An open hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// `scope@period` of each budget it counts against.
    pub scopes: Vec<String>,
    /// What it holds.
    pub amount: Amount,
    /// Team, key and model, for usage.
    pub team: Option<String>,
    /// The key's id.
    pub key_id: Option<String>,
    /// The model.
    pub model: String,
    /// Prices per 1,000 tokens (in, out), in millionths.
    pub prices: (u64, u64),
    /// When it was taken (the journal's time).
    pub at_us: i64,
}

/// One row of usage: a UTC day, a team, a key and a model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Requests settled.
    pub requests: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Cost, in millionths.
    pub cost_micros: u64,
}

/// The key of a usage row: (UTC day, team, key id, model).
pub type UsageKey = (String, String, String, String);

/// Budgets, holds and usage, folded from the journal.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// Budgets by scope (`team:<id>`, `key:<id>`).
    pub budgets: BTreeMap<String, Budget>,
    /// Settled spending by `scope@period`.
    pub settled: BTreeMap<String, Amount>,
    /// Open holds by request id.
    pub holds: BTreeMap<String, Hold>,
    /// Thresholds journaled as crossed: (`scope@period`, unit, percent).
    pub crossed: BTreeSet<(String, String, u8)>,
    /// Usage by (UTC day, team, key, model); `-` where there is none.
    pub usage: BTreeMap<UsageKey, Usage>,
    /// What the open holds hold, by `scope@period` (the sum of [`Ledger::holds`] per scope, kept
    /// as they open and close so that a check does not walk every hold).
    pub held_by: BTreeMap<String, Amount>,
    /// Token windows (`tpm:…`, `tpd:…` in [`Ledger::settled`]) by when they end, per length
    /// (minute, day), so that ended ones are dropped once a later window is in use.
    pub windows: [BTreeSet<(i64, String)>; 2],
}

/// The prefix of a tokens-per-minute window's scope (`tpm:key:<id>@2026-12-02T15:47`).
pub const TPM: &str = "tpm:";
/// The prefix of a tokens-per-day window's scope (`tpd:team:<id>@2026-12-02`).
pub const TPD: &str = "tpd:";

/// The UTC minute `at_us` falls in (`2026-12-02T15:47`) and when it ends (µs).
pub fn minute_at(at_us: i64) -> (String, i64) {
    let minute = at_us.div_euclid(60_000_000);
    let days = minute.div_euclid(1440);
    let (y, m, d) = civil_from_days(days);
    let in_day = minute.rem_euclid(1440);
    (
        format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}", in_day / 60, in_day % 60),
        (minute + 1) * 60_000_000,
    )
}

/// The UTC day `at_us` falls in (`2026-12-02`) and when it ends (µs).
pub fn day_at(at_us: i64) -> (String, i64) {
    let days = at_us.div_euclid(86_400_000_000);
    let (y, m, d) = civil_from_days(days);
    (format!("{y:04}-{m:02}-{d:02}"), (days + 1) * 86_400_000_000)
}

/// When the token window `scope_period` (`tpm:…@YYYY-MM-DDTHH:MM` or `tpd:…@YYYY-MM-DD`) ends.
pub fn window_end(scope_period: &str) -> Option<i64> {
    let (_, period) = scope_period.rsplit_once('@')?;
    let num = |s: &str| s.parse::<u32>().ok();
    let (date, time) = match period.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (period, None),
    };
    let mut it = date.splitn(3, '-');
    let y = i64::from(num(it.next()?)?);
    let m = num(it.next()?)?;
    let d = num(it.next()?)?;
    let day = days_from_civil(y, m, d);
    match time {
        None if scope_period.starts_with(TPD) => Some((day + 1) * 86_400_000_000),
        Some(t) if scope_period.starts_with(TPM) => {
            let (h, mi) = t.split_once(':')?;
            let minute = day * 1440 + i64::from(num(h)?) * 60 + i64::from(num(mi)?);
            Some((minute + 1) * 60_000_000)
        }
        _ => None,
    }
}

/// Cost of `tokens` at `per_1k` millionths per 1,000, rounded up.
pub fn cost(tokens: u64, per_1k: u64) -> u64 {
    (u128::from(tokens) * u128::from(per_1k)).div_ceil(1000) as u64
}

impl Ledger {
    /// Held against `scope_period` by the open holds.
    pub fn held(&self, scope_period: &str) -> Amount {
        self.held_by.get(scope_period).copied().unwrap_or_default()
    }

    fn open_hold(&mut self, id: String, h: Hold) {
        for s in &h.scopes {
            self.held_by.entry(s.clone()).or_default().add(h.amount);
        }
        if let Some(old) = self.holds.insert(id, h) {
            release(&mut self.held_by, &old);
        }
    }

    fn close_hold(&mut self, id: &str) -> Option<Hold> {
        let h = self.holds.remove(id)?;
        release(&mut self.held_by, &h);
        Some(h)
    }

    /// Settled against `scope_period`.
    pub fn spent(&self, scope_period: &str) -> Amount {
        self.settled.get(scope_period).copied().unwrap_or_default()
    }

    /// Drops the windows of length `span` that ended before the latest one in use began:
    /// no request is counted in them any more. (By the windows' own times, not the clock's,
    /// so the fold stays a function of the log.)
    fn drop_ended_windows(&mut self, i: usize, span: i64) {
        let Some(latest) = self.windows[i].last().map(|w| w.0) else {
            return;
        };
        while let Some((end, _)) = self.windows[i].first() {
            if *end >= latest - span {
                break;
            }
            if let Some((_, sp)) = self.windows[i].pop_first() {
                self.settled.remove(&sp);
            }
        }
    }

    fn settle(&mut self, request_id: &str, prompt: u64, completion: u64, at_us: i64) {
        let Some(h) = self.close_hold(request_id) else {
            return;
        };
        let amount = Amount {
            tokens: prompt.saturating_add(completion),
            cost_micros: cost(prompt, h.prices.0).saturating_add(cost(completion, h.prices.1)),
        };
        for s in &h.scopes {
            self.settled.entry(s.clone()).or_default().add(amount);
            if let Some(end) = window_end(s) {
                let (i, span) = if s.starts_with(TPM) {
                    (0, 60_000_000)
                } else {
                    (1, 86_400_000_000)
                };
                self.windows[i].insert((end, s.clone()));
                self.drop_ended_windows(i, span);
            }
        }
        let day = day_at(at_us).0;
        let dash = || "-".to_owned();
        let row = self
            .usage
            .entry((
                day,
                h.team.unwrap_or_else(dash),
                h.key_id.unwrap_or_else(dash),
                h.model,
            ))
            .or_default();
        row.requests += 1;
        row.prompt_tokens += prompt;
        row.completion_tokens += completion;
        row.cost_micros += amount.cost_micros;
    }
}

const LEDGER_FORMAT: &[u8] = b"ledger/2\n";

impl Projection for Ledger {
    fn name(&self) -> &str {
        "ledger"
    }

    fn wants(&self, entry: &Entry) -> bool {
        matches!(
            entry.event.kind.as_str(),
            BudgetSet::KIND
                | BudgetReserved::KIND
                | BudgetVoided::KIND
                | BudgetThresholdCrossedV2::KIND
                | CompletionFinished::KIND
                | RequestRejected::KIND
        )
    }

    fn apply(&mut self, entry: &Entry) {
        let ev = &entry.event;
        let at = ev.timestamp_us;
        match ev.kind.as_str() {
            BudgetSet::KIND => {
                if let Ok(p) = ev.payload_as::<BudgetSet>() {
                    let period = match p.period.as_str() {
                        "day" => Period::Day,
                        _ => Period::Month,
                    };
                    match (p.tokens, p.cost_micros, parse_offset(&p.timezone)) {
                        (None, None, _) | (_, _, None) => {
                            self.budgets.remove(&p.scope);
                        }
                        (tokens, cost_micros, Some(offset_min)) => {
                            self.budgets.insert(
                                p.scope,
                                Budget {
                                    tokens,
                                    cost_micros,
                                    period,
                                    offset_min,
                                },
                            );
                        }
                    }
                }
            }
            BudgetReserved::KIND => {
                if let Ok(p) = ev.payload_as::<BudgetReserved>() {
                    self.open_hold(
                        p.hold_id,
                        Hold {
                            scopes: p.scopes,
                            amount: Amount {
                                tokens: p.tokens,
                                cost_micros: p.cost_micros,
                            },
                            team: ev.team.clone(),
                            key_id: p.key_id,
                            model: p.model,
                            prices: (p.price_in_micros_per_1k, p.price_out_micros_per_1k),
                            at_us: at,
                        },
                    );
                }
            }
            BudgetVoided::KIND => {
                if let Ok(p) = ev.payload_as::<BudgetVoided>() {
                    self.close_hold(&p.hold_id);
                }
            }
            BudgetThresholdCrossedV2::KIND => {
                if let Ok(p) = ev.payload_as::<BudgetThresholdCrossedV2>() {
                    self.crossed.insert((
                        format!("{}@{}", p.scope, p.period),
                        p.unit,
                        p.threshold_percent,
                    ));
                }
            }
            CompletionFinished::KIND => {
                if let (Ok(p), Some(id)) = (ev.payload_as::<CompletionFinished>(), &ev.request_id) {
                    self.settle(id, p.prompt_tokens, p.completion_tokens, at);
                }
            }
            RequestRejected::KIND => {
                if let Some(id) = &ev.request_id {
                    self.close_hold(id);
                }
            }
            _ => {}
        }
    }

    fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = LEDGER_FORMAT.to_vec();
        serde_json::to_writer(&mut out, self).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Self, String> {
        let body = bytes
            .strip_prefix(LEDGER_FORMAT)
            .ok_or("not ledger/2 state")?;
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn periods_follow_the_budgets_offset() {
        let b = |period, offset_min| Budget {
            tokens: None,
            cost_micros: None,
            period,
            offset_min,
        };
        // 2026-12-01T22:30:00Z
        let t = 1_796_164_200_000_000;
        assert_eq!(b(Period::Day, 0).period_at(t).0, "2026-12-01");
        assert_eq!(
            b(Period::Day, 180).period_at(t).0,
            "2026-12-02",
            "Riyadh is past midnight"
        );
        let (p, end) = b(Period::Day, 180).period_at(t);
        assert_eq!((p.as_str(), end), ("2026-12-02", 1_796_245_200_000_000));
        assert_eq!(b(Period::Month, 0).period_at(t).0, "2026-12");
        let (m, end) = b(Period::Month, 0).period_at(t);
        assert_eq!(
            (m.as_str(), end),
            ("2026-12", 1_798_761_600_000_000),
            "2027-01-01T00:00Z"
        );
        assert_eq!(parse_offset("+03:00"), Some(180));
        assert_eq!(parse_offset("-05:30"), Some(-330));
        assert_eq!(parse_offset("Asia/Riyadh"), None);
        assert_eq!(format_offset(240), "+04:00");
        assert_eq!(cost(1, 1), 1, "rounded up");
        let (m, end) = minute_at(t);
        assert_eq!((m.as_str(), end), ("2026-12-01T22:30", t + 60_000_000));
        assert_eq!(window_end(&format!("{TPM}key:k@{m}")), Some(end));
        let (d, end) = day_at(t);
        assert_eq!(d, "2026-12-01");
        assert_eq!(window_end(&format!("{TPD}team:t@{d}")), Some(end));
        assert_eq!(
            window_end("team:t@2026-12-01"),
            None,
            "a budget, not a window"
        );
        assert_eq!(cost(2000, 300), 600);
    }
}
