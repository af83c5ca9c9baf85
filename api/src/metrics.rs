//! Prometheus metrics, folded from two sources: HTTP outcomes observed by a middleware, and the
//! journal itself (completions, tokens, fallbacks, refusals), which a task follows as it grows.
//! Nothing is sent anywhere: `/metrics` is scraped from inside the boundary.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use isnad_journal::{Journal, Watermark};
use isnad_schemas::{CompletionFinished, ModelFallback, RequestRejected};
use parking_lot::Mutex;

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

/// All counters of one process.
#[derive(Default)]
pub struct Metrics {
    http: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    completions: Mutex<BTreeMap<(String, String), u64>>,
    tokens_prompt: AtomicU64,
    tokens_completion: AtomicU64,
    rejected: Mutex<BTreeMap<(u16, String), u64>>,
    fallbacks: AtomicU64,
    shed: AtomicU64,
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

    /// Follows the journal from its current end and folds outcome events into the counters.
    pub fn follow(self: &Arc<Self>, journal: &Journal) -> tokio::task::JoinHandle<()> {
        let mut sub = journal.subscribe(journal.len(), Watermark::Sequenced);
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok(e) = sub.next().await {
                match e.event.kind.as_str() {
                    "completion.finished" => {
                        if let Ok(c) = e.event.payload_as::<CompletionFinished>() {
                            me.tokens_prompt
                                .fetch_add(c.prompt_tokens, Ordering::Relaxed);
                            me.tokens_completion
                                .fetch_add(c.completion_tokens, Ordering::Relaxed);
                            *me.completions
                                .lock()
                                .entry((c.model, c.finish_reason))
                                .or_default() += 1;
                        }
                    }
                    "request.rejected" => {
                        if let Ok(r) = e.event.payload_as::<RequestRejected>() {
                            *me.rejected.lock().entry((r.status, r.code)).or_default() += 1;
                        }
                    }
                    "model.fallback" if e.event.payload_as::<ModelFallback>().is_ok() => {
                        me.fallbacks.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
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
        line("# HELP isnad_completions_total Completions by model and finish reason.".into());
        line("# TYPE isnad_completions_total counter".into());
        for ((model, reason), n) in self.completions.lock().iter() {
            line(format!(
                "isnad_completions_total{{model=\"{model}\",finish_reason=\"{reason}\"}} {n}"
            ));
        }
        line("# HELP isnad_tokens_total Tokens served.".into());
        line("# TYPE isnad_tokens_total counter".into());
        line(format!(
            "isnad_tokens_total{{kind=\"prompt\"}} {}",
            self.tokens_prompt.load(Ordering::Relaxed)
        ));
        line(format!(
            "isnad_tokens_total{{kind=\"completion\"}} {}",
            self.tokens_completion.load(Ordering::Relaxed)
        ));
        line("# HELP isnad_requests_rejected_total Refused requests by status and code (upstream errors included).".into());
        line("# TYPE isnad_requests_rejected_total counter".into());
        for ((status, code), n) in self.rejected.lock().iter() {
            line(format!(
                "isnad_requests_rejected_total{{status=\"{status}\",code=\"{code}\"}} {n}"
            ));
        }
        line("# TYPE isnad_model_fallbacks_total counter".into());
        line(format!(
            "isnad_model_fallbacks_total {}",
            self.fallbacks.load(Ordering::Relaxed)
        ));
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
