//! Forwards one tunnel stream to the local app.
//!
//! The server opens a stream per visitor connection, writes a header line
//! naming the tunnel, then the visitor's HTTP/1.1 exactly as the app should
//! get it: the server has already routed it, checked it and set its
//! headers. So the client parses nothing: it connects to the tunnel's target
//! and copies bytes both ways until both sides are done. Only when nothing
//! answers at the target does it speak HTTP, to say so.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use droid_core::protocol::{self, StreamHeader};
use droid_core::proxy;
use droid_core::session::Stream;
use droid_core::watch::{Watch, Watched};
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::TcpStream;
use tracing::debug;

use crate::app::{AppProtocol, Apps};
use crate::inspect::{Inspector, StreamTap};
use crate::probe::Probes;
use crate::served::{self, Served};
use crate::{ClientEvent, Events, TunnelSpec};

/// The buffer for the app's answers starts this small: most answers fit,
/// and only the bytes an answer brings are touched.
const FROM_APP_FIRST: usize = 4 * 1024;

/// ...and doubles while reads fill it, up to this: a big download goes into
/// the tunnel in large frames.
const FROM_APP_MAX: usize = 32 * 1024;

/// How long the app may keep sending once the server has closed its side
/// (the visitor is gone): then both are closed, so an app that never closes
/// its half of a connection does not hold a stream forever.
pub(crate) const LINGER: Duration = Duration::from_secs(10);

/// Serves one stream the server opened.
pub(crate) async fn serve_stream(
    mut stream: Stream,
    tunnels: Arc<Vec<(String, TunnelSpec)>>,
    events: Events,
    inspector: Option<Inspector>,
    probes: Probes,
    apps: Arc<Apps>,
) {
    if let Err(e) = stream.acknowledge().await {
        debug!(error = %e, "the stream closed before it was acknowledged");
        return;
    }
    // Split once, here: the buffered reader that takes the header line then
    // carries the visitor's bytes to the app, with no second buffer.
    let (read, mut to_tunnel) = tokio::io::split(stream);
    let mut from_tunnel = BufReader::new(read);
    let header = tokio::time::timeout(
        protocol::HANDSHAKE_TIMEOUT,
        protocol::read_message::<_, StreamHeader>(&mut from_tunnel, protocol::MAX_HEADER_LINE),
    )
    .await;
    let header = match header {
        Ok(Ok(header)) => header,
        Ok(Err(e)) => {
            debug!(error = %e, "bad stream header");
            return;
        }
        Err(_) => {
            debug!("no stream header in time");
            return;
        }
    };
    let Some((name, spec)) = header
        .tunnel()
        .filter(|_| !matches!(header, StreamHeader::Call { .. }))
        .and_then(|name| tunnels.iter().find(|(n, _)| n == name))
    else {
        debug!(?header, "stream for an unknown tunnel or kind; closing it");
        let _ = to_tunnel.shutdown().await;
        return;
    };
    let target = &spec.target;
    let h2 = matches!(header, StreamHeader::H2 { .. });
    let by_http = match header {
        StreamHeader::Http { .. } | StreamHeader::Delivery { .. } => {
            spec.app_protocol == AppProtocol::H2c || target.tls
        }
        _ => h2,
    };
    if by_http {
        // Served as HTTP here: the client's own HTTP client sends each
        // request to the app.
        let remote = match &header {
            StreamHeader::Http { remote, .. } | StreamHeader::H2 { remote, .. } => remote.clone(),
            _ => String::new(),
        };
        let served = Served {
            tunnel: name.clone(),
            remote,
            capture: h2,
            app: apps.get(name, target, spec.app_protocol),
            events,
            probes,
            inspector: inspector.clone(),
        };
        let stream = tokio::io::join(from_tunnel, to_tunnel);
        match inspector
            .as_ref()
            .filter(|_| !h2)
            .and_then(|i| i.tap(&header))
        {
            Some(tap) => served::serve(Watched::new(stream, Shown(tap)), h2, served).await,
            None => served::serve(stream, h2, served).await,
        }
        return;
    }
    let app = match TcpStream::connect((target.host.as_str(), target.port)).await {
        Ok(app) => app,
        Err(e) => {
            let reason = format!("the tunnel is up but nothing answers at {target}");
            // Printed by whoever reads the events (`droid http` does, once).
            debug!(tunnel = %name, error = %e, "{reason}");
            if let Some(inspector) = &inspector {
                inspector.target_unreachable();
            }
            probes.target_down(name, target);
            events.send(ClientEvent::TargetDown {
                tunnel: name.clone(),
                target: target.to_string(),
                error: e.to_string(),
            });
            if matches!(header, StreamHeader::Tcp { .. }) {
                // The visitor's connection ends: nothing can be said in TCP.
                return;
            }
            let stream = tokio::io::join(from_tunnel, to_tunnel);
            match inspector.as_ref().and_then(|i| i.tap(&header)) {
                // The 502 is an exchange like any other: the inspector shows it.
                Some(tap) => answer_unreachable(Watched::new(stream, Shown(tap)), reason).await,
                None => answer_unreachable(stream, reason).await,
            }
            return;
        }
    };
    let _ = app.set_nodelay(true);
    let tap = inspector.as_ref().and_then(|i| i.tap(&header));
    if matches!(header, StreamHeader::Tcp { .. }) {
        // Raw bytes: no HTTP to follow, each side's FIN passed on.
        let mut stream = tokio::io::join(from_tunnel, to_tunnel);
        let mut app = app;
        let copied = tokio::io::copy_bidirectional_with_sizes(
            &mut stream,
            &mut app,
            FROM_APP_MAX,
            FROM_APP_MAX,
        );
        match copied.await {
            Ok((to_app, from_app)) => {
                debug!(tunnel = %name, to_app, from_app, "TCP stream done");
                if let Some(tap) = &tap {
                    tap.counted(to_app, from_app);
                }
            }
            Err(e) => debug!(tunnel = %name, error = %e, "TCP stream ended with an error"),
        }
        return;
    }
    match pipe(from_tunnel, to_tunnel, app, tap.as_ref()).await {
        Ok((to_app, from_app)) => debug!(tunnel = %name, to_app, from_app, "stream done"),
        Err(e) => debug!(tunnel = %name, error = %e, "stream ended with an error"),
    }
}

/// Copies bytes between the tunnel stream and the app until both directions
/// end (or the app lingers past [`LINGER`] after the server left), showing
/// each chunk to the inspector's tap once it is forwarded. Returns the
/// bytes copied each way.
async fn pipe<R, W>(
    mut from_tunnel: R,
    mut to_tunnel: W,
    mut app: TcpStream,
    tap: Option<&StreamTap>,
) -> std::io::Result<(u64, u64)>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut from_app, mut to_app) = app.split();
    let up = async {
        let n = copy_request(&mut from_tunnel, &mut to_app, tap).await?;
        to_app.shutdown().await?;
        Ok::<u64, std::io::Error>(n)
    };
    let down = async {
        let n = copy_answer(&mut from_app, &mut to_tunnel, tap).await?;
        to_tunnel.shutdown().await?;
        Ok::<u64, std::io::Error>(n)
    };
    tokio::pin!(up, down);
    tokio::select! {
        up_done = &mut up => {
            let to_app = up_done?;
            match tokio::time::timeout(LINGER, down).await {
                Ok(from_app) => Ok((to_app, from_app?)),
                Err(_) => {
                    debug!("the app kept its side open after the visitor left; closing it");
                    Ok((to_app, 0))
                }
            }
        }
        down_done = &mut down => {
            let from_app = down_done?;
            Ok((up.await?, from_app))
        }
    }
}

/// Copies the visitor's bytes to the app until the server closes its side,
/// straight from the stream's buffer. Returns the bytes copied.
async fn copy_request<R, W>(
    from_tunnel: &mut R,
    to_app: &mut W,
    tap: Option<&StreamTap>,
) -> std::io::Result<u64>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(tap) = tap else {
        return tokio::io::copy_buf(from_tunnel, to_app).await;
    };
    let mut copied = 0;
    loop {
        let chunk = from_tunnel.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(copied);
        }
        to_app.write_all(chunk).await?;
        tap.asked(chunk);
        let n = chunk.len();
        from_tunnel.consume(n);
        copied += n as u64;
    }
}

/// Copies the app's answer into the tunnel until the app closes its side,
/// through a buffer that starts at [`FROM_APP_FIRST`] and grows while reads
/// fill it. Nothing in it is zeroed first. Returns the bytes copied.
async fn copy_answer<R, W>(
    from_app: &mut R,
    to_tunnel: &mut W,
    tap: Option<&StreamTap>,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if let Some(tap) = tap {
        return copy_answer_shown(from_app, to_tunnel, tap).await;
    }
    let mut buf = Vec::with_capacity(FROM_APP_FIRST);
    let mut copied = 0;
    loop {
        buf.clear();
        if from_app.read_buf(&mut buf).await? == 0 {
            return Ok(copied);
        }
        to_tunnel.write_all(&buf).await?;
        copied += buf.len() as u64;
        if buf.len() == buf.capacity() && buf.capacity() < FROM_APP_MAX {
            buf = Vec::with_capacity(buf.capacity() * 2);
        }
    }
}

/// [`copy_answer`] for an inspected stream: each read lands in a buffer the
/// inspector may keep a share of, so what it keeps is never copied.
async fn copy_answer_shown<R, W>(
    from_app: &mut R,
    to_tunnel: &mut W,
    tap: &StreamTap,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut size = FROM_APP_FIRST;
    let mut buf = BytesMut::with_capacity(size);
    let mut copied = 0;
    loop {
        // Room for a whole read: the rest of this buffer, or a new one
        // (the old one is reused when the inspector kept no share of it).
        if buf.capacity() < size / 2 {
            buf.reserve(size);
        }
        let room = buf.capacity();
        if from_app.read_buf(&mut buf).await? == 0 {
            return Ok(copied);
        }
        let chunk = buf.split().freeze();
        to_tunnel.write_all(&chunk).await?;
        tap.answered(&chunk);
        copied += chunk.len() as u64;
        if chunk.len() == room && size < FROM_APP_MAX {
            size *= 2;
        }
    }
}

/// Shows the inspector the bytes of an exchange the client answers itself.
struct Shown(StreamTap);

impl Watch for Shown {
    fn read(&mut self, bytes: &[u8]) {
        self.0.asked(bytes);
    }

    fn written(&mut self, bytes: &[u8]) {
        self.0.answered(&Bytes::copy_from_slice(bytes));
    }
}

/// Answers the requests on a stream whose target does not answer with a
/// 502 saying so, then closes it.
async fn answer_unreachable<S>(stream: S, reason: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let html = proxy::wants_html(request.headers());
        let page = proxy::error_page(StatusCode::BAD_GATEWAY, &reason, html);
        async move { proxy::infallible(page) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = tokio::time::timeout(protocol::HANDSHAKE_TIMEOUT, served).await {
        debug!(error = %e, "no request came on the stream of an unreachable target");
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A tunnel side that keeps what it is given, and the size of each write.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        writes: Vec<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.bytes.extend_from_slice(buf);
            self.writes.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_answer_crosses_whole_while_the_buffer_grows() {
        // Sizes around each step of the buffer (4, 8, 16, 32 KiB) and past it.
        for len in [0, 1, 4095, 4096, 4097, 40_000, 300_001] {
            let answer: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            // The pipe holds more than the largest buffer, so reads can fill it.
            let (mut app, mut from_app) = tokio::io::duplex(256 * 1024);
            let sent = answer.clone();
            let writer = tokio::spawn(async move {
                app.write_all(&sent).await.unwrap();
                app.shutdown().await.unwrap();
            });
            let mut tunnel = Recorder::default();
            let copied = copy_answer(&mut from_app, &mut tunnel, None).await.unwrap();
            writer.await.unwrap();
            assert_eq!(copied, len as u64);
            assert!(tunnel.bytes == answer, "{len} bytes arrived changed");
            assert!(tunnel.writes.iter().all(|&n| n <= FROM_APP_MAX));
            if len > 100_000 {
                // A download reaches the largest buffer.
                assert!(tunnel.writes.contains(&FROM_APP_MAX), "{:?}", tunnel.writes);
            }
        }
    }
}
