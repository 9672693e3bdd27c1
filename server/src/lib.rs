//! Droid's public server.
//!
//! - [`registry`]: who holds which name (live, resuming, quarantined).
//! - [`names`]: valid names, and random readable ones.
//! - [`cluster`]: names agreed on by several servers, in Redis.
//! - `directory`: where the cluster's names are, as a node remembers.
//! - [`name_store`]: names written down, to outlive a restart (`--state`).
//! - [`name_budget`]: how many names each address and token may add, and
//!   how fast.
//! - `control`: a client's session: handshake, heartbeats, goodbye.
//! - `http_front`: the public HTTP listener, routing by Host into tunnels.
//! - `tls`: TLS on the control port, and the HTTPS listener (SNI checked
//!   against the domain, then HTTP as on the plain listener).
//! - `listener`: the accept loop every listener shares.
//! - `tcp_front`: a TCP tunnel's public port: each connection a stream of
//!   raw bytes to the tunnel's client.
//! - [`rate`]: each tunnel's request rate limit (429 past it).
//! - `deliveries`: the tunnels as every adapter sees them
//!   ([`droid_adapters::Tunnels`]), and the sink that POSTs an adapter's
//!   message through one.
//! - `calls`: the streams a client opens to call an adapter for its app.
//! - `metrics`: requests, the server's own answers, durations, bytes,
//!   names by state, sessions, streams and deliveries, for Prometheus.
//!
//! The server runs adapters it is given ([`Server::add_adapter`]) and
//! knows them only through [`ServerAdapter`]: what a protocol means stays
//! in `adapters/`.
//!
//! Every listener-owning function takes a bound listener and a cancellation
//! token, so tests bind port 0 and run in parallel, and the binary decides
//! where to listen.
#![warn(missing_docs)]

pub mod access;
pub mod auth;
mod calls;
pub mod cluster;
pub mod cluster_status;
mod control;
mod deliveries;
mod directory;
mod http1;
mod http_front;
mod listener;
mod metrics;
pub mod name_budget;
pub mod name_store;
pub mod names;
mod peer;
mod peer_tls;
pub mod rate;
mod redis_link;
pub mod registry;
pub mod request_log;
mod tcp_front;
mod tcp_mirror;
mod tls;

use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use droid_adapters::{ConnLimits, Host, ServerAdapter, Spool, Tunnels};
use droid_core::conn_caps::ConnCaps;
use droid_core::protocol;
use droid_core::session::DEFAULT_CONCURRENT_STREAMS;
pub use droid_core::transport::ServerTls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{AuthPolicy, TokenRule};
pub use http1::read_as_visitor_and_app;
pub use name_budget::NameLimits;
pub use name_store::{NameStore, RedbNames, StoreError};
pub use peer_tls::{MIN_SECRET_LEN, check_secret};
pub use rate::RequestRate;
pub use registry::{NamePolicy, Registry, TcpPorts};

/// What a server needs to know; every field has a sensible default but the domain.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Tunnels live at `NAME.domain`.
    pub domain: String,
    /// The port public URLs carry; `None` when it is the scheme's default.
    pub public_port: Option<u16>,
    /// How long names are kept for their owners.
    pub names: NamePolicy,
    /// How often clients are told to send a heartbeat.
    pub heartbeat_interval: Duration,
    /// A client silent for this long is dead.
    pub heartbeat_timeout: Duration,
    /// Streams open at once per tunnel session; more requests wait.
    pub max_streams_per_tunnel: usize,
    /// How long a request waits for a free stream before a 503.
    pub stream_open_timeout: Duration,
    /// How long a visitor may take to send a request's headers; also how
    /// long a kept-alive connection may wait idle for its next request.
    pub header_read_timeout: Duration,
    /// The most bytes of a request line and headers: more gets a 431.
    pub max_header_size: usize,
    /// The most header fields in a request: more gets a 431.
    pub max_headers: usize,
    /// The largest request body, with Content-Length or chunked: more gets
    /// a 413. `None`: no limit.
    pub max_body_size: Option<u64>,
    /// The longest a visitor may pause while sending a request body.
    pub body_read_timeout: Duration,
    /// Requests per second (and burst) each tunnel takes from visitors;
    /// more get a 429 with `Retry-After`. `None`: no limit.
    pub request_rate: Option<RequestRate>,
    /// Tokens, reserved names and tunnel limits.
    pub auth: AuthPolicy,
    /// The certificate chain and key of the control port (TLS is then
    /// required there) and of the HTTPS listener.
    pub tls: Option<ServerTls>,
    /// Whether an HTTPS listener runs: welcome URLs then say `https://`.
    pub https: bool,
    /// The public ports TCP tunnels get; `None`: TCP tunnels are refused.
    pub tcp_ports: Option<TcpPorts>,
    /// The address TCP tunnels' ports listen on.
    pub tcp_bind: std::net::IpAddr,
    /// The host TCP tunnels' URLs name; `None`: the domain.
    pub tcp_host: Option<String>,
    /// Client sessions (control connections) open at once, in total and
    /// from one address; more are refused with a sentence saying so.
    pub sessions: ConnLimits,
    /// Visitor connections open at once on the HTTP and HTTPS fronts
    /// together, in total and from one address; more get a 503.
    pub visitors: ConnLimits,
    /// The longest a drain ([`Server::drain`]) waits for what is in
    /// flight before the server stops.
    pub drain_timeout: Duration,
}

impl ServerConfig {
    /// A configuration with defaults for everything but the domain.
    pub fn new(domain: impl Into<String>) -> ServerConfig {
        ServerConfig {
            domain: domain.into().trim_end_matches('.').to_ascii_lowercase(),
            public_port: None,
            names: NamePolicy::default(),
            heartbeat_interval: protocol::DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: protocol::DEFAULT_HEARTBEAT_TIMEOUT,
            max_streams_per_tunnel: DEFAULT_CONCURRENT_STREAMS,
            stream_open_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(20),
            max_header_size: 64 * 1024,
            max_headers: 100,
            max_body_size: None,
            body_read_timeout: Duration::from_secs(60),
            request_rate: None,
            auth: AuthPolicy::default(),
            tls: None,
            https: false,
            tcp_ports: None,
            tcp_bind: std::net::IpAddr::from([0, 0, 0, 0]),
            tcp_host: None,
            sessions: ConnLimits {
                max_connections: 20_000,
                max_per_ip: 50,
            },
            visitors: ConnLimits {
                max_connections: 20_000,
                max_per_ip: 256,
            },
        }
    }

    /// The public address of a TCP tunnel's port.
    pub fn tcp_url_for(&self, port: u16) -> String {
        format!(
            "tcp://{}:{port}",
            self.tcp_host.as_deref().unwrap_or(&self.domain)
        )
    }

    /// The public URL of a tunnel.
    pub fn url_for(&self, name: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match self.public_port {
            Some(port) => format!("{scheme}://{name}.{}:{port}", self.domain),
            None => format!("{scheme}://{name}.{}", self.domain),
        }
    }
}

pub(crate) struct Shared {
    config: ServerConfig,
    registry: Registry,
    auth: auth::Auth,
    /// The spool the adapters share, once they run: woken when an owner
    /// reconnects.
    spool: OnceLock<Arc<Spool>>,
    metrics: metrics::Metrics,
    /// The adapters this server runs.
    adapters: RwLock<Vec<Arc<dyn ServerAdapter>>>,
    /// The cluster registry, when this server is one node of several.
    cluster: OnceLock<Arc<cluster::Cluster>>,
    /// Connections kept for adapters' deliveries.
    pools: deliveries::DeliveryPools,
    /// The caps on client sessions.
    session_caps: Arc<ConnCaps>,
    /// The caps on visitors' connections, HTTP and HTTPS together.
    visitor_caps: Arc<ConnCaps>,
    /// Cancelled when the server starts to drain ([`Server::drain`]).
    draining: CancellationToken,
    /// The TCP ports of tunnels other nodes hold, open here too.
    mirrors: tcp_mirror::Mirrors,
}

impl Shared {
    /// The adapters this server runs.
    fn adapters(&self) -> Vec<Arc<dyn ServerAdapter>> {
        self.adapters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The adapter named `name`, if this server runs it.
    fn adapter(&self, name: &str) -> Option<Arc<dyn ServerAdapter>> {
        self.adapters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|a| a.name() == name)
            .cloned()
    }

    /// Retries the spooled deliveries of these tunnels now: their owner is
    /// back.
    fn wake_deliveries(&self, tunnels: &[Arc<registry::Tunnel>]) {
        if let Some(spool) = self.spool.get() {
            for tunnel in tunnels {
                spool.wake(&deliveries::owner_key(&tunnel.owner_id, &tunnel.name));
            }
        }
    }
}

impl cluster::Events for Arc<Shared> {
    fn claimed(&self, owner: &str, name: &str) {
        // Claimed on another node (here, the name is live): what this node
        // remembers of its release is stale.
        self.registry.moved_away(name);
        if let Some(port) = registry::key_port(name) {
            // Live on another node (or here: then it stays closed).
            self.mirrors.open(self, port);
        }
        if let Some(spool) = self.spool.get() {
            spool.wake(&deliveries::owner_key(owner, name));
        }
    }

    fn released(&self, name: &str) {
        if let Some(port) = registry::key_port(name) {
            self.mirrors.close(port);
        }
    }

    fn received(&self, adapter: &str, bytes: bytes::Bytes) {
        if let Some(adapter) = self.adapter(adapter) {
            adapter.received(bytes);
        }
    }
}

/// A Droid server. Cheap to clone; clones share the registry.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    /// A server with an empty registry.
    pub fn new(config: ServerConfig) -> Server {
        let auth = auth::Auth::new(config.auth.clone());
        let registry = Registry::with_reserved(config.names.clone(), auth.reserved_names());
        Server::with_registry(config, auth, registry)
    }

    /// A server whose names are written down in `store`, starting from the
    /// names it holds (see [`Registry::keep_in`]); also how many those are.
    pub fn with_names(
        config: ServerConfig,
        store: Arc<dyn NameStore>,
    ) -> Result<(Server, usize), StoreError> {
        let auth = auth::Auth::new(config.auth.clone());
        let mut registry = Registry::with_reserved(config.names.clone(), auth.reserved_names());
        let restored = registry.keep_in(store)?;
        Ok((Server::with_registry(config, auth, registry), restored))
    }

    fn with_registry(config: ServerConfig, auth: auth::Auth, registry: Registry) -> Server {
        Server {
            shared: Arc::new(Shared {
                session_caps: ConnCaps::new(config.sessions),
                visitor_caps: ConnCaps::new(config.visitors),
                draining: CancellationToken::new(),
                mirrors: tcp_mirror::Mirrors::default(),
                config,
                registry,
                auth,
                spool: OnceLock::new(),
                metrics: metrics::Metrics::new(),
                adapters: RwLock::new(Vec::new()),
                cluster: OnceLock::new(),
                pools: deliveries::DeliveryPools::default(),
            }),
        }
    }

    /// Makes this server one node of a cluster: from now on a claim must
    /// be granted by the cluster's registry too. Call it before the server
    /// takes clients, and run [`Server::keep_cluster_lease`] while it runs.
    pub fn join_cluster(&self, cluster: Arc<cluster::Cluster>) {
        self.shared
            .metrics
            .count_lookups(&cluster.lookups, cluster.node_id());
        let _ = self.shared.cluster.set(cluster);
    }

    /// Keeps this node's lease in the cluster until `shutdown`, and claims
    /// its live names again if Redis lost them; follows the cluster's
    /// events, and with Sentinel its failovers, meanwhile.
    pub async fn keep_cluster_lease(&self, shutdown: CancellationToken) {
        let Some(cluster) = self.shared.cluster.get() else {
            return;
        };
        let live = || self.shared.registry.live_sessions();
        let lease = cluster.keep_lease(live, shutdown.clone());
        let failovers = cluster.follow_failovers(live, shutdown.clone());
        let events = cluster.follow(&self.shared, shutdown.clone());
        let mirrors = self.keep_mirrors(cluster, shutdown);
        tokio::join!(lease, failovers, events, mirrors);
        self.shared.mirrors.close_all();
    }

    /// Every lease, opens here the TCP ports other nodes hold and closes
    /// those they gave back (their events may have been missed).
    async fn keep_mirrors(&self, cluster: &cluster::Cluster, shutdown: CancellationToken) {
        if self.shared.config.tcp_ports.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(cluster.lease().max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            if let Some(live) = cluster.ports_elsewhere().await {
                self.shared.mirrors.match_live(&self.shared, &live);
            }
        }
    }

    /// The registry of names.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// Accepts the other nodes of the cluster on the peer port until
    /// `shutdown`: requests for this node's tunnels that visitors sent to
    /// them. Without [`Server::join_cluster`] it closes every connection.
    pub async fn serve_peers(&self, listener: TcpListener, shutdown: CancellationToken) {
        let shared = self.shared.clone();
        // Only the cluster's nodes have business here.
        let caps = ConnCaps::new(ConnLimits {
            max_connections: 4096,
            max_per_ip: 1024,
        });
        listener::accept_loop(
            listener,
            "peer",
            caps,
            shutdown,
            move |stream, from| peer::serve(shared.clone(), stream, from),
            |_, _, _| async {},
        )
        .await;
    }

    /// Accepts clients on the control port until `shutdown`.
    pub async fn serve_control(&self, listener: TcpListener, shutdown: CancellationToken) {
        let shared = self.shared.clone();
        let token = shutdown.clone();
        let refusing = self.shared.clone();
        listener::accept_loop(
            listener,
            "control",
            self.shared.session_caps.clone(),
            self.accepting(&shutdown),
            move |stream, peer| tls::serve_control(shared.clone(), stream, peer, token.clone()),
            move |stream, peer, why| tls::refuse_control(refusing.clone(), stream, peer, why),
        )
        .await;
    }

    /// Accepts visitors on the public HTTPS port until `shutdown`, with the
    /// certificate of [`ServerConfig::tls`]. A handshake whose SNI is not
    /// the domain or `NAME.domain` is refused; a request whose Host names
    /// another host than the SNI gets 421. Without a certificate it logs an
    /// error and returns.
    pub async fn serve_https(&self, listener: TcpListener, shutdown: CancellationToken) {
        let Some(acceptor) = tls::https_acceptor(&self.shared.config) else {
            return;
        };
        let shared = self.shared.clone();
        let refusing = (self.shared.clone(), acceptor.clone());
        listener::accept_loop(
            listener,
            "https",
            self.shared.visitor_caps.clone(),
            self.accepting(&shutdown),
            move |stream, peer| tls::serve_https(shared.clone(), acceptor.clone(), stream, peer),
            move |stream, _, why| {
                tls::refuse_https(refusing.0.clone(), refusing.1.clone(), stream, why)
            },
        )
        .await;
    }

    /// Accepts visitors on the public HTTP port until `shutdown`.
    pub async fn serve_http(&self, listener: TcpListener, shutdown: CancellationToken) {
        let shared = self.shared.clone();
        let refusing = self.shared.clone();
        listener::accept_loop(
            listener,
            "http",
            self.shared.visitor_caps.clone(),
            self.accepting(&shutdown),
            move |stream, peer| http_front::serve(shared.clone(), stream, peer),
            move |stream, _, why| http_front::refuse(refusing.clone(), stream, why),
        )
        .await;
    }

    /// A token for a public listener: cancelled at `shutdown`, or as soon
    /// as the server starts to drain.
    fn accepting(&self, shutdown: &CancellationToken) -> CancellationToken {
        let token = shutdown.child_token();
        let (draining, stop) = (self.shared.draining.clone(), token.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = draining.cancelled() => stop.cancel(),
                () = stop.cancelled() => {}
            }
        });
        token
    }

    /// A token cancelled when the server starts to drain: what the
    /// adapters stop taking new connections on.
    pub fn draining(&self) -> CancellationToken {
        self.shared.draining.clone()
    }

    /// Drains the server before it stops (a rolling restart): its public
    /// listeners stop taking visitors and clients, idle visitor
    /// connections close, and each client is told to move to its next
    /// server (in a cluster its names go with it). Returns once no visitor
    /// connection is open and, in a cluster, every client has moved; or
    /// after [`ServerConfig::drain_timeout`]. Then cancel the server's
    /// shutdown token: names still here are released for their owners.
    pub async fn drain(&self) {
        let shared = &self.shared;
        shared.draining.cancel();
        shared.mirrors.close_all();
        let started = tokio::time::Instant::now();
        let in_flight = || {
            let sessions = match shared.cluster.get() {
                Some(_) => shared.session_caps.open(),
                // Alone, a server's clients have nowhere to go but back
                // here once it restarts.
                None => 0,
            };
            (shared.visitor_caps.open(), sessions)
        };
        tracing::info!(
            visitors = in_flight().0,
            sessions = shared.session_caps.open(),
            "draining"
        );
        let settled = async {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while in_flight() != (0, 0) {
                tick.tick().await;
            }
        };
        let within = shared.config.drain_timeout;
        if tokio::time::timeout(within, settled).await.is_err() {
            let (visitors, sessions) = in_flight();
            tracing::warn!(
                visitors,
                sessions,
                ?within,
                "drain time is up; stopping with these still open"
            );
        } else {
            tracing::info!(took = ?started.elapsed(), "drained");
        }
    }

    /// The tunnels as the adapters see them: by name, and by spool owner.
    pub fn tunnels(&self) -> Arc<dyn Tunnels> {
        Arc::new(deliveries::RegistryTunnels::new(self.shared.clone()))
    }

    /// Runs `adapter` for the tunnels once [`Server::serve_adapters`]
    /// starts: from now on the welcome says what it grants each tunnel
    /// that asks for it. Add every adapter before clients connect.
    pub fn add_adapter(&self, adapter: Arc<dyn ServerAdapter>) {
        self.shared
            .adapters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(adapter);
    }

    /// Starts the adapters added, now: each is given its host before this
    /// returns, so a client that connects next is granted by running
    /// adapters. The future runs them until `shutdown`, then drains them.
    /// With a spool, what an app cannot take now is kept and retried (at
    /// once when its owner reconnects); without one, adapters refuse it
    /// for now.
    pub fn serve_adapters(
        &self,
        spool: Option<Arc<Spool>>,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let retries = spool.as_ref().map(|spool| {
            let _ = self.shared.spool.set(spool.clone());
            tokio::spawn(spool.clone().run(self.tunnels(), shutdown.clone()))
        });
        let host = Host {
            tunnels: self.tunnels(),
            domain: self.shared.config.domain.clone(),
            spool,
            tls: self.shared.config.tls.as_ref().map(|tls| tls.acceptor()),
            broadcast: Arc::new(deliveries::ClusterBroadcast(self.shared.clone())),
            maps: Arc::new(deliveries::ClusterMaps(self.shared.clone())),
            shutdown,
        };
        let running: Vec<_> = self
            .shared
            .adapters()
            .into_iter()
            .map(|adapter| {
                let run = adapter.clone().run(host.clone());
                if let Some((prefix, what, stats)) = adapter.stats() {
                    self.shared.metrics.count_deliveries(prefix, what, &stats);
                }
                for (name, help, counter) in adapter.counters() {
                    self.shared.metrics.count(name, help, counter);
                }
                run
            })
            .collect();
        async move {
            futures::future::join_all(running).await;
            if let Some(retries) = retries {
                let _ = retries.await;
            }
        }
    }

    /// Serves `GET /metrics` (Prometheus's text format) until `shutdown`.
    pub async fn serve_metrics(&self, listener: TcpListener, shutdown: CancellationToken) {
        metrics::serve(self.shared.clone(), listener, shutdown).await;
    }

    /// The metrics as `/metrics` shows them now.
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.encode(&self.shared)
    }

    /// Runs the control and HTTP listeners, and forgets expired names now and
    /// then, until `shutdown`.
    pub async fn run(&self, http: TcpListener, control: TcpListener, shutdown: CancellationToken) {
        let prune = {
            let server = self.clone();
            let shutdown = shutdown.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tokio::select! {
                        _ = every.tick() => server.registry().prune(),
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        };
        tokio::join!(
            self.serve_http(http, shutdown.clone()),
            self.serve_control(control, shutdown.clone()),
            prune
        );
    }
}
