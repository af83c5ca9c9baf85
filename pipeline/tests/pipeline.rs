//! The pipeline end to end over a real journal: stages chained through the log, attachments that
//! never reach the disk, correlation of concurrent requests, resumption after a crash without
//! duplicate outputs, and request-path stages whose events land with the request's as one group.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use isnad_journal::{Entry, Journal, Options};
use isnad_pipeline::{
    policy::{Constraint, Decision, Endpoint, Refusal, RequestContext, StageError as PolicyError},
    Attachment, Bus, RequestStage, Runner, Stage, StageError,
};
use isnad_schemas::{
    Finding, GuardrailEvaluated, NewEvent, RefusalCode, RequestReceived, RequestRejected,
    RouteSelected,
};

const SECRET_PROMPT: &str = "my IBAN is SA03 8000 0000 6080 1016 7519 and nobody may store it";

struct Prompt(String);

/// Reads the prompt from the attachment and reports what it saw, without the text.
struct Guard;
impl Stage for Guard {
    fn name(&self) -> &str {
        "guardrail"
    }
    fn wants(&self, e: &Entry) -> bool {
        e.event.kind == "request.received"
    }
    async fn handle(
        &mut self,
        _e: Arc<Entry>,
        a: Option<Attachment>,
    ) -> Result<Vec<NewEvent>, StageError> {
        let findings = match a.as_ref().and_then(|a| a.downcast_ref::<Prompt>()) {
            Some(p) if p.0.contains("IBAN") => vec![Finding {
                kind: "iban".into(),
                count: 1,
            }],
            Some(_) => vec![],
            // Replayed after a restart: the prompt is gone with the process.
            None => vec![Finding {
                kind: "unavailable".into(),
                count: 1,
            }],
        };
        let action = if findings.is_empty() {
            "allow"
        } else {
            "local_only"
        };
        Ok(vec![NewEvent::new(&GuardrailEvaluated {
            action: action.into(),
            findings,
            policy: "default".into(),
        })?])
    }
}

struct Router;
impl Stage for Router {
    fn name(&self) -> &str {
        "router"
    }
    fn wants(&self, e: &Entry) -> bool {
        e.event.kind == "guardrail.evaluated"
    }
    async fn handle(
        &mut self,
        e: Arc<Entry>,
        _a: Option<Attachment>,
    ) -> Result<Vec<NewEvent>, StageError> {
        let g: GuardrailEvaluated = e.event.payload_as()?;
        Ok(route_for(&g)?)
    }
}

/// Both routers' rule: anything the guardrail did not simply allow stays on a local model.
fn route_for(g: &GuardrailEvaluated) -> Result<Vec<NewEvent>, isnad_schemas::Error> {
    let residency = if g.action == "allow" {
        "external"
    } else {
        "local"
    };
    Ok(vec![NewEvent::new(&RouteSelected {
        requested_model: "auto-router".into(),
        model: format!("{residency}-model"),
        provider: "test".into(),
        residency: residency.into(),
        policy: "default".into(),
    })?])
}

fn request(rid: &str) -> NewEvent {
    NewEvent::new(&RequestReceived {
        endpoint: "/v1/chat/completions".into(),
        model: "auto-router".into(),
        prompt_hash: "sha256:00".into(),
        stream: false,
        client_ip: None,
    })
    .unwrap()
    .team("team-a")
    .request_id(rid)
}

fn opts() -> Options {
    Options {
        checkpoint_every: 1000,
        checkpoint_interval: Duration::from_secs(3600),
        ..Options::default()
    }
}

fn grep_dir(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            grep_dir(&p, needle)
        } else {
            std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_chain_through_the_log_and_attachments_stay_in_ram() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_dir(dir.path(), opts()).unwrap();
    let bus = Bus::new(journal.clone());
    let mut runner = Runner::new(bus.clone());
    runner.spawn(Guard).unwrap();
    runner.spawn(Router).unwrap();

    let pending = bus.wait_for("req-1", &["route.selected"]);
    let r = bus
        .publish(
            request("req-1"),
            Some(Arc::new(Prompt(SECRET_PROMPT.into()))),
        )
        .await
        .unwrap();
    let routed = pending.wait(Duration::from_secs(10)).await.unwrap();
    journal.wait_durable(routed.seq).await.unwrap();
    bus.detach("req-1");
    assert_eq!(bus.attachments_in_flight(), 0);

    let route: RouteSelected = routed.event.payload_as().unwrap();
    assert_eq!(
        route.residency, "local",
        "the guardrail saw the prompt through the attachment"
    );
    assert_eq!(
        routed.event.team.as_deref(),
        Some("team-a"),
        "outputs inherit the team"
    );
    let log = journal.range(r.seq, journal.len()).unwrap();
    let kinds: Vec<&str> = log.iter().map(|e| e.event.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["request.received", "guardrail.evaluated", "route.selected"]
    );

    runner.stop();
    journal.shutdown().await.unwrap();
    drop((bus, journal));
    assert!(
        !grep_dir(dir.path(), SECRET_PROMPT.as_bytes()),
        "prompt text reached the disk"
    );
    assert!(
        !grep_dir(dir.path(), b"SA03 8000"),
        "part of the prompt reached the disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_get_their_own_answer() {
    let journal = Journal::open(
        Arc::new(isnad_journal::MemStore::new()),
        isnad_journal::NodeKey::from_signing_key(ed25519_dalek::SigningKey::from_bytes(&[1; 32])),
        opts(),
    )
    .unwrap();
    let bus = Bus::new(journal.clone());
    let mut runner = Runner::new(bus.clone());
    runner.spawn(Guard).unwrap();
    runner.spawn(Router).unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            let rid = format!("req-{i}");
            let prompt = if i % 2 == 0 { "hello" } else { "IBAN inside" };
            let pending = bus.wait_for(&rid, &["route.selected"]);
            bus.publish(request(&rid), Some(Arc::new(Prompt(prompt.into()))))
                .await
                .unwrap();
            let e = pending.wait(Duration::from_secs(20)).await.unwrap();
            bus.detach(&rid);
            assert_eq!(e.event.request_id.as_deref(), Some(rid.as_str()));
            let route: RouteSelected = e.event.payload_as().unwrap();
            assert_eq!(
                route.residency,
                if i % 2 == 0 { "external" } else { "local" }
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A wait that nothing answers times out with a clear error.
    let err = bus
        .wait_for("nobody", &["route.selected"])
        .wait(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nobody"));
    runner.stop();
    journal.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_stage_resumes_from_its_cursor_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    {
        let journal = Journal::open_dir(dir.path(), opts()).unwrap();
        // Requests arrive while no stage runs (as if the process died right after accepting them).
        for i in 0..30 {
            journal
                .append_one(request(&format!("req-{i}")))
                .await
                .unwrap();
        }
        let bus = Bus::new(journal.clone());
        let mut runner = Runner::new(bus.clone());
        runner.spawn(Guard).unwrap();
        // Let it get part of the way, then "crash" (abort the task; the cursor may lag).
        let mut sub = journal.subscribe(30, isnad_journal::Watermark::Sequenced);
        for _ in 0..10 {
            sub.next().await.unwrap();
        }
        runner.stop();
        journal.shutdown().await.unwrap();
    }
    let journal = Journal::open_dir(dir.path(), opts()).unwrap();
    let before = journal.len();
    assert!(before >= 40, "ten outputs were durable before the crash");
    let bus = Bus::new(journal.clone());
    let mut runner = Runner::new(bus.clone());
    runner.spawn(Guard).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let count = journal
            .range(0, journal.len())
            .unwrap()
            .iter()
            .filter(|e| e.event.kind == "guardrail.evaluated")
            .count();
        if count >= 30 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = journal.range(0, journal.len()).unwrap();
    let mut per_request = std::collections::HashMap::new();
    for e in all.iter().filter(|e| e.event.kind == "guardrail.evaluated") {
        *per_request
            .entry(e.event.request_id.clone().unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(per_request.len(), 30, "every request was evaluated");
    assert!(
        per_request.values().all(|&n| n == 1),
        "exactly once each: {per_request:?}"
    );
    assert_eq!(journal.cursor("guardrail").unwrap(), journal.len());
    runner.stop();
    journal.shutdown().await.unwrap();
}

/// The request-path twin of [`Guard`]: reads the prompt from the request's context.
struct InlineGuard;
impl RequestStage for InlineGuard {
    fn name(&self) -> &str {
        "guardrail"
    }
    fn evaluate(
        &self,
        ctx: &RequestContext,
        _earlier: &[NewEvent],
    ) -> Result<Decision, PolicyError> {
        let prompt = ctx.prompt.join(" ");
        if prompt.contains("refuse me") {
            return Err(PolicyError::Failed(
                "the guard cannot evaluate this request".into(),
            ));
        }
        if prompt.contains("block me") {
            return Ok(Decision::Refuse {
                events: vec![],
                refusal: Refusal::new(
                    RefusalCode::SovereigntyViolation,
                    "blocked by the guardrail",
                ),
            });
        }
        let sensitive = prompt.contains("IBAN");
        let verdict = NewEvent::new(&GuardrailEvaluated {
            action: if sensitive { "local_only" } else { "allow" }.into(),
            findings: vec![],
            policy: "default".into(),
        })?;
        Ok(if sensitive {
            Decision::Reroute {
                events: vec![verdict],
                to: Constraint::LocalOnly,
            }
        } else {
            Decision::Continue(vec![verdict])
        })
    }
}

/// Routes on the verdict of the stage before it, which it gets as an earlier output, and on the
/// constraint that stage's reroute left in the context.
struct InlineRouter;
impl RequestStage for InlineRouter {
    fn name(&self) -> &str {
        "router"
    }
    fn evaluate(
        &self,
        ctx: &RequestContext,
        earlier: &[NewEvent],
    ) -> Result<Decision, PolicyError> {
        let verdict = earlier
            .iter()
            .find(|e| e.kind == "guardrail.evaluated")
            .ok_or_else(|| PolicyError::Failed("no guardrail verdict before the router".into()))?;
        let g: GuardrailEvaluated = verdict.payload_as()?;
        assert_eq!(ctx.local_only, g.action == "local_only");
        Ok(Decision::Continue(route_for(&g)?))
    }
}

fn context(prompt: &str) -> RequestContext {
    let mut ctx = RequestContext::new(vec![prompt.to_owned()], Endpoint::Chat, "auto-router");
    ctx.team = Some("team-a".into());
    ctx
}

/// Runs `stages` on a request and submits its group, as the gateway does: the request, the
/// stages' events, and `request.rejected` when a stage refused.
fn submit(
    bus: &Bus,
    event: NewEvent,
    prompt: &str,
    stages: &[Arc<dyn RequestStage>],
) -> Result<isnad_pipeline::Submitted, isnad_pipeline::Error> {
    let out = isnad_pipeline::policy::evaluate(stages, &event, &mut context(prompt))?;
    let refused = out.refusal.is_some();
    let mut group = vec![event.clone()];
    group.extend(out.events);
    if let Some((stage, r)) = out.refusal {
        let rejected = NewEvent::new(&RequestRejected {
            endpoint: "/v1/chat/completions".into(),
            status: 451,
            code: r.code.as_str().into(),
            message: r.message,
        })
        .unwrap();
        let n = group.len() - 1;
        group.push(isnad_pipeline::derive_output_of_event(
            &stage, &event, n, rejected,
        ));
    }
    bus.submit_group(group, Some(Arc::new(Prompt(prompt.to_owned()))), refused)
}

/// Submits a request through `stages` and returns its group as the journal stored it.
async fn publish(
    bus: &Bus,
    event: NewEvent,
    prompt: &str,
    stages: &[Arc<dyn RequestStage>],
) -> Result<Vec<Arc<Entry>>, isnad_pipeline::Error> {
    let receipts = submit(bus, event, prompt, stages)?.sequenced().await?;
    Ok(receipts
        .iter()
        .map(|r| bus.journal().entry(r.seq).unwrap().unwrap())
        .collect())
}

fn inline_stages() -> Vec<Arc<dyn RequestStage>> {
    vec![Arc::new(InlineGuard), Arc::new(InlineRouter)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_stages_append_with_the_request_as_one_group() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_dir(dir.path(), opts()).unwrap();
    let bus = Bus::new(journal.clone());
    let stages = inline_stages();

    let mut tasks = Vec::new();
    for i in 0..8 {
        let (bus, stages) = (bus.clone(), stages.clone());
        tasks.push(tokio::spawn(async move {
            let prompt = if i % 2 == 0 {
                SECRET_PROMPT.to_owned()
            } else {
                format!("hello {i}")
            };
            let entries = publish(&bus, request(&format!("req-{i}")), &prompt, &stages)
                .await
                .unwrap();
            (i, entries)
        }));
    }
    for t in tasks {
        let (i, entries) = t.await.unwrap();
        let kinds: Vec<&str> = entries.iter().map(|e| e.event.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["request.received", "guardrail.evaluated", "route.selected"]
        );
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            [seqs[0], seqs[0] + 1, seqs[0] + 2],
            "a request's group is consecutive even with others appending at once"
        );
        let rid = format!("req-{i}");
        for e in &entries[1..] {
            assert_eq!(
                e.event.request_id.as_deref(),
                Some(rid.as_str()),
                "outputs inherit the request id"
            );
            assert_eq!(
                e.event.team.as_deref(),
                Some("team-a"),
                "outputs inherit the team"
            );
            assert_ne!(e.event.id, entries[0].event.id);
        }
        let route: RouteSelected = entries[2].event.payload_as().unwrap();
        let expected = if i % 2 == 0 { "local" } else { "external" };
        assert_eq!(
            route.residency, expected,
            "the router saw the guardrail's verdict"
        );
        // The entries returned are the journal's own, signed and chained.
        for e in &entries {
            assert_eq!(journal.entry(e.seq).unwrap().unwrap().hash, e.hash);
        }
        bus.detach(&rid);
    }
    assert_eq!(bus.attachments_in_flight(), 0);
    journal.shutdown().await.unwrap();
    drop((bus, journal));
    assert!(
        !grep_dir(dir.path(), b"SA03 8000"),
        "part of the prompt reached the disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_stage_that_fails_leaves_nothing_in_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_dir(dir.path(), opts()).unwrap();
    let bus = Bus::new(journal.clone());
    let before = journal.len();
    let err = publish(&bus, request("req-x"), "refuse me", &inline_stages())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, isnad_pipeline::Error::RequestStage { stage, .. } if stage == "guardrail"),
        "{err}"
    );
    assert_eq!(
        journal.len(),
        before,
        "neither the request nor any output was appended"
    );
    assert_eq!(
        bus.attachments_in_flight(),
        0,
        "the refused request's attachment is not kept"
    );
    journal.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_refuses_ends_the_group_and_later_stages_do_not_run() {
    let dir = tempfile::tempdir().unwrap();
    // Flushes nobody waits for are held back for a minute: only a durable group is durable now.
    let held_back = Options {
        flush_delay: Duration::from_secs(60),
        ..opts()
    };
    let journal = Journal::open_dir(dir.path(), held_back).unwrap();
    let bus = Bus::new(journal.clone());
    let entries = publish(&bus, request("req-b"), "block me", &inline_stages())
        .await
        .unwrap();
    let kinds: Vec<&str> = entries.iter().map(|e| e.event.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["request.received", "request.rejected"],
        "the router did not run after the refusal"
    );
    assert_eq!(entries[1].seq, entries[0].seq + 1);
    assert!(
        journal.durable_len() > entries[1].seq,
        "a refused group is appended durably, so its answer need not wait for a later flush"
    );
    let r: RequestRejected = entries[1].event.payload_as().unwrap();
    assert_eq!((r.status, r.code.as_str()), (451, "sovereignty_violation"));
    assert_eq!(entries[1].event.request_id.as_deref(), Some("req-b"));
    bus.detach("req-b");
    journal.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_group_is_known_at_once_and_sealed_ahead_of_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_dir(dir.path(), opts()).unwrap();
    let bus = Bus::new(journal.clone());
    let submitted = submit(&bus, request("req-s"), "hello", &inline_stages()).unwrap();
    // The decisions are there before the journal has sealed anything.
    let events = submitted.events().to_vec();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["request.received", "guardrail.evaluated", "route.selected"]
    );
    // What the caller appends next (the outcome) lands after the group.
    let outcome = isnad_pipeline::derive_output_of_event(
        "inference",
        &events[2],
        0,
        NewEvent::new(&GuardrailEvaluated {
            action: "allow".into(),
            findings: vec![],
            policy: "outcome".into(),
        })
        .unwrap(),
    );
    let after = journal.append_one(outcome).await.unwrap();
    let receipts = submitted.sequenced().await.unwrap();
    let seqs: Vec<u64> = receipts.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2]);
    assert_eq!(after.seq, seqs[2] + 1);
    for (r, ev) in receipts.iter().zip(&events) {
        assert_eq!(journal.entry(r.seq).unwrap().unwrap().event.id, ev.id);
    }
    let stored = journal.entry(after.seq).unwrap().unwrap();
    assert_eq!(stored.event.request_id.as_deref(), Some("req-s"));
    assert_eq!(
        bus.attachments_in_flight(),
        1,
        "the attachment stays until detached"
    );
    bus.detach("req-s");
    journal.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_in_flight_cannot_be_submitted_again() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_dir(dir.path(), opts()).unwrap();
    let bus = Bus::new(journal.clone());
    let first = submit(&bus, request("req-dup"), "hello", &inline_stages()).unwrap();
    first.sequenced().await.unwrap();
    let before = journal.len();
    let again = submit(&bus, request("req-dup"), "hello", &inline_stages());
    assert!(
        matches!(&again, Err(isnad_pipeline::Error::RequestInFlight(id)) if id == "req-dup"),
        "{:?}",
        again.err()
    );
    assert_eq!(journal.len(), before, "the second group was not appended");
    assert_eq!(
        bus.attachments_in_flight(),
        1,
        "the first keeps its attachment"
    );
    bus.detach("req-dup");
    assert!(submit(&bus, request("req-dup"), "hello", &inline_stages()).is_ok());
    journal.shutdown().await.unwrap();
}
