//! Syslog as a server runs it: a port per tunnel that asks, UDP and TCP on
//! the same number, held for the tunnel's owner while its name is.
//!
//! A port is opened when a tunnel is granted and stays its owner's across
//! reconnects; a sweep closes it once the name is no longer live for that
//! owner, and remembers whose it was: the owner's next connect gets it
//! again, while ports nobody remembers are left.
//!
//! In a cluster, the node that opens a port tells the others ([`Opened`],
//! sent to them and kept in the shared map [`PORTS_MAP`] for nodes that
//! start later), and each opens it too, on its own address: the messages
//! it takes go to the tunnel through the cluster, as its mail does. When
//! the tunnel moves to a node, that node already has its port.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use droid_core::sign::Secret;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::NAME;
use super::receive::{PortTarget, TcpSide, udp};
use super::settings::{SyslogConfig, SyslogGrant, SyslogSettings};
use crate::adapter::{Listener, run_adapter};
use crate::delivery::PostOptions;
use crate::host::{Grantee, Host, ServerAdapter, refused};
use crate::route::Answer;
use crate::stats::DeliveryStats;
use droid_core::protocol::AdapterSettings;

/// How often ports are checked for names no longer held.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How many ports are tried for one tunnel before it is refused.
const BIND_TRIES: usize = 64;

/// How many closed ports are remembered for their owners.
const REMEMBERED: usize = 10_000;

/// How often, and how far apart, a port another node told of is tried
/// before the next sweep tries it again.
const FOLLOW_TRIES: usize = 10;
const FOLLOW_PAUSE: Duration = Duration::from_millis(200);

/// The shared map of the ports nodes opened: `PORT` to [`Opened`].
const PORTS_MAP: &str = "syslog-ports";

/// A port a node opened for a tunnel, as it tells the other nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Opened {
    port: u16,
    name: String,
    owner: String,
}

/// Syslog for the tunnels that ask for it.
pub struct SyslogService {
    config: Arc<SyslogConfig>,
    stats: DeliveryStats,
    ports: Mutex<Ports>,
    host: OnceLock<Host>,
    tasks: TaskTracker,
    /// Ports other nodes opened, as they tell, until [`ServerAdapter::run`]
    /// takes the receiver.
    told: mpsc::UnboundedSender<Opened>,
    told_rx: Mutex<Option<mpsc::UnboundedReceiver<Opened>>>,
}

/// The open ports, and the closed ones remembered for their owners.
#[derive(Default)]
struct Ports {
    open: HashMap<u16, Port>,
    /// (owner, name) to the port it had, and the reverse.
    remembered: HashMap<(String, String), u16>,
    remembered_by_port: HashMap<u16, (String, String)>,
}

impl Ports {
    fn remember(&mut self, owner: &str, name: &str, port: u16) {
        if self.remembered.len() >= REMEMBERED
            && let Some(&old) = self.remembered_by_port.keys().next()
            && let Some(key) = self.remembered_by_port.remove(&old)
        {
            self.remembered.remove(&key);
        }
        let key = (owner.to_string(), name.to_string());
        if let Some(before) = self.remembered.insert(key.clone(), port) {
            self.remembered_by_port.remove(&before);
        }
        self.remembered_by_port.insert(port, key);
    }

    /// Whether `port` is open, or remembered for someone but `owner`.
    fn taken(&self, port: u16, owner: &str, name: &str) -> bool {
        self.open.contains_key(&port)
            || self
                .remembered_by_port
                .get(&port)
                .is_some_and(|(o, n)| o != owner || n != name)
    }
}

/// An open port and whose it is.
struct Port {
    target: Arc<PortTarget>,
    stop: CancellationToken,
}

impl SyslogService {
    /// Syslog with `config`; it opens no port until a tunnel asks.
    pub fn new(config: SyslogConfig) -> SyslogService {
        let (told, told_rx) = mpsc::unbounded_channel();
        SyslogService {
            config: Arc::new(config),
            stats: DeliveryStats::default(),
            ports: Mutex::new(Ports::default()),
            host: OnceLock::new(),
            tasks: TaskTracker::new(),
            told,
            told_rx: Mutex::new(Some(told_rx)),
        }
    }

    fn ports(&self) -> MutexGuard<'_, Ports> {
        self.ports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The port of `tunnel`: the one its owner holds, the one it asks for
    /// if free, or any free one.
    fn open(&self, tunnel: &Grantee<'_>, settings: &SyslogSettings) -> Result<u16, String> {
        let host = self
            .host
            .get()
            .ok_or("syslog is starting; connect again in a moment")?;
        let post = post_options(settings, tunnel.settings);
        let mut ports = self.ports();
        let held = ports
            .open
            .iter()
            .find(|(_, p)| p.target.owner == tunnel.owner && p.target.name == tunnel.name)
            .map(|(&port, _)| port);
        if let Some(port) = held.filter(|&p| settings.port.is_none_or(|wanted| wanted == p)) {
            *ports.open[&port]
                .target
                .post
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = post;
            return Ok(port);
        }
        let client = droid_core::conn_caps::address_of(tunnel.client);
        let most = self.config.max_ports_per_ip;
        let theirs = ports
            .open
            .values()
            .filter(|p| p.target.client == client)
            .count();
        if most > 0 && held.is_none() && theirs >= most {
            return Err(format!(
                "the clients of {client} have {theirs} syslog ports open, the most this server gives one address"
            ));
        }
        if let Some(wanted) = settings.port {
            self.check_wanted(&ports, wanted, tunnel)?;
        }
        let (tcp, udp_socket) = self.bind(&ports, settings.port, tunnel)?;
        let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
        if let Some(old) = held.and_then(|p| ports.open.remove(&p)) {
            old.stop.cancel();
        }
        let target = Arc::new(PortTarget {
            name: tunnel.name.to_string(),
            owner: tunnel.owner.to_string(),
            client,
            post: Mutex::new(post),
            config: self.config.clone(),
            host: host.clone(),
            stats: self.stats.clone(),
        });
        let stop = self.serve_port(host, tcp, udp_socket, target.clone());
        info!(tunnel = %tunnel.name, port, "syslog port opened");
        ports.remember(tunnel.owner, tunnel.name, port);
        ports.open.insert(port, Port { target, stop });
        self.tell_nodes(host, port, tunnel);
        Ok(port)
    }

    /// Serves `target` on a port's TCP and UDP sockets until the token
    /// returned is cancelled.
    fn serve_port(
        &self,
        host: &Host,
        tcp: TcpListener,
        udp_socket: UdpSocket,
        target: Arc<PortTarget>,
    ) -> CancellationToken {
        let stop = host.shutdown.child_token();
        self.tasks
            .spawn(udp(udp_socket, target.clone(), stop.clone()));
        // With the server's certificate, the TCP side takes TLS too
        // (RFC 5425), told apart by the client's first byte.
        let listener = match &host.tls {
            Some(acceptor) => Listener::tls_or_plain(tcp, acceptor.clone()),
            None => Listener::from(tcp),
        };
        self.tasks.spawn(run_adapter(
            [listener],
            Arc::new(TcpSide(target)),
            self.config.limits,
            stop.clone(),
        ));
        stop
    }

    /// Tells the other nodes, if any, that `port` is open for `tunnel`.
    fn tell_nodes(&self, host: &Host, port: u16, tunnel: &Grantee<'_>) {
        let opened = Opened {
            port,
            name: tunnel.name.to_string(),
            owner: tunnel.owner.to_string(),
        };
        let Ok(bytes) = serde_json::to_vec(&opened) else {
            return;
        };
        let host = host.clone();
        self.tasks.spawn(async move {
            let field = port.to_string();
            host.maps
                .set(PORTS_MAP.into(), field, Some(bytes.clone().into()))
                .await;
            host.broadcast.send(NAME, bytes.into()).await;
        });
    }

    /// Follows every port the shared map says a node opened.
    async fn follow_known(&self, host: &Host) {
        for (_, bytes) in host.maps.all(PORTS_MAP.into()).await.unwrap_or_default() {
            if let Ok(opened) = serde_json::from_slice::<Opened>(&bytes) {
                self.follow(host, opened).await;
            }
        }
    }

    /// Opens here the port another node opened for a tunnel: what it takes
    /// goes to the tunnel through the cluster. Not when the port is open
    /// here already (then `true`), is outside this node's range or not free
    /// here, or the tunnel is not live for that owner (`false`).
    async fn follow(&self, host: &Host, opened: Opened) -> bool {
        let port = opened.port;
        let outside = self
            .config
            .ports
            .is_some_and(|(low, high)| !(low..=high).contains(&port));
        if outside {
            return false;
        }
        if self.ports().open.contains_key(&port) {
            return true;
        }
        let tunnel = match host.tunnels.find(&opened.name).await {
            Ok(Some(tunnel)) if tunnel.owner == opened.owner => tunnel,
            _ => return false,
        };
        let Some(settings) = SyslogSettings::of(&tunnel.settings) else {
            return false;
        };
        let (tcp, udp_socket) = match bind_both(SocketAddr::new(self.config.bind, port)) {
            Ok(pair) => pair,
            Err(e) => {
                warn!(tunnel = %opened.name, port, error = %e, "cannot open here a syslog port another node opened");
                return false;
            }
        };
        let target = Arc::new(PortTarget {
            name: opened.name,
            owner: opened.owner,
            // Counts against no client of this node.
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            post: Mutex::new(post_options(&settings, &tunnel.settings)),
            config: self.config.clone(),
            host: host.clone(),
            stats: self.stats.clone(),
        });
        let mut ports = self.ports();
        if ports.open.contains_key(&port) {
            return true;
        }
        let stop = self.serve_port(host, tcp, udp_socket, target.clone());
        info!(tunnel = %target.name, port, "syslog port opened for a tunnel another node holds");
        ports.open.insert(port, Port { target, stop });
        true
    }

    fn check_wanted(&self, ports: &Ports, wanted: u16, tunnel: &Grantee<'_>) -> Result<(), String> {
        if let Some((low, high)) = self.config.ports
            && !(low..=high).contains(&wanted)
        {
            return Err(format!(
                "port {wanted} is outside this server's syslog ports ({low}-{high}); ask for one in it, or for none to get any"
            ));
        }
        if ports.taken(wanted, tunnel.owner, tunnel.name) {
            return Err(format!(
                "syslog port {wanted} is another tunnel's; ask for another, or for none to get a free one"
            ));
        }
        Ok(())
    }

    /// Binds TCP and UDP on one port number: `wanted`, the one the tunnel
    /// had, or a free one.
    fn bind(
        &self,
        ports: &Ports,
        wanted: Option<u16>,
        tunnel: &Grantee<'_>,
    ) -> Result<(TcpListener, UdpSocket), String> {
        let ip = self.config.bind;
        let had = ports
            .remembered
            .get(&(tunnel.owner.to_string(), tunnel.name.to_string()))
            .copied();
        let mut candidates: Vec<u16> = match wanted {
            Some(port) => vec![port],
            None => had.into_iter().collect(),
        };
        if wanted.is_none() {
            match self.config.ports {
                None => candidates.extend([0; BIND_TRIES]),
                Some((low, high)) => {
                    let span = u32::from(high - low) + 1;
                    let start = rand::random::<u32>() % span;
                    let range = (0..span).map(|i| low + ((start + i) % span) as u16);
                    let free: Vec<u16> = range
                        .clone()
                        .filter(|&p| !ports.taken(p, tunnel.owner, tunnel.name))
                        .collect();
                    // Ports remembered for others go last, once no other
                    // is free.
                    let others = range.filter(|p| !ports.open.contains_key(p));
                    candidates.extend(free.into_iter().chain(others).take(BIND_TRIES));
                }
            }
        }
        let mut last = self.full();
        for port in candidates {
            match bind_both(SocketAddr::new(ip, port)) {
                Ok(pair) => return Ok(pair),
                Err(e) => last = format!("cannot open syslog port {port} on {ip}: {e}"),
            }
        }
        Err(match wanted {
            None if self.config.ports.is_some() => self.full(),
            _ => last,
        })
    }

    fn full(&self) -> String {
        let (low, high) = self.config.ports.unwrap_or((0, 0));
        format!(
            "no free port is left in this server's syslog ports ({low}-{high}); try again later"
        )
    }

    /// Closes the ports whose names are no longer live for their owner.
    async fn sweep(&self, host: &Host) {
        let held: Vec<(u16, Arc<PortTarget>)> = self
            .ports()
            .open
            .iter()
            .map(|(&port, p)| (port, p.target.clone()))
            .collect();
        for (port, target) in held {
            let gone = match host.tunnels.find(&target.name).await {
                Ok(Some(tunnel)) => tunnel.owner != target.owner,
                Ok(None) => true,
                Err(_) => false,
            };
            if gone && self.close(port, &target) {
                host.maps
                    .set(PORTS_MAP.into(), port.to_string(), None)
                    .await;
            }
        }
    }
}

impl SyslogService {
    /// Closes `port` if it still serves `target`; whether it did.
    fn close(&self, port: u16, target: &Arc<PortTarget>) -> bool {
        let mut ports = self.ports();
        let serves = ports
            .open
            .get(&port)
            .is_some_and(|p| Arc::ptr_eq(&p.target, target));
        if !serves {
            return false;
        }
        if let Some(p) = ports.open.remove(&port) {
            p.stop.cancel();
            info!(tunnel = %target.name, port, "syslog port closed; kept for its owner while free");
        }
        true
    }
}

/// How a tunnel's messages are POSTed, from what its client asked.
fn post_options(settings: &SyslogSettings, adapters: &AdapterSettings) -> PostOptions {
    PostOptions {
        adapter: NAME.into(),
        path: settings.path().to_string(),
        content_type: "application/json".into(),
        secret: Secret::key_of(adapters.secret.as_deref().unwrap_or_default()),
    }
}

/// TCP and UDP bound to the same address (port 0: TCP picks, UDP follows).
fn bind_both(addr: SocketAddr) -> std::io::Result<(TcpListener, UdpSocket)> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let tcp = socket.listen(crate::adapter::LISTEN_BACKLOG)?;
    let bound = tcp.local_addr()?;
    let udp = std::net::UdpSocket::bind(bound)?;
    // Room for a burst: datagrams that find the buffer full are lost.
    let udp = socket2::Socket::from(udp);
    if let Err(e) = udp.set_recv_buffer_size(4 << 20) {
        warn!(error = %e, "syslog: a larger UDP receive buffer was refused");
    }
    udp.set_nonblocking(true)?;
    let udp = UdpSocket::from_std(udp.into())?;
    Ok((tcp, udp))
}

impl ServerAdapter for SyslogService {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(self: Arc<Self>, host: Host) -> Answer<'static, ()> {
        let _ = self.host.set(host.clone());
        let told = self
            .told_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Box::pin(async move {
            // The ports other nodes opened before this one started.
            self.follow_known(&host).await;
            let mut told = told;
            let mut sweep = tokio::time::interval(SWEEP_EVERY);
            sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            sweep.tick().await;
            loop {
                let next_told = async {
                    match &mut told {
                        Some(told) => told.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = host.shutdown.cancelled() => break,
                    _ = sweep.tick() => {
                        self.sweep(&host).await;
                        self.follow_known(&host).await;
                    }
                    Some(opened) = next_told => {
                        // Told as the port opens, maybe before the
                        // tunnel's claim reached Redis: tried a few times.
                        let (service, host) = (self.clone(), host.clone());
                        self.tasks.spawn(async move {
                            for _ in 0..FOLLOW_TRIES {
                                if service.follow(&host, opened.clone()).await {
                                    return;
                                }
                                tokio::time::sleep(FOLLOW_PAUSE).await;
                            }
                        });
                    }
                }
            }
            self.tasks.close();
            self.tasks.wait().await;
        })
    }

    fn received(&self, bytes: bytes::Bytes) {
        match serde_json::from_slice::<Opened>(&bytes) {
            Ok(opened) => {
                let _ = self.told.send(opened);
            }
            Err(e) => tracing::debug!(error = %e, "syslog: a malformed message from another node"),
        }
    }

    fn grant(&self, tunnel: &Grantee<'_>) -> Option<serde_json::Value> {
        let settings = SyslogSettings::of(tunnel.settings)?;
        Some(match self.open(tunnel, &settings) {
            Ok(port) => {
                let host = self
                    .config
                    .host
                    .clone()
                    .unwrap_or_else(|| tunnel.domain.to_string());
                let tls = self.host.get().is_some_and(|h| h.tls.is_some());
                serde_json::to_value(SyslogGrant { host, port, tls }).unwrap_or_default()
            }
            Err(why) => {
                info!(tunnel = %tunnel.name, %why, "syslog refused");
                refused(why)
            }
        })
    }

    fn stats(&self) -> Option<(&'static str, &'static str, DeliveryStats)> {
        Some(("droid_syslog", "syslog messages", self.stats.clone()))
    }
}
