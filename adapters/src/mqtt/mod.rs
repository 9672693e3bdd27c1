//! The MQTT adapter: devices publish, the app gets each message as a
//! signed JSON POST, through the same delivery and spool as mail.
//!
//! MQTT 3.1.1 and 5.0, server side, on rumqttc's packet codecs driven by
//! the adapter runtime's tokio loop:
//! - CONNECT: a login, when given, must be one a tunnel set (else "bad user
//!   name or password"); keep-alive is honoured at 1.5 times its interval;
//!   a second connection with the same client id takes over.
//! - PUBLISH: the first topic level names the tunnel ([`TopicRouter`]).
//!   QoS 0 is posted once and never kept. QoS 1 is acknowledged only once
//!   the app answered 2xx or the message is durably spooled; an app's 4xx
//!   reaches an MQTT 5 publisher as a PUBACK reason code with the app's
//!   reason. QoS 2 is refused: MQTT 5 CONNACKs say Maximum QoS 1, and a QoS
//!   2 publish ends the connection (0x9B for MQTT 5).
//! - A topic for no tunnel is refused: MQTT 5 gets a PUBACK of 0x90 with a
//!   sentence (a QoS 0 one is dropped and logged), MQTT 3.1.1, which has no
//!   negative acknowledgement, has its connection closed.
//! - A device that drops without DISCONNECT has its Will posted.

mod codec;
pub mod plugin;
mod post;
mod service;
mod session;
mod settings;
mod subscriptions;
mod tunnels;

pub use plugin::MqttPlugin;
pub use service::MqttService;
pub use settings::{MqttRoute, MqttSettings, topic_matches};
pub use subscriptions::{MAX_RETAINED, MAX_RETAINED_BYTES, Tenancy};
pub use tunnels::TunnelTopics;

/// The adapter's name: the key of its settings in a tunnel's hello.
pub const NAME: &str = "mqtt";

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use droid_core::deliver::Deliver;
use tokio_util::sync::CancellationToken;

use crate::adapter::{Adapter, Conn, ServeFuture};
use crate::delivery::PostOptions;
use crate::host::SharedMaps;
use crate::route::{Answer, Unavailable};
use crate::spool::Spool;
use crate::stats::DeliveryStats;

/// Settings of the MQTT adapter.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// The largest packet accepted (a PUBLISH's topic, properties and
    /// payload); a larger one closes the connection.
    pub max_packet_size: usize,
    /// How long a device may take to send its CONNECT.
    pub connect_timeout: Duration,
    /// How long a QoS 1 delivery may take before the message is spooled.
    pub deliver_timeout: Duration,
    /// The keep-alive used when a device asks for none (0): an idle
    /// connection is closed after this.
    pub idle_timeout: Duration,
    /// QoS 0 messages delivered at once, from every device together (16
    /// at most from one); past it devices wait to be read.
    pub max_qos0_in_flight: usize,
}

impl Default for MqttConfig {
    fn default() -> MqttConfig {
        MqttConfig {
            max_packet_size: 4 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            deliver_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_qos0_in_flight: 64,
        }
    }
}

/// Where a publish goes.
#[derive(Clone)]
pub struct TopicRoute {
    /// The owner key the spool retries through (see [`crate::route::Route::owner`]).
    pub owner: String,
    /// A readable name for logs (the tunnel, and the path when routed).
    pub destination: String,
    /// The sink to try while the device waits.
    pub sink: Arc<dyn Deliver>,
    /// How the POST is made.
    pub post: PostOptions,
    /// The topic after the tunnel's name (`sensors/1` of `api/sensors/1`).
    pub subtopic: String,
}

/// Why a publish is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRefusal {
    /// The first topic level is no live or resuming tunnel.
    NoTunnel(String),
    /// The tunnel asks for a login this device did not give.
    NotAuthorized(String),
    /// Where tunnels are cannot be known now: the message is not taken,
    /// so the device sends it again.
    Unavailable(String),
}

/// Maps topics to tunnels and checks logins; the server implements it over
/// its registry.
pub trait TopicRouter: Send + Sync {
    /// The route of a publish to `topic` by a device logged in as `login`.
    fn resolve<'a>(
        &'a self,
        topic: &'a str,
        login: Option<&'a str>,
    ) -> Answer<'a, Result<TopicRoute, TopicRefusal>>;

    /// Whether `user:password` is a login some tunnel set.
    fn login<'a>(&'a self, credentials: &'a str) -> Answer<'a, Result<bool, Unavailable>>;

    /// The tunnel whose namespace `filter` subscribes to, and its tenancy,
    /// for a device logged in as `login`: its first level must name a live
    /// or resuming tunnel (never a wildcard), and the tunnel's login must
    /// match.
    fn subscribe<'a>(
        &'a self,
        filter: &'a str,
        login: Option<&'a str>,
    ) -> Answer<'a, Result<(String, Tenancy), TopicRefusal>>;
}

/// The shared map of `tunnel`'s retained messages under `tenancy`: each
/// owner's are its own.
fn retained_map(tunnel: &str, tenancy: &Tenancy) -> String {
    format!("mqtt-retained/{}/{tunnel}", tenancy.owner)
}

/// The key a device's client id is known by: MQTT says a second
/// connection with the same id takes the first over, and the id is the
/// device's to choose, so it is scoped to what a stranger cannot give: the
/// login (a tunnel's devices share it), or for a device without one, its
/// address. A device of another tunnel, or a stranger, with the same id
/// gets a session of its own instead of ending this one.
pub(crate) fn client_key(client_id: &str, login: Option<&str>, peer: std::net::IpAddr) -> String {
    match login {
        Some(login) => format!(
            "{}\0{client_id}",
            Tenancy::new("", Some(login)).login.unwrap_or_default()
        ),
        None => format!("{}\0{client_id}", droid_core::conn_caps::address_of(peer)),
    }
}

/// Reads `bytes` as the start of a device's connection (a CONNECT, then
/// packets) the way a session does, without acting on them: how many whole
/// packets they hold before they end or stop being MQTT. For the fuzz
/// target and tests; a session never panics on what this never panics on.
pub fn packets_in(bytes: &[u8], max_packet_size: usize) -> usize {
    let Ok(Some(version)) = codec::connect_version(bytes) else {
        return 0;
    };
    let mut buf = bytes::BytesMut::from(bytes);
    let mut count = 0;
    while let Ok(Some(_)) = codec::read(version, &mut buf, max_packet_size) {
        count += 1;
    }
    count
}

/// The MQTT adapter; one value serves every connection.
pub struct MqttAdapter {
    config: MqttConfig,
    router: Arc<dyn TopicRouter>,
    spool: Option<Arc<Spool>>,
    stats: DeliveryStats,
    /// The connection serving each client id, to be taken over.
    sessions: Mutex<HashMap<String, (u64, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
    subscriptions: subscriptions::Subscriptions,
    /// QoS 0 messages being delivered, from every device.
    at_most_once: Arc<tokio::sync::Semaphore>,
    /// Where retained messages outlive this node: the maps the nodes of a
    /// cluster keep together (none for an adapter on its own).
    maps: std::sync::OnceLock<Arc<dyn SharedMaps>>,
    /// The maps of retained messages read from there since this node
    /// started (at most [`MAX_READ`], then read again as needed).
    read: Mutex<std::collections::HashSet<String>>,
}

/// The maps of retained messages a node remembers having read.
const MAX_READ: usize = 100_000;

impl MqttAdapter {
    /// An adapter that routes with `router` and keeps what the app cannot
    /// take now in `spool` (without one, such a QoS 1 message is not
    /// acknowledged).
    pub fn new(
        config: MqttConfig,
        router: Arc<dyn TopicRouter>,
        spool: Option<Arc<Spool>>,
    ) -> MqttAdapter {
        let at_most_once = Arc::new(tokio::sync::Semaphore::new(
            config.max_qos0_in_flight.max(1),
        ));
        MqttAdapter {
            config,
            router,
            spool,
            stats: DeliveryStats::default(),
            sessions: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
            subscriptions: subscriptions::Subscriptions::default(),
            at_most_once,
            maps: std::sync::OnceLock::new(),
            read: Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Keeps retained messages in `maps` too, so a node that joins later
    /// has them.
    pub fn keep_in(&self, maps: Arc<dyn SharedMaps>) {
        let _ = self.maps.set(maps);
    }

    /// Reads what the cluster kept of `tunnel`'s retained messages (under
    /// `tenancy`), once per node: those this node missed (it joined
    /// later, or restarted) join its own.
    pub(crate) async fn read_retained(&self, tunnel: &str, tenancy: &Tenancy) {
        let Some(maps) = self.maps.get() else {
            return;
        };
        let map = retained_map(tunnel, tenancy);
        if self.read_lock().contains(&map) {
            return;
        }
        // Redis away: asked again at the next subscription.
        let Some(fields) = maps.all(map.clone()).await else {
            return;
        };
        let messages = fields
            .into_iter()
            .filter(|(_, value)| value.len() > 1)
            .map(|(topic, value)| (topic, value.slice(1..), value[0].min(1)))
            .collect();
        self.subscriptions.seed(tunnel, tenancy, messages);
        let mut read = self.read_lock();
        if read.len() >= MAX_READ {
            read.clear();
        }
        read.insert(map);
    }

    fn read_lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`MqttAdapter::publish`] for the app's own message on the node that
    /// took its call: a retained one is also kept in the cluster's maps
    /// (with the topics its bounds forgot removed there too).
    pub(crate) async fn publish_kept(
        &self,
        tunnel: &str,
        tenancy: &Tenancy,
        topic: &str,
        payload: bytes::Bytes,
        qos: u8,
        retain: bool,
    ) -> usize {
        if retain {
            // This node's view first becomes the cluster's, so what the
            // bounds forget here is what they forget there.
            self.read_retained(tunnel, tenancy).await;
        }
        let qos = qos.min(1);
        let value = (retain && !payload.is_empty()).then(|| {
            let mut value = Vec::with_capacity(payload.len() + 1);
            value.push(qos);
            value.extend_from_slice(&payload);
            bytes::Bytes::from(value)
        });
        let published = self
            .subscriptions
            .publish(tunnel, tenancy, topic, payload, qos, retain);
        if let (true, Some(maps)) = (retain, self.maps.get()) {
            let map = retained_map(tunnel, tenancy);
            maps.set(map.clone(), topic.to_string(), value).await;
            for gone in published.forgotten {
                maps.set(map.clone(), gone, None).await;
            }
        }
        published.delivered
    }

    /// Publishes for `tunnel` (the app's message, under the tunnel's
    /// `tenancy`): `topic` is whole (`NAME/...`). Every device subscribed
    /// to a matching filter gets it at the lower of `qos` and its
    /// subscription's; `retain` keeps it for later subscribers. Returns how
    /// many devices it was handed to.
    pub fn publish(
        &self,
        tunnel: &str,
        tenancy: &Tenancy,
        topic: &str,
        payload: bytes::Bytes,
        qos: u8,
        retain: bool,
    ) -> usize {
        self.subscriptions
            .publish(tunnel, tenancy, topic, payload, qos.min(1), retain)
            .delivered
    }

    /// What its messages came to.
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// Registers the connection of `client_id` (scoped: see
    /// [`client_key`]); an older one with the same key is told to end
    /// (taken over). Returns its number and its token.
    fn take_over(&self, client_id: &str) -> (u64, CancellationToken) {
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, old)) = sessions.insert(client_id.to_string(), (number, token.clone())) {
            old.cancel();
        }
        (number, token)
    }

    /// Forgets the connection of `client_id`, unless a newer one took over.
    fn left(&self, client_id: &str, number: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.get(client_id).is_some_and(|(n, _)| *n == number) {
            sessions.remove(client_id);
        }
    }

    /// Serves one connection over any byte stream (tests use `io::duplex`).
    pub async fn serve_io<S>(self: Arc<Self>, io: S, peer: SocketAddr, shutdown: CancellationToken)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        session::run(self, io, peer, shutdown).await;
    }
}

impl Adapter for MqttAdapter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serve(
        self: Arc<Self>,
        io: Conn,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> ServeFuture {
        Box::pin(self.serve_io(io, peer, shutdown))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::{QoS, v4};

    #[test]
    fn packets_in_counts_whole_packets_and_stops_at_the_limit() {
        let mut buf = bytes::BytesMut::new();
        v4::Connect::new("dev").write(&mut buf).unwrap();
        v4::Publish::new("n/t", QoS::AtMostOnce, vec![b'x'; 100])
            .write(&mut buf)
            .unwrap();
        v4::PingReq.write(&mut buf).unwrap();
        assert_eq!(packets_in(&buf, 1 << 20), 3);
        assert_eq!(packets_in(&buf[..buf.len() - 1], 1 << 20), 2, "cut short");
        assert_eq!(packets_in(&buf, 64), 1, "the publish is over the limit");
        assert_eq!(packets_in(b"\x30\x00", 1 << 20), 0, "no CONNECT first");
    }
}
