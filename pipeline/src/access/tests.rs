#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::IpAddr,
    sync::atomic::{AtomicI64, Ordering},
};

use isnad_journal::{Journal, Options};

use super::*;

static NOW: AtomicI64 = AtomicI64::new(1_800_000_000_000_000);

fn clock() -> i64 {
    NOW.load(Ordering::SeqCst)
}

fn open(dir: &std::path::Path) -> (Journal, Access) {
    let journal = Journal::open_dir(dir, Options::default()).unwrap();
    let access = Access::open(journal.clone()).unwrap().with_clock(clock);
    (journal, access)
}

fn any_model(_: &str) -> bool {
    true
}

fn key(label: &str, team: Option<&str>, role: Option<Role>) -> KeyRequest {
    KeyRequest {
        label: label.into(),
        team: team.map(Into::into),
        role,
        ..KeyRequest::default()
    }
}

fn operator_of(team: &str) -> Principal {
    Principal {
        name: "op".into(),
        key_id: Some("opkey".into()),
        role: Role::Operator,
        scope: Default::default(),
        team: Some(team.into()),
        limits: Default::default(),
        team_limits: Default::default(),
    }
}

#[tokio::test]
async fn keys_authenticate_until_revoked_and_a_replay_rebuilds_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, access) = open(dir.path());
    let admin = Principal::admin();
    access
        .create_team(
            &admin,
            TeamRequest {
                id: Some("finance".into()),
                name: Some("Finance".into()),
            },
        )
        .await
        .unwrap();
    let (rec, token) = access
        .create_key(&admin, key("ledger-bot", Some("finance"), None), &any_model)
        .await
        .unwrap();
    assert!(token.starts_with(token::PREFIX) && token.contains(&rec.id));
    let p = access.authenticate(&token, None).unwrap();
    assert_eq!(
        (p.role, p.team.as_deref(), p.name.as_str()),
        (Role::Member, Some("finance"), rec.id.as_str())
    );

    // A checksum-valid key with another secret is unknown, and so is a typo.
    let forged = token::issue().token.replace(
        &token::id_of(&token::issue().token).unwrap().to_owned(),
        &rec.id,
    );
    assert_eq!(
        access.authenticate(&forged, None).unwrap_err(),
        Denied::Unknown
    );
    assert_eq!(
        access
            .authenticate(&token[..token.len() - 1], None)
            .unwrap_err(),
        Denied::Unknown
    );

    access
        .revoke_key(&admin, &rec.id, Some("leaked".into()))
        .await
        .unwrap();
    assert_eq!(
        access.authenticate(&token, None).unwrap_err(),
        Denied::Revoked
    );
    assert!(matches!(
        access.revoke_key(&admin, &rec.id, None).await,
        Err(AccessError::Conflict(_))
    ));

    // The log alone rebuilds it, here and after a reopen.
    let live = access.read(Clone::clone);
    assert_eq!(replay(&journal).unwrap(), live);
    journal.shutdown().await.unwrap();
    drop((journal, access));
    let (_journal, again) = open(dir.path());
    assert_eq!(again.read(Clone::clone), live);
    assert_eq!(
        again.authenticate(&token, None).unwrap_err(),
        Denied::Revoked
    );
    let k = again.read(|s| s.key(&rec.id).cloned()).unwrap();
    assert_eq!(k.revoked.as_ref().map(|r| r.2.as_str()), Some("leaked"));
}

#[tokio::test]
async fn a_rotated_key_works_through_its_grace_period_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (_journal, access) = open(dir.path());
    let admin = Principal::admin();
    access
        .create_team(
            &admin,
            TeamRequest {
                id: Some("ops".into()),
                name: None,
            },
        )
        .await
        .unwrap();
    let (old, old_token) = access
        .create_key(&admin, key("svc", Some("ops"), None), &any_model)
        .await
        .unwrap();
    let (new, new_token) = access.rotate_key(&admin, &old.id, 60).await.unwrap();
    assert_ne!(old.id, new.id);
    assert_eq!(
        (new.team.as_deref(), new.role, new.source.as_str()),
        (Some("ops"), Role::Member, "rotation")
    );
    assert!(
        access.authenticate(&old_token, None).is_ok(),
        "within grace"
    );
    assert!(access.authenticate(&new_token, None).is_ok());
    NOW.fetch_add(61_000_000, Ordering::SeqCst);
    assert_eq!(
        access.authenticate(&old_token, None).unwrap_err(),
        Denied::Rotated
    );
    assert!(access.authenticate(&new_token, None).is_ok());
    assert!(matches!(
        access.rotate_key(&admin, &old.id, 60).await,
        Err(AccessError::Conflict(_))
    ));
}

#[tokio::test]
async fn expiry_and_the_address_allowlist_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (_journal, access) = open(dir.path());
    let admin = Principal::admin();
    access
        .create_team(
            &admin,
            TeamRequest {
                id: Some("t".into()),
                name: None,
            },
        )
        .await
        .unwrap();
    let mut req = key("short", Some("t"), None);
    req.expires_in_s = Some(10);
    req.cidrs = vec!["10.1.0.0/16".into(), "2001:db8::1".into()];
    let (_, token) = access.create_key(&admin, req, &any_model).await.unwrap();
    let inside: IpAddr = "10.1.2.3".parse().unwrap();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    let outside: IpAddr = "10.2.0.1".parse().unwrap();
    assert!(access.authenticate(&token, Some(inside)).is_ok());
    assert!(access.authenticate(&token, Some(v6)).is_ok());
    assert_eq!(
        access.authenticate(&token, Some(outside)).unwrap_err(),
        Denied::Address
    );
    assert_eq!(
        access.authenticate(&token, None).unwrap_err(),
        Denied::Address
    );
    NOW.fetch_add(11_000_000, Ordering::SeqCst);
    assert_eq!(
        access.authenticate(&token, Some(inside)).unwrap_err(),
        Denied::Expired
    );

    let mut bad = key("x", Some("t"), None);
    bad.cidrs = vec!["10.0.0.0/33".into()];
    assert!(matches!(
        access.create_key(&admin, bad, &any_model).await,
        Err(AccessError::Invalid { field: "cidrs", .. })
    ));
}

#[tokio::test]
async fn an_operator_manages_its_own_team_only_and_grants_no_more_than_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (_journal, access) = open(dir.path());
    let admin = Principal::admin();
    for t in ["a", "b"] {
        access
            .create_team(
                &admin,
                TeamRequest {
                    id: Some(t.into()),
                    name: None,
                },
            )
            .await
            .unwrap();
    }
    let op = operator_of("a");
    let (k, _) = access
        .create_key(&op, key("mine", None, None), &any_model)
        .await
        .unwrap();
    assert_eq!(
        k.team.as_deref(),
        Some("a"),
        "an operator's key defaults to its team"
    );
    assert!(matches!(
        access
            .create_key(&op, key("theirs", Some("b"), None), &any_model)
            .await,
        Err(AccessError::Forbidden(_))
    ));
    assert!(matches!(
        access
            .create_key(&op, key("boss", None, Some(Role::Admin)), &any_model)
            .await,
        Err(AccessError::Forbidden(_))
    ));
    assert!(matches!(
        access
            .create_team(
                &op,
                TeamRequest {
                    id: Some("c".into()),
                    name: None
                }
            )
            .await,
        Err(AccessError::Forbidden(_))
    ));
    let (kb, _) = access
        .create_key(&admin, key("b1", Some("b"), None), &any_model)
        .await
        .unwrap();
    assert!(
        matches!(
            access.revoke_key(&op, &kb.id, None).await,
            Err(AccessError::NotFound(_))
        ),
        "another team's key is not even visible"
    );
    assert_eq!(access.keys(&op, None).len(), 1);
    assert_eq!(access.teams(&op).len(), 1);
    assert!(matches!(
        access
            .create_key(&admin, key("x", Some("nope"), None), &any_model)
            .await,
        Err(AccessError::Invalid { field: "team", .. })
    ));
}

#[tokio::test]
async fn config_keys_are_journaled_once_and_removed_ones_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, access) = open(dir.path());
    let ck = |label: &str, secret: &str| ConfigKey {
        label: label.into(),
        sha256: sha256(secret.as_bytes()),
        role: Role::Member,
        models: None,
        local_only: false,
        team: Some("finance".into()),
    };
    assert_eq!(
        access
            .sync_config(&[ck("a", "ka"), ck("b", "kb")])
            .await
            .unwrap(),
        3,
        "the team and two keys"
    );
    assert_eq!(
        access
            .sync_config(&[ck("a", "ka"), ck("b", "kb")])
            .await
            .unwrap(),
        0,
        "nothing changed"
    );
    let p = access.authenticate("ka", None).unwrap();
    assert_eq!((p.name.as_str(), p.team.as_deref()), ("a", Some("finance")));
    assert_eq!(access.sync_config(&[ck("a", "ka")]).await.unwrap(), 1);
    assert_eq!(
        access.authenticate("kb", None).unwrap_err(),
        Denied::Revoked
    );
    let mut changed = ck("a", "ka");
    changed.role = Role::Auditor;
    assert_eq!(access.sync_config(&[changed]).await.unwrap(), 1);
    assert_eq!(access.authenticate("ka", None).unwrap().role, Role::Auditor);
    assert_eq!(replay(&journal).unwrap(), access.read(Clone::clone));
}
