//! `POST /api/ADAPTER/ACTION`: the app calls an adapter of the server (MQTT's
//! `publish`, to its devices).
//!
//! The client does not read the call: it opens a stream to the server (the
//! only kind a client opens besides its control stream), writes a `call`
//! header line naming the adapter and the action, and the body as the app
//! sent it, and gives the app the one answer line: a status and a JSON
//! body. The adapter decides what the call means, for which of this
//! client's tunnels.

use droid_core::protocol::{self, CallAnswer, StreamHeader, TunnelKind};
use tokio::io::{AsyncWriteExt, BufReader};

use super::Shared;

/// How long a call may take, stream to answer: longer than a mail relay's
/// slowest exchange.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// Sends the app's call to `adapter`'s `action` with `body`; the server's
/// answer, or why there is none.
pub(crate) async fn call(shared: &Shared, adapter: &str, action: &str, body: &[u8]) -> CallAnswer {
    let tunnel = shared.tunnels.lock().ok().and_then(|t| {
        t.iter()
            .find(|t| t.spec.kind == TunnelKind::Http)
            .map(|t| t.name.clone())
    });
    let (Some(tunnel), Some(opener)) = (tunnel, shared.opener.lock().ok().and_then(|o| o.clone()))
    else {
        return CallAnswer::error(
            503,
            "the tunnel is not connected to its server right now; try again",
        );
    };
    let header = StreamHeader::Call {
        tunnel,
        adapter: adapter.to_string(),
        action: action.to_string(),
        size: body.len() as u64,
    };
    let sent = tokio::time::timeout(CALL_TIMEOUT, async {
        let stream = opener.open().await.map_err(|e| e.to_string())?;
        let (read, mut write) = tokio::io::split(stream);
        write
            .write_all(&protocol::encode_line(&header))
            .await
            .map_err(|e| e.to_string())?;
        write.write_all(body).await.map_err(|e| e.to_string())?;
        write.flush().await.map_err(|e| e.to_string())?;
        let mut read = BufReader::new(read);
        protocol::read_message::<_, CallAnswer>(&mut read, protocol::MAX_CONTROL_LINE)
            .await
            .map_err(|e| format!("the server did not answer the call: {e}"))
    })
    .await;
    match sent {
        Ok(Ok(answer)) => answer,
        Ok(Err(why)) => CallAnswer::error(503, why),
        Err(_) => CallAnswer::error(503, "the server did not answer in time"),
    }
}
