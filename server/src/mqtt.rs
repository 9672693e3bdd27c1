//! The app's MQTT publishes: the streams a client opens on its session to
//! publish in its tunnels' namespaces (`POST /api/mqtt/publish` on its
//! inspector), handed to the server's MQTT adapter.

use std::sync::Arc;

use bytes::Bytes;
use droid_core::protocol::{self, PublishAnswer, StreamHeader};
use droid_core::session::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::debug;

use crate::Shared;
use crate::registry::Tunnel;

/// Publishes at once from one session: more streams wait for a turn.
const PUBLISHES_AT_ONCE: usize = 16;

/// How long a publish stream may take to bring its header and payload
/// (a megabyte at most, from a client that is already connected).
const PUBLISH_READ: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the streams a client opens on its session (publishes from its
/// app) until the session ends. `tunnels` are the session's: it may
/// publish in their namespaces only.
pub(crate) async fn serve_client_streams(
    shared: Arc<Shared>,
    mut inbound: tokio::sync::mpsc::UnboundedReceiver<Stream>,
    tunnels: Vec<Arc<Tunnel>>,
) {
    let turns = Arc::new(tokio::sync::Semaphore::new(PUBLISHES_AT_ONCE));
    let tunnels = Arc::new(tunnels);
    while let Some(stream) = inbound.recv().await {
        let Ok(turn) = turns.clone().acquire_owned().await else {
            return;
        };
        let (shared, tunnels) = (shared.clone(), tunnels.clone());
        tokio::spawn(async move {
            let _turn = turn;
            publish_stream(&shared, stream, &tunnels).await;
        });
    }
}

/// The tenancy of `tunnel`'s topics: its owner and its devices' login.
pub(crate) fn tenancy(tunnel: &Tunnel) -> droid_adapters::Tenancy {
    droid_adapters::Tenancy::new(
        &crate::deliveries::owner_key(&tunnel.owner_id, &tunnel.name),
        tunnel.adapters.mqtt.auth.as_deref(),
    )
}

async fn publish_stream(shared: &Shared, mut stream: Stream, tunnels: &[Arc<Tunnel>]) {
    if stream.acknowledge().await.is_err() {
        return;
    }
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let answer = tokio::time::timeout(PUBLISH_READ, async {
        let header =
            protocol::read_message::<_, StreamHeader>(&mut read, protocol::MAX_HEADER_LINE)
                .await
                .map_err(|e| refused(format!("not a publish: {e}")))?;
        let StreamHeader::Publish {
            tunnel,
            topic,
            qos,
            retain,
            size,
        } = header
        else {
            return Err(refused("a client may open publish streams only".into()));
        };
        let owned = tunnels.iter().find(|t| t.name == tunnel);
        let Some(owned) = owned.filter(|_| topic.starts_with(&format!("{tunnel}/"))) else {
            return Err(PublishAnswer {
                forbidden: true,
                ..refused(format!(
                    "{topic} is not in the namespace of this client's tunnel {tunnel}"
                ))
            });
        };
        let tenancy = tenancy(owned);
        if size > protocol::MAX_PUBLISH {
            return Err(refused(format!(
                "a payload of {size} bytes is over the limit of {}",
                protocol::MAX_PUBLISH
            )));
        }
        let mut payload = vec![0u8; usize::try_from(size).unwrap_or(0)];
        read.read_exact(&mut payload)
            .await
            .map_err(|e| refused(format!("the payload ended early: {e}")))?;
        let adapter = shared
            .mqtt
            .get()
            .ok_or_else(|| refused("this server runs no MQTT".into()))?;
        let payload = Bytes::from(payload);
        if let Some(cluster) = shared.cluster.get() {
            cluster
                .broadcast(&tunnel, &tenancy, &topic, &payload, qos, retain)
                .await;
        }
        let delivered = adapter.publish(&tunnel, &tenancy, &topic, payload, qos, retain);
        debug!(%topic, delivered, "the app published");
        Ok(PublishAnswer {
            delivered_to: Some(delivered as u64),
            error: None,
            forbidden: false,
        })
    })
    .await
    .unwrap_or_else(|_| Err(refused("the publish did not arrive in time".into())));
    let answer = answer.unwrap_or_else(|refusal| refusal);
    let _ = write.write_all(&protocol::encode_line(&answer)).await;
    let _ = write.shutdown().await;
}

fn refused(error: String) -> PublishAnswer {
    PublishAnswer {
        delivered_to: None,
        error: Some(error),
        forbidden: false,
    }
}
