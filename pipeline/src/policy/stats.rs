//! Per-model latency and error statistics, folded from the journal: what routing by
//! `performance` (and an operator's dashboard) reads. A projection, so it survives restarts and
//! a replay of the log gives the same figures.

use std::collections::BTreeMap;

use isnad_journal::Entry;
use isnad_schemas::{CompletionFinished, ModelFallback, Payload as _};
use serde::{Deserialize, Serialize};

use crate::Projection;

/// Weight of the newest observation in the moving averages.
const EWMA_WEIGHT: f64 = 0.1;

/// One model's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStat {
    /// Completions that finished (`stop`, `length`, `tool_calls`, …).
    pub completed: u64,
    /// Attempts that failed: a completion that ended in `error`, or a fallback away from it.
    pub failed: u64,
    /// Moving average of the total latency, in microseconds (completions only).
    pub latency_us: f64,
    /// Moving average of the time to first token, in microseconds (streams only).
    pub ttft_us: f64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

impl ModelStat {
    fn observe(avg: &mut f64, n: u64, x: u64) {
        // The first observation sets the average; later ones move it.
        *avg = if n == 0 {
            x as f64
        } else {
            *avg + EWMA_WEIGHT * (x as f64 - *avg)
        };
    }

    /// Share of attempts that failed, 0 to 1.
    pub fn error_rate(&self) -> f64 {
        let all = self.completed + self.failed;
        if all == 0 {
            0.0
        } else {
            self.failed as f64 / all as f64
        }
    }
}

/// Figures of every model that served or failed a request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    /// By model id.
    pub models: BTreeMap<String, ModelStat>,
}

/// Format version of the encoded state.
const FORMAT: &[u8] = b"model-stats/1\n";

impl Projection for ModelStats {
    fn name(&self) -> &str {
        "model-stats"
    }

    fn wants(&self, entry: &Entry) -> bool {
        entry.event.kind == CompletionFinished::KIND || entry.event.kind == ModelFallback::KIND
    }

    fn apply(&mut self, entry: &Entry) {
        if let Ok(c) = entry.event.payload_as::<CompletionFinished>() {
            let stat = self.models.entry(c.model).or_default();
            match c.finish_reason.as_str() {
                "error" => stat.failed += 1,
                // The client left: says nothing about the model.
                "client_disconnected" => {}
                _ => {
                    ModelStat::observe(&mut stat.latency_us, stat.completed, c.latency_us);
                    if let Some(t) = c.ttft_us {
                        ModelStat::observe(&mut stat.ttft_us, stat.completed, t);
                    }
                    stat.completed += 1;
                    stat.completion_tokens += c.completion_tokens;
                }
            }
        } else if let Ok(f) = entry.event.payload_as::<ModelFallback>() {
            self.models.entry(f.from_model).or_default().failed += 1;
        }
    }

    fn encode(&self) -> Result<Vec<u8>, String> {
        let mut out = FORMAT.to_vec();
        serde_json::to_writer(&mut out, self).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Self, String> {
        let body = bytes
            .strip_prefix(FORMAT)
            .ok_or("not model-stats/1 state")?;
        serde_json::from_slice(body).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_first_latency_sets_the_average_and_later_ones_move_it() {
        let mut s = ModelStat::default();
        ModelStat::observe(&mut s.latency_us, 0, 1000);
        assert_eq!(s.latency_us, 1000.0);
        ModelStat::observe(&mut s.latency_us, 1, 2000);
        assert_eq!(s.latency_us, 1100.0);
        s.completed = 3;
        s.failed = 1;
        assert_eq!(s.error_rate(), 0.25);
        let stats = ModelStats {
            models: [("m".to_owned(), s)].into_iter().collect(),
        };
        let bytes = stats.encode().unwrap();
        assert_eq!(ModelStats::default().decode(&bytes).unwrap(), stats);
        assert!(ModelStats::default().decode(b"model-stats/0\n{}").is_err());
    }
}
