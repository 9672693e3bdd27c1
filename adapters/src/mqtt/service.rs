//! The MQTT adapter as a server runs it: its listeners, the grant's
//! topics, the app's publishes (`POST /api/mqtt/publish` on its client),
//! and publishes made on other nodes.

use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use bytes::Bytes;
use droid_core::protocol::{AdapterSettings, CallAnswer};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use super::tunnels::{login_key, settings_of, tenancy_of};
use super::{MqttAdapter, MqttConfig, NAME, Tenancy, TunnelTopics};
use crate::adapter::{ConnLimits, Listener, run_adapter};
use crate::host::{Call, Grantee, Host, ServerAdapter};
use crate::route::{Answer, Destination};
use crate::stats::DeliveryStats;

/// Devices for the tunnels' topics, on the listeners it is given.
pub struct MqttService {
    config: MqttConfig,
    limits: ConnLimits,
    plain: Mutex<Vec<TcpListener>>,
    tls: Mutex<Vec<TcpListener>>,
    running: OnceLock<(Arc<MqttAdapter>, Host)>,
    announce: Option<String>,
}

impl MqttService {
    /// Accepts devices on `plain` listeners and on `tls` ones (with the
    /// server's certificate), within `limits` for all of them together: a
    /// device on one sees the subscriptions and retained messages of the
    /// others.
    pub fn new(
        config: MqttConfig,
        plain: Vec<TcpListener>,
        tls: Vec<TcpListener>,
        limits: ConnLimits,
    ) -> MqttService {
        MqttService {
            config,
            limits,
            plain: Mutex::new(plain),
            tls: Mutex::new(tls),
            running: OnceLock::new(),
            announce: None,
        }
    }

    /// Tells each tunnel's client where devices connect (`address` in the
    /// grant): the server inside `droid http` does, a public server's
    /// address is its clients' to know.
    pub fn announcing(mut self, address: impl Into<String>) -> MqttService {
        self.announce = Some(address.into());
        self
    }
}

/// An app's publish, as it calls `publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    /// Relative to the tunnel (`sensors/1/cmd`), or whole (`NAME/...`).
    topic: String,
    /// The payload as text...
    #[serde(default)]
    payload: Option<String>,
    /// ...or as base64.
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    /// Which of the client's tunnels, when the topic does not say.
    #[serde(default)]
    tunnel: Option<String>,
}

/// A publish as it goes to the other nodes: this line, then the payload.
#[derive(Debug, Serialize, Deserialize)]
struct Broadcast {
    tunnel: String,
    tenancy: Tenancy,
    topic: String,
    qos: u8,
    retain: bool,
}

impl ServerAdapter for MqttService {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reserved_names(&self) -> &'static [&'static str] {
        &[NAME]
    }

    fn run(self: Arc<Self>, host: Host) -> Answer<'static, ()> {
        let router = Arc::new(TunnelTopics::new(host.tunnels.clone()));
        let adapter = Arc::new(MqttAdapter::new(
            self.config.clone(),
            router,
            host.spool.clone(),
        ));
        adapter.keep_in(host.maps.clone());
        let _ = self.running.set((adapter.clone(), host.clone()));
        let take = |list: &Mutex<Vec<TcpListener>>| {
            std::mem::take(&mut *list.lock().unwrap_or_else(|p| p.into_inner()))
        };
        let mut listeners: Vec<Listener> =
            take(&self.plain).into_iter().map(Listener::from).collect();
        let tls = take(&self.tls);
        match &host.tls {
            Some(acceptor) => {
                listeners.extend(tls.into_iter().map(|l| Listener::tls(l, acceptor.clone())))
            }
            None if !tls.is_empty() => {
                tracing::error!(
                    "MQTT over TLS needs the server's certificate (--tls-cert and --tls-key)"
                );
            }
            None => {}
        }
        Box::pin(run_adapter(listeners, adapter, self.limits, host.shutdown))
    }

    fn grant(&self, tunnel: &Grantee<'_>) -> Option<serde_json::Value> {
        let topics = format!("{}/#", tunnel.name);
        tunnel.settings.of(NAME).map(|_| match &self.announce {
            Some(address) => json!({ "topics": topics, "address": address }),
            None => json!({ "topics": topics }),
        })
    }

    fn index_keys(&self, settings: &AdapterSettings) -> Vec<String> {
        settings_of(settings)
            .and_then(|s| s.auth)
            .map(|login| vec![login_key(&login)])
            .unwrap_or_default()
    }

    fn received(&self, bytes: Bytes) {
        let Some((adapter, _)) = self.running.get() else {
            return;
        };
        let Some(split) = bytes.iter().position(|&b| b == b'\n') else {
            return;
        };
        match serde_json::from_slice::<Broadcast>(&bytes[..split]) {
            Ok(head) => {
                let payload = bytes.slice(split + 1..);
                adapter.publish(
                    &head.tunnel,
                    &head.tenancy,
                    &head.topic,
                    payload,
                    head.qos,
                    head.retain,
                );
            }
            Err(e) => tracing::debug!(error = %e, "a publish from another node not understood"),
        }
    }

    fn call(&self, call: Call) -> Answer<'_, CallAnswer> {
        Box::pin(async move {
            match call.action.as_str() {
                "publish" => self.publish(call).await,
                other => CallAnswer::error(
                    404,
                    format!("MQTT takes no call {other:?}; it takes publish"),
                ),
            }
        })
    }

    fn stats(&self) -> Option<(&'static str, &'static str, DeliveryStats)> {
        self.running
            .get()
            .map(|(adapter, _)| ("droid_mqtt", "MQTT messages", adapter.stats().clone()))
    }
}

impl MqttService {
    /// `POST /api/mqtt/publish`: to the devices subscribed here and on the
    /// other nodes.
    async fn publish(&self, call: Call) -> CallAnswer {
        let Some((adapter, host)) = self.running.get() else {
            return CallAnswer::error(503, "this server runs no MQTT");
        };
        let wanted: Publish = match serde_json::from_slice(&call.body) {
            Ok(wanted) => wanted,
            Err(e) => {
                return CallAnswer::error(
                    400,
                    format!("expected {{\"topic\", \"payload\", \"qos\", \"retain\"}}: {e}"),
                );
            }
        };
        if wanted.qos > 1 {
            return CallAnswer::error(400, "qos must be 0 or 1");
        }
        let payload = match (&wanted.payload, &wanted.payload_base64) {
            (Some(text), None) => Bytes::from(text.clone().into_bytes()),
            (None, Some(b64)) => match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(bytes) => Bytes::from(bytes),
                Err(e) => {
                    return CallAnswer::error(400, format!("payload_base64 is not base64: {e}"));
                }
            },
            (None, None) => Bytes::new(),
            (Some(_), Some(_)) => {
                return CallAnswer::error(400, "give payload or payload_base64, not both");
            }
        };
        let (tunnel, topic) = match resolve(&call.tunnels, wanted.tunnel.as_deref(), &wanted.topic)
        {
            Ok(found) => found,
            Err(refusal) => return refusal,
        };
        // A topic whose first level is another live tunnel's name is that
        // tunnel's namespace, not a subtopic of this one.
        if wanted.tunnel.is_none()
            && !wanted.topic.starts_with(&format!("{}/", tunnel.name))
            && let Some(first) = wanted.topic.trim_start_matches('/').split('/').next()
            && first != tunnel.name
            && matches!(host.tunnels.find(first).await, Ok(Some(_)))
        {
            return CallAnswer::error(
                403,
                format!(
                    "{} names the tunnel {first}, which is not this client's; publish in {}/... (or a topic relative to it)",
                    wanted.topic, tunnel.name
                ),
            );
        }
        let tenancy = tenancy_of(tunnel);
        let head = Broadcast {
            tunnel: tunnel.name.clone(),
            tenancy: tenancy.clone(),
            topic: topic.clone(),
            qos: wanted.qos,
            retain: wanted.retain,
        };
        let mut message = serde_json::to_vec(&head).unwrap_or_default();
        message.push(b'\n');
        message.extend_from_slice(&payload);
        host.broadcast.send(NAME, Bytes::from(message)).await;
        let delivered = adapter
            .publish_kept(
                &tunnel.name,
                &tenancy,
                &topic,
                payload,
                wanted.qos,
                wanted.retain,
            )
            .await;
        tracing::debug!(%topic, delivered, "the app published");
        CallAnswer {
            status: 200,
            body: json!({ "topic": topic, "delivered_to": delivered }),
        }
    }
}

/// The tunnel and whole topic of a publish: `NAME/...` names one of
/// `ours`; otherwise the topic is relative to the tunnel given, or to the
/// only one.
fn resolve<'a>(
    ours: &'a [Destination],
    tunnel: Option<&str>,
    topic: &str,
) -> Result<(&'a Destination, String), CallAnswer> {
    let topic = topic.trim_start_matches('/');
    if topic.is_empty() || topic.contains(['+', '#', '\0']) {
        return Err(CallAnswer::error(
            400,
            "a topic is a name like sensors/1/cmd, with no wildcards",
        ));
    }
    if let Some(name) = tunnel {
        let Some(found) = ours.iter().find(|t| t.name == name) else {
            return Err(CallAnswer::error(
                403,
                format!(
                    "{name} is not one of this client's tunnels; it may publish only in its own namespaces"
                ),
            ));
        };
        let whole = if topic.starts_with(&format!("{name}/")) {
            topic.to_string()
        } else {
            format!("{name}/{topic}")
        };
        return Ok((found, whole));
    }
    if let Some(found) = ours
        .iter()
        .find(|t| topic.starts_with(&format!("{}/", t.name)))
    {
        return Ok((found, topic.to_string()));
    }
    match ours {
        [only] => Ok((only, format!("{}/{topic}", only.name))),
        [] => Err(CallAnswer::error(
            503,
            "this client has no tunnel with MQTT to publish through",
        )),
        _ => Err(CallAnswer::error(
            400,
            "this client has several tunnels: start the topic with one's name, or give \"tunnel\"",
        )),
    }
}
