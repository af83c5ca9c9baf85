//! The fold: teams and keys from their events.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use isnad_schemas::{
    Event, KeyCreatedV2, KeyRevoked, KeyRotated, LimitsSet, Payload, RequestReceived, TeamCreated,
    TeamUpdated,
};
use serde::Serialize;

use super::{limits::Limits, same_hash, sha256, token, Principal, Role};
use crate::policy::Scope;

/// Ids of keys from the configuration file start with this (then 12 hex digits of the key's
/// SHA-256), so they never collide with issued ids (base62, no `_`).
pub const CONFIG_ID_PREFIX: &str = "cfg_";

/// A team.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Team {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// When it was created (µs since the Unix epoch, the journal's time).
    pub created_at_us: i64,
    /// Who created it.
    pub created_by: Option<String>,
    /// When it last changed.
    pub updated_at_us: i64,
    /// Its token limits (for all its keys together).
    pub limits: Limits,
}

/// A key as access control knows it (never the key itself).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyRecord {
    /// Public id.
    pub id: String,
    /// SHA-256 of the key.
    #[serde(serialize_with = "ser_hash")]
    pub sha256: [u8; 32],
    /// Who uses it.
    pub label: String,
    /// Team.
    pub team: Option<String>,
    /// Role.
    pub role: Role,
    /// Models it may use (`None`: all).
    pub models: Option<Vec<String>>,
    /// Its data must stay inside the boundary.
    pub local_only: bool,
    /// When it stops working.
    pub expires_at_us: Option<i64>,
    /// Addresses it is accepted from (empty: any).
    pub cidrs: Vec<IpNet>,
    /// `api`, `config` or `rotation`.
    pub source: String,
    /// When it was created.
    pub created_at_us: i64,
    /// Who created it.
    pub created_by: Option<String>,
    /// When it was revoked, by whom and why.
    pub revoked: Option<(i64, Option<String>, String)>,
    /// The key that replaced it and until when it stays valid.
    pub rotated: Option<(String, i64)>,
    /// When a request last came with it (from the journal's `request.received` entries).
    pub last_used_us: Option<i64>,
    /// Its own rate limits (the configured defaults fill the rest).
    pub limits: Limits,
}

fn ser_hash<S: serde::Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::key_hash_tag(h))
}

impl KeyRecord {
    /// Whether the key is refused at `now_us` regardless of the address.
    pub fn denied_at(&self, now_us: i64) -> Option<Denied> {
        if self.revoked.is_some() {
            return Some(Denied::Revoked);
        }
        if let Some((_, until)) = &self.rotated {
            if now_us >= *until {
                return Some(Denied::Rotated);
            }
        }
        match self.expires_at_us {
            Some(t) if now_us >= t => Some(Denied::Expired),
            _ => None,
        }
    }

    /// `active`, `revoked`, `rotated` (in its grace period or past it) or `expired`.
    pub fn status(&self, now_us: i64) -> &'static str {
        match self.denied_at(now_us) {
            None if self.rotated.is_some() => "rotating",
            None => "active",
            Some(Denied::Revoked) => "revoked",
            Some(Denied::Rotated) => "rotated",
            Some(Denied::Expired) => "expired",
            Some(Denied::Unknown | Denied::Address) => "active",
        }
    }

    /// Whether a client at `addr` may use the key.
    pub fn allows(&self, addr: Option<IpAddr>) -> bool {
        self.cidrs.is_empty() || addr.is_some_and(|a| self.cidrs.iter().any(|n| n.contains(&a)))
    }

    fn principal(&self, team_limits: Limits) -> Principal {
        Principal {
            name: if self.source == "config" {
                self.label.clone()
            } else {
                self.id.clone()
            },
            key_id: Some(self.id.clone()),
            role: self.role,
            scope: Scope {
                models: self.models.as_ref().map(|m| m.clone().into()),
                local_only: self.local_only,
            },
            team: self.team.clone(),
            limits: self.limits,
            team_limits,
        }
    }
}

/// Why a presented key is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// Not a key isnad knows (or a malformed one).
    Unknown,
    /// Revoked.
    Revoked,
    /// Rotated, and its grace period is over.
    Rotated,
    /// Past its expiry.
    Expired,
    /// The client's address is outside the key's allowlist.
    Address,
}

impl Denied {
    /// What the client reads (never which key exists: unknown, revoked, rotated and expired
    /// read alike apart from the reason word).
    pub fn message(self) -> &'static str {
        match self {
            Self::Unknown => "invalid or missing API key",
            Self::Revoked => "this API key was revoked",
            Self::Rotated => "this API key was rotated and its grace period is over",
            Self::Expired => "this API key has expired",
            Self::Address => "this API key is not accepted from your address",
        }
    }
}

/// Teams and keys, folded from the journal.
#[derive(Clone, Debug, Default)]
pub struct AccessState {
    teams: BTreeMap<String, Team>,
    keys: BTreeMap<String, KeyRecord>,
    /// Key id by SHA-256, for tokens not in isnad's format.
    by_hash: HashMap<[u8; 32], String>,
    /// Key id by the actor its requests are journaled under.
    by_actor: HashMap<String, String>,
    principals: HashMap<String, Arc<Principal>>,
    /// The last seq folded, plus one.
    next_seq: u64,
}

impl PartialEq for AccessState {
    /// Equal when they hold the same teams and keys (what a replay must reproduce); when a key
    /// was last used is left out, as the live server notes it as a request arrives and a
    /// replay from the request's entry.
    fn eq(&self, other: &Self) -> bool {
        let unused = |k: &KeyRecord| KeyRecord {
            last_used_us: None,
            ..k.clone()
        };
        self.teams == other.teams
            && self.keys.len() == other.keys.len()
            && self
                .keys
                .values()
                .zip(other.keys.values())
                .all(|(a, b)| unused(a) == unused(b))
    }
}

impl AccessState {
    /// Whether `entry` changes the state.
    pub fn wants(kind: &str) -> bool {
        matches!(
            kind,
            "team.created"
                | "team.updated"
                | "key.created"
                | "key.rotated"
                | "key.revoked"
                | "limits.set"
                | "request.received"
        )
    }

    /// Folds one entry. Entries of other kinds, and payloads this build cannot read, change
    /// nothing (as they would not on any replay).
    pub fn apply(&mut self, ev: &Event) {
        self.next_seq = self.next_seq.max(ev.seq + 1);
        let at = ev.timestamp_us;
        let actor = ev.actor.clone();
        match (ev.kind.as_str(), ev.payload_version) {
            (TeamCreated::KIND, TeamCreated::VERSION) => {
                if let Ok(p) = ev.payload_as::<TeamCreated>() {
                    self.teams.entry(p.team_id.clone()).or_insert(Team {
                        id: p.team_id,
                        name: p.name,
                        created_at_us: at,
                        created_by: actor,
                        updated_at_us: at,
                        limits: Limits::default(),
                    });
                }
            }
            (TeamUpdated::KIND, TeamUpdated::VERSION) => {
                if let Ok(p) = ev.payload_as::<TeamUpdated>() {
                    if let Some(t) = self.teams.get_mut(&p.team_id) {
                        t.name = p.name;
                        t.updated_at_us = at;
                    }
                }
            }
            (KeyCreatedV2::KIND, KeyCreatedV2::VERSION) => {
                if let Ok(p) = ev.payload_as::<KeyCreatedV2>() {
                    self.create(p, at, actor);
                }
            }
            (KeyRotated::KIND, KeyRotated::VERSION) => {
                if let Ok(p) = ev.payload_as::<KeyRotated>() {
                    if let Some(k) = self.keys.get_mut(&p.key_id) {
                        k.rotated = Some((p.new_key_id, p.grace_until_us));
                    }
                }
            }
            (KeyRevoked::KIND, KeyRevoked::VERSION) => {
                if let Ok(p) = ev.payload_as::<KeyRevoked>() {
                    if let Some(k) = self.keys.get_mut(&p.key_id) {
                        k.revoked.get_or_insert((at, actor, p.reason));
                    }
                }
            }
            (LimitsSet::KIND, LimitsSet::VERSION) => {
                if let Ok(p) = ev.payload_as::<LimitsSet>() {
                    self.set_limits(&p);
                }
            }
            (RequestReceived::KIND, _) => {
                let id = ev.actor.as_ref().and_then(|a| self.by_actor.get(a));
                if let Some(k) = id.and_then(|id| self.keys.get_mut(id)) {
                    k.last_used_us = Some(at);
                }
            }
            _ => {}
        }
    }

    fn create(&mut self, p: KeyCreatedV2, at: i64, actor: Option<String>) {
        let Some(hash) = p
            .sha256
            .strip_prefix("sha256:")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
        else {
            return;
        };
        let record = KeyRecord {
            id: p.key_id.clone(),
            sha256: hash,
            label: p.label,
            team: p.team,
            role: Role::parse(&p.role).unwrap_or(Role::Member),
            models: p.models,
            local_only: p.residency.as_deref() == Some("local"),
            expires_at_us: p.expires_at_us,
            cidrs: p.cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
            source: p.source,
            created_at_us: at,
            created_by: actor,
            revoked: None,
            rotated: None,
            last_used_us: None,
            limits: Limits::default(),
        };
        // A config key journaled again (its entry changed) replaces the earlier record.
        let mut record = record;
        if let Some(old) = self.keys.get(&record.id) {
            self.by_hash.remove(&old.sha256);
            let name = old.principal(Limits::default()).name;
            self.by_actor.remove(&name);
            record.limits = old.limits;
        }
        let principal = record.principal(self.team_limits(record.team.as_deref()));
        self.by_hash.insert(hash, record.id.clone());
        self.by_actor
            .insert(principal.name.clone(), record.id.clone());
        self.principals
            .insert(record.id.clone(), Arc::new(principal));
        self.keys.insert(record.id.clone(), record);
    }

    fn team_limits(&self, team: Option<&str>) -> Limits {
        team.and_then(|t| self.teams.get(t))
            .map(|t| t.limits)
            .unwrap_or_default()
    }

    /// Folds `limits.set`: the scope's limits change, and so do the principals of its keys.
    fn set_limits(&mut self, p: &LimitsSet) {
        let limits = Limits {
            requests_per_minute: p.requests_per_minute,
            burst: p.burst,
            tokens_per_minute: p.tokens_per_minute,
            tokens_per_day: p.tokens_per_day,
        };
        let affected: Vec<String> = if let Some(id) = p.scope.strip_prefix("key:") {
            let Some(k) = self.keys.get_mut(id) else {
                return;
            };
            k.limits = limits;
            vec![id.to_owned()]
        } else if let Some(id) = p.scope.strip_prefix("team:") {
            let Some(t) = self.teams.get_mut(id) else {
                return;
            };
            t.limits = limits;
            self.keys
                .values()
                .filter(|k| k.team.as_deref() == Some(id))
                .map(|k| k.id.clone())
                .collect()
        } else {
            return;
        };
        for id in affected {
            if let Some(k) = self.keys.get(&id) {
                let principal = k.principal(self.team_limits(k.team.as_deref()));
                self.principals.insert(id, Arc::new(principal));
            }
        }
    }

    /// The principal of `token`, presented from `addr` at `now_us`, or why it is refused.
    pub fn authenticate(
        &self,
        token: &str,
        addr: Option<IpAddr>,
        now_us: i64,
    ) -> Result<(Arc<Principal>, &KeyRecord), Denied> {
        let presented = sha256(token.as_bytes());
        let record = match token::id_of(token) {
            Some(id) => self
                .keys
                .get(id)
                .filter(|k| same_hash(&k.sha256, &presented)),
            None => self
                .by_hash
                .get(&presented)
                .and_then(|id| self.keys.get(id)),
        }
        .ok_or(Denied::Unknown)?;
        if let Some(d) = record.denied_at(now_us) {
            return Err(d);
        }
        if !record.allows(addr) {
            return Err(Denied::Address);
        }
        let principal = self
            .principals
            .get(&record.id)
            .cloned()
            .ok_or(Denied::Unknown)?;
        Ok((principal, record))
    }

    /// Teams, by id.
    pub fn teams(&self) -> impl Iterator<Item = &Team> {
        self.teams.values()
    }

    /// A team.
    pub fn team(&self, id: &str) -> Option<&Team> {
        self.teams.get(id)
    }

    /// Keys, by id.
    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// A key.
    pub fn key(&self, id: &str) -> Option<&KeyRecord> {
        self.keys.get(id)
    }

    /// The key with SHA-256 `hash`, if any.
    pub fn key_by_hash(&self, hash: &[u8; 32]) -> Option<&KeyRecord> {
        self.by_hash.get(hash).and_then(|id| self.keys.get(id))
    }

    /// The next seq the state has not folded.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}
