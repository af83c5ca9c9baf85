//! TLS 1.3 and mutual TLS with certificates made in the test: no client certificate is refused
//! when required, a valid one maps to its actor in the journal, TLS 1.2 is refused, and plain HTTP
//! on a non-loopback address is refused at startup.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{path::Path, process::Command};

use isnad_tests::{isnad, MockUpstream, Server};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const TOKEN: &str = "tls-token";

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn make_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "isnad test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut sp =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    sp.distinguished_name
        .push(DnType::CommonName, "isnad gateway");
    let server_cert = sp.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name.push(DnType::CommonName, "auditor-7");
    let client_cert = cp.signed_by(&client_key, &issuer).unwrap();

    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", server_cert.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client_cert.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
    }
}

fn config(pki: &Pki, mode: &str, mock: &str) -> String {
    format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_auth = \"{mode}\"\nclient_ca_file = \"{}\"\n\n\
         [providers.mock]\nbase_url = \"{mock}/v1\"\n\n[[models]]\nid = \"small\"\nprovider = \"mock\"\nupstream_model = \"mock-small\"\nresidency = \"local\"\n",
        pki.server_cert, pki.server_key, pki.ca
    )
}

/// curl over TLS; returns (curl exit code, body).
fn tls_curl(pki: &Pki, url: &str, with_cert: bool, extra: &[&str]) -> (i32, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--cacert",
        &pki.ca,
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
    ]);
    if with_cert {
        cmd.args(["--cert", &pki.client_cert, "--key", &pki.client_key]);
    }
    cmd.args(extra).arg(url);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

const CHAT: &str = r#"{"model":"small","messages":[{"role":"user","content":"hello over tls"}]}"#;

#[test]
fn mtls_required_refuses_anonymous_clients_and_maps_certificates_to_actors() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mock = MockUpstream::start(&[]);
    let cfg = dir.path().join("isnad.toml");
    std::fs::write(&cfg, config(&pki, "required", &mock.base)).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        TOKEN,
        &["--config", cfg.to_str().unwrap()],
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let base = server.base.replace("127.0.0.1", "localhost");
    let chat = format!("{base}/v1/chat/completions");

    let (code, _) = tls_curl(&pki, &format!("{base}/healthz"), false, &[]);
    assert_ne!(code, 0, "a client without a certificate must be refused");

    let (code, body) = tls_curl(&pki, &chat, true, &["-d", CHAT]);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("hello over tls"), "{body}");

    let (code, _) = tls_curl(
        &pki,
        &format!("{base}/healthz"),
        true,
        &["--tls-max", "1.2"],
    );
    assert_ne!(code, 0, "TLS 1.2 must be refused");

    let (code, logs) = tls_curl(
        &pki,
        &format!("{base}/v1/activity/logs?kind=request.received"),
        true,
        &[],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&logs).unwrap();
    assert_eq!(v["data"][0]["actor"], "cert:auditor-7", "{v}");
    assert!(server.stop());
}

#[test]
fn mtls_optional_accepts_both() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mock = MockUpstream::start(&[]);
    let cfg = dir.path().join("isnad.toml");
    std::fs::write(&cfg, config(&pki, "optional", &mock.base)).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        TOKEN,
        &["--config", cfg.to_str().unwrap()],
    );
    let base = server.base.replace("127.0.0.1", "localhost");
    let chat = format!("{base}/v1/chat/completions");
    assert_eq!(tls_curl(&pki, &chat, false, &["-d", CHAT]).0, 0);
    assert_eq!(tls_curl(&pki, &chat, true, &["-d", CHAT]).0, 0);
    let (_, logs) = tls_curl(
        &pki,
        &format!("{base}/v1/activity/logs?kind=request.received"),
        false,
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&logs).unwrap();
    let actors: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["admin", "cert:auditor-7"]);
    assert!(server.stop());
}

#[test]
fn plain_http_on_a_public_address_needs_explicit_consent() {
    let dir = tempfile::tempdir().unwrap();
    let out = isnad(&[
        "serve",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing plain HTTP"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
