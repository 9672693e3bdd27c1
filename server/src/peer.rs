//! The link between the nodes of a cluster.
//!
//! A visitor's request for a tunnel another node holds goes to that node's
//! peer port over a TCP connection of its own, opened for that visitor's
//! connection and kept for its next requests. An adapter's delivery to
//! such a tunnel goes there too, on connections kept for deliveries. A
//! connection starts with one line, then is plain HTTP/1.1:
//!
//! ```text
//! DROID-PEER/1 PROOF FROM_ADDR http|https|deliver
//! ```
//!
//! PROOF is the hex SHA-256 of `droid-peer ` and the cluster secret (any
//! secret, spaces and all, makes one word). The receiving node checks it,
//! then:
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
//!
//! The proof is the same on every connection, so whoever can read the
//! link can replay it: keep the peer ports on a private network, as Redis.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tracing::info;

use crate::Shared;

/// The first word of the line.
const PREFACE: &str = "DROID-PEER/1";

/// How long the line may take, and how long it may be.
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
}

impl Mode {
    fn word(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Https => "https",
            Mode::Deliver => "deliver",
        }
    }
}

/// The line that opens a connection to another node, from `from` (the
/// visitor, or this node).
pub(crate) fn preface(secret: &str, from: SocketAddr, mode: Mode) -> String {
    format!("{PREFACE} {} {from} {}\n", proof(secret), mode.word())
}

/// What a node shows for the cluster secret.
fn proof(secret: &str) -> String {
    let digest = Sha256::digest(format!("droid-peer {secret}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves one connection on the peer port: the line, then HTTP.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, from: SocketAddr) {
    let Some(cluster) = shared.cluster.get() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(
        LINE_TIMEOUT,
        (&mut reader).take(MAX_LINE).read_line(&mut line),
    )
    .await;
    if !matches!(read, Ok(Ok(n)) if n > 0 && line.ends_with('\n')) {
        info!(%from, "a peer connection without its line; closed");
        return;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let (shown, visitor, proto) = match words.as_slice() {
        [PREFACE, shown, visitor, proto] => (*shown, *visitor, *proto),
        _ => {
            info!(%from, "a peer connection with a malformed line; closed");
            return;
        }
    };
    if !bool::from(shown.as_bytes().ct_eq(proof(cluster.secret()).as_bytes())) {
        info!(%from, "a peer connection with the wrong cluster secret; closed");
        return;
    }
    let Ok(visitor) = visitor.parse::<SocketAddr>() else {
        info!(%from, "a peer connection with a malformed visitor address; closed");
        return;
    };
    match proto {
        "http" | "https" => {
            crate::http_front::serve_forwarded(shared, reader, visitor, proto == "https").await;
        }
        "deliver" => crate::deliveries::serve_node_deliveries(shared, reader).await,
        _ => info!(%from, %proto, "a peer connection of an unknown kind; closed"),
    }
}
