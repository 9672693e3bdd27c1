//! TLS on the server: the control port's handshake, and the HTTPS listener.
//!
//! The control port serves TLS when the server has a certificate, and then
//! only TLS. A plain client there is not left to read TLS records as yamux:
//! it gets a plain `error` on its control stream that says to use TLS.
//!
//! The HTTPS listener routes by SNI: the handshake is refused unless the
//! client names the domain or `NAME.domain` (one label), so a certificate
//! is never shown for a host this server does not serve. After the
//! handshake the connection is HTTP as on the plain listener, with every
//! request bound to the SNI name (a Host naming another tunnel gets 421) and
//! `X-Forwarded-Proto: https`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use droid_core::protocol::{self, ControlMessage, ErrorCode, ErrorMessage};
use droid_core::session::{Session, Side};
use droid_core::transport::{self, Accepted, ServerTls};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::{ServerConfig, Shared, control, http_front, names};

/// What a plain client on a TLS control port is told.
pub(crate) const TLS_REQUIRED: &str = "this server requires TLS on its control port: connect with --tls (and --ca FILE if its certificate is not from a public CA)";

/// Serves one connection on the control port: TLS or plain as configured,
/// then the control session.
pub(crate) async fn serve_control(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    match transport::accept(stream, shared.config.tls.as_ref()).await {
        Ok(Accepted::Ready(conn)) => control::serve(shared, conn, peer, shutdown).await,
        Ok(Accepted::NeedsTls(tcp)) => {
            info!(%peer, "a client connected without TLS; told it to use TLS");
            refuse_session(tcp, tls_required()).await;
        }
        Err(e) => info!(%peer, error = %e, "control connection refused"),
    }
}

/// Refuses a client past the session caps: its hello is answered with an
/// error saying why, and the client tries again later.
pub(crate) async fn refuse_control(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    why: droid_core::conn_caps::Refusal,
) {
    info!(%peer, ?why, "refused a client session: too many sessions");
    let refusal = ErrorMessage {
        code: ErrorCode::Unavailable,
        message: why.sentence().replace("connections", "sessions"),
    };
    match transport::accept(stream, shared.config.tls.as_ref()).await {
        Ok(Accepted::Ready(conn)) => refuse_session(conn, refusal).await,
        Ok(Accepted::NeedsTls(tcp)) => refuse_session(tcp, tls_required()).await,
        Err(_) => {}
    }
}

fn tls_required() -> ErrorMessage {
    ErrorMessage {
        code: ErrorCode::BadRequest,
        message: TLS_REQUIRED.into(),
    }
}

/// Refuses a visitor past the caps on HTTPS: a 503 after the handshake.
pub(crate) async fn refuse_https(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    why: droid_core::conn_caps::Refusal,
) {
    if let Ok(tls) = acceptor.accept(stream).await {
        shared
            .metrics
            .answered(503, Some(crate::metrics::OwnAnswer::ConnectionLimit), None);
        crate::listener::refuse_http(tls, why).await;
    }
}

/// Answers a client's hello with `refusal`, and closes.
async fn refuse_session<IO>(io: IO, refusal: ErrorMessage)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut session = Session::start(io, Side::Server, 1);
    let opener = session.opener.clone();
    let _ = timeout(protocol::HANDSHAKE_TIMEOUT, async {
        let Some(control) = session.inbound.recv().await else {
            return;
        };
        let (read, mut write) = tokio::io::split(control);
        let mut reader = protocol::MessageReader::new(read, protocol::MAX_CONTROL_LINE);
        // The hello itself does not matter; wait for it so the client is
        // listening for the answer.
        let _ = reader.next().await;
        let refusal = ControlMessage::Error(refusal);
        let _ = protocol::write_message(&mut write, &refusal).await;
        let _ = write.shutdown().await;
        // Let the client read it and close its side.
        let _ = timeout(Duration::from_secs(2), reader.next()).await;
    })
    .await;
    opener.close();
}

/// Whether `host` is one this server serves: the domain, or one valid name
/// under it.
fn serves(host: &str, domain: &str) -> bool {
    host == domain
        || host
            .strip_suffix(domain)
            .and_then(|h| h.strip_suffix('.'))
            .is_some_and(|name| names::validate(name).is_ok())
}

/// Shows the certificate only to clients that name a host this server
/// serves; the others' handshakes fail (rustls sends an alert).
#[derive(Debug)]
struct SniResolver {
    domain: String,
    key: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if serves(&sni, &self.domain) {
            Some(self.key.clone())
        } else {
            debug!(%sni, "TLS handshake for a host this server does not serve");
            None
        }
    }
}

/// The acceptor of the HTTPS listener (HTTP/2 or HTTP/1.1 by ALPN), or `None`, with
/// an error logged, when the server has no certificate.
pub(crate) fn https_acceptor(config: &ServerConfig) -> Option<TlsAcceptor> {
    let Some(tls) = config.tls.as_ref() else {
        error!("HTTPS needs a certificate: set ServerConfig::tls (--tls-cert and --tls-key)");
        return None;
    };
    let resolver = Arc::new(SniResolver {
        domain: config.domain.clone(),
        key: tls.certified_key(),
    });
    match ServerTls::config_for(resolver, vec![b"h2".to_vec(), b"http/1.1".to_vec()]) {
        Ok(config) => Some(TlsAcceptor::from(config)),
        Err(e) => {
            error!(error = %e, "cannot serve HTTPS");
            None
        }
    }
}

/// Serves one HTTPS visitor: the handshake (within the header read
/// timeout, so a silent client costs nothing for long), then HTTP.
pub(crate) async fn serve_https(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let handshake = timeout(shared.config.header_read_timeout, acceptor.accept(stream));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "no TLS handshake within the header read timeout");
            return;
        }
    };
    // The resolver let the handshake through only with a name it serves.
    let Some(sni) = tls
        .get_ref()
        .1
        .server_name()
        .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
    else {
        return;
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    http_front::serve_io(shared, tls, peer, sni, h2).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_must_be_the_domain_or_one_name_under_it() {
        assert!(serves("t.example", "t.example"));
        assert!(serves("api.t.example", "t.example"));
        assert!(!serves("a.b.t.example", "t.example"));
        assert!(!serves("evil-t.example", "t.example"));
        assert!(!serves("other.example", "t.example"));
        assert!(!serves(".t.example", "t.example"));
    }
}
