//! The event envelope, its identifiers and its canonical encoding.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{payloads, Error, Payload, Result};

/// First byte of every envelope's canonical bytes. Bump only with a new envelope type.
pub const ENVELOPE_FORMAT: u8 = 1;

/// JSON key under which an undecodable payload (a kind or version newer than this build) is shown.
pub const PAYLOAD_UNDECODED: &str = "undecoded_base64";

/// An event id: a UUIDv7, so ids sort by creation time and carry no secrets.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct EventId(pub [u8; 16]);

impl EventId {
    /// A fresh UUIDv7 from the system clock and the OS random source.
    pub fn new_v7() -> Self {
        Self(*uuid::Uuid::now_v7().as_bytes())
    }

    /// A UUIDv7 whose random bits are derived from `seed` and whose time is `unix_ms`.
    ///
    /// Stages use this to give the events they emit for one input a stable id, so that a stage
    /// re-run after a crash re-emits the same ids and the journal's idempotency drops the repeats.
    pub fn derived(unix_ms: u64, seed: &[u8]) -> Self {
        let digest = Sha256::digest(seed);
        let mut random = [0u8; 10];
        random.copy_from_slice(&digest[..10]);
        let mut bytes = [0u8; 16];
        // RFC 9562 UUIDv7: 48-bit big-endian Unix milliseconds, version 7, variant 0b10.
        bytes[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        bytes[6] = 0x70 | (random[0] & 0x0f);
        bytes[7] = random[1];
        bytes[8] = 0x80 | (random[2] & 0x3f);
        bytes[9..16].copy_from_slice(&random[3..10]);
        Self(bytes)
    }

    /// The id as a `uuid::Uuid`.
    pub fn as_uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.0)
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_uuid())
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_uuid())
    }
}

impl std::str::FromStr for EventId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(Self(*uuid::Uuid::parse_str(s)?.as_bytes()))
    }
}

/// An event before the journal has sequenced it: everything but the sequence number and time.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Idempotency key: appending the same id twice yields the first sequence number.
    pub id: EventId,
    /// Dotted, past-tense kind, e.g. `request.received`.
    pub kind: String,
    /// Version of the payload type for this kind.
    pub payload_version: u16,
    /// Team the event belongs to, if any.
    pub team: Option<String>,
    /// Who caused it: an API key id, a certificate subject, `system`.
    pub actor: Option<String>,
    /// Request or correlation id that ties the events of one request together.
    pub request_id: Option<String>,
    /// Canonical bytes of the payload (see [`Payload::encode`]).
    pub payload: Vec<u8>,
}

/// `payload` decoded as `P` when `kind` and `version` are `P`'s.
fn decode_payload<P: Payload>(kind: &str, version: u16, payload: &[u8]) -> Result<P> {
    if kind != P::KIND || version != P::VERSION {
        return Err(Error::Payload {
            kind: kind.to_owned(),
            version,
            reason: format!("not a {} v{} payload", P::KIND, P::VERSION),
        });
    }
    P::decode(payload)
}

impl NewEvent {
    /// Decodes the payload as `P`, checking that kind and version match (a request-path stage
    /// reads the outputs of the stages before it this way).
    pub fn payload_as<P: Payload>(&self) -> Result<P> {
        decode_payload(&self.kind, self.payload_version, &self.payload)
    }

    /// A new event with a fresh id carrying `payload`.
    pub fn new<P: Payload>(payload: &P) -> Result<Self> {
        Ok(Self {
            id: EventId::new_v7(),
            kind: P::KIND.to_owned(),
            payload_version: P::VERSION,
            team: None,
            actor: None,
            request_id: None,
            payload: payload.encode()?,
        })
    }

    /// Sets the team.
    pub fn team(mut self, team: impl Into<String>) -> Self {
        self.team = Some(team.into());
        self
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the request id.
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }

    /// Replaces the id (for idempotent retries and derived ids).
    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }

    /// Completes the event with the journal-assigned sequence number and time.
    pub fn sequence(self, seq: u64, timestamp_us: i64) -> Event {
        Event {
            seq,
            timestamp_us,
            id: self.id,
            kind: self.kind,
            payload_version: self.payload_version,
            team: self.team,
            actor: self.actor,
            request_id: self.request_id,
            payload: self.payload,
        }
    }
}

/// A sequenced event: what the journal hashes, signs and stores.
#[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Event {
    /// Position in the journal: consecutive from 0, no holes.
    pub seq: u64,
    /// Microseconds since the Unix epoch, assigned by the journal; never decreases along the log.
    pub timestamp_us: i64,
    /// UUIDv7 event id.
    pub id: EventId,
    /// Dotted, past-tense kind.
    pub kind: String,
    /// Version of the payload type.
    pub payload_version: u16,
    /// Team, if any.
    pub team: Option<String>,
    /// Actor, if any.
    pub actor: Option<String>,
    /// Request or correlation id, if any.
    pub request_id: Option<String>,
    /// Canonical bytes of the payload.
    pub payload: Vec<u8>,
}

impl Event {
    /// The canonical bytes: [`ENVELOPE_FORMAT`] followed by the rkyv archive of the envelope.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>> {
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(self).map_err(|e| Error::Encode {
            what: "event envelope".into(),
            reason: e.to_string(),
        })?;
        let mut out = Vec::with_capacity(archive.len() + 1);
        out.push(ENVELOPE_FORMAT);
        out.extend_from_slice(&archive);
        Ok(out)
    }

    /// Decodes and validates canonical bytes.
    pub fn from_canonical(bytes: &[u8]) -> Result<Self> {
        let (&format, archive) = bytes.split_first().ok_or_else(|| Error::Decode {
            what: "event envelope".into(),
            reason: "empty".into(),
        })?;
        if format != ENVELOPE_FORMAT {
            return Err(Error::UnknownFormat(format));
        }
        rkyv::from_bytes::<Event, rkyv::rancor::Error>(archive).map_err(|e| Error::Decode {
            what: "event envelope".into(),
            reason: e.to_string(),
        })
    }

    /// Decodes the payload as `P`, checking that kind and version match.
    pub fn payload_as<P: Payload>(&self) -> Result<P> {
        decode_payload(&self.kind, self.payload_version, &self.payload)
    }

    /// The human and API view of this event.
    pub fn to_json(&self) -> EventJson {
        let payload = payloads::payload_json(&self.kind, self.payload_version, &self.payload);
        EventJson {
            seq: self.seq,
            timestamp: format_timestamp(self.timestamp_us),
            id: self.id.to_string(),
            kind: self.kind.clone(),
            payload_version: self.payload_version,
            team: self.team.clone(),
            actor: self.actor.clone(),
            request_id: self.request_id.clone(),
            payload,
        }
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-02-04T14:23:45.123456Z`.
pub fn format_timestamp(timestamp_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(timestamp_us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| timestamp_us.to_string())
}

/// The JSON view of an event, for people and APIs. Canonical bytes, not this, are what is signed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventJson {
    /// Sequence number.
    pub seq: u64,
    /// RFC 3339 UTC time.
    pub timestamp: String,
    /// UUIDv7 event id.
    pub id: String,
    /// Event kind.
    pub kind: String,
    /// Payload version.
    pub payload_version: u16,
    /// Team.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub team: Option<String>,
    /// Actor.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub actor: Option<String>,
    /// Request id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request_id: Option<String>,
    /// The decoded payload, or `{"undecoded_base64": ...}` for kinds this build does not know.
    pub payload: serde_json::Value,
}

/// SHA-256 of `tag` followed by each part; used for domain-separated hashes.
pub fn sha256_tagged(tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeStarted;
    use proptest::prelude::*;

    fn sample() -> Event {
        NewEvent::new(&NodeStarted {
            version: "0.1.0".into(),
            config_hash: "sha256:00".into(),
            node_id: "n1".into(),
            public_key: "AAAA".into(),
        })
        .unwrap()
        .team("t")
        .with_id(EventId([3; 16]))
        .sequence(7, 1_700_000_000_000_000)
    }

    #[test]
    fn canonical_roundtrip_and_determinism() {
        let e = sample();
        let a = e.canonical_bytes().unwrap();
        let b = e.clone().canonical_bytes().unwrap();
        assert_eq!(a, b);
        assert_eq!(a[0], ENVELOPE_FORMAT);
        assert_eq!(Event::from_canonical(&a).unwrap(), e);
    }

    #[test]
    fn decodes_from_unaligned_buffers() {
        let bytes = sample().canonical_bytes().unwrap();
        let mut shifted = vec![0u8; 3];
        shifted.extend_from_slice(&bytes);
        assert_eq!(Event::from_canonical(&shifted[3..]).unwrap(), sample());
    }

    #[test]
    fn rejects_unknown_format_and_garbage() {
        let mut bytes = sample().canonical_bytes().unwrap();
        bytes[0] = 9;
        assert!(matches!(
            Event::from_canonical(&bytes),
            Err(Error::UnknownFormat(9))
        ));
        assert!(Event::from_canonical(&[]).is_err());
        assert!(Event::from_canonical(&[ENVELOPE_FORMAT, 1, 2, 3]).is_err());
    }

    #[test]
    fn derived_ids_are_stable_v7() {
        let a = EventId::derived(1_700_000_000_123, b"stage/42/0");
        let b = EventId::derived(1_700_000_000_123, b"stage/42/0");
        let c = EventId::derived(1_700_000_000_123, b"stage/42/1");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_uuid().get_version_num(), 7);
    }

    proptest! {
        #[test]
        fn any_envelope_roundtrips(seq in any::<u64>(), ts in any::<i64>(), kind in ".{0,40}",
                                   team in proptest::option::of(".{0,20}"),
                                   payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let e = Event { seq, timestamp_us: ts, id: EventId([7; 16]), kind, payload_version: 3,
                            team, actor: None, request_id: Some("r".into()), payload };
            let bytes = e.canonical_bytes().unwrap();
            prop_assert_eq!(Event::from_canonical(&bytes).unwrap(), e);
        }
    }
}
