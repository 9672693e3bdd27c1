//! The link between the nodes of a cluster.
//!
//! A visitor's request for a tunnel another node holds goes to that node's
//! peer port over a TCP connection of its own, opened for that visitor's
//! connection and kept for its next requests. The connection starts with
//! one line, then is plain HTTP/1.1, as the visitor sent it (upgrades,
//! streaming bodies and all):
//!
//! ```text
//! DROID-PEER/1 PROOF VISITOR_ADDR http|https
//! ```
//!
//! PROOF is the hex SHA-256 of `droid-peer ` and the cluster secret (any
//! secret, spaces and all, makes one word). The receiving node checks it,
//! then serves the
//! connection as its own HTTP front would serve the visitor (the same
//! checks of the tunnel's access rules, against the visitor's address),
//! except that a request for a tunnel it does not hold is answered there,
//! never forwarded again. The proof is the same on every connection, so
//! whoever can read the link can replay it: keep the peer ports on a
//! private network, as Redis.

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

/// The line that opens a connection to another node for `visitor`.
pub(crate) fn preface(secret: &str, visitor: SocketAddr, https: bool) -> String {
    let proto = if https { "https" } else { "http" };
    format!("{PREFACE} {} {visitor} {proto}\n", proof(secret))
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
    crate::http_front::serve_forwarded(shared.clone(), reader, visitor, proto == "https").await;
}
