//! The server's metrics, in Prometheus's text format on `--metrics ADDR`.
//!
//! Counters move as things happen (an atomic add each); the gauges (names
//! by state, sessions, open streams, the spool) are read from the registry
//! and the spool when `/metrics` is asked for.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use droid_adapters::DeliveryStats;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::Shared;

/// Why the server answered a visitor itself instead of the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnAnswer {
    /// 400: no Host, two, or a malformed request body.
    BadRequest,
    /// 400: a host this server does not serve.
    BadHost,
    /// 404: no tunnel by that name (or the apex).
    NoTunnel,
    /// 502: the tunnel is reconnecting.
    Reconnecting,
    /// 502: the tunnel went away, or the app closed without an answer.
    TunnelGone,
    /// 502: the app closed the connection without an answer.
    AppClosed,
    /// 503: too many requests in flight on the tunnel.
    StreamLimit,
    /// 503: in a cluster, Redis does not answer where the tunnel is.
    RegistryAway,
    /// 503: too many connections from the visitor's address, or in all.
    ConnectionLimit,
    /// 401: the tunnel asks for a login.
    Unauthorized,
    /// 403: the visitor's address is not allowed.
    Forbidden,
    /// 408: the request body stopped arriving.
    BodyTimeout,
    /// 413: the request body is over the limit.
    TooLarge,
    /// 421: a Host other than the TLS handshake's.
    Misdirected,
    /// 429: the tunnel's request rate is used up.
    RateLimited,
    /// 431: the request line and headers are too large (hyper's answer).
    HeadersTooLarge,
}

impl OwnAnswer {
    fn label(self) -> (&'static str, &'static str) {
        match self {
            OwnAnswer::BadRequest => ("400", "bad_request"),
            OwnAnswer::BadHost => ("400", "bad_host"),
            OwnAnswer::NoTunnel => ("404", "no_tunnel"),
            OwnAnswer::Reconnecting => ("502", "reconnecting"),
            OwnAnswer::TunnelGone => ("502", "tunnel_gone"),
            OwnAnswer::AppClosed => ("502", "app_closed"),
            OwnAnswer::StreamLimit => ("503", "stream_limit"),
            OwnAnswer::RegistryAway => ("503", "registry_away"),
            OwnAnswer::ConnectionLimit => ("503", "connection_limit"),
            OwnAnswer::Unauthorized => ("401", "unauthorized"),
            OwnAnswer::Forbidden => ("403", "forbidden"),
            OwnAnswer::BodyTimeout => ("408", "body_timeout"),
            OwnAnswer::TooLarge => ("413", "too_large"),
            OwnAnswer::Misdirected => ("421", "misdirected"),
            OwnAnswer::RateLimited => ("429", "rate_limited"),
            OwnAnswer::HeadersTooLarge => ("431", "headers_too_large"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusClass {
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Answer {
    code: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcStatus {
    grpc_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The server's metrics.
pub(crate) struct Metrics {
    /// Behind a lock: adapters' counters join it when they start.
    registry: Mutex<Registry>,
    requests: [Counter; 5],
    own: Family<Answer, Counter>,
    grpc: Family<GrpcStatus, Counter>,
    duration: Histogram,
    /// Bytes from visitors.
    pub bytes_in: Counter,
    /// Bytes to visitors.
    pub bytes_out: Counter,
    tunnels: Family<State, Gauge>,
    sessions: Gauge,
    streams: Gauge,
    spool_messages: Gauge,
    spool_bytes: Gauge,
    spool_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    tcp_connections: Counter,
    tcp_open: Gauge,
    tcp_in: Counter,
    tcp_out: Counter,
    tcp_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<StatusClass, Counter>::default();
        registry.register(
            "droid_server_requests",
            "Visitors' requests answered, by the status class they got",
            requests.clone(),
        );
        let own = Family::<Answer, Counter>::default();
        registry.register(
            "droid_server_own_answers",
            "Requests the server answered itself instead of the app, by status and reason",
            own.clone(),
        );
        let grpc = Family::<GrpcStatus, Counter>::default();
        registry.register(
            "droid_server_grpc_calls",
            "gRPC calls answered through tunnels, by the grpc-status they ended with",
            grpc.clone(),
        );
        let duration = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "droid_server_request_duration_seconds",
            "Time from a request's head to its answer's head, through a tunnel",
            duration.clone(),
        );
        let bytes = Family::<Direction, Counter>::default();
        registry.register(
            "droid_server_visitor_bytes",
            "Bytes read from visitors (in) and written to them (out)",
            bytes.clone(),
        );
        let tunnels = Family::<State, Gauge>::default();
        registry.register(
            "droid_server_tunnels",
            "Names by state: live, resuming (kept for a dropped client), quarantined",
            tunnels.clone(),
        );
        let sessions = Gauge::default();
        registry.register(
            "droid_server_sessions",
            "Client sessions serving tunnels",
            sessions.clone(),
        );
        let streams = Gauge::default();
        registry.register(
            "droid_server_open_streams",
            "Streams open on client sessions (visitor connections and deliveries in flight)",
            streams.clone(),
        );
        let spool_messages = Gauge::default();
        registry.register(
            "droid_mail_spool_messages",
            "Deliveries waiting in the spool",
            spool_messages.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "droid_mail_spool_bytes",
            "Bytes of the deliveries waiting in the spool",
            spool_bytes.clone(),
        );
        let spool_oldest = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "droid_mail_spool_oldest_age_seconds",
            "Age of the oldest delivery waiting in the spool (0 when none waits)",
            spool_oldest.clone(),
        );
        let tcp_connections = Counter::default();
        registry.register(
            "droid_server_tcp_connections",
            "Visitors' connections to TCP tunnels' ports",
            tcp_connections.clone(),
        );
        let tcp_open = Gauge::default();
        registry.register(
            "droid_server_tcp_open_connections",
            "Visitors' connections to TCP tunnels open now",
            tcp_open.clone(),
        );
        let tcp_bytes = Family::<Direction, Counter>::default();
        registry.register(
            "droid_server_tcp_bytes",
            "Bytes of TCP tunnels' connections, from visitors (in) and to them (out)",
            tcp_bytes.clone(),
        );
        let tcp_duration = Histogram::new([0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0]);
        registry.register(
            "droid_server_tcp_connection_duration_seconds",
            "How long visitors' connections to TCP tunnels lasted",
            tcp_duration.clone(),
        );
        let tcp_in = tcp_bytes
            .get_or_create(&Direction { direction: "in" })
            .clone();
        let tcp_out = tcp_bytes
            .get_or_create(&Direction { direction: "out" })
            .clone();
        // One statement each: a family's guard lives to the end of its
        // statement, and the next get_or_create would wait for it.
        let by_class = CLASSES.map(|c| {
            let counter = requests.get_or_create(&StatusClass { status_class: c });
            counter.clone()
        });
        let bytes_in = bytes.get_or_create(&Direction { direction: "in" }).clone();
        let bytes_out = bytes.get_or_create(&Direction { direction: "out" }).clone();
        for state in ["live", "resuming", "quarantined"] {
            let _ = tunnels.get_or_create(&State { state });
        }
        Metrics {
            registry: Mutex::new(registry),
            requests: by_class,
            own,
            grpc,
            duration,
            bytes_in,
            bytes_out,
            tunnels,
            sessions,
            streams,
            spool_messages,
            spool_bytes,
            spool_oldest,
            tcp_connections,
            tcp_open,
            tcp_in,
            tcp_out,
            tcp_duration,
        }
    }

    /// A visitor connected to a TCP tunnel's port.
    pub fn tcp_opened(&self) {
        self.tcp_connections.inc();
        self.tcp_open.inc();
    }

    /// That connection ended, after these bytes each way.
    pub fn tcp_closed(&self, bytes_in: u64, bytes_out: u64, lasted: Duration) {
        self.tcp_open.dec();
        self.tcp_in.inc_by(bytes_in);
        self.tcp_out.inc_by(bytes_out);
        self.tcp_duration.observe(lasted.as_secs_f64());
    }

    /// A visitor's request got `status`; `own` says why when the server
    /// answered it itself; `through` is the time to the answer's head when
    /// it went through a tunnel.
    pub fn answered(&self, status: u16, own: Option<OwnAnswer>, through: Option<Duration>) {
        if let Some(counter) = self.requests.get(usize::from(status / 100).wrapping_sub(1)) {
            counter.inc();
        }
        if let Some(own) = own {
            let (code, reason) = own.label();
            self.own.get_or_create(&Answer { code, reason }).inc();
        }
        if let Some(elapsed) = through {
            self.duration.observe(elapsed.as_secs_f64());
        }
    }

    /// A gRPC call ended with this `grpc-status` (a number; anything else
    /// is counted as UNKNOWN).
    pub(crate) fn grpc_answered(&self, status: &[u8]) {
        let grpc_status = droid_core::proxy::grpc_status_name(status);
        self.grpc.get_or_create(&GrpcStatus { grpc_status }).inc();
    }

    /// Reports an adapter's own `counter` as `name`.
    pub fn count(&self, name: &str, help: &str, counter: Counter) {
        if let Ok(mut registry) = self.registry.lock() {
            registry.register(name, help, counter);
        }
    }

    /// Reports what an adapter's deliveries come to (and its spool's),
    /// under `prefix` (`droid_mail`); `what` names them.
    pub fn count_deliveries(&self, prefix: &str, what: &str, stats: &DeliveryStats) {
        let Ok(mut registry) = self.registry.lock() else {
            return;
        };
        for (name, help, counter) in [
            (
                "received",
                format!("{what} accepted from senders"),
                &stats.received,
            ),
            (
                "refused",
                format!("{what} refused to senders for good"),
                &stats.refused,
            ),
            (
                "spooled",
                format!("{what} kept in the spool for a later attempt"),
                &stats.spooled,
            ),
            (
                "delivered",
                format!("{what} the app took, at once or from the spool"),
                &stats.delivered,
            ),
            (
                "dead_lettered",
                format!("{what} given up after they were accepted"),
                &stats.dead_lettered,
            ),
        ] {
            registry.register(format!("{prefix}_{name}"), help, counter.clone());
        }
    }

    /// Counts how a cluster node found the names other nodes may serve,
    /// and says which node this is (`droid_cluster_node_info{node=...}`).
    pub fn count_lookups(&self, lookups: &crate::cluster::Lookups, node: &str) {
        let Ok(mut registry) = self.registry.lock() else {
            return;
        };
        registry.register(
            "droid_cluster_node",
            "This server's node id in its cluster",
            prometheus_client::metrics::info::Info::new(vec![("node", node.to_string())]),
        );
        registry.register(
            "droid_cluster_lookups_kept",
            "Names looked up in the cluster and answered from what this node kept",
            lookups.kept.clone(),
        );
        registry.register(
            "droid_cluster_lookups_asked",
            "Names looked up in the cluster by asking Redis",
            lookups.asked.clone(),
        );
        registry.register(
            "droid_cluster_lookups_remembered",
            "Names looked up in the cluster and answered from where they were last live, Redis being away or just back empty",
            lookups.remembered.clone(),
        );
    }

    /// The text `/metrics` answers with, the gauges read now.
    pub fn encode(&self, shared: &Shared) -> String {
        let census = shared.registry.census(shared.config.max_streams_per_tunnel);
        for (state, n) in [
            ("live", census.live),
            ("resuming", census.resuming),
            ("quarantined", census.quarantined),
        ] {
            self.tunnels.get_or_create(&State { state }).set(n as i64);
        }
        self.sessions.set(census.sessions as i64);
        self.streams.set(census.open_streams as i64);
        if let Some(spool) = shared.spool.get() {
            self.spool_messages.set(spool.len() as i64);
            self.spool_bytes
                .set(i64::try_from(spool.bytes()).unwrap_or(i64::MAX));
            let age = spool
                .oldest()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            self.spool_oldest.set(age.as_secs_f64());
        }
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        }
        out
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let Ok((socket, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        let closing = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move {
                    let mut response = if request.uri().path() == "/metrics" {
                        let mut r =
                            Response::new(Full::new(Bytes::from(shared.metrics.encode(&shared))));
                        r.headers_mut().insert(
                            header::CONTENT_TYPE,
                            header::HeaderValue::from_static(
                                "text/plain; version=0.0.4; charset=utf-8",
                            ),
                        );
                        r
                    } else {
                        Response::new(Full::new(Bytes::from_static(b"metrics are at /metrics\n")))
                    };
                    if request.uri().path() != "/metrics" {
                        *response.status_mut() = StatusCode::NOT_FOUND;
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service);
            tokio::select! {
                served = connection => if let Err(e) = served {
                    debug!(%peer, error = %e, "metrics connection ended");
                },
                () = closing.cancelled() => {}
            }
        });
    }
}
