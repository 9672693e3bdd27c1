//! The seam between a server and the adapters it runs.
//!
//! A server knows its adapters only through [`ServerAdapter`]: a name, the
//! listeners and tasks it runs ([`ServerAdapter::run`], given a [`Host`]),
//! what the welcome says of it for a tunnel that asked for it, the keys a
//! tunnel is found by across a cluster, the bytes it sends to itself on the
//! other nodes, and the calls a tunnel's app makes to it. Everything else
//! (what a recipient, a topic or a datagram means) stays in the adapter's
//! own folder. Each tunnel's settings for an adapter are JSON under its
//! name ([`AdapterSettings`]), which only the adapter reads.

use std::sync::Arc;

use bytes::Bytes;
use droid_core::protocol::{AdapterSettings, CallAnswer};
use prometheus_client::metrics::counter::Counter;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::route::{Answer, Destination, Tunnels};
use crate::spool::Spool;
use crate::stats::DeliveryStats;

/// Sends bytes to the same adapter on the other nodes of a cluster.
pub trait Broadcast: Send + Sync {
    /// Sends `bytes` for `adapter` to every other node; without a cluster
    /// it does nothing.
    fn send(&self, adapter: &'static str, bytes: Bytes) -> Answer<'_, ()>;
}

/// A server with no other node: broadcasts go nowhere.
pub struct Alone;

impl Broadcast for Alone {
    fn send(&self, _adapter: &'static str, _bytes: Bytes) -> Answer<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Small maps the nodes of a cluster keep together (in Redis), for what
/// an adapter must hand to a node that joins later; a server alone keeps
/// nothing here.
pub trait SharedMaps: Send + Sync {
    /// Sets `field` of the map `map` to `value`, or removes it (`None`).
    /// Best effort: a cluster whose registry is away keeps nothing.
    fn set(&self, map: String, field: String, value: Option<Bytes>) -> Answer<'_, ()>;
    /// Every field of `map`; `None` when it cannot be read now.
    fn all(&self, map: String) -> Answer<'_, Option<Vec<(String, Bytes)>>>;
}

impl SharedMaps for Alone {
    fn set(&self, _map: String, _field: String, _value: Option<Bytes>) -> Answer<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    fn all(&self, _map: String) -> Answer<'_, Option<Vec<(String, Bytes)>>> {
        Box::pin(std::future::ready(Some(Vec::new())))
    }
}

/// What a server gives the adapters it runs.
#[derive(Clone)]
pub struct Host {
    /// The tunnels: one by name, or an owner's sink for the spool.
    pub tunnels: Arc<dyn Tunnels>,
    /// The server's domain: tunnels live at `NAME.domain`.
    pub domain: String,
    /// The spool every adapter keeps what an app cannot take now in, if
    /// the server has one.
    pub spool: Option<Arc<Spool>>,
    /// The server's certificate, for TLS listeners, if it has one.
    pub tls: Option<TlsAcceptor>,
    /// The other nodes, if any.
    pub broadcast: Arc<dyn Broadcast>,
    /// What the nodes keep together, if there are others.
    pub maps: Arc<dyn SharedMaps>,
    /// Cancelled when the server stops.
    pub shutdown: CancellationToken,
}

/// A tunnel being granted, as [`ServerAdapter::grant`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Grantee<'a> {
    /// Its name.
    pub name: &'a str,
    /// The owner key its spooled messages belong to (as
    /// [`Destination::owner`]).
    pub owner: &'a str,
    /// The server's domain.
    pub domain: &'a str,
    /// What its client asked of each adapter.
    pub settings: &'a AdapterSettings,
    /// The address its client connected from, for bounds per address.
    pub client: std::net::IpAddr,
}

/// The grant of an adapter that cannot serve a tunnel which asked for it:
/// `{"refused": why}`. The tunnel itself still comes up.
pub fn refused(why: impl Into<String>) -> serde_json::Value {
    serde_json::json!({ "refused": why.into() })
}

/// Why a grant is a refusal, if it is one.
pub fn refusal(grant: &serde_json::Value) -> Option<&str> {
    grant.get("refused").and_then(serde_json::Value::as_str)
}

/// A call an app made to an adapter (`POST /api/ADAPTER/ACTION` on its
/// client).
pub struct Call {
    /// The tunnels of the caller's session that asked for this adapter: a
    /// call may act for these and no other.
    pub tunnels: Vec<Destination>,
    /// What the adapter is asked to do.
    pub action: String,
    /// The body, as the app sent it (at most 4 MiB).
    pub body: Bytes,
}

/// An adapter as a server runs it. Only [`ServerAdapter::name`] and
/// [`ServerAdapter::run`] are required.
pub trait ServerAdapter: Send + Sync + 'static {
    /// Its name: the key of its settings in a tunnel's hello and grant.
    fn name(&self) -> &'static str;

    /// Runs its listeners and tasks until `host.shutdown`, then drains.
    fn run(self: Arc<Self>, host: Host) -> Answer<'static, ()>;

    /// What the welcome tells the client of `tunnel` about this adapter,
    /// when it asked for it (`tunnel.settings.of(self.name())`): its mail
    /// domain, its topics, its port; or [`refused`] and why. `None` says
    /// nothing. Called on every connect of the tunnel, resumes included.
    fn grant(&self, tunnel: &Grantee<'_>) -> Option<serde_json::Value> {
        let _ = tunnel;
        None
    }

    /// The keys a tunnel with `settings` is found by with
    /// [`Tunnels::indexed`], on any node (MQTT: its devices' login).
    fn index_keys(&self, settings: &AdapterSettings) -> Vec<String> {
        let _ = settings;
        Vec::new()
    }

    /// Names only a token that lists them may claim while this adapter
    /// runs (its protocol's usual host names: `smtp`), unless the server
    /// frees the common service names.
    fn reserved_names(&self) -> &'static [&'static str] {
        &[]
    }

    /// Bytes this adapter sent from another node ([`Broadcast::send`]).
    fn received(&self, bytes: Bytes) {
        let _ = bytes;
    }

    /// Answers a call from a tunnel's app. By default there is none.
    fn call(&self, call: Call) -> Answer<'_, CallAnswer> {
        let answer = CallAnswer::error(
            404,
            format!(
                "the {} adapter takes no call {:?}",
                self.name(),
                call.action
            ),
        );
        Box::pin(std::future::ready(answer))
    }

    /// More counters for the server's metrics: each one's name (without
    /// `_total`), what it counts, and the counter.
    fn counters(&self) -> Vec<(&'static str, &'static str, Counter)> {
        Vec::new()
    }

    /// Its delivery counters for the server's metrics: the metrics' prefix
    /// (`droid_mail`), what they count (`Mails`), and the counters.
    fn stats(&self) -> Option<(&'static str, &'static str, DeliveryStats)> {
        None
    }
}
