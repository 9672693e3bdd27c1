//! What deliveries came to, counted as they happen, for whoever runs the
//! adapter to report (the server's `/metrics`). Each counter is an atomic
//! shared by its clones: counting costs an add.

use prometheus_client::metrics::counter::Counter;

/// The counters of one adapter and its spool. Clones count into the same
/// counters.
#[derive(Debug, Clone, Default)]
pub struct DeliveryStats {
    /// Messages accepted from senders (answered `250`).
    pub received: Counter,
    /// Messages and recipients refused to senders for good (`5xx`).
    pub refused: Counter,
    /// Deliveries kept in the spool for a later attempt.
    pub spooled: Counter,
    /// Deliveries the app took (`2xx`), at once or from the spool.
    pub delivered: Counter,
    /// Deliveries given up for good after they were accepted: the app
    /// refused them later, or they grew too old.
    pub dead_lettered: Counter,
}
