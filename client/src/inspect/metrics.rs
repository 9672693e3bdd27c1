//! The client's metrics, served as `GET /metrics` on the inspector's port in
//! Prometheus's text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusClass {
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcStatus {
    grpc_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counters the tunnel moves and `/metrics` reads. Each is an atomic: a
/// request pays an add, never a lock.
pub(crate) struct Metrics {
    registry: Registry,
    requests: [Counter; 5],
    grpc: Family<GrpcStatus, Counter>,
    to_app: Counter,
    from_app: Counter,
    reconnects: Counter,
    unreachable: Counter,
    dropped: Counter,
    pub connected: Gauge,
    pub tunnels: Gauge,
    pub kept: Gauge,
    pub kept_bytes: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<StatusClass, Counter>::default();
        registry.register(
            "droid_client_requests",
            "Requests through this client's tunnels, by the status the visitor got",
            requests.clone(),
        );
        let grpc = Family::<GrpcStatus, Counter>::default();
        registry.register(
            "droid_client_grpc_calls",
            "gRPC calls of HTTP/2 visitors answered by the local app, by grpc-status",
            grpc.clone(),
        );
        let bytes = Family::<Direction, Counter>::default();
        registry.register(
            "droid_client_bytes",
            "Bytes forwarded between the tunnel and the local app",
            bytes.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "droid_client_reconnects",
            "Times the session to the server was lost and tried again",
            reconnects.clone(),
        );
        let unreachable = Counter::default();
        registry.register(
            "droid_client_target_unreachable",
            "Streams answered with a 502 because nothing answered at the local target",
            unreachable.clone(),
        );
        let dropped = Counter::default();
        registry.register(
            "droid_inspector_dropped_captures",
            "Exchanges the inspector did not keep because it was behind",
            dropped.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "droid_client_connected",
            "1 while the session to the server is up",
            connected.clone(),
        );
        let tunnels = Gauge::default();
        registry.register(
            "droid_client_tunnels",
            "Tunnels granted on the current session",
            tunnels.clone(),
        );
        let kept = Gauge::default();
        registry.register(
            "droid_inspector_exchanges",
            "Exchanges the inspector keeps",
            kept.clone(),
        );
        let kept_bytes = Gauge::default();
        registry.register(
            "droid_inspector_kept_bytes",
            "Memory the kept exchanges take, against the inspector's budget",
            kept_bytes.clone(),
        );
        // One statement each: a family's guard lives to the end of its
        // statement, and the next get_or_create would wait for it.
        let by_class = CLASSES.map(|c| {
            let counter = requests.get_or_create(&StatusClass { status_class: c });
            counter.clone()
        });
        let to_app = bytes
            .get_or_create(&Direction {
                direction: "to_app",
            })
            .clone();
        let from_app = bytes
            .get_or_create(&Direction {
                direction: "from_app",
            })
            .clone();
        Metrics {
            requests: by_class,
            grpc,
            to_app,
            from_app,
            registry,
            reconnects,
            unreachable,
            dropped,
            connected,
            tunnels,
            kept,
            kept_bytes,
        }
    }

    /// A request answered with `status`.
    pub fn request(&self, status: u16) {
        if let Some(counter) = self.requests.get(usize::from(status / 100).wrapping_sub(1)) {
            counter.inc();
        }
    }

    /// A gRPC call ended with this status (by name).
    pub fn grpc(&self, grpc_status: &'static str) {
        self.grpc.get_or_create(&GrpcStatus { grpc_status }).inc();
    }

    pub fn bytes_to_app(&self, n: usize) {
        self.to_app.inc_by(n as u64);
    }

    pub fn bytes_from_app(&self, n: usize) {
        self.from_app.inc_by(n as u64);
    }

    pub fn reconnect(&self) {
        self.reconnects.inc();
    }

    pub fn unreachable(&self) {
        self.unreachable.inc();
    }

    pub fn dropped(&self) {
        self.dropped.inc();
    }

    /// The text `/metrics` answers with.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_with_their_conventional_names() {
        let m = Metrics::new();
        m.request(204);
        m.request(502);
        m.request(999);
        m.bytes_to_app(10);
        let text = m.encode();
        assert!(
            text.contains("droid_client_requests_total{status_class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("droid_client_requests_total{status_class=\"5xx\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("droid_client_bytes_total{direction=\"to_app\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE droid_client_reconnects_total counter"),
            "{text}"
        );
    }
}
