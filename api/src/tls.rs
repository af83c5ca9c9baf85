//! TLS 1.3 termination with rustls, optional mutual TLS, and the serve loop that maps a verified
//! client certificate to an actor (its subject common name, else its SHA-256 fingerprint).

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use rustls::{
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
    RootCertStore, ServerConfig,
};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tower::ServiceExt as _;

/// `[server.tls]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: PathBuf,
    /// PEM private key of the server.
    pub key_file: PathBuf,
    /// Client certificates: `none`, `optional` or `required`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs that issue client certificates (needed unless `client_auth = "none"`).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// Whether clients present certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// Verified when presented; connections without one are accepted.
    Optional,
    /// Connections without a valid client certificate are refused during the handshake.
    Required,
}

/// The actor a verified client certificate maps to, as a request extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity(pub String);

/// Builds the rustls configuration: TLS 1.3 only, HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(t: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert_file)
        .with_context(|| format!("server.tls.cert_file: {}", t.cert_file.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("server.tls.cert_file: {}", t.cert_file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "server.tls.cert_file: {} holds no certificate",
        t.cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(&t.key_file)
        .with_context(|| format!("server.tls.key_file: {}", t.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3")?;
    let builder = match t.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        mode => {
            let ca_file = t.client_ca_file.as_ref().context(
                "server.tls.client_ca_file is required when client_auth is optional or required",
            )?;
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca_file)
                .with_context(|| format!("server.tls.client_ca_file: {}", ca_file.display()))?
            {
                roots.add(c.with_context(|| {
                    format!("server.tls.client_ca_file: {}", ca_file.display())
                })?)?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v: Arc<dyn ClientCertVerifier> = if mode == ClientAuth::Optional {
                v.allow_unauthenticated().build()?
            } else {
                v.build()?
            };
            builder.with_client_cert_verifier(v)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("server.tls: certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Subject CN of a certificate, else `sha256:<fingerprint>`.
pub fn identity_of(cert: &CertificateDer<'_>) -> String {
    let cn = x509_parser::parse_x509_certificate(cert.as_ref())
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned)
        });
    cn.unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref()))))
}

/// Accepts TLS connections until `shutdown` resolves, then lets open connections finish (up to
/// 30 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ClientIdentity(identity_of(c)));
            let svc =
                router.map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    if let Some(id) = &identity {
                        req.extensions_mut().insert(id.clone());
                    }
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    req
                });
            let conn = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc))
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 30 s; closing them");
    }
}
