//! Adapters' deliveries into tunnels: the server's side of the adapters.
//!
//! The adapters know nothing of tunnels; they map their own addresses onto
//! names (a recipient's domain, a topic's first level) and ask [`Tunnels`], implemented
//! here over the registry, for NAME: while it is live or resuming they get
//! its owner key `OWNER_ID/NAME` (so a spooled message goes back only to
//! the same owner's tunnel of the same name, never to whoever holds the
//! name later), the settings its client asked of each adapter, and a sink
//! through it.
//!
//! A delivery is a POST on a tunnel stream, which the client pipes into a
//! connection to the app. Streams whose exchange ended cleanly are kept in
//! a [`Pool`] per tunnel session ([`TunnelPools`]), so message after
//! message reuses one stream and one connection to the app instead of
//! opening both each time.
//!
//! In a cluster, a name another node serves is found in Redis (with the
//! settings its client gave that node), so this node's adapters take its
//! messages and spool them here; each delivery is then POSTed to that
//! node's peer port ([`NodeSink`], connections kept in a pool per node),
//! which sends it through the tunnel as its own ([`serve_node_deliveries`])
//! and answers with the app's answer, or says why it could not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use droid_adapters::pool::{self, Pool, SendError, Sender};
use droid_adapters::{Answer, Destination, Owners, Tunnels, Unavailable};
use droid_core::deliver::{Deliver, DeliverError, DeliverErrorKind, DeliverFuture};
use droid_core::protocol::{self, StreamHeader};
use droid_core::proxy;
use droid_core::session::Opener;
use http::header::{HOST, HeaderValue};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::Shared;
use crate::directory::Located;
use crate::registry::{Lookup, Tunnel};

/// The most of an app's answer kept for the adapter's reply.
const MAX_ANSWER: usize = 64 * 1024;

/// The most idle delivery streams kept per tunnel; never more than a
/// quarter of the streams a tunnel may have open, so that idle delivery
/// streams cannot crowd out visitors.
const MAX_IDLE_STREAMS: usize = 32;

/// Deliveries through one tunnel at once, per idle stream kept: more wait
/// for one to finish and take its stream. Without this bound a burst of
/// 256 opened a stream, and a connection to the app, for each, and closed
/// most of them after: a tenth of the rate of 64 at once.
const BUSY_PER_IDLE_STREAM: usize = 2;

/// The most of a delivery a node takes from another: more than any
/// adapter sends.
const MAX_NODE_DELIVERY: usize = 256 * 1024 * 1024;

/// The headers that name a delivery's tunnel and owner between nodes.
const NODE_TUNNEL: &str = "droid-node-tunnel";
const NODE_OWNER: &str = "droid-node-owner";
/// Set on a node's own answer when it could not deliver: `offline` or
/// `broken`; the body says why.
const NODE_FAILURE: &str = "droid-node-failure";

/// Idle connections kept for deliveries: delivery streams per tunnel
/// session, and connections to other nodes' peer ports. One per server,
/// shared by all its adapters and its spool.
#[derive(Default)]
pub(crate) struct DeliveryPools {
    tunnels: Arc<TunnelPools>,
    /// By peer address.
    nodes: Mutex<HashMap<String, Arc<Pool>>>,
}

impl DeliveryPools {
    /// The pool of connections to the node at `addr`.
    fn node(&self, addr: &str) -> Arc<Pool> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .entry(addr.to_string())
            .or_insert_with(|| Pool::new(MAX_IDLE_STREAMS, pool::IDLE_TIMEOUT))
            .clone()
    }
}

/// The tunnels of the registry (and of the cluster's other nodes), as the
/// adapters see them.
pub(crate) struct RegistryTunnels {
    shared: Arc<Shared>,
}

impl RegistryTunnels {
    pub(crate) fn new(shared: Arc<Shared>) -> RegistryTunnels {
        RegistryTunnels { shared }
    }

    fn sink_to(&self, name: &str, owner_id: &str) -> Arc<dyn Deliver> {
        Arc::new(TunnelSink {
            shared: self.shared.clone(),
            name: name.to_string(),
            owner_id: owner_id.to_string(),
        })
    }

    /// The tunnel `name` here, live, or resuming if the cluster knows no
    /// better; else where the cluster says it is.
    async fn find_tunnel(&self, name: &str) -> Result<Option<Destination>, Unavailable> {
        if let Lookup::Live(tunnel) = self.shared.registry.lookup(name) {
            return Ok(self.local(&tunnel));
        }
        let holder = self.shared.registry.holder(name);
        // Resuming here, its owner may be back on another node already.
        if let Some(cluster) = self.shared.cluster.get() {
            match cluster.locate(name).await {
                Ok(Some(found)) => {
                    // A TCP tunnel's record has no settings: no adapter's
                    // messages.
                    let Some(settings) = found.settings.clone() else {
                        return Ok(None);
                    };
                    return Ok(Some(Destination {
                        name: name.to_string(),
                        owner: owner_key(&found.owner, name),
                        sink: self.remote_sink(name, &found),
                        settings,
                    }));
                }
                Ok(None) => {}
                // Resuming here: the message waits for its owner anyway.
                Err(_) if holder.is_some() => {}
                Err(e) => return Err(Unavailable(e.to_string())),
            }
        }
        Ok(holder.and_then(|t| self.local(&t)))
    }

    /// A tunnel of this node, unless it is a TCP tunnel.
    fn local(&self, tunnel: &Tunnel) -> Option<Destination> {
        (tunnel.tcp.is_none()).then(|| destination(&self.shared, tunnel))
    }

    /// A sink to the node that serves `name` live, or one that says it is
    /// offline while it resumes.
    fn remote_sink(&self, name: &str, found: &Located) -> Arc<dyn Deliver> {
        let peer = self
            .shared
            .cluster
            .get()
            .and_then(|c| c.peer_serving(found));
        match peer {
            Some(addr) => Arc::new(NodeSink {
                shared: self.shared.clone(),
                addr: addr.to_string(),
                name: name.to_string(),
                owner_id: found.owner.clone(),
            }),
            None => Arc::new(Away {
                name: name.to_string(),
            }),
        }
    }

    async fn owner_sink(&self, owner: &str) -> Option<Arc<dyn Deliver>> {
        let (owner_id, name) = owner.split_once('/')?;
        if let Lookup::Live(t) = self.shared.registry.lookup(name) {
            return (t.owner_id == owner_id).then(|| self.sink_to(name, owner_id));
        }
        let cluster = self.shared.cluster.get()?;
        let found = cluster.locate(name).await.ok()??;
        (found.owner == owner_id && cluster.peer_serving(&found).is_some())
            .then(|| self.remote_sink(name, &found))
    }

    async fn is_indexed(&self, adapter: &str, key: &str) -> Result<bool, Unavailable> {
        let entry = format!("{adapter}:{key}");
        if self.shared.registry.any_live(|t| t.index.contains(&entry)) {
            return Ok(true);
        }
        match self.shared.cluster.get() {
            Some(cluster) => {
                (cluster.indexed(&entry).await).map_err(|e| Unavailable(e.to_string()))
            }
            None => Ok(false),
        }
    }
}

/// `tunnel` of this node as the adapters see it.
pub(crate) fn destination(shared: &Arc<Shared>, tunnel: &Tunnel) -> Destination {
    Destination {
        owner: owner_key(&tunnel.owner_id, &tunnel.name),
        sink: Arc::new(TunnelSink {
            shared: shared.clone(),
            name: tunnel.name.clone(),
            owner_id: tunnel.owner_id.clone(),
        }),
        settings: tunnel.adapters.clone(),
        name: tunnel.name.clone(),
    }
}

/// What adapters send to themselves on the other nodes, through the
/// cluster when there is one.
pub(crate) struct ClusterBroadcast(pub(crate) Arc<Shared>);

impl droid_adapters::Broadcast for ClusterBroadcast {
    fn send(&self, adapter: &'static str, bytes: bytes::Bytes) -> Answer<'_, ()> {
        Box::pin(async move {
            if let Some(cluster) = self.0.cluster.get() {
                cluster.broadcast(adapter, &bytes).await;
            }
        })
    }
}

/// What adapters keep together with the other nodes: in Redis when the
/// server is a node of a cluster, nowhere otherwise.
pub(crate) struct ClusterMaps(pub(crate) Arc<Shared>);

impl droid_adapters::SharedMaps for ClusterMaps {
    fn set(&self, map: String, field: String, value: Option<bytes::Bytes>) -> Answer<'_, ()> {
        Box::pin(async move {
            if let Some(cluster) = self.0.cluster.get() {
                cluster.map_set(&map, &field, value.as_deref()).await;
            }
        })
    }

    fn all(&self, map: String) -> Answer<'_, Option<Vec<(String, bytes::Bytes)>>> {
        Box::pin(async move {
            let Some(cluster) = self.0.cluster.get() else {
                return Some(Vec::new());
            };
            let fields = cluster.map_all(&map).await?;
            Some(fields.into_iter().map(|(k, v)| (k, v.into())).collect())
        })
    }
}

/// The spool key of the messages for `owner_id`'s tunnel `name`
/// ([`RegistryTunnels::owner_sink`] reads it back).
pub(crate) fn owner_key(owner_id: &str, name: &str) -> String {
    format!("{owner_id}/{name}")
}

impl Tunnels for RegistryTunnels {
    fn find<'a>(&'a self, name: &'a str) -> Answer<'a, Result<Option<Destination>, Unavailable>> {
        Box::pin(self.find_tunnel(name))
    }

    fn indexed<'a>(
        &'a self,
        adapter: &'static str,
        key: &'a str,
    ) -> Answer<'a, Result<bool, Unavailable>> {
        Box::pin(self.is_indexed(adapter, key))
    }
}

impl Owners for RegistryTunnels {
    fn sink<'a>(&'a self, owner: &'a str) -> Answer<'a, Option<Arc<dyn Deliver>>> {
        Box::pin(self.owner_sink(owner))
    }
}

/// The sink of a tunnel whose owner may come back: offline until then.
struct Away {
    name: String,
}

impl Deliver for Away {
    fn deliver(&self, _request: http::Request<Bytes>) -> DeliverFuture<'_> {
        let error = DeliverError::new(
            DeliverErrorKind::Offline,
            format!("the tunnel {} is not connected", self.name),
        );
        Box::pin(std::future::ready(Err(error)))
    }
}

/// Idle delivery streams, one [`Pool`] per live tunnel. A pool belongs to
/// one session of one tunnel: when a delivery finds the name served by
/// another session (the client reconnected, or another owner holds the name
/// now), the old pool is dropped with its streams, and a pool is forgotten
/// when its session ends. So a stream is never reused across sessions, and
/// never across owners.
#[derive(Default)]
struct TunnelPools {
    /// By tunnel name: the session the pool belongs to, and the pool.
    by_name: Mutex<HashMap<String, (u64, TunnelPool)>>,
}

/// One tunnel session's idle delivery streams, and the deliveries that
/// may use it at once.
#[derive(Clone)]
struct TunnelPool {
    pool: Arc<Pool>,
    busy: Arc<tokio::sync::Semaphore>,
}

impl TunnelPools {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (u64, TunnelPool)>> {
        self.by_name.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool of the tunnel `name` served by `session` (whose streams
    /// `opener` opens), made on first use.
    fn of(
        self: &Arc<Self>,
        name: &str,
        session: u64,
        opener: &Opener,
        max_idle: usize,
    ) -> TunnelPool {
        let mut by_name = self.lock();
        if let Some((s, pool)) = by_name.get(name)
            && *s == session
        {
            return pool.clone();
        }
        let pool = TunnelPool {
            pool: Pool::new(max_idle, pool::IDLE_TIMEOUT),
            busy: Arc::new(tokio::sync::Semaphore::new(
                (max_idle * BUSY_PER_IDLE_STREAM).max(1),
            )),
        };
        by_name.insert(name.to_string(), (session, pool.clone()));
        drop(by_name);
        let (pools, opener, name) = (Arc::downgrade(self), opener.clone(), name.to_string());
        tokio::spawn(async move {
            opener.ended().await;
            if let Some(pools) = pools.upgrade() {
                let mut by_name = pools.lock();
                if by_name.get(&name).is_some_and(|(s, _)| *s == session) {
                    by_name.remove(&name);
                }
            }
        });
        pool
    }
}

/// Delivers an adapter's request through one owner's tunnel.
pub(crate) struct TunnelSink {
    shared: Arc<Shared>,
    name: String,
    owner_id: String,
}

impl Deliver for TunnelSink {
    fn deliver(&self, request: http::Request<Bytes>) -> DeliverFuture<'_> {
        Box::pin(self.send(request))
    }
}

impl TunnelSink {
    fn offline(&self) -> DeliverError {
        DeliverError::new(
            DeliverErrorKind::Offline,
            format!("the tunnel {} is not connected", self.name),
        )
    }

    fn broken(&self, e: &dyn std::fmt::Display) -> DeliverError {
        DeliverError::new(
            DeliverErrorKind::Transport,
            format!("the tunnel {} broke: {e}", self.name),
        )
    }

    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, DeliverError> {
        let tunnel = match self.shared.registry.lookup(&self.name) {
            Lookup::Live(t) if t.owner_id == self.owner_id => t,
            _ => return Err(self.offline()),
        };
        let max_idle = MAX_IDLE_STREAMS.min(self.shared.config.max_streams_per_tunnel / 4);
        let TunnelPool { pool, busy } =
            self.shared
                .pools
                .tunnels
                .of(&tunnel.name, tunnel.session, &tunnel.opener, max_idle);
        let _turn = busy.acquire_owned().await.map_err(|_| self.offline())?;
        let id = request
            .headers()
            .get(droid_core::sign::ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let adapter = request
            .headers()
            .get("droid-adapter")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("adapter")
            .to_string();
        let (mut parts, body) = request.into_parts();
        let host = match &tunnel.host_header {
            Some(app_host) => Some(app_host.clone()),
            None => {
                HeaderValue::from_str(&format!("{}.{}", self.name, self.shared.config.domain)).ok()
            }
        };
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
        let started = std::time::Instant::now();
        let path = parts.uri.path().to_string();
        let request = http::Request::from_parts(parts, Full::new(body));
        let (response, sender) = match pool.send(request, || self.open(&tunnel, id, adapter)).await
        {
            Ok(sent) => sent,
            Err(SendError::Connect(e)) => return Err(e),
            Err(SendError::Http(e)) => return Err(self.broken(&e)),
        };
        tunnel.log.record(
            &self.name,
            "POST",
            &path,
            response.status().as_u16(),
            started.elapsed(),
        );
        let (parts, body) = response.into_parts();
        let body = match Limited::new(body, MAX_ANSWER).collect().await {
            Ok(collected) => {
                pool.put(sender);
                collected.to_bytes()
            }
            // The app answered; a long or broken body does not change its
            // status. The stream is dropped: it may hold the rest.
            Err(_) => Bytes::new(),
        };
        Ok(http::Response::from_parts(parts, body))
    }

    /// Opens a delivery stream on `tunnel` and starts HTTP/1.1 on it. The
    /// header names the delivery it is opened for (later ones on the same
    /// stream carry their own `webhook-id`).
    async fn open(
        &self,
        tunnel: &Tunnel,
        id: String,
        adapter: String,
    ) -> Result<Sender, DeliverError> {
        let mut stream = match tokio::time::timeout(
            self.shared.config.stream_open_timeout,
            tunnel.opener.open(),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            _ => return Err(self.offline()),
        };
        let header = StreamHeader::Delivery {
            tunnel: self.name.clone(),
            adapter,
            id,
        };
        stream
            .write_all(&protocol::encode_line(&header))
            .await
            .map_err(|e| self.broken(&e))?;
        proxy::handshake::<_, Full<Bytes>>(stream)
            .await
            .map_err(|e| self.broken(&e))
    }
}

/// Delivers an adapter's request through a tunnel another node serves, by
/// that node's peer port.
struct NodeSink {
    shared: Arc<Shared>,
    /// The node's peer address.
    addr: String,
    name: String,
    owner_id: String,
}

impl Deliver for NodeSink {
    fn deliver(&self, request: http::Request<Bytes>) -> DeliverFuture<'_> {
        Box::pin(self.send(request))
    }
}

impl NodeSink {
    fn broken(&self, e: &dyn std::fmt::Display) -> DeliverError {
        DeliverError::new(
            DeliverErrorKind::Transport,
            format!(
                "the server holding the tunnel {} ({}) did not answer: {e}",
                self.name, self.addr
            ),
        )
    }

    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, DeliverError> {
        let (mut parts, body) = request.into_parts();
        for (header, value) in [(NODE_TUNNEL, &self.name), (NODE_OWNER, &self.owner_id)] {
            let value = HeaderValue::from_str(value).map_err(|e| self.broken(&e))?;
            parts.headers.insert(header, value);
        }
        let request = http::Request::from_parts(parts, Full::new(body));
        let pool = self.shared.pools.node(&self.addr);
        let (response, sender) = match pool.send(request, || self.connect()).await {
            Ok(sent) => sent,
            Err(SendError::Connect(e)) => return Err(self.broken(&e)),
            Err(SendError::Http(e)) => return Err(self.broken(&e)),
        };
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER + 1024)
            .collect()
            .await
            .map_err(|e| self.broken(&e))?
            .to_bytes();
        pool.put(sender);
        let failure = parts.headers.get(NODE_FAILURE).map(|v| v.as_bytes());
        let kind = match failure {
            None => return Ok(http::Response::from_parts(parts, body)),
            Some(b"offline") => DeliverErrorKind::Offline,
            Some(_) => DeliverErrorKind::Transport,
        };
        Err(DeliverError::new(
            kind,
            String::from_utf8_lossy(&body).into_owned(),
        ))
    }

    async fn connect(&self) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
        let cluster = self.shared.cluster.get().ok_or("not in a cluster")?;
        let timeout = self.shared.config.stream_open_timeout;
        let mode = crate::peer::Mode::Deliver;
        let stream = crate::peer::open(cluster, &self.addr, None, mode, timeout).await?;
        Ok(proxy::handshake::<_, Full<Bytes>>(stream).await?)
    }
}

/// Serves another node's deliveries on a peer connection: each request
/// names a tunnel and its owner; it goes through the tunnel if this node
/// serves it live for that owner, and its answer goes back.
pub(crate) async fn serve_node_deliveries<IO>(shared: Arc<Shared>, stream: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tunnels = Arc::new(RegistryTunnels::new(shared));
    let service = service_fn(move |request: http::Request<Incoming>| {
        let tunnels = tunnels.clone();
        async move { Ok::<_, std::convert::Infallible>(tunnels.deliver_for_node(request).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(error = %e, "a node's delivery connection ended with an error");
    }
}

impl RegistryTunnels {
    async fn deliver_for_node(
        &self,
        request: http::Request<Incoming>,
    ) -> http::Response<Full<Bytes>> {
        let failed = |kind: &'static str, why: String| {
            let mut response = http::Response::new(Full::new(Bytes::from(why)));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
                .headers_mut()
                .insert(NODE_FAILURE, HeaderValue::from_static(kind));
            response
        };
        let (mut parts, body) = request.into_parts();
        let (Some(name), Some(owner_id)) = (
            take_header(&mut parts.headers, NODE_TUNNEL),
            take_header(&mut parts.headers, NODE_OWNER),
        ) else {
            return failed("broken", "a delivery without its tunnel and owner".into());
        };
        let body = match Limited::new(body, MAX_NODE_DELIVERY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return failed("broken", format!("the delivery did not arrive whole: {e}")),
        };
        let live_here = matches!(
            self.shared.registry.lookup(&name),
            Lookup::Live(t) if t.owner_id == owner_id
        );
        if !live_here {
            return failed(
                "offline",
                format!("the tunnel {name} is not connected to this server"),
            );
        }
        let sink = self.sink_to(&name, &owner_id);
        match sink.deliver(http::Request::from_parts(parts, body)).await {
            Ok(answer) => answer.map(Full::new),
            Err(e) if e.kind == DeliverErrorKind::Offline => failed("offline", e.to_string()),
            Err(e) => failed("broken", e.to_string()),
        }
    }
}

/// Removes a header and returns it, if it is text.
fn take_header(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let value = headers.remove(name)?;
    value.to_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use droid_core::session::{Session, Side};

    /// Both ends of a yamux session over an in-memory pipe.
    fn session() -> (Session, Session) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (
            Session::start(a, Side::Server, 16),
            Session::start(b, Side::Client, 16),
        )
    }

    #[tokio::test]
    async fn a_pool_serves_one_session_and_goes_with_it() {
        let pools = Arc::new(TunnelPools::default());
        let (first, _first_client) = session();
        let (second, _second_client) = session();
        let a = pools.of("shop", 1, &first.opener, 4).pool;
        assert!(Arc::ptr_eq(&a, &pools.of("shop", 1, &first.opener, 4).pool));
        // The name is served by another session now (a reconnect, or a
        // takeover while the first is still up): never the first's pool.
        let b = pools.of("shop", 2, &second.opener, 4).pool;
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(
            &b,
            &pools.of("shop", 2, &second.opener, 4).pool
        ));
        assert!(Arc::ptr_eq(&b, &pools.lock()["shop"].1.pool));
        // The first session ending leaves the second's pool alone.
        first.opener.close();
        first.opener.ended().await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(Arc::ptr_eq(&b, &pools.lock()["shop"].1.pool));
        // Its own session ending forgets it.
        second.opener.close();
        second.opener.ended().await;
        for _ in 0..100 {
            if pools.lock().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(pools.lock().is_empty());
    }
}
