//! The accept loop every listener shares.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use droid_core::conn_caps::{Admission, ConnCaps, Refusal};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, warn};

/// How long a refused connection may take to be told so.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown`, spawning `serve` for each one in a
/// span named after the listener (a debug span: entering an enabled span on
/// every poll of every connection is a cost the default log level skips).
/// A connection past `caps` is handed to `refuse` instead, which has a few
/// seconds to say why in its protocol; past the refusals the caps allow at
/// once, it is closed. When `accept` fails (out of file descriptors, say)
/// it backs off exponentially instead of spinning.
pub(crate) async fn accept_loop<F, Fut, R, RFut>(
    listener: TcpListener,
    kind: &'static str,
    caps: Arc<ConnCaps>,
    shutdown: CancellationToken,
    serve: F,
    refuse: R,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream, SocketAddr, Refusal) -> RFut,
    RFut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let span = debug_span!("conn", kind, %peer);
                match caps.admit(peer.ip()) {
                    Admission::Admitted(slot) => {
                        let serving = serve(stream, peer);
                        tokio::spawn(
                            async move {
                                serving.await;
                                drop(slot);
                            }
                            .instrument(span),
                        );
                    }
                    Admission::Refuse(why, slot) => {
                        debug!(parent: &span, ?why, "connection refused");
                        let refusing = refuse(stream, peer, why);
                        tokio::spawn(
                            async move {
                                let _ = tokio::time::timeout(REFUSE_TIMEOUT, refusing).await;
                                drop(slot);
                            }
                            .instrument(span),
                        );
                    }
                    Admission::Close(why) => {
                        debug!(parent: &span, ?why, "connection closed: too many refusals at once");
                    }
                }
            }
            Err(e) => {
                warn!(kind, error = %e, ?backoff, "accept failed");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// A refusal for a plain-HTTP visitor: a 503 with the reason, and close.
pub(crate) async fn refuse_http<IO>(mut io: IO, why: Refusal)
where
    IO: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let body = format!("{}\n", why.sentence());
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nretry-after: 10\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = io.write_all(answer.as_bytes()).await;
    let _ = io.shutdown().await;
}
