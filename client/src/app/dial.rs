//! How the client reaches its app's port: TCP, or TLS for an `https://`
//! target, whose ALPN says whether the app speaks HTTP/2 or HTTP/1.1.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::debug;

use crate::target::Target;

/// A connection to the app.
pub(crate) enum AppStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AppStream {
    /// Whether the app chose HTTP/2 by ALPN.
    pub(crate) fn h2(&self) -> bool {
        match self {
            AppStream::Plain(_) => false,
            AppStream::Tls(tls) => tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        }
    }
}

/// Connects to the app at `target`, in TLS when it asks for it.
pub(crate) async fn dial(target: &Target, tls: Option<&TlsConnector>) -> io::Result<AppStream> {
    let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls.filter(|_| target.tls) else {
        return Ok(AppStream::Plain(stream));
    };
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let stream = tls.connect(name, stream).await?;
    debug!(%target, h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2"), "TLS to the app");
    Ok(AppStream::Tls(Box::new(stream)))
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

impl Connection for AppStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for AppStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AppStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AppStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            AppStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AppStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppStream::Plain(s) => Pin::new(s).poll_flush(cx),
            AppStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            AppStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AppStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
