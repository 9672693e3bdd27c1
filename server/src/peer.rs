//! The link between the nodes of a cluster.
//!
//! A visitor's request for a tunnel another node holds goes to that node's
//! peer port over a connection of its own, opened for that visitor's
//! connection and kept for its next requests. An adapter's delivery to
//! such a tunnel goes there too, on connections kept for deliveries. A
//! connection is TLS 1.3 with the certificate every node derives from the
//! cluster secret, shown and checked by both sides (`crate::peer_tls`);
//! inside it, one line, then plain HTTP/1.1:
//!
//! ```text
//! DROID-PEER/2 FROM_ADDR http|https|deliver|tcp:PORT
//! ```
//!
//! - `http`, `https`: FROM_ADDR is the visitor's address, and the HTTP is
//!   the visitor's, as it sent it (upgrades, streaming bodies and all). The
//!   node serves it as its own HTTP front would serve the visitor (the same
//!   checks of the tunnel's access rules, against the visitor's address),
//!   except that a request for a tunnel it does not hold is answered there,
//!   never forwarded again.
//! - `deliver`: FROM_ADDR is the sending node's, and each request is an
//!   adapter's POST for the tunnel and owner its `Droid-Node-Tunnel` and
//!   `Droid-Node-Owner` headers name (`crate::deliveries`).
//! - `tcp:PORT`: FROM_ADDR is the visitor's address, and the bytes that
//!   follow are its connection to the TCP tunnel on PORT, each way, until
//!   each side's end (`crate::tcp_mirror`). A node that does not hold the
//!   tunnel closes the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::info;

use crate::Shared;
use crate::cluster::Cluster;

/// The first word of the line.
const PREFACE: &str = "DROID-PEER/2";

/// How long the handshake and the line may take, and how long the line
/// may be.
const LINE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_LINE: u64 = 1024;

/// What a connection between nodes carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A visitor's HTTP, which came over plain HTTP.
    Http,
    /// A visitor's HTTP, which came over HTTPS.
    Https,
    /// Adapters' deliveries.
    Deliver,
    /// A visitor's connection to the TCP tunnel on this port.
    Tcp(u16),
}

impl Mode {
    fn word(self) -> String {
        match self {
            Mode::Http => "http".into(),
            Mode::Https => "https".into(),
            Mode::Deliver => "deliver".into(),
            Mode::Tcp(port) => format!("tcp:{port}"),
        }
    }
}

/// Opens a connection to the node at `addr` for `mode`, from `from` (the
/// visitor; this node's own address when `None`), within `timeout`: TLS
/// and the line done, ready for HTTP.
pub(crate) async fn open(
    cluster: &Cluster,
    addr: &str,
    from: Option<SocketAddr>,
    mode: Mode,
    timeout: Duration,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let opening = async {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let from = match from {
            Some(from) => from,
            None => stream.local_addr()?,
        };
        let mut stream = cluster.peer_tls().connect(stream).await?;
        let line = format!("{PREFACE} {from} {}\n", mode.word());
        stream.write_all(line.as_bytes()).await?;
        Ok(stream)
    };
    tokio::time::timeout(timeout, opening).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the node did not answer in time",
        )
    })?
}

/// Serves one connection on the peer port: TLS, the line, then HTTP.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, from: SocketAddr) {
    let Some(cluster) = shared.cluster.get() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let opened = tokio::time::timeout(LINE_TIMEOUT, async {
        let stream = cluster.peer_tls().accept(stream).await?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        (&mut reader).take(MAX_LINE).read_line(&mut line).await?;
        Ok::<_, std::io::Error>((reader, line))
    })
    .await;
    let (reader, line) = match opened {
        Ok(Ok((reader, line))) if line.ends_with('\n') => (reader, line),
        Ok(Err(e)) => {
            info!(%from, error = %e, "a peer connection failed its TLS handshake (another cluster secret?); closed");
            return;
        }
        _ => {
            info!(%from, "a peer connection without its line; closed");
            return;
        }
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let (visitor, proto) = match words.as_slice() {
        [PREFACE, visitor, proto] => (*visitor, *proto),
        _ => {
            info!(%from, "a peer connection with a malformed line; closed");
            return;
        }
    };
    let Ok(visitor) = visitor.parse::<SocketAddr>() else {
        info!(%from, "a peer connection with a malformed visitor address; closed");
        return;
    };
    match proto {
        "http" | "https" => {
            crate::http_front::serve_forwarded(shared, reader, visitor, proto == "https").await;
        }
        "deliver" => crate::deliveries::serve_node_deliveries(shared, reader).await,
        _ => match proto.strip_prefix("tcp:").and_then(|p| p.parse().ok()) {
            Some(port) => crate::tcp_front::serve_forwarded(shared, port, reader, visitor).await,
            None => info!(%from, %proto, "a peer connection of an unknown kind; closed"),
        },
    }
}
