//! Adapters' deliveries into tunnels: the server's side of the adapters.
//!
//! The adapters know nothing of tunnels; they map their own addresses onto
//! names (`*@NAME.domain`, `NAME/...`) and ask [`Tunnels`], implemented
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use droid_adapters::pool::{self, Pool, SendError, Sender};
use droid_adapters::{Destination, Owners, Tunnels};
use droid_core::deliver::{Deliver, DeliverError, DeliverErrorKind, DeliverFuture};
use droid_core::protocol::{self, AdapterSettings, StreamHeader};
use droid_core::proxy;
use droid_core::session::Opener;
use http::header::{HOST, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use tokio::io::AsyncWriteExt;

use crate::Shared;
use crate::registry::{Lookup, Tunnel};

/// The most of an app's answer kept for the adapter's reply.
const MAX_ANSWER: usize = 64 * 1024;

/// The most idle delivery streams kept per tunnel; never more than a
/// quarter of the streams a tunnel may have open, so that idle delivery
/// streams cannot crowd out visitors.
const MAX_IDLE_STREAMS: usize = 32;

/// The tunnels of the registry, as the adapters see them.
pub(crate) struct RegistryTunnels {
    shared: Arc<Shared>,
    pools: Arc<TunnelPools>,
}

impl RegistryTunnels {
    pub(crate) fn new(shared: Arc<Shared>) -> RegistryTunnels {
        RegistryTunnels {
            shared,
            pools: Arc::default(),
        }
    }

    fn sink_to(&self, name: &str, owner_id: &str) -> Arc<dyn Deliver> {
        Arc::new(TunnelSink {
            shared: self.shared.clone(),
            pools: self.pools.clone(),
            name: name.to_string(),
            owner_id: owner_id.to_string(),
        })
    }
}

/// The spool key of a tunnel's messages.
pub(crate) fn owner_key(tunnel: &Tunnel) -> String {
    format!("{}/{}", tunnel.owner_id, tunnel.name)
}

impl Tunnels for RegistryTunnels {
    fn find(&self, name: &str) -> Option<Destination> {
        // A TCP tunnel takes no adapter's messages.
        let tunnel = self
            .shared
            .registry
            .holder(name)
            .filter(|t| t.tcp.is_none())?;
        Some(Destination {
            owner: owner_key(&tunnel),
            sink: self.sink_to(&tunnel.name, &tunnel.owner_id),
            settings: tunnel.adapters.clone(),
            name: tunnel.name.clone(),
        })
    }

    fn any(&self, pred: &dyn Fn(&AdapterSettings) -> bool) -> bool {
        self.shared.registry.any_live(|t| pred(&t.adapters))
    }
}

impl Owners for RegistryTunnels {
    fn sink(&self, owner: &str) -> Option<Arc<dyn Deliver>> {
        let (owner_id, name) = owner.split_once('/')?;
        match self.shared.registry.lookup(name) {
            Lookup::Live(t) if t.owner_id == owner_id => Some(self.sink_to(name, owner_id)),
            _ => None,
        }
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
    by_name: Mutex<HashMap<String, (u64, Arc<Pool>)>>,
}

impl TunnelPools {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (u64, Arc<Pool>)>> {
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
    ) -> Arc<Pool> {
        let mut by_name = self.lock();
        if let Some((s, pool)) = by_name.get(name)
            && *s == session
        {
            return pool.clone();
        }
        let pool = Pool::new(max_idle, pool::IDLE_TIMEOUT);
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
    pools: Arc<TunnelPools>,
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
        let pool = self
            .pools
            .of(&tunnel.name, tunnel.session, &tunnel.opener, max_idle);
        let id = request
            .headers()
            .get("droid-delivery-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let adapter = request
            .headers()
            .get("droid-adapter")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("smtp")
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
    /// stream carry their own `Droid-Delivery-Id`).
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
        let a = pools.of("shop", 1, &first.opener, 4);
        assert!(Arc::ptr_eq(&a, &pools.of("shop", 1, &first.opener, 4)));
        // The name is served by another session now (a reconnect, or a
        // takeover while the first is still up): never the first's pool.
        let b = pools.of("shop", 2, &second.opener, 4);
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&b, &pools.of("shop", 2, &second.opener, 4)));
        assert!(Arc::ptr_eq(&b, &pools.lock()["shop"].1));
        // The first session ending leaves the second's pool alone.
        first.opener.close();
        first.opener.ended().await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(Arc::ptr_eq(&b, &pools.lock()["shop"].1));
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
