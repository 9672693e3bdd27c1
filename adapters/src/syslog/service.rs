//! Syslog as a server runs it: a port per tunnel that asks, UDP and TCP on
//! the same number, held for the tunnel's owner while its name is.
//!
//! A port is opened when a tunnel is granted and stays its owner's across
//! reconnects; a sweep closes it once the name is no longer live for that
//! owner, and remembers whose it was: the owner's next connect gets it
//! again, while ports nobody remembers are left.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use droid_core::sign::Secret;
use tokio::net::{TcpListener, UdpSocket};
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

/// How often ports are checked for names no longer held.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How many ports are tried for one tunnel before it is refused.
const BIND_TRIES: usize = 64;

/// How many closed ports are remembered for their owners.
const REMEMBERED: usize = 10_000;

/// Syslog for the tunnels that ask for it.
pub struct SyslogService {
    config: Arc<SyslogConfig>,
    stats: DeliveryStats,
    ports: Mutex<Ports>,
    host: OnceLock<Host>,
    tasks: TaskTracker,
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
        SyslogService {
            config: Arc::new(config),
            stats: DeliveryStats::default(),
            ports: Mutex::new(Ports::default()),
            host: OnceLock::new(),
            tasks: TaskTracker::new(),
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
        let post = PostOptions {
            adapter: NAME.into(),
            path: settings.path().to_string(),
            content_type: "application/json".into(),
            secret: Secret::key_of(tunnel.settings.secret.as_deref().unwrap_or_default()),
        };
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
            Arc::new(TcpSide(target.clone())),
            self.config.limits,
            stop.clone(),
        ));
        info!(tunnel = %tunnel.name, port, "syslog port opened");
        ports.remember(tunnel.owner, tunnel.name, port);
        ports.open.insert(port, Port { target, stop });
        Ok(port)
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
            if gone {
                let mut ports = self.ports();
                if ports
                    .open
                    .get(&port)
                    .is_some_and(|p| Arc::ptr_eq(&p.target, &target))
                    && let Some(p) = ports.open.remove(&port)
                {
                    p.stop.cancel();
                    info!(tunnel = %target.name, port, "syslog port closed; kept for its owner while free");
                }
            }
        }
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
        Box::pin(async move {
            loop {
                tokio::select! {
                    () = host.shutdown.cancelled() => break,
                    () = tokio::time::sleep(SWEEP_EVERY) => self.sweep(&host).await,
                }
            }
            self.tasks.close();
            self.tasks.wait().await;
        })
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
