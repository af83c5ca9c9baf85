//! A stage's delivery status: transient failures are retried with backoff and then succeed
//! once, or end in exactly one `stage.failed` after the bounded tries; a rejection is journaled
//! at once; the stage goes on with the next entry, and a re-run does not journal a failure twice.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{collections::HashMap, sync::Arc, time::Duration};

use isnad_journal::{Entry, Journal, MemStore, NodeKey, Options};
use isnad_pipeline::{Attachment, Bus, RetryPolicy, Runner, RunnerOptions, Stage, StageError};
use isnad_schemas::{GuardrailEvaluated, NewEvent, RequestReceived, StageFailed};
use tokio::sync::mpsc;

/// What a scripted stage does on attempt `n` (from 1) at an entry.
type Script = fn(&Entry, u32) -> Result<Vec<NewEvent>, StageError>;

/// A stage that follows a script and reports every call it gets.
struct Scripted {
    wants_all: bool,
    script: Script,
    attempts: HashMap<u64, u32>,
    calls: mpsc::UnboundedSender<u64>,
}

impl Stage for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn wants(&self, e: &Entry) -> bool {
        self.wants_all || e.event.kind == "request.received"
    }
    async fn handle(
        &mut self,
        e: Arc<Entry>,
        _a: Option<Attachment>,
    ) -> Result<Vec<NewEvent>, StageError> {
        let _ = self.calls.send(e.seq);
        let n = self.attempts.entry(e.seq).or_insert(0);
        *n += 1;
        (self.script)(&e, *n)
    }
}

fn verdict() -> Result<Vec<NewEvent>, StageError> {
    Ok(vec![NewEvent::new(&GuardrailEvaluated {
        action: "allow".into(),
        findings: vec![],
        policy: "scripted".into(),
    })?])
}

fn is_ok_request(e: &Entry) -> bool {
    e.event.request_id.as_deref() == Some("ok")
}

fn request(rid: &str) -> NewEvent {
    NewEvent::new(&RequestReceived {
        endpoint: "/v1/chat/completions".into(),
        model: "m".into(),
        prompt_hash: "sha256:00".into(),
        stream: false,
        client_ip: None,
    })
    .unwrap()
    .request_id(rid)
}

const TRIES: u32 = 5;
const FIRST_DELAY: Duration = Duration::from_millis(10);

fn runner(bus: &Bus) -> Runner {
    Runner::with_options(
        bus.clone(),
        RunnerOptions {
            retry: RetryPolicy {
                attempts: TRIES,
                first_delay: FIRST_DELAY,
                max_delay: Duration::from_millis(40),
            },
            ..RunnerOptions::default()
        },
    )
}

fn journal() -> Journal {
    Journal::open(
        Arc::new(MemStore::new()),
        NodeKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[2; 32])),
        Options {
            checkpoint_interval: Duration::from_secs(3600),
            ..Options::default()
        },
    )
    .unwrap()
}

fn stage(script: Script) -> (Scripted, mpsc::UnboundedReceiver<u64>) {
    let (calls, rx) = mpsc::unbounded_channel();
    let s = Scripted {
        wants_all: false,
        script,
        attempts: HashMap::new(),
        calls,
    };
    (s, rx)
}

/// Publishes request `rid` and waits for what the stage made of it.
async fn answer(bus: &Bus, rid: &str) -> Arc<Entry> {
    let pending = bus.wait_for(rid, &["guardrail.evaluated", "stage.failed"]);
    bus.publish(request(rid), None).await.unwrap();
    pending.wait(Duration::from_secs(10)).await.unwrap()
}

fn of_kind(journal: &Journal, kind: &str) -> Vec<Arc<Entry>> {
    journal
        .range(0, journal.len())
        .unwrap()
        .into_iter()
        .filter(|e| e.event.kind == kind)
        .collect()
}

fn drain(rx: &mut mpsc::UnboundedReceiver<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    while let Ok(seq) = rx.try_recv() {
        out.push(seq);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_with_backoff_and_delivered_once() {
    let journal = journal();
    let bus = Bus::new(journal.clone());
    let mut runner = runner(&bus);
    let (s, mut calls) = stage(|_, attempt| {
        if attempt <= 2 {
            Err(StageError::retry("upstream timed out"))
        } else {
            verdict()
        }
    });
    runner.spawn(s).unwrap();

    let started = std::time::Instant::now();
    let out = answer(&bus, "flaky").await;
    assert_eq!(
        out.event.kind, "guardrail.evaluated",
        "delivered on the third try"
    );
    assert!(
        started.elapsed() >= FIRST_DELAY * 3,
        "waited {FIRST_DELAY:?} and then twice that between the tries"
    );
    // A later entry's answer comes after anything more the first one could have produced.
    answer(&bus, "ok").await;
    assert_eq!(of_kind(&journal, "guardrail.evaluated").len(), 2);
    assert!(of_kind(&journal, "stage.failed").is_empty());
    let requests: Vec<u64> = of_kind(&journal, "request.received")
        .iter()
        .map(|e| e.seq)
        .collect();
    let (f, o) = (requests[0], requests[1]);
    assert_eq!(
        drain(&mut calls),
        [f, f, f, o, o, o],
        "three tries each, in order"
    );
    runner.shutdown().await;
    journal.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_keeps_failing_is_journaled_once_and_moves_on() {
    let journal = journal();
    let bus = Bus::new(journal.clone());
    let mut runner = runner(&bus);
    let always_failing: Script = |e, _| {
        if is_ok_request(e) {
            verdict()
        } else {
            Err(StageError::retry("subscriber unreachable"))
        }
    };
    let (s, mut calls) = stage(always_failing);
    runner.spawn(s).unwrap();

    let first = answer(&bus, "a").await;
    let second = answer(&bus, "b").await;
    for (failure, rid) in [(&first, "a"), (&second, "b")] {
        let f: StageFailed = failure.event.payload_as().unwrap();
        assert_eq!(f.stage, "scripted");
        assert_eq!((f.outcome.as_str(), f.attempts), ("errored", TRIES));
        assert_eq!(f.reason, "subscriber unreachable");
        assert_eq!(f.input_kind, "request.received");
        let input = journal.entry(f.input_seq).unwrap().unwrap();
        assert_eq!(input.event.request_id.as_deref(), Some(rid));
        assert_eq!(failure.event.request_id.as_deref(), Some(rid), "inherited");
    }
    answer(&bus, "ok").await;
    assert_eq!(of_kind(&journal, "stage.failed").len(), 2, "one per input");
    let calls = drain(&mut calls);
    assert_eq!(calls.len(), 2 * TRIES as usize + 1, "{calls:?}");

    // Run again from the start, as after a crash before the cursor was saved: the same
    // failures are derived again, and the journal keeps one of each. (The durable append is a
    // round trip through the sequencer, so the cursor saved at shutdown is written before it
    // is reset.)
    runner.shutdown().await;
    journal.append(vec![request("barrier")]).await.unwrap();
    journal.set_cursor("scripted", 0).unwrap();
    let mut runner = self::runner(&bus);
    let (s, _calls) = stage(always_failing);
    runner.spawn(s).unwrap();
    answer(&bus, "ok-again-ok").await;
    assert_eq!(
        of_kind(&journal, "stage.failed").len(),
        4,
        "a, b, barrier, ok-again-ok: each failed once, the re-run added no duplicates"
    );
    runner.shutdown().await;
    journal.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_is_journaled_at_once_and_a_stage_never_sees_its_own_failures() {
    let journal = journal();
    let bus = Bus::new(journal.clone());
    let mut runner = runner(&bus);
    let (mut s, mut calls) = stage(|_, _| Err(StageError::reject("cannot decode the input")));
    // Wants everything, its own `stage.failed` events included: were they fed back, every
    // rejection would cause another one.
    s.wants_all = true;
    runner.spawn(s).unwrap();

    let a = answer(&bus, "a").await;
    let b = answer(&bus, "b").await;
    for failure in [&a, &b] {
        let f: StageFailed = failure.event.payload_as().unwrap();
        assert_eq!((f.outcome.as_str(), f.attempts), ("rejected", 1));
        assert_eq!(f.reason, "cannot decode the input");
    }
    let c = answer(&bus, "c").await;
    let c_input: StageFailed = c.event.payload_as().unwrap();
    // The stage was called for the three requests only, once each: not for its failures.
    let calls = drain(&mut calls);
    let inputs: Vec<u64> = [&a, &b, &c]
        .iter()
        .map(|f| f.event.payload_as::<StageFailed>().unwrap().input_seq)
        .collect();
    assert_eq!(calls, inputs, "no retry, and no call for a stage.failed");
    assert_eq!(c_input.input_kind, "request.received");
    assert_eq!(of_kind(&journal, "stage.failed").len(), 3);
    runner.shutdown().await;
    journal.shutdown().await.unwrap();
}
