//! The live access state: the fold of the journal, kept current by the changes this process
//! journals.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use ipnet::IpNet;
use isnad_journal::Journal;
use isnad_schemas::{
    KeyCreatedV2, KeyRevoked, KeyRotated, LimitsSet, NewEvent, TeamCreated, TeamUpdated,
};
use parking_lot::{Mutex, RwLock};

use super::{
    key_hash_tag, limits::Limits, sha256, state::CONFIG_ID_PREFIX, token, AccessState, Denied,
    KeyRecord, Principal, Role, Team,
};

/// Longest team id, label or reason accepted.
const MAX_NAME: usize = 128;

/// Why a change to teams or keys is refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A field is invalid: its name and what is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The caller's role or team may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such team or key (or not one the caller may see).
    #[error("{0}")]
    NotFound(String),
    /// It exists already, or its state does not allow the change.
    #[error("{0}")]
    Conflict(String),
    /// The journal refused the change; nothing was applied.
    #[error(transparent)]
    Journal(#[from] isnad_journal::Error),
    /// An event could not be encoded.
    #[error(transparent)]
    Encode(#[from] isnad_schemas::Error),
}

type Result<T, E = AccessError> = std::result::Result<T, E>;

fn invalid(field: &'static str, reason: impl Into<String>) -> AccessError {
    AccessError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A team to create (or the new name of one).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamRequest {
    /// Id (letters, digits, `-`, `_`, `.`); required on create.
    #[serde(default)]
    pub id: Option<String>,
    /// Display name (default: the id).
    #[serde(default)]
    pub name: Option<String>,
}

/// A key to issue.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// Who uses it.
    pub label: String,
    /// Its team (required unless an admin creates it); an operator's own team by default.
    #[serde(default)]
    pub team: Option<String>,
    /// Role (default `member`).
    #[serde(default)]
    pub role: Option<Role>,
    /// Model ids it may use (default: all).
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// `local` to keep its data inside the boundary.
    #[serde(default)]
    pub residency: Option<String>,
    /// When it expires (µs since the Unix epoch).
    #[serde(default)]
    pub expires_at_us: Option<i64>,
    /// Seconds from now until it expires (instead of `expires_at_us`).
    #[serde(default)]
    pub expires_in_s: Option<u64>,
    /// CIDR allowlist of client addresses.
    #[serde(default)]
    pub cidrs: Vec<String>,
}

/// A key from the configuration file, as access control folds it.
#[derive(Clone, Debug)]
pub struct ConfigKey {
    /// Its `name`.
    pub label: String,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
    /// Role.
    pub role: Role,
    /// Models it may use.
    pub models: Option<Vec<String>>,
    /// `residency = "local"`.
    pub local_only: bool,
    /// Team.
    pub team: Option<String>,
}

/// Teams and keys, live: read on every request, changed through the admin API.
pub struct Access {
    state: RwLock<AccessState>,
    journal: Journal,
    /// One change at a time: a change is validated against the state, journaled, then applied,
    /// so the state is always the fold of the log up to the last change.
    write: tokio::sync::Mutex<()>,
    /// When each key was last used in this process (the fold knows it from the log up to the
    /// start).
    last_used: Mutex<HashMap<String, i64>>,
    clock: fn() -> i64,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Access {
    /// The state folded from every entry of `journal` so far.
    pub fn open(journal: Journal) -> Result<Self> {
        let state = replay(&journal)?;
        Ok(Self {
            state: RwLock::new(state),
            journal,
            write: tokio::sync::Mutex::new(()),
            last_used: Mutex::new(HashMap::new()),
            clock: now_us,
        })
    }

    /// The same, with a clock of the caller's (tests).
    pub fn with_clock(mut self, clock: fn() -> i64) -> Self {
        self.clock = clock;
        self
    }

    /// The current time by this store's clock.
    pub fn now_us(&self) -> i64 {
        (self.clock)()
    }

    /// Runs `f` on the state.
    pub fn read<R>(&self, f: impl FnOnce(&AccessState) -> R) -> R {
        f(&self.state.read())
    }

    /// The principal of `token` presented from `addr`, or why it is refused. Reads the state
    /// as it is now: a key revoked a moment ago is refused.
    pub fn authenticate(
        &self,
        token: &str,
        addr: Option<IpAddr>,
    ) -> Result<Arc<Principal>, Denied> {
        let now = self.now_us();
        let principal = self
            .state
            .read()
            .authenticate(token, addr, now)
            .map(|(p, _)| p)?;
        if let Some(id) = &principal.key_id {
            self.last_used.lock().insert(id.clone(), now);
        }
        Ok(principal)
    }

    /// When key `id` was last used, by the log and by this process.
    pub fn last_used_us(&self, record: &KeyRecord) -> Option<i64> {
        let here = self.last_used.lock().get(&record.id).copied();
        here.max(record.last_used_us)
    }

    /// Journals what the configuration's keys are, where the log says otherwise: a
    /// `key.created` (`source: config`) for each new or changed key, a `key.revoked` for each
    /// config key the file no longer has. After it, the log alone rebuilds every key.
    pub async fn sync_config(&self, keys: &[ConfigKey]) -> Result<usize> {
        let _w = self.write.lock().await;
        let mut events = Vec::new();
        // Teams named only by config keys exist from the start, so their operators can manage
        // them through the API.
        let mut teams: Vec<&str> = keys.iter().filter_map(|k| k.team.as_deref()).collect();
        teams.sort_unstable();
        teams.dedup();
        for t in teams {
            if self.read(|s| s.team(t).is_none()) {
                check_name("team", t, true)?;
                events.push(
                    NewEvent::new(&TeamCreated {
                        team_id: t.into(),
                        name: t.into(),
                    })?
                    .actor("config")
                    .team(t),
                );
            }
        }
        let mut ids = Vec::with_capacity(keys.len());
        for k in keys {
            let id = format!("{CONFIG_ID_PREFIX}{}", &hex::encode(k.sha256)[..12]);
            let payload = KeyCreatedV2 {
                key_id: id.clone(),
                sha256: key_hash_tag(&k.sha256),
                label: k.label.clone(),
                team: k.team.clone(),
                role: k.role.as_str().into(),
                models: k.models.clone(),
                residency: k.local_only.then(|| "local".into()),
                expires_at_us: None,
                cidrs: vec![],
                source: "config".into(),
            };
            let same = self.read(|s| {
                s.key(&id).is_some_and(|r| {
                    r.revoked.is_none()
                        && r.label == payload.label
                        && r.team == payload.team
                        && r.role == k.role
                        && r.models == payload.models
                        && r.local_only == k.local_only
                })
            });
            if !same {
                events.push(NewEvent::new(&payload)?.actor("config"));
            }
            ids.push(id);
        }
        let gone: Vec<String> = self.read(|s| {
            s.keys()
                .filter(|k| k.source == "config" && k.revoked.is_none() && !ids.contains(&k.id))
                .map(|k| k.id.clone())
                .collect()
        });
        for id in gone {
            events.push(
                NewEvent::new(&KeyRevoked {
                    key_id: id,
                    reason: "removed from the configuration".into(),
                })?
                .actor("config"),
            );
        }
        let n = events.len();
        if n > 0 {
            self.commit(events).await?;
        }
        Ok(n)
    }

    /// Appends `events` durably and folds them, in order.
    async fn commit(&self, events: Vec<NewEvent>) -> Result<()> {
        let receipts = self.journal.append(events).await?;
        let mut state = self.state.write();
        for r in receipts {
            if let Some(entry) = self.journal.entry(r.seq)? {
                state.apply(&entry.event);
            }
        }
        Ok(())
    }

    /// Creates a team (admin only).
    pub async fn create_team(&self, by: &Principal, req: TeamRequest) -> Result<Team> {
        if by.role != Role::Admin {
            return Err(AccessError::Forbidden("only an admin creates teams".into()));
        }
        let id = req.id.ok_or_else(|| invalid("id", "required"))?;
        check_name("id", &id, true)?;
        let name = req.name.unwrap_or_else(|| id.clone());
        check_name("name", &name, false)?;
        let _w = self.write.lock().await;
        if self.read(|s| s.team(&id).is_some()) {
            return Err(AccessError::Conflict(format!("team `{id}` exists")));
        }
        let ev = NewEvent::new(&TeamCreated {
            team_id: id.clone(),
            name,
        })?
        .actor(by.name.clone())
        .team(id.clone());
        self.commit(vec![ev]).await?;
        self.team(by, &id)
    }

    /// Renames a team (admin, or an operator of it).
    pub async fn update_team(&self, by: &Principal, id: &str, req: TeamRequest) -> Result<Team> {
        self.team(by, id)?;
        if !by.may_manage(Some(id), true) {
            return Err(AccessError::Forbidden(format!(
                "the role `{}` may not change team `{id}`",
                by.role.as_str()
            )));
        }
        if req.id.as_deref().is_some_and(|new| new != id) {
            return Err(invalid("id", "a team's id cannot change"));
        }
        let name = req.name.ok_or_else(|| invalid("name", "required"))?;
        check_name("name", &name, false)?;
        let _w = self.write.lock().await;
        let ev = NewEvent::new(&TeamUpdated {
            team_id: id.into(),
            name,
        })?
        .actor(by.name.clone())
        .team(id);
        self.commit(vec![ev]).await?;
        self.team(by, id)
    }

    /// Team `id`, if `by` may see it.
    pub fn team(&self, by: &Principal, id: &str) -> Result<Team> {
        self.read(|s| s.team(id).cloned())
            .filter(|_| by.may_manage(Some(id), false))
            .ok_or_else(|| AccessError::NotFound(format!("no team `{id}`")))
    }

    /// The teams `by` may see.
    pub fn teams(&self, by: &Principal) -> Vec<Team> {
        self.read(|s| {
            s.teams()
                .filter(|t| by.may_manage(Some(&t.id), false))
                .cloned()
                .collect()
        })
    }

    /// Key `id`, if `by` may see it.
    pub fn key(&self, by: &Principal, id: &str) -> Result<KeyRecord> {
        self.read(|s| s.key(id).cloned())
            .filter(|k| by.may_manage(k.team.as_deref(), false) || by.key_id.as_deref() == Some(id))
            .ok_or_else(|| AccessError::NotFound(format!("no key `{id}`")))
    }

    /// The keys `by` may see, optionally of one team.
    pub fn keys(&self, by: &Principal, team: Option<&str>) -> Vec<KeyRecord> {
        self.read(|s| {
            s.keys()
                .filter(|k| by.may_manage(k.team.as_deref(), false))
                .filter(|k| team.is_none_or(|t| k.team.as_deref() == Some(t)))
                .cloned()
                .collect()
        })
    }

    /// Issues a key; the key itself is in the answer and nowhere else.
    pub async fn create_key(
        &self,
        by: &Principal,
        req: KeyRequest,
        known_model: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<(KeyRecord, String)> {
        let _w = self.write.lock().await;
        let (payload, token) = self.new_key(by, req, known_model, "api")?;
        let id = payload.key_id.clone();
        let ev = NewEvent::new(&payload)?.actor(by.name.clone());
        let ev = match &payload.team {
            Some(t) => ev.team(t.clone()),
            None => ev,
        };
        self.commit(vec![ev]).await?;
        Ok((self.key(by, &id)?, token))
    }

    fn new_key(
        &self,
        by: &Principal,
        req: KeyRequest,
        known_model: &(dyn Fn(&str) -> bool + Sync),
        source: &str,
    ) -> Result<(KeyCreatedV2, String)> {
        check_name("label", &req.label, false)?;
        let role = req.role.unwrap_or_default();
        if !by.role.may_grant(role) {
            return Err(AccessError::Forbidden(format!(
                "the role `{}` may not create a key of role `{}`",
                by.role.as_str(),
                role.as_str()
            )));
        }
        let team = match (req.team, by.role) {
            (Some(t), _) => Some(t),
            (None, Role::Admin) => None,
            (None, _) => by.team.clone(),
        };
        match &team {
            Some(t) if self.read(|s| s.team(t).is_none()) => {
                return Err(invalid("team", format!("no team `{t}`")));
            }
            None if role != Role::Admin && role != Role::Auditor => {
                return Err(invalid("team", "a key below admin belongs to a team"));
            }
            _ => {}
        }
        if !by.may_manage(team.as_deref(), true) {
            return Err(AccessError::Forbidden(format!(
                "the role `{}` may not create keys for team `{}`",
                by.role.as_str(),
                team.as_deref().unwrap_or("(none)")
            )));
        }
        for m in req.models.iter().flatten() {
            if !known_model(m) {
                return Err(invalid("models", format!("no model `{m}`")));
            }
        }
        // A key cannot escape the scope of the key that made it.
        let models = match (req.models, &by.scope.models) {
            (Some(ms), Some(mine)) if ms.iter().any(|m| !mine.contains(m)) => {
                return Err(AccessError::Forbidden(
                    "a key may not allow models its creator may not use".into(),
                ));
            }
            (None, Some(mine)) => Some(mine.to_vec()),
            (ms, _) => ms,
        };
        let residency = match req.residency.as_deref() {
            None | Some("any") if by.scope.local_only => Some("local".to_owned()),
            None | Some("any") => None,
            Some("local") => Some("local".to_owned()),
            Some(other) => {
                return Err(invalid(
                    "residency",
                    format!("`{other}`: expected `local` or `any`"),
                ))
            }
        };
        let now = self.now_us();
        let expires_at_us = match (req.expires_at_us, req.expires_in_s) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "expires_in_s",
                    "give expires_at_us or expires_in_s, not both",
                ))
            }
            (Some(t), None) => Some(t),
            (None, Some(s)) => Some(
                now.saturating_add(
                    i64::try_from(s)
                        .unwrap_or(i64::MAX / 2)
                        .saturating_mul(1_000_000),
                ),
            ),
            (None, None) => None,
        };
        if expires_at_us.is_some_and(|t| t <= now) {
            return Err(invalid("expires_at_us", "already in the past"));
        }
        let mut cidrs = Vec::with_capacity(req.cidrs.len());
        for c in &req.cidrs {
            let net: IpNet = c
                .parse()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| invalid("cidrs", format!("`{c}` is not an address or CIDR block")))?;
            cidrs.push(net.trunc().to_string());
        }
        let issued = token::issue();
        let payload = KeyCreatedV2 {
            key_id: issued.id,
            sha256: key_hash_tag(&sha256(issued.token.as_bytes())),
            label: req.label,
            team,
            role: role.as_str().into(),
            models,
            residency,
            expires_at_us,
            cidrs,
            source: source.into(),
        };
        Ok((payload, issued.token))
    }

    /// Issues a replacement for key `id` with the same scope; the old key stays valid for
    /// `grace_s` seconds.
    pub async fn rotate_key(
        &self,
        by: &Principal,
        id: &str,
        grace_s: u64,
    ) -> Result<(KeyRecord, String)> {
        let old = self.managed(by, id)?;
        let _w = self.write.lock().await;
        let old = self.read(|s| s.key(&old.id).cloned()).unwrap_or(old);
        if old.revoked.is_some() || old.rotated.is_some() {
            return Err(AccessError::Conflict(format!(
                "key `{id}` was already {}",
                if old.revoked.is_some() {
                    "revoked"
                } else {
                    "rotated"
                }
            )));
        }
        if old.source == "config" {
            return Err(AccessError::Conflict(format!(
                "key `{id}` comes from the configuration file: change it there"
            )));
        }
        let issued = token::issue();
        let new = KeyCreatedV2 {
            key_id: issued.id.clone(),
            sha256: key_hash_tag(&sha256(issued.token.as_bytes())),
            label: old.label.clone(),
            team: old.team.clone(),
            role: old.role.as_str().into(),
            models: old.models.clone(),
            residency: old.local_only.then(|| "local".into()),
            expires_at_us: old.expires_at_us,
            cidrs: old.cidrs.iter().map(ToString::to_string).collect(),
            source: "rotation".into(),
        };
        let grace_until_us = self.now_us().saturating_add(
            i64::try_from(grace_s)
                .unwrap_or(i64::MAX / 2)
                .saturating_mul(1_000_000),
        );
        let team = |ev: NewEvent| match &old.team {
            Some(t) => ev.team(t.clone()),
            None => ev,
        };
        let events = vec![
            team(NewEvent::new(&new)?.actor(by.name.clone())),
            team(
                NewEvent::new(&KeyRotated {
                    key_id: old.id.clone(),
                    new_key_id: issued.id.clone(),
                    grace_until_us,
                })?
                .actor(by.name.clone()),
            ),
        ];
        self.commit(events).await?;
        Ok((self.key(by, &issued.id)?, issued.token))
    }

    /// Revokes key `id`: the next request with it is refused.
    pub async fn revoke_key(
        &self,
        by: &Principal,
        id: &str,
        reason: Option<String>,
    ) -> Result<KeyRecord> {
        let old = self.managed(by, id)?;
        let reason = reason.unwrap_or_else(|| "revoked".into());
        check_name("reason", &reason, false)?;
        let _w = self.write.lock().await;
        if self.read(|s| s.key(id).is_some_and(|k| k.revoked.is_some())) {
            return Err(AccessError::Conflict(format!(
                "key `{id}` was already revoked"
            )));
        }
        let ev = NewEvent::new(&KeyRevoked {
            key_id: id.into(),
            reason,
        })?
        .actor(by.name.clone());
        let ev = match &old.team {
            Some(t) => ev.team(t.clone()),
            None => ev,
        };
        self.commit(vec![ev]).await?;
        self.key(by, id)
    }

    /// Sets the rate limits of team `team:<id>` (admin only; token limits only) or key
    /// `key:<id>` (admin, or an operator of its team), journaled with `by`; the next request is
    /// held to them. Limits with nothing set remove them.
    pub async fn set_limits(&self, by: &Principal, scope: &str, limits: Limits) -> Result<Limits> {
        if limits.requests_per_minute == Some(0) || limits.burst == Some(0) {
            return Err(invalid(
                "requests_per_minute",
                "at least 1 (leave it out for no limit)",
            ));
        }
        if limits.burst.is_some() && limits.requests_per_minute.is_none() {
            return Err(invalid("burst", "needs requests_per_minute"));
        }
        let team = if let Some(id) = scope.strip_prefix("team:") {
            self.team(by, id)?;
            if by.role != Role::Admin {
                return Err(AccessError::Forbidden(
                    "only an admin sets a team's limits".into(),
                ));
            }
            if limits.requests_per_minute.is_some() {
                return Err(invalid(
                    "requests_per_minute",
                    "request limits are per key and per address; a team has token limits",
                ));
            }
            Some(id.to_owned())
        } else if let Some(id) = scope.strip_prefix("key:") {
            self.managed(by, id)?.team
        } else {
            return Err(invalid("scope", "`team:<id>` or `key:<id>`"));
        };
        let _w = self.write.lock().await;
        let ev = NewEvent::new(&LimitsSet {
            scope: scope.to_owned(),
            requests_per_minute: limits.requests_per_minute,
            burst: limits.burst,
            tokens_per_minute: limits.tokens_per_minute,
            tokens_per_day: limits.tokens_per_day,
        })?
        .actor(by.name.clone());
        let ev = match team {
            Some(t) => ev.team(t),
            None => ev,
        };
        self.commit(vec![ev]).await?;
        Ok(limits)
    }

    /// Key `id`, if `by` may change it.
    fn managed(&self, by: &Principal, id: &str) -> Result<KeyRecord> {
        let k = self.key(by, id)?;
        if !by.may_manage(k.team.as_deref(), true) {
            return Err(AccessError::Forbidden(format!(
                "the role `{}` may not change key `{id}`",
                by.role.as_str()
            )));
        }
        Ok(k)
    }
}

/// Teams and keys folded from every entry of `journal` (the server at start, and `isnad journal
/// replay` offline).
pub fn replay(journal: &Journal) -> Result<AccessState> {
    let mut state = AccessState::default();
    journal.scan(0, journal.len(), &mut |e| {
        if AccessState::wants(&e.event.kind) {
            state.apply(&e.event);
        }
        true
    })?;
    Ok(state)
}

fn check_name(field: &'static str, s: &str, id: bool) -> Result<()> {
    if s.is_empty() || s.len() > MAX_NAME {
        return Err(invalid(field, format!("1 to {MAX_NAME} bytes")));
    }
    if id
        && !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(invalid(field, "letters, digits, `-`, `_` and `.` only"));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "no control characters"));
    }
    Ok(())
}
