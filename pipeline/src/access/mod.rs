//! Access control: teams and API keys, as state folded from the journal.
//!
//! Every change is an event (`team.created`, `team.updated`, `key.created` v2, `key.rotated`,
//! `key.revoked`), and [`AccessState::apply`] folds them: replaying the log from seq 0 rebuilds
//! every team and key, which is what `isnad journal replay` does offline. The keys of the
//! configuration file join the same state: the server journals them at start
//! (`key.created` with `source: config`), so the log alone tells which keys existed when.
//!
//! The live server does not wait for a background follower to fold a change: [`Access`]
//! applies each change to its state right after the journal has sequenced it, before the admin
//! API answers, so a revocation holds on the very next request (no cache window), and the
//! state is always the fold of the log up to that change.
//!
//! A key is never stored: only its SHA-256. Keys in isnad's own format ([`token`]) are looked
//! up by their public id and their hash is then compared in constant time; other tokens (the
//! bootstrap admin key, `[[keys]]` hashes of keys chosen by the operator) are looked up by hash.

mod budgets;
pub mod ledger;
pub mod limits;
mod live;
mod state;
pub mod token;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::Scope;

pub use budgets::{Ask, BudgetOptions, Budgets, Exceeded, ReserveError, Reserved, Standing};
pub use limits::{LimitDefaults, Limited, Limits, RequestLimits, Window};
pub use live::{now_us, replay, Access, AccessError, ConfigKey, KeyRequest, TeamRequest};
pub use state::{AccessState, Denied, KeyRecord, Team, CONFIG_ID_PREFIX};

/// What a key may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Its own team's keys and usage (and, as they land, policy and webhooks), and inference.
    Operator,
    /// Inference, RAG and uploads.
    #[default]
    Member,
    /// The journal, usage and proofs, read-only; no inference.
    Auditor,
}

impl Role {
    /// `admin`, `operator`, `member` or `auditor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Member => "member",
            Self::Auditor => "auditor",
        }
    }

    /// The role named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "operator" => Some(Self::Operator),
            "member" => Some(Self::Member),
            "auditor" => Some(Self::Auditor),
            _ => None,
        }
    }

    /// Whether the role may call models (chat, embeddings).
    pub fn may_infer(self) -> bool {
        self != Self::Auditor
    }

    /// Whether the role may read the activity journal and its proofs.
    pub fn may_audit(self) -> bool {
        matches!(self, Self::Admin | Self::Auditor)
    }

    /// Whether a key of this role may create a key of role `other` (no one hands out more
    /// than they hold; only an admin creates admins and auditors).
    pub fn may_grant(self, other: Role) -> bool {
        match self {
            Self::Admin => true,
            Self::Operator => matches!(other, Self::Operator | Self::Member),
            Self::Member | Self::Auditor => false,
        }
    }
}

/// Who a request comes from, once its key is checked.
#[derive(Debug)]
pub struct Principal {
    /// The actor journaled for its requests: the key's id for a managed key, the `[[keys]]`
    /// name for a configured one, `admin` for the bootstrap key.
    pub name: String,
    /// The key's id (`None` for the bootstrap admin key).
    pub key_id: Option<String>,
    /// Role.
    pub role: Role,
    /// Models and residency it is held to.
    pub scope: Scope,
    /// Its team, if it has one.
    pub team: Option<String>,
    /// Its key's own rate limits.
    pub limits: Limits,
    /// Its team's token limits.
    pub team_limits: Limits,
}

impl Principal {
    /// The bootstrap admin.
    pub fn admin() -> Arc<Self> {
        Arc::new(Self {
            name: "admin".into(),
            key_id: None,
            role: Role::Admin,
            scope: Scope::default(),
            team: None,
            limits: Limits::default(),
            team_limits: Limits::default(),
        })
    }

    /// Whether this principal may manage team `team`'s keys and read its usage: an admin any
    /// team's, an operator its own; an auditor may read (`write == false`) any.
    pub fn may_manage(&self, team: Option<&str>, write: bool) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Auditor => !write,
            Role::Operator => team.is_some() && team == self.team.as_deref(),
            Role::Member => false,
        }
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(data).into()
}

/// `sha256:<hex>` of a key, as its events carry it.
pub fn key_hash_tag(hash: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(hash))
}

/// Constant-time equality of two hashes: how long it takes says nothing about where they differ.
pub fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests;
