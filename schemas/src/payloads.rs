//! Every event payload, one type per `(kind, version)`.
//!
//! A released type never changes; a new field means a new version and a new type beside the old
//! one. Hashes of prompts, completions and documents are `sha256:<hex>` strings: by default no
//! prompt or completion text reaches the journal.

use serde_json::Value;

use crate::{Error, Result};

/// A payload type: its kind, its version, and its canonical encoding.
pub trait Payload: Sized {
    /// Dotted, past-tense event kind.
    const KIND: &'static str;
    /// Version of this payload type for its kind.
    const VERSION: u16;
    /// Canonical bytes (rkyv).
    fn encode(&self) -> Result<Vec<u8>>;
    /// Decodes and validates canonical bytes.
    fn decode(bytes: &[u8]) -> Result<Self>;
}

/// One kind of sensitive data found by the guardrail, with how often it occurred.
#[derive(
    Clone,
    Debug,
    PartialEq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// Entity kind, e.g. `email`, `iban`, `saudi_national_id`.
    pub kind: String,
    /// Number of occurrences.
    pub count: u32,
}

macro_rules! payloads {
    ($(
        $(#[$meta:meta])*
        $name:ident = ($kind:literal, $version:literal) {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    )*) => {
        $(
            $(#[$meta])*
            #[derive(
                Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize,
                rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
            )]
            #[serde(deny_unknown_fields)]
            pub struct $name { $( $(#[$fmeta])* pub $field: $ty ),* }

            impl Payload for $name {
                const KIND: &'static str = $kind;
                const VERSION: u16 = $version;

                fn encode(&self) -> Result<Vec<u8>> {
                    rkyv::to_bytes::<rkyv::rancor::Error>(self)
                        .map(|v| v.to_vec())
                        .map_err(|e| Error::Encode { what: $kind.into(), reason: e.to_string() })
                }

                fn decode(bytes: &[u8]) -> Result<Self> {
                    rkyv::from_bytes::<Self, rkyv::rancor::Error>(bytes)
                        .map_err(|e| Error::Decode { what: $kind.into(), reason: e.to_string() })
                }
            }
        )*

        /// Every `(kind, version)` this build can decode.
        pub const KNOWN_PAYLOADS: &[(&str, u16)] = &[$(($kind, $version)),*];

        /// The JSON view of a payload; unknown kinds and undecodable bytes are shown as base64.
        pub(crate) fn payload_json(kind: &str, version: u16, bytes: &[u8]) -> Value {
            let decoded = match (kind, version) {
                $( ($kind, $version) => $name::decode(bytes)
                    .ok()
                    .and_then(|p| serde_json::to_value(&p).ok()), )*
                _ => None,
            };
            decoded.unwrap_or_else(|| undecoded(bytes))
        }

        /// Canonical payload bytes from a JSON value of the type named by `kind` and `version`.
        pub fn payload_from_json(kind: &str, version: u16, value: Value) -> Result<Vec<u8>> {
            let fail = |reason: String| Error::Payload { kind: kind.into(), version, reason };
            match (kind, version) {
                $( ($kind, $version) => serde_json::from_value::<$name>(value)
                    .map_err(|e| fail(e.to_string()))?
                    .encode(), )*
                _ => Err(fail("unknown kind or version".into())),
            }
        }
    };
}

fn undecoded(bytes: &[u8]) -> Value {
    use base64::Engine as _;
    serde_json::json!({ crate::PAYLOAD_UNDECODED: base64::engine::general_purpose::STANDARD.encode(bytes) })
}

payloads! {
    /// The gateway process started and opened the journal.
    NodeStarted = ("node.started", 1) {
        /// isnad version.
        version: String,
        /// `sha256:` of the effective configuration (secrets excluded).
        config_hash: String,
        /// Node id, derived from the node's public key.
        node_id: String,
        /// The node's Ed25519 public key, base64.
        public_key: String,
    }

    /// A signed checkpoint of the journal was written.
    JournalCheckpoint = ("journal.checkpoint", 1) {
        /// Tree size the checkpoint commits to.
        size: u64,
        /// Base64 RFC 6962 root hash.
        root: String,
    }

    /// A request reached the gateway and passed authentication.
    RequestReceived = ("request.received", 1) {
        /// Endpoint path, e.g. `/v1/chat/completions`.
        endpoint: String,
        /// Model named by the client.
        model: String,
        /// `sha256:` of the prompt (never the prompt).
        prompt_hash: String,
        /// Whether the client asked for a stream.
        stream: bool,
        /// Client address.
        client_ip: Option<String>,
    }

    /// The guardrail looked at a request.
    GuardrailEvaluated = ("guardrail.evaluated", 1) {
        /// `allow`, `redact`, `local_only` or `block`.
        action: String,
        /// What was found, by kind.
        findings: Vec<Finding>,
        /// Name of the policy that decided.
        policy: String,
    }

    /// The guardrail refused a request: what it found, never the values.
    GuardrailViolation = ("guardrail.violation", 1) {
        /// `pii_detected`.
        violation_type: String,
        /// Entity types whose action is `block`, e.g. `card`.
        entities: Vec<String>,
        /// `request_blocked`, or `stream_ended` when an output scan ended a stream.
        action_taken: String,
    }

    /// The router chose a model.
    RouteSelected = ("route.selected", 1) {
        /// Model the client asked for (may be `auto-router`).
        requested_model: String,
        /// Model chosen.
        model: String,
        /// Provider serving it.
        provider: String,
        /// `local` or `external`.
        residency: String,
        /// Route or policy that matched.
        policy: String,
    }

    /// A model failed and the next fallback was tried.
    ModelFallback = ("model.fallback", 1) {
        /// Model that failed.
        from_model: String,
        /// Model tried next.
        to_model: String,
        /// Why the first failed.
        error: String,
    }

    /// A completion finished (successfully or not).
    CompletionFinished = ("completion.finished", 1) {
        /// Model that served it.
        model: String,
        /// Input tokens.
        prompt_tokens: u64,
        /// Output tokens.
        completion_tokens: u64,
        /// Total latency in microseconds.
        latency_us: u64,
        /// Time to first token in microseconds, for streams.
        ttft_us: Option<u64>,
        /// `sha256:` of the completion text.
        completion_hash: String,
        /// `stop`, `length`, `tool_calls`, `error`, `client_disconnected`.
        finish_reason: String,
    }

    /// A request was refused; `status` is the HTTP status sent.
    RequestRejected = ("request.rejected", 1) {
        /// Endpoint path.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// Machine-readable error code.
        code: String,
        /// Human-readable reason (never prompt text).
        message: String,
    }

    /// A document was uploaded.
    DocumentUploaded = ("document.uploaded", 1) {
        /// Document id.
        document_id: String,
        /// `sha256:` of the bytes.
        sha256: String,
        /// Size in bytes.
        bytes: u64,
        /// Media type.
        media_type: String,
    }

    /// A document was parsed, chunked and indexed.
    DocumentIndexed = ("document.indexed", 1) {
        /// Document id.
        document_id: String,
        /// Number of chunks.
        chunks: u64,
        /// Embedding model used.
        embedding_model: String,
    }

    /// A document was deleted and its key shredded.
    DocumentDeleted = ("document.deleted", 1) {
        /// Document id.
        document_id: String,
    }

    /// A RAG query was answered.
    RagQueried = ("rag.queried", 1) {
        /// `sha256:` of the query.
        query_hash: String,
        /// Number of chunks asked for.
        top_k: u32,
        /// Documents cited.
        document_ids: Vec<String>,
    }

    /// A team's usage crossed a budget threshold.
    BudgetThresholdCrossed = ("budget.threshold_crossed", 1) {
        /// Budget name.
        budget: String,
        /// Limit in tokens.
        limit_tokens: u64,
        /// Tokens used so far.
        used_tokens: u64,
        /// Threshold crossed, in percent.
        threshold_percent: u8,
    }

    /// An API key was created.
    KeyCreated = ("key.created", 1) {
        /// Public key id (never the secret).
        key_id: String,
        /// Roles granted.
        roles: Vec<String>,
        /// Expiry, microseconds since the epoch.
        expires_at_us: Option<i64>,
    }

    /// A key as access control knows it: everything but the key itself. `source` is `api`
    /// (created through the admin API), `config` (a `[[keys]]` entry, journaled at start so
    /// the log alone rebuilds every key) or `rotation` (issued by `key.rotated`). The creator is
    /// the event's actor.
    KeyCreatedV2 = ("key.created", 2) {
        /// The key's public id (the `<id>` of `isnad_sk_<id>_…`, or `cfg_…` for a config key).
        key_id: String,
        /// `sha256:<hex>` of the whole key.
        sha256: String,
        /// Who uses it: shown in lists and journaled as the actor of config keys' requests.
        label: String,
        /// Its team, if any.
        team: Option<String>,
        /// `admin`, `operator`, `member` or `auditor`.
        role: String,
        /// Model ids it may use; `None` allows every model.
        models: Option<Vec<String>>,
        /// `local` when its data must stay inside the boundary.
        residency: Option<String>,
        /// When it stops working (µs since the Unix epoch), if ever.
        expires_at_us: Option<i64>,
        /// Client addresses it is accepted from (CIDR); empty allows any.
        cidrs: Vec<String>,
        /// `api`, `config` or `rotation`.
        source: String,
    }

    /// A key was rotated: `new_key_id` (created in the same group) replaces `key_id`, which
    /// stays valid until `grace_until_us`.
    KeyRotated = ("key.rotated", 1) {
        /// The key rotated out.
        key_id: String,
        /// The key that replaces it.
        new_key_id: String,
        /// Until when the old key still works (µs since the Unix epoch).
        grace_until_us: i64,
    }

    /// A budget was set (or, with neither cap, removed) for `scope` (`team:<id>` or
    /// `key:<id>`). The actor set it.
    BudgetSet = ("budget.set", 1) {
        /// `team:<id>` or `key:<id>`.
        scope: String,
        /// Token cap per period.
        tokens: Option<u64>,
        /// Cost cap per period, in millionths of the currency unit.
        cost_micros: Option<u64>,
        /// `day` or `month`.
        period: String,
        /// The offset periods are counted in: `UTC` or `+HH:MM` / `-HH:MM`.
        timezone: String,
    }

    /// Rate limits were set (or, with none, removed) for `scope` (`team:<id>` or `key:<id>`).
    /// Requests per minute apply to keys; tokens per minute and per day to keys and teams.
    /// The actor set them.
    LimitsSet = ("limits.set", 1) {
        /// `team:<id>` or `key:<id>`.
        scope: String,
        /// Requests per minute (GCRA: one every 60/n seconds on average).
        requests_per_minute: Option<u32>,
        /// Requests that may come at once on top of the average (defaults to the per-minute rate).
        burst: Option<u32>,
        /// Tokens per UTC minute.
        tokens_per_minute: Option<u64>,
        /// Tokens per UTC day.
        tokens_per_day: Option<u64>,
    }

    /// The hold a request takes before its model is called, in the request's group: its
    /// worst-case tokens and cost, charged against each budget in `scopes` until the request's
    /// outcome settles it (`completion.finished`: the real usage) or voids it
    /// (`request.rejected`, `budget.voided`). `hold_id` is the request id.
    BudgetReserved = ("budget.reserved", 1) {
        /// The request id.
        hold_id: String,
        /// The budgets held against, each `scope@period` (`team:finance@2026-12`).
        scopes: Vec<String>,
        /// The key's id, if the request came with a managed or configured key.
        key_id: Option<String>,
        /// The model the router chose.
        model: String,
        /// Tokens held: the prompt's upper bound plus `max_tokens` (or the default).
        tokens: u64,
        /// Cost held, in millionths.
        cost_micros: u64,
        /// Price of 1,000 prompt tokens, in millionths (what settlement charges).
        price_in_micros_per_1k: u64,
        /// Price of 1,000 completion tokens, in millionths.
        price_out_micros_per_1k: u64,
    }

    /// A hold was released without charge: its request died with a process, or it outlived
    /// every request that could settle it.
    BudgetVoided = ("budget.voided", 1) {
        /// The request id.
        hold_id: String,
        /// Why.
        reason: String,
    }

    /// Spending crossed a threshold of a budget, once per scope, period, unit and threshold.
    BudgetThresholdCrossedV2 = ("budget.threshold_crossed", 2) {
        /// `team:<id>` or `key:<id>`.
        scope: String,
        /// The period (`2026-12-02` or `2026-12`).
        period: String,
        /// `tokens` or `cost_micros`.
        unit: String,
        /// The cap.
        limit: u64,
        /// What was spent (settled) when it was noticed.
        used: u64,
        /// 50, 80 or 100.
        threshold_percent: u8,
    }

    /// A team was created.
    TeamCreated = ("team.created", 1) {
        /// Its id, as keys, budgets and policies name it.
        team_id: String,
        /// Display name.
        name: String,
    }

    /// A team's name changed.
    TeamUpdated = ("team.updated", 1) {
        /// Its id.
        team_id: String,
        /// The new display name.
        name: String,
    }

    /// An API key was revoked.
    KeyRevoked = ("key.revoked", 1) {
        /// Key id.
        key_id: String,
        /// Why.
        reason: String,
    }

    /// A routing or guardrail policy was replaced.
    PolicyUpdated = ("policy.updated", 1) {
        /// Which policy.
        policy: String,
        /// `sha256:` of the new policy file.
        policy_hash: String,
    }

    /// A webhook was delivered.
    WebhookDelivered = ("webhook.delivered", 1) {
        /// Subscription id.
        subscription_id: String,
        /// Journal sequence of the event delivered.
        event_seq: u64,
        /// HTTP status from the subscriber.
        status: u16,
        /// Attempts it took.
        attempts: u32,
    }

    /// A webhook delivery gave up.
    WebhookFailed = ("webhook.failed", 1) {
        /// Subscription id.
        subscription_id: String,
        /// Journal sequence of the event.
        event_seq: u64,
        /// Last error.
        error: String,
        /// Attempts made.
        attempts: u32,
    }

    /// A pipeline stage gave up on an entry: it rejected it, or it kept failing until its
    /// retries ran out. The runner moved on to the next entry; this is the entry's delivery
    /// status, kept as data rather than a log line.
    StageFailed = ("stage.failed", 1) {
        /// Name of the stage.
        stage: String,
        /// Journal sequence of the entry it failed on.
        input_seq: u64,
        /// Kind of that entry.
        input_kind: String,
        /// `errored` (transient failures until the retries ran out) or `rejected` (the stage
        /// said the entry can never succeed).
        outcome: String,
        /// The stage's last error (never prompt text).
        reason: String,
        /// Attempts made, the last one included.
        attempts: u32,
    }

    /// Requests from one source refused before admission (a missing or unknown API key, load
    /// shed at the concurrency limit), counted over an interval instead of journaled one by
    /// one: an anonymous client must not be able to make the journal flush per request.
    RequestsRefused = ("requests.refused", 1) {
        /// The error code the requests got (`invalid_api_key`, `server_overloaded`).
        code: String,
        /// The client address, `other` for sources past the per-interval bound, `unknown` where
        /// the server does not know it.
        source: String,
        /// How many.
        count: u64,
        /// Start of the interval, Unix microseconds.
        window_start_us: i64,
        /// End of the interval, Unix microseconds.
        window_end_us: i64,
    }

    /// An in-process model was verified against its manifest and loaded.
    ModelLoaded = ("model.loaded", 1) {
        /// Model id.
        model: String,
        /// `chat` or `embedding`.
        kind: String,
        /// `file=sha256:...` for every file of the model.
        files: Vec<String>,
        /// Package the files came from.
        source: String,
        /// `cpu` or `cuda`.
        device: String,
        /// Load time, verification included, in milliseconds.
        load_ms: u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, EventId, NewEvent};

    #[test]
    fn json_view_decodes_known_and_shows_unknown_as_base64() {
        let ev = NewEvent::new(&KeyRevoked {
            key_id: "k1".into(),
            reason: "leaked".into(),
        })
        .unwrap()
        .sequence(0, 0);
        let json = ev.to_json();
        assert_eq!(json.payload["key_id"], "k1");
        assert_eq!(json.kind, "key.revoked");

        let future = Event {
            kind: "from.the.future".into(),
            ..ev
        };
        assert!(future.to_json().payload[crate::PAYLOAD_UNDECODED].is_string());
    }

    #[test]
    fn payload_json_roundtrip_and_errors() {
        let bytes = payload_from_json(
            "policy.updated",
            1,
            serde_json::json!({"policy": "routing", "policy_hash": "sha256:ab"}),
        )
        .unwrap();
        let p = PolicyUpdated::decode(&bytes).unwrap();
        assert_eq!(p.policy, "routing");
        assert!(payload_from_json("policy.updated", 1, serde_json::json!({"x": 1})).is_err());
        assert!(payload_from_json("policy.updated", 99, serde_json::json!({})).is_err());
    }

    #[test]
    fn payload_as_checks_kind() {
        let ev = NewEvent::new(&DocumentDeleted {
            document_id: "d".into(),
        })
        .unwrap()
        .with_id(EventId([1; 16]))
        .sequence(1, 1);
        assert!(ev.payload_as::<DocumentDeleted>().is_ok());
        assert!(ev.payload_as::<KeyRevoked>().is_err());
    }
}
