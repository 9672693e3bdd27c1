//! The inspector: every exchange through this client's tunnels, kept in
//! memory within a budget, shown on a local web page and a JSON API, with
//! replay; and the client's metrics.
//!
//! - `http1`: follows the HTTP/1 messages of a stream as its bytes pass.
//! - `capture`: one stream's exchanges, handed to the store without waiting.
//! - `h2`: the exchanges the client sends to the app itself (HTTP/2 visitors').
//! - `exchange`: an exchange, and its JSON.
//! - `mail`: a mail delivery's POST read back as a mail.
//! - `store`: the kept exchanges, oldest forgotten first.
//! - `api`: the page, the JSON API and `/metrics` on 127.0.0.1:4040.
//! - `replay`: an exchange sent again, straight to the local target.
//! - `curl`: an exchange as a shell command, every part quoted.
//! - `call`: the app's calls to an adapter of the server, on a stream the
//!   client opens.
//! - `metrics`: the client's counters.

mod api;
mod call;
mod capture;
mod curl;
mod exchange;
mod h2;
mod http1;
mod mail;
mod metrics;
mod replay;
mod sent;
mod store;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use droid_core::protocol::{StreamHeader, TunnelGrant};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use capture::StreamInfo;
pub(crate) use capture::StreamTap;
use exchange::{Exchange, Kind};
pub(crate) use h2::Tapped;
pub use http1::messages_in;
use metrics::Metrics;
use store::Store;

use crate::TunnelSpec;

/// How much the inspector keeps.
#[derive(Debug, Clone, Copy)]
pub struct InspectorOptions {
    /// The most bytes kept of each request or response body (default 1 MiB);
    /// the exchange says when more was seen.
    pub body_cap: usize,
    /// The memory all captures may take together (default 10 MB): up to
    /// three quarters for the kept exchanges (the oldest go first), the rest
    /// for bodies being captured.
    pub budget: usize,
}

impl Default for InspectorOptions {
    fn default() -> InspectorOptions {
        InspectorOptions {
            body_cap: 1024 * 1024,
            budget: 10_000_000,
        }
    }
}

/// How many finished exchanges may wait for the store; more are dropped
/// (and counted) rather than hold a tunnel up.
const QUEUE: usize = 4096;

/// The inspector of one client. Cheap to clone.
#[derive(Clone)]
pub struct Inspector(Arc<Shared>);

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("body_cap", &self.0.body_cap)
            .field("budget", &self.0.budget.limit)
            .finish()
    }
}

/// Bytes of bodies being captured, against their share of the budget.
struct Budget {
    in_flight: AtomicUsize,
    limit: usize,
}

impl Budget {
    fn reserve(&self, n: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + n <= self.limit).then_some(used + n)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A tunnel as the inspector shows it.
#[derive(Debug, Clone)]
pub(crate) struct TunnelView {
    pub name: String,
    pub url: String,
    /// What each adapter of the server granted it.
    pub adapters: droid_core::protocol::AdapterParts,
    pub spec: TunnelSpec,
    pub state: &'static str,
}

/// What the store tells the page's event stream.
#[derive(Debug, Clone)]
pub(crate) enum StoreEvent {
    Put(Arc<Exchange>),
    Cleared,
}

pub(crate) struct Shared {
    body_cap: usize,
    budget: Budget,
    ids: AtomicU64,
    queue: mpsc::Sender<Exchange>,
    store: Mutex<Store>,
    events: broadcast::Sender<StoreEvent>,
    metrics: Metrics,
    tunnels: Mutex<Vec<TunnelView>>,
    /// Why the session is down, while it is.
    down: Mutex<Option<String>>,
    /// Opens streams to the server while the session is up (for calls).
    opener: Mutex<Option<droid_core::session::Opener>>,
}

impl Shared {
    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Hands an exchange to the store; drops it when the store is behind.
    fn publish(&self, exchange: Exchange) {
        if self.queue.try_send(exchange).is_err() {
            self.metrics.dropped();
        }
    }

    fn put(&self, exchange: Exchange) {
        self.put_all(std::iter::once(exchange));
    }

    /// Keeps exchanges under one lock of the store, then tells the page.
    fn put_all(&self, exchanges: impl Iterator<Item = Exchange>) {
        let mut added = Vec::new();
        if let Ok(mut store) = self.store.lock() {
            for mut exchange in exchanges {
                if exchange.kind.is_mail() {
                    exchange.mail = mail::read(&exchange.request).map(|m| m.summary);
                }
                let exchange = Arc::new(exchange);
                store.put(exchange.clone());
                added.push(exchange);
            }
            self.metrics.kept.set(store.len() as i64);
            self.metrics.kept_bytes.set(store.bytes() as i64);
        }
        if self.events.receiver_count() > 0 {
            for exchange in added {
                let _ = self.events.send(StoreEvent::Put(exchange));
            }
        }
    }

    fn clear(&self) {
        if let Ok(mut store) = self.store.lock() {
            store.clear();
            self.metrics.kept.set(0);
            self.metrics.kept_bytes.set(0);
        }
        let _ = self.events.send(StoreEvent::Cleared);
    }

    fn tunnel(&self, name: &str) -> Option<TunnelView> {
        self.tunnels
            .lock()
            .ok()?
            .iter()
            .find(|t| t.name == name)
            .cloned()
    }
}

impl Inspector {
    /// An inspector, with its store running on the current tokio runtime.
    pub fn new(options: InspectorOptions) -> Inspector {
        let (queue, mut finished) = mpsc::channel(QUEUE);
        let in_flight = options.budget / 4;
        let shared = Arc::new(Shared {
            body_cap: options.body_cap,
            budget: Budget {
                in_flight: AtomicUsize::new(0),
                limit: in_flight,
            },
            ids: AtomicU64::new(0),
            queue,
            store: Mutex::new(Store::new(options.budget - in_flight)),
            events: broadcast::channel(1024).0,
            metrics: Metrics::new(),
            tunnels: Mutex::new(Vec::new()),
            down: Mutex::new(None),
            opener: Mutex::new(None),
        });
        // The store's own task: the tunnels only ever try_send to it. It
        // holds a weak reference, so it ends with the last inspector handle.
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            while let Some(first) = finished.recv().await {
                let Some(shared) = weak.upgrade() else { break };
                // Under load many wait: take them all under one lock.
                let waiting = std::iter::from_fn(|| finished.try_recv().ok()).take(QUEUE);
                shared.put_all(std::iter::once(first).chain(waiting));
            }
        });
        Inspector(shared)
    }

    /// Serves the page, the API and `/metrics` on `listener` until
    /// `shutdown`. With `auth` (`user:password`), every request must log in.
    pub async fn serve(
        &self,
        listener: TcpListener,
        auth: Option<String>,
        shutdown: CancellationToken,
    ) {
        api::serve(self.0.clone(), listener, auth, shutdown).await;
    }

    /// A tap for a stream the server opened, `None` for a kind not captured.
    pub(crate) fn tap(&self, header: &StreamHeader) -> Option<StreamTap> {
        let info = match header {
            StreamHeader::Http { tunnel, remote } => StreamInfo {
                tunnel: tunnel.as_str().into(),
                remote: Some(remote.as_str().into()),
                kind: Kind::Http,
                delivery_id: None,
            },
            StreamHeader::Delivery {
                tunnel,
                adapter,
                id,
            } => StreamInfo {
                tunnel: tunnel.as_str().into(),
                remote: None,
                kind: Kind::Delivery(adapter.as_str().into()),
                delivery_id: Some(id.clone()),
            },
            StreamHeader::Tcp { tunnel, remote } => StreamInfo {
                tunnel: tunnel.as_str().into(),
                remote: Some(remote.as_str().into()),
                kind: Kind::Tcp,
                delivery_id: None,
            },
            // An HTTP/2 stream carries binary frames, not HTTP/1 bytes.
            StreamHeader::H2 { .. } | StreamHeader::Call { .. } | StreamHeader::Unknown => {
                return None;
            }
        };
        Some(StreamTap::new(self.0.clone(), info))
    }

    /// A request line from the server: counted by status.
    pub(crate) fn request_answered(&self, status: u16) {
        self.0.metrics.request(status);
    }

    /// Nothing answered at a tunnel's target.
    pub(crate) fn target_unreachable(&self) {
        self.0.metrics.unreachable();
    }

    /// The session is up with these tunnels.
    pub(crate) fn connected(
        &self,
        grants: &[TunnelGrant],
        specs: &[TunnelSpec],
        opener: droid_core::session::Opener,
    ) {
        if let Ok(mut slot) = self.0.opener.lock() {
            *slot = Some(opener);
        }
        let views = grants
            .iter()
            .zip(specs)
            .map(|(grant, spec)| TunnelView {
                name: grant.name.clone(),
                url: grant.url.clone(),
                adapters: grant.adapters.clone(),
                spec: spec.clone(),
                state: "online",
            })
            .collect::<Vec<_>>();
        self.0.metrics.connected.set(1);
        self.0.metrics.tunnels.set(views.len() as i64);
        if let Ok(mut tunnels) = self.0.tunnels.lock() {
            *tunnels = views;
        }
        if let Ok(mut down) = self.0.down.lock() {
            *down = None;
        }
    }

    /// The session is down; the client tries again.
    pub(crate) fn disconnected(&self, reason: &str) {
        self.0.metrics.connected.set(0);
        self.0.metrics.reconnect();
        if let Ok(mut slot) = self.0.opener.lock() {
            *slot = None;
        }
        if let Ok(mut tunnels) = self.0.tunnels.lock() {
            for t in tunnels.iter_mut() {
                t.state = "reconnecting";
            }
        }
        if let Ok(mut down) = self.0.down.lock() {
            *down = Some(reason.to_string());
        }
    }
}
