//! How the client reaches its app's port: TCP, or TLS for an `https://`
//! target, whose ALPN says whether the app speaks HTTP/2 or HTTP/1.1;
//! within a time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use droid_core::transport::Connection;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use crate::target::Target;

/// How long reaching the app, its TLS handshake included, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the app: TCP, or TLS over it.
pub(crate) type AppStream = Connection;

/// The TLS an `https://` target is spoken to with: ALPN offering both
/// versions (for HTTP/2 connections), or HTTP/1.1 alone (for the pool of
/// HTTP/1.1 connections, and upgrades).
#[derive(Clone)]
pub(crate) struct AppTls {
    pub(crate) any: TlsConnector,
    pub(crate) http1: TlsConnector,
}

impl AppTls {
    pub(crate) fn new() -> Result<AppTls, droid_core::transport::TlsError> {
        use droid_core::transport::app_connector;
        Ok(AppTls {
            any: app_connector(&[b"h2", b"http/1.1"])?,
            http1: app_connector(&[b"http/1.1"])?,
        })
    }
}

/// The app took the connection but did not complete a TLS handshake.
#[derive(Debug)]
pub(crate) struct TlsFailed(String);

impl std::fmt::Display for TlsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailed {}

/// Whether the app chose HTTP/2 by ALPN.
pub(crate) fn chose_h2(stream: &AppStream) -> bool {
    stream.alpn() == Some(b"h2")
}

/// Why a TLS handshake with the app failed, if that is what `error` says.
pub(crate) fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(failed) = e.downcast_ref::<TlsFailed>() {
            return Some(failed.0.clone());
        }
        if let Some(failed) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<TlsFailed>())
        {
            return Some(failed.0.clone());
        }
        cause = e.source();
    }
    None
}

/// Connects to the app at `target`, in TLS (with `tls`) when it asks for
/// it, within [`CONNECT_TIMEOUT`].
pub(crate) async fn dial(target: &Target, tls: Option<&TlsConnector>) -> io::Result<AppStream> {
    let connecting = async {
        let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let _ = stream.set_nodelay(true);
        if !target.tls {
            return Ok(Connection::Plain(stream));
        }
        let Some(tls) = tls else {
            return Err(io::Error::other(TlsFailed("no TLS to speak".into())));
        };
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| io::Error::other(TlsFailed(e.to_string())))?;
        let stream = tls
            .connect(name, stream)
            .await
            .map_err(|e| io::Error::other(TlsFailed(e.to_string())))?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        debug!(%target, h2, "TLS to the app");
        Ok(Connection::ClientTls(Box::new(stream)))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
            )
        })?
}

/// Dials the tunnel's target, whatever the URI says: the URI carries the
/// visitor's authority for the app to read, not where the app is.
#[derive(Clone)]
pub(crate) struct Dialer {
    pub(crate) target: Target,
    pub(crate) tls: Option<TlsConnector>,
}

impl tower_service::Service<Uri> for Dialer {
    type Response = TokioIo<AppStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move {
            let stream = dial(&dialer.target, dialer.tls.as_ref()).await?;
            debug!(target = %dialer.target, "a new connection to the app");
            Ok(TokioIo::new(stream))
        })
    }
}
