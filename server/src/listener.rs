//! The accept loop every listener shares.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug_span, warn};

/// Accepts connections until `shutdown`, spawning `serve` for each one in a
/// span named after the listener (a debug span: entering an enabled span on
/// every poll of every connection is a cost the default log level skips).
/// When `accept` fails (out of file descriptors, say) it backs off
/// exponentially instead of spinning.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    kind: &'static str,
    shutdown: CancellationToken,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
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
                tokio::spawn(serve(stream, peer).instrument(debug_span!("conn", kind, %peer)));
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
