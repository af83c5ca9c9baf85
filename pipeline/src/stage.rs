//! The pipeline step fed by the runner from the log: [`Stage`], its delivery status, and the ids
//! its outputs get (request stages, run in the request's own task, are in [`crate::policy`]).

use std::{future::Future, sync::Arc};

use isnad_journal::{Entry, Watermark};
use isnad_schemas::{EventId, NewEvent};

use crate::Attachment;

/// Why a [`Stage`] could not handle an entry: its delivery status when it is not delivered.
///
/// The runner treats the two differently. A [`StageError::Retry`] is tried again, on the same
/// entry, after an exponential backoff ([`crate::RetryPolicy`]); a [`StageError::Reject`] is not.
/// Either way, when the stage gives up on the entry, the runner journals a `stage.failed` event
/// ([`isnad_schemas::StageFailed`], `outcome` `errored` or `rejected`) and goes on to the next
/// entry: a failure is data in the log, not a line in a log file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// Transient (an upstream timed out, a subscriber is unreachable): the same entry may
    /// succeed later.
    #[error("{0} (will retry)")]
    Retry(String),
    /// Permanent (the input cannot be decoded, the request is invalid): trying again cannot
    /// help.
    #[error("{0} (rejected)")]
    Reject(String),
}

impl StageError {
    /// A transient failure.
    pub fn retry(reason: impl std::fmt::Display) -> Self {
        Self::Retry(reason.to_string())
    }

    /// A permanent failure.
    pub fn reject(reason: impl std::fmt::Display) -> Self {
        Self::Reject(reason.to_string())
    }

    /// What went wrong, without the retry or reject label.
    pub fn reason(&self) -> &str {
        match self {
            Self::Retry(r) | Self::Reject(r) => r,
        }
    }
}

/// A payload that cannot be encoded or decoded never will be: permanent.
impl From<isnad_schemas::Error> for StageError {
    fn from(e: isnad_schemas::Error) -> Self {
        Self::Reject(e.to_string())
    }
}

/// One step of the pipeline, fed by the [`crate::Runner`] from the log.
pub trait Stage: Send + 'static {
    /// Stable name; also the name of the stage's cursor in the journal, and part of its output
    /// ids.
    fn name(&self) -> &str;

    /// Which journal position the stage reads up to.
    fn watermark(&self) -> Watermark {
        Watermark::Sequenced
    }

    /// Cheap filter: does this stage handle this entry at all?
    fn wants(&self, entry: &Entry) -> bool;

    /// Handles one entry and returns the events to append. Outputs without a request id or team
    /// inherit the input's. After a [`StageError::Retry`] the same entry comes back, so a
    /// handler with side effects must make them safe to repeat.
    fn handle(
        &mut self,
        entry: Arc<Entry>,
        attachment: Option<Attachment>,
    ) -> impl Future<Output = Result<Vec<NewEvent>, StageError>> + Send;
}

/// Gives a stage's outputs stable ids (derived from stage, input seq and position) and the
/// input's request id, team and actor when they have none.
pub(crate) fn derive_ids(stage: &str, input: &Entry, outputs: Vec<NewEvent>) -> Vec<NewEvent> {
    outputs
        .into_iter()
        .enumerate()
        .map(|(i, ev)| derive_output(stage, input, i, ev))
        .collect()
}

/// Output `index` of `stage` for `input`: an id derived from the three (so a re-run after a
/// crash re-emits the same id and the journal drops the repeat), and the input's request id,
/// team and actor where the output has none. Stages that append outside the runner (from a task
/// of their own) use this too.
pub fn derive_output(stage: &str, input: &Entry, index: usize, ev: NewEvent) -> NewEvent {
    let seed = format!("{stage}\u{0}{}\u{0}{index}", input.event.id);
    derive_from_entry(&seed, input, ev)
}

/// The `stage.failed` event of `stage` for `input`: derived from both like an output, but
/// never equal to one, so a failure is not mistaken for an output already journaled.
pub(crate) fn derive_failure(stage: &str, input: &Entry, ev: NewEvent) -> NewEvent {
    let seed = format!("{stage}\u{0}{}\u{0}failed", input.event.id);
    derive_from_entry(&seed, input, ev)
}

fn derive_from_entry(seed: &str, input: &Entry, ev: NewEvent) -> NewEvent {
    let ms = u64::try_from(input.event.timestamp_us / 1000).unwrap_or(0);
    let e = &input.event;
    let from = Inherited {
        request_id: e.request_id.as_deref(),
        team: e.team.as_deref(),
        actor: e.actor.as_deref(),
    };
    derive_with(seed, ms, from, ev)
}

/// What an output takes from its input when it has none of its own.
struct Inherited<'a> {
    request_id: Option<&'a str>,
    team: Option<&'a str>,
    actor: Option<&'a str>,
}

/// [`derive_output`] for an input not yet sequenced (a member of a request's group that the
/// journal may still be sealing): the time in the id is the input id's own.
pub fn derive_output_of_event(
    stage: &str,
    input: &NewEvent,
    index: usize,
    ev: NewEvent,
) -> NewEvent {
    let from = Inherited {
        request_id: input.request_id.as_deref(),
        team: input.team.as_deref(),
        actor: input.actor.as_deref(),
    };
    let seed = format!("{stage}\u{0}{}\u{0}{index}", input.id);
    derive_with(&seed, id_ms(&input.id), from, ev)
}

fn derive_with(seed: &str, ms: u64, from: Inherited<'_>, mut ev: NewEvent) -> NewEvent {
    ev.id = EventId::derived(ms, seed.as_bytes());
    if ev.request_id.is_none() {
        ev.request_id = from.request_id.map(str::to_owned);
    }
    if ev.team.is_none() {
        ev.team = from.team.map(str::to_owned);
    }
    if ev.actor.is_none() {
        ev.actor = from.actor.map(str::to_owned);
    }
    ev
}

/// The Unix time in milliseconds that a time-ordered (v7) id carries; 0 for other ids.
fn id_ms(id: &EventId) -> u64 {
    id.as_uuid().get_timestamp().map_or(0, |t| {
        let (secs, nanos) = t.to_unix();
        secs * 1000 + u64::from(nanos) / 1_000_000
    })
}
