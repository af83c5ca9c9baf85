//! Prometheus metrics, from two sources: HTTP outcomes observed by a middleware (this process's
//! life), and projections of the journal (completions, tokens, fallbacks, refusals: [`Usage`];
//! per-model latency and errors: [`ModelStats`]), which survive restarts because their state is
//! persisted with the position it was folded to, and agree with a replay of the log.
//! Nothing is sent anywhere: `/metrics` is scraped from inside the boundary.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use isnad_journal::{Entry, Journal};
use isnad_pipeline::{
    policy::{ModelStat, ModelStats},
    Projection, ProjectionHandle,
};
use isnad_schemas::{CompletionFinished, ModelFallback, Payload as _, RequestRejected};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// What the journal says the gateway served: folded from its entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Completions by `model` and `finish_reason` (`"model\tfinish_reason"`).
    pub completions: BTreeMap<String, u64>,
    /// Prompt tokens.
    pub tokens_prompt: u64,
    /// Completion tokens.
    pub tokens_completion: u64,
    /// Refusals by status and code (`"status\tcode"`), upstream failures included.
    pub rejected: BTreeMap<String, u64>,
    /// Fallbacks to another model.
    pub fallbacks: u64,
}

const USAGE_FORMAT: &[u8] = b"usage/1\n";

impl Projection for Usage {
    fn name(&self) -> &str {
        "usage"
    }

    fn wants(&self, entry: &Entry) -> bool {
        let k = entry.event.kind.as_str();
        k == CompletionFinished::KIND || k == RequestRejected::KIND || k == ModelFallback::KIND
    }

    fn apply(&mut self, e: &Entry) {
        if let Ok(c) = e.event.payload_as::<CompletionFinished>() {
            self.tokens_prompt += c.prompt_tokens;
            self.tokens_completion += c.completion_tokens;
            *self
                .completions
                .entry(format!("{}\t{}", c.model, c.finish_reason))
                .or_default() += 1;
        } else if let Ok(r) = e.event.payload_as::<RequestRejected>() {
            *self
                .rejected
                .entry(format!("{}\t{}", r.status, r.code))
                .or_default() += 1;
        } else if e.event.payload_as::<ModelFallback>().is_ok() {
            self.fallbacks += 1;
        }
    }

    fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = USAGE_FORMAT.to_vec();
        serde_json::to_writer(&mut out, self).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Self, String> {
        let body = bytes
            .strip_prefix(USAGE_FORMAT)
            .ok_or("not usage/1 state")?;
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }
}

/// The journal's projections that `/metrics` shows.
#[derive(Clone)]
pub struct Projections {
    /// Usage counters.
    pub usage: ProjectionHandle<Usage>,
    /// Per-model latency and errors.
    pub models: ProjectionHandle<ModelStats>,
}

/// All counters of one process.
#[derive(Default)]
pub struct Metrics {
    http: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    shed: AtomicU64,
    projections: Mutex<Option<Projections>>,
}

impl Metrics {
    /// Records one HTTP response.
    pub fn observe_http(&self, path: &str, status: u16, elapsed: Duration) {
        *self
            .http
            .lock()
            .entry((path.to_owned(), status))
            .or_default() += 1;
        self.latency
            .lock()
            .entry(path.to_owned())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Records a request refused because the gateway was at its concurrency limit.
    pub fn observe_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Shows `projections` from now on.
    pub fn show(&self, projections: Projections) {
        *self.projections.lock() = Some(projections);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, journal: &Journal, in_flight: usize) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line("# HELP isnad_http_requests_total HTTP responses by path and status.".into());
        line("# TYPE isnad_http_requests_total counter".into());
        for ((path, status), n) in self.http.lock().iter() {
            line(format!(
                "isnad_http_requests_total{{path=\"{path}\",status=\"{status}\"}} {n}"
            ));
        }
        line("# HELP isnad_http_request_duration_seconds Time to response headers.".into());
        line("# TYPE isnad_http_request_duration_seconds histogram".into());
        for (path, h) in self.latency.lock().iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                line(format!(
                    "isnad_http_request_duration_seconds_bucket{{path=\"{path}\",le=\"{b}\"}} {}",
                    h.counts.get(i).copied().unwrap_or(0)
                ));
            }
            line(format!(
                "isnad_http_request_duration_seconds_bucket{{path=\"{path}\",le=\"+Inf\"}} {}",
                h.count
            ));
            line(format!(
                "isnad_http_request_duration_seconds_sum{{path=\"{path}\"}} {}",
                h.sum
            ));
            line(format!(
                "isnad_http_request_duration_seconds_count{{path=\"{path}\"}} {}",
                h.count
            ));
        }
        if let Some(p) = self.projections.lock().clone() {
            p.usage.read(|u| render_usage(&mut line, u));
            p.models.read(|m| render_models(&mut line, &m.models));
            line("# HELP isnad_projection_lag_entries Journal entries a projection has not folded yet.".into());
            line("# TYPE isnad_projection_lag_entries gauge".into());
            for (name, lag) in [
                (p.usage.name(), p.usage.lag()),
                (p.models.name(), p.models.lag()),
            ] {
                line(format!(
                    "isnad_projection_lag_entries{{projection=\"{name}\"}} {lag}"
                ));
            }
        }
        line("# TYPE isnad_requests_shed_total counter".into());
        line(format!(
            "isnad_requests_shed_total {}",
            self.shed.load(Ordering::Relaxed)
        ));
        line("# TYPE isnad_requests_in_flight gauge".into());
        line(format!("isnad_requests_in_flight {in_flight}"));
        line("# HELP isnad_journal_entries Durable journal entries.".into());
        line("# TYPE isnad_journal_entries gauge".into());
        line(format!("isnad_journal_entries {}", journal.durable_len()));
        line("# HELP isnad_journal_lag_entries Entries sequenced but not yet durable.".into());
        line("# TYPE isnad_journal_lag_entries gauge".into());
        line(format!(
            "isnad_journal_lag_entries {}",
            journal.len().saturating_sub(journal.durable_len())
        ));
        out
    }
}

fn render_usage(line: &mut impl FnMut(String), u: &Usage) {
    line("# HELP isnad_completions_total Completions by model and finish reason.".into());
    line("# TYPE isnad_completions_total counter".into());
    for (key, n) in &u.completions {
        let (model, reason) = key.split_once('\t').unwrap_or((key, ""));
        line(format!(
            "isnad_completions_total{{model=\"{model}\",finish_reason=\"{reason}\"}} {n}"
        ));
    }
    line("# HELP isnad_tokens_total Tokens served.".into());
    line("# TYPE isnad_tokens_total counter".into());
    line(format!(
        "isnad_tokens_total{{kind=\"prompt\"}} {}",
        u.tokens_prompt
    ));
    line(format!(
        "isnad_tokens_total{{kind=\"completion\"}} {}",
        u.tokens_completion
    ));
    line("# HELP isnad_requests_rejected_total Refused requests by status and code (upstream errors included).".into());
    line("# TYPE isnad_requests_rejected_total counter".into());
    for (key, n) in &u.rejected {
        let (status, code) = key.split_once('\t').unwrap_or((key, ""));
        line(format!(
            "isnad_requests_rejected_total{{status=\"{status}\",code=\"{code}\"}} {n}"
        ));
    }
    line("# TYPE isnad_model_fallbacks_total counter".into());
    line(format!("isnad_model_fallbacks_total {}", u.fallbacks));
}

fn render_models(line: &mut impl FnMut(String), models: &BTreeMap<String, ModelStat>) {
    line("# HELP isnad_model_attempts_total Model attempts by outcome.".into());
    line("# TYPE isnad_model_attempts_total counter".into());
    for (model, s) in models {
        line(format!(
            "isnad_model_attempts_total{{model=\"{model}\",outcome=\"completed\"}} {}",
            s.completed
        ));
        line(format!(
            "isnad_model_attempts_total{{model=\"{model}\",outcome=\"failed\"}} {}",
            s.failed
        ));
    }
    line("# HELP isnad_model_latency_seconds Moving average of a model's latency.".into());
    line("# TYPE isnad_model_latency_seconds gauge".into());
    for (model, s) in models {
        line(format!(
            "isnad_model_latency_seconds{{model=\"{model}\"}} {}",
            s.latency_us / 1e6
        ));
    }
}
