//! Optional TLS termination in the binary (rustls on ring), for small deployments without a proxy in front:
//! `--tls-cert` and `--tls-key` name PEM files (a certificate chain, and its private key in PKCS#8, PKCS#1 or SEC1
//! form). HTTP/1.1 over TLS; every connection gets its peer address like plain connections (`ConnectInfo`), so
//! capture, fingerprints and rate limits work the same. Larger deployments terminate TLS at their load balancer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tower::ServiceExt;

/// A TLS acceptor from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a PEM private key from {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context("the certificate and the private key do not go together")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TLS connections and serves `app` on them until `stop` turns true (connections in flight finish on their
/// own).
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "tls: accept failed");
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "tls: handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo::<SocketAddr>(peer));
                    app.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .with_upgrades()
                .await;
        });
    }
}

/// Strict security headers on every response that does not set its own — no MIME sniffing, no framing
/// (`frame-ancestors 'none'` and `X-Frame-Options`), no referrer, a CSP that lets a JSON answer load nothing, and
/// HSTS when the binary terminates TLS itself.
pub fn security_headers(state: &crate::state::AppState, h: &mut axum::http::HeaderMap) {
    use axum::http::{header, HeaderValue};
    let mut set = |name: header::HeaderName, value: &'static str| {
        if !h.contains_key(&name) {
            h.insert(name, HeaderValue::from_static(value));
        }
    };
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::REFERRER_POLICY, "no-referrer");
    set(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    );
    if state.config.tls.is_some() {
        set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
}
