//! The streams a client opens besides its control stream: its app's calls
//! to an adapter (`POST /api/ADAPTER/ACTION` on the client), each a
//! `call` header line naming the adapter and the action, the body, and one
//! answer line.

use std::sync::Arc;

use droid_core::protocol::{self, CallAnswer, StreamHeader};
use droid_core::session::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::debug;

use crate::Shared;
use crate::deliveries::destination;
use crate::registry::Tunnel;

/// Calls served at once from one session: more streams wait for a turn.
const CALLS_AT_ONCE: usize = 16;

/// How long a call stream may take to bring its header and body (4 MiB at
/// most, from a client that is already connected).
const CALL_READ: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the streams a client opens on its session until the session
/// ends. `tunnels` are the session's: a call acts for them only.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut inbound: tokio::sync::mpsc::UnboundedReceiver<Stream>,
    tunnels: Vec<Arc<Tunnel>>,
) {
    let turns = Arc::new(tokio::sync::Semaphore::new(CALLS_AT_ONCE));
    let tunnels = Arc::new(tunnels);
    while let Some(stream) = inbound.recv().await {
        let Ok(turn) = turns.clone().acquire_owned().await else {
            return;
        };
        let (shared, tunnels) = (shared.clone(), tunnels.clone());
        tokio::spawn(async move {
            let _turn = turn;
            call_stream(&shared, stream, &tunnels).await;
        });
    }
}

async fn call_stream(shared: &Arc<Shared>, mut stream: Stream, tunnels: &[Arc<Tunnel>]) {
    if stream.acknowledge().await.is_err() {
        return;
    }
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let answer = tokio::time::timeout(CALL_READ, async {
        let header =
            protocol::read_message::<_, StreamHeader>(&mut read, protocol::MAX_HEADER_LINE)
                .await
                .map_err(|e| CallAnswer::error(400, format!("not a call: {e}")))?;
        let StreamHeader::Call {
            adapter,
            action,
            size,
            ..
        } = header
        else {
            return Err(CallAnswer::error(
                400,
                "a client may open call streams only",
            ));
        };
        let Some(adapter) = shared.adapter(&adapter) else {
            return Err(CallAnswer::error(
                404,
                format!("this server runs no adapter {adapter:?}"),
            ));
        };
        if size > protocol::MAX_CALL_BODY {
            return Err(CallAnswer::error(
                413,
                format!(
                    "a body of {size} bytes is over the limit of {}",
                    protocol::MAX_CALL_BODY
                ),
            ));
        }
        let mut body = vec![0u8; usize::try_from(size).unwrap_or(0)];
        read.read_exact(&mut body)
            .await
            .map_err(|e| CallAnswer::error(400, format!("the body ended early: {e}")))?;
        let tunnels = tunnels
            .iter()
            .filter(|t| t.adapters.of(adapter.name()).is_some())
            .map(|t| destination(shared, t))
            .collect();
        debug!(adapter = adapter.name(), %action, "a call from an app");
        let call = droid_adapters::Call {
            tunnels,
            action,
            body: body.into(),
        };
        Ok((adapter, call))
    })
    .await
    .unwrap_or_else(|_| Err(CallAnswer::error(408, "the call did not arrive in time")));
    // Only the call's arrival is timed here: what the adapter does with it
    // (a relay's exchange, say) is bounded by the adapter, and the app's
    // client gives up on its own.
    let answer = match answer {
        Ok((adapter, call)) => adapter.call(call).await,
        Err(refusal) => refusal,
    };
    let _ = write.write_all(&protocol::encode_line(&answer)).await;
    let _ = write.shutdown().await;
}
