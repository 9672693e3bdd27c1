//! The ports of TCP tunnels other nodes of the cluster hold, opened on
//! this node too, so `tcp://tunnel.example.com:PORT` answers on every node
//! the name's DNS records point at. Each connection goes to the node that
//! holds the tunnel over the peer link (`crate::peer`, mode `tcp:PORT`),
//! bytes unchanged both ways, each side's end carried to the other; that
//! node applies the tunnel's allow-list and rate as for its own visitors.
//!
//! A node learns of ports as it learns of names: a claim of `tcp:PORT` on
//! another node opens it here, a release closes it, and every lease the
//! set is made to match Redis (events missed while Redis was away). It
//! opens only ports in its own `--tcp-ports` range, on its `--tcp-bind`
//! address. When the tunnel's owner comes to this node, the port is given
//! up first, so the node's own listener can take it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use droid_core::conn_caps::{Admission, ConnCaps, ConnLimits};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::Shared;
use crate::peer::{self, Mode};
use crate::registry::{Lookup, port_key};
use crate::tcp_front::COPY_BUFFER;

/// Connections through one port at once, in total and from one address:
/// one tunnel's visitors do not crowd out another's.
const PER_PORT: ConnLimits = ConnLimits {
    max_connections: 128,
    max_per_ip: 16,
};

/// Connections through all of them at once: each holds a link to another
/// node, whose peer port takes at most 4,096 from this node, for HTTP
/// visitors and deliveries too.
const ALL_PORTS: ConnLimits = ConnLimits {
    max_connections: 2048,
    max_per_ip: 64,
};

/// How long the link to the node holding the tunnel may take to open.
const LINK_TIMEOUT: Duration = Duration::from_secs(5);

/// The ports open here for tunnels other nodes hold.
pub(crate) struct Mirrors {
    open: Mutex<HashMap<u16, Mirror>>,
    caps: Arc<ConnCaps>,
}

impl Default for Mirrors {
    fn default() -> Mirrors {
        Mirrors {
            open: Mutex::new(HashMap::new()),
            caps: ConnCaps::new(ALL_PORTS),
        }
    }
}

/// One port's listener: cancelled to close, and `closed` once it is.
struct Mirror {
    stop: CancellationToken,
    closed: CancellationToken,
}

impl Mirrors {
    /// Opens `port` here for a tunnel another node holds, unless it is
    /// open already, this node holds it itself, or it is not in this
    /// node's TCP range or not free here.
    pub(crate) fn open(&self, shared: &Arc<Shared>, port: u16) {
        let config = &shared.config;
        if shared.draining.is_cancelled()
            || !config
                .tcp_ports
                .as_ref()
                .is_some_and(|ports| ports.contains(port))
            || matches!(
                shared.registry.lookup(&port_key(port)),
                Lookup::Live(_) | Lookup::Resuming
            )
        {
            return;
        }
        let mut open = self.lock();
        if open.contains_key(&port) {
            return;
        }
        let listener =
            crate::registry::bind_port(config.tcp_bind, port).and_then(TcpListener::from_std);
        let listener = match listener {
            Ok(listener) => listener,
            Err(e) => {
                debug!(port, error = %e, "cannot open another node's TCP port here");
                return;
            }
        };
        let mirror = Mirror {
            stop: CancellationToken::new(),
            closed: CancellationToken::new(),
        };
        let (stop, closed) = (mirror.stop.clone(), mirror.closed.clone());
        open.insert(port, mirror);
        let caps = [self.caps.clone(), ConnCaps::new(PER_PORT)];
        let shared = shared.clone();
        tokio::spawn(async move {
            info!(port, "TCP port open for a tunnel another node holds");
            accept(&shared, port, listener, &caps, &stop).await;
            closed.cancel();
            info!(port, "TCP port of another node's tunnel closed");
        });
    }

    /// Whether `port` is open here for another node's tunnel.
    pub(crate) fn is_open(&self, port: u16) -> bool {
        self.lock().contains_key(&port)
    }

    /// Closes `port` here (its tunnel was released), without waiting.
    pub(crate) fn close(&self, port: u16) {
        if let Some(mirror) = self.lock().remove(&port) {
            mirror.stop.cancel();
        }
    }

    /// Closes `port` here and returns once its listener is gone, so this
    /// node can listen on it for its own tunnel.
    pub(crate) async fn give_up(&self, port: u16) {
        let mirror = self.lock().remove(&port);
        if let Some(mirror) = mirror {
            mirror.stop.cancel();
            mirror.closed.cancelled().await;
        }
    }

    /// Closes every port opened here (the node drains, or stops).
    pub(crate) fn close_all(&self) {
        for (_, mirror) in self.lock().drain() {
            mirror.stop.cancel();
        }
    }

    /// Makes the ports open here those of `live` (the TCP ports other
    /// nodes hold, as Redis says).
    pub(crate) fn match_live(&self, shared: &Arc<Shared>, live: &[u16]) {
        let stale: Vec<u16> = self
            .lock()
            .keys()
            .copied()
            .filter(|port| !live.contains(port))
            .collect();
        for port in stale {
            self.close(port);
        }
        for &port in live {
            self.open(shared, port);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Mirror>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn accept(
    shared: &Arc<Shared>,
    port: u16,
    listener: TcpListener,
    caps: &[Arc<ConnCaps>; 2],
    stop: &CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((socket, visitor)) => {
                let ip = visitor.ip();
                match (caps[0].admit(ip), caps[1].admit(ip)) {
                    (Admission::Admitted(all), Admission::Admitted(this)) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            forward(&shared, port, socket, visitor).await;
                            drop((all, this));
                        });
                    }
                    _ => {
                        debug!(port, %visitor, "too many connections through other nodes' ports");
                        let _ = socket.set_zero_linger();
                    }
                }
            }
            Err(e) => {
                debug!(port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Sends one visitor's connection to the node that holds the tunnel on
/// `port`; a reset when no node does, or it cannot be reached.
async fn forward(shared: &Shared, port: u16, mut socket: TcpStream, visitor: SocketAddr) {
    let Some(cluster) = shared.cluster.get() else {
        return;
    };
    let _ = socket.set_nodelay(true);
    let holder = match cluster.locate(&port_key(port)).await {
        Ok(Some(found)) => cluster.peer_serving(&found).map(str::to_string),
        _ => None,
    };
    let Some(addr) = holder else {
        debug!(port, %visitor, "no node holds this TCP port's tunnel now");
        let _ = socket.set_zero_linger();
        return;
    };
    let link = peer::open(cluster, &addr, Some(visitor), Mode::Tcp(port), LINK_TIMEOUT).await;
    let mut link = match link {
        Ok(link) => link,
        Err(e) => {
            debug!(port, node = %addr, error = %e, "the node holding a TCP tunnel did not answer");
            cluster.forget(&port_key(port));
            let _ = socket.set_zero_linger();
            return;
        }
    };
    let copied =
        tokio::io::copy_bidirectional_with_sizes(&mut socket, &mut link, COPY_BUFFER, COPY_BUFFER)
            .await;
    if let Err(e) = copied {
        debug!(port, %visitor, error = %e, "a TCP connection through another node ended with an error");
    }
}
