//! MQTT for tunnels: the server's side of the MQTT adapter.
//!
//! The adapter knows nothing of tunnels; it asks a [`TopicRouter`] where a
//! topic goes. Here the first topic level is the tunnel's name, and the
//! message goes through that tunnel while it is live or resuming, on the
//! same delivery streams and with the same owner key (so the same spool)
//! as its mail. A tunnel that set a login takes messages only from
//! devices that logged in with it.

use std::sync::Arc;

use bytes::Bytes;
use droid_adapters::{PostOptions, TopicRefusal, TopicRoute, TopicRouter};
use droid_core::protocol::{self, PublishAnswer, StreamHeader};
use droid_core::session::Stream;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::debug;

use crate::Shared;
use crate::mail::{TunnelRouter, owner_key};

/// Routes topics `NAME/...` to tunnels.
pub(crate) struct TunnelTopics {
    shared: Arc<Shared>,
    tunnels: TunnelRouter,
}

impl TunnelTopics {
    pub(crate) fn new(shared: Arc<Shared>) -> TunnelTopics {
        TunnelTopics {
            tunnels: TunnelRouter::new(shared.clone()),
            shared,
        }
    }
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl TopicRouter for TunnelTopics {
    fn resolve(&self, topic: &str, login: Option<&str>) -> Result<TopicRoute, TopicRefusal> {
        let (name, subtopic) = topic.split_once('/').unwrap_or((topic, ""));
        let tunnel = self
            .shared
            .registry
            .holder(name)
            .filter(|t| t.tcp.is_none())
            .ok_or_else(|| {
                TopicRefusal::NoTunnel(format!(
                    "no tunnel named {name} is connected to this server; topics start with a tunnel's name"
                ))
            })?;
        if let Some(wanted) = &tunnel.mqtt.auth
            && !login.is_some_and(|given| same(given, wanted))
        {
            return Err(TopicRefusal::NotAuthorized(format!(
                "the tunnel {name} takes messages only from devices that log in with its user name and password"
            )));
        }
        let settings = &tunnel.mqtt;
        let path = settings.path_for(subtopic).to_string();
        let secret = settings
            .secret
            .clone()
            .or_else(|| tunnel.mail.secret.clone())
            .unwrap_or_default();
        Ok(TopicRoute {
            owner: owner_key(&tunnel),
            destination: if settings.routes.is_empty() {
                tunnel.name.clone()
            } else {
                format!("{}{path}", tunnel.name)
            },
            sink: self.tunnels.sink(&tunnel.name, &tunnel.owner_id),
            post: PostOptions {
                adapter: "mqtt".into(),
                path,
                content_type: "application/json".into(),
                secret: secret.into_bytes(),
            },
            subtopic: subtopic.to_string(),
        })
    }

    fn subscribe(&self, filter: &str, login: Option<&str>) -> Result<String, TopicRefusal> {
        let name = filter.split('/').next().unwrap_or_default();
        if name == "+" || name == "#" || name.is_empty() {
            return Err(TopicRefusal::NoTunnel(
                "a filter's first level must be a tunnel's name, not a wildcard".into(),
            ));
        }
        let tunnel = self
            .shared
            .registry
            .holder(name)
            .filter(|t| t.tcp.is_none())
            .ok_or_else(|| {
                TopicRefusal::NoTunnel(format!("no tunnel named {name} is connected"))
            })?;
        if let Some(wanted) = &tunnel.mqtt.auth
            && !login.is_some_and(|given| same(given, wanted))
        {
            return Err(TopicRefusal::NotAuthorized(format!(
                "the tunnel {name} takes subscriptions only from devices that log in with its user name and password"
            )));
        }
        Ok(tunnel.name.clone())
    }

    fn login(&self, credentials: &str) -> bool {
        self.shared.registry.any_live(|t| {
            t.mqtt
                .auth
                .as_deref()
                .is_some_and(|wanted| same(wanted, credentials))
        })
    }
}

/// Publishes at once from one session: more streams wait for a turn.
const PUBLISHES_AT_ONCE: usize = 16;

/// How long a publish stream may take to bring its header and payload.
const PUBLISH_READ: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves the streams a client opens on its session (publishes from its
/// app) until the session ends. `tunnels` are the session's names: it may
/// publish in their namespaces only.
pub(crate) async fn serve_client_streams(
    shared: Arc<Shared>,
    mut inbound: tokio::sync::mpsc::UnboundedReceiver<Stream>,
    tunnels: Vec<String>,
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

async fn publish_stream(shared: &Shared, mut stream: Stream, tunnels: &[String]) {
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
        if !tunnels.contains(&tunnel) || !topic.starts_with(&format!("{tunnel}/")) {
            return Err(PublishAnswer {
                forbidden: true,
                ..refused(format!(
                    "{topic} is not in the namespace of this client's tunnel {tunnel}"
                ))
            });
        }
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
        let delivered = adapter.publish(&tunnel, &topic, Bytes::from(payload), qos, retain);
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
