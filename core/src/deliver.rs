//! The delivery seam between adapters and sinks.
//!
//! An adapter builds an HTTP request from its protocol (a mail, a message) and hands
//! it to a [`Deliver`] sink. The sink may be a tunnel (the server opens a
//! stream to the client, which forwards to the local app) or a plain URL (the
//! standalone mode). The adapter never knows which, and never touches yamux.
//!
//! Like hyper's `Service::call`, [`Deliver::deliver`] takes `&self`, so one
//! sink serves many deliveries at once.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// The future a [`Deliver`] returns.
pub type DeliverFuture<'a> =
    Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, DeliverError>> + Send + 'a>>;

/// A sink for adapter-built HTTP requests.
pub trait Deliver: Send + Sync {
    /// Sends one request and returns the app's whole response (bodies of
    /// responses are capped by the sink; adapters only need the status and a
    /// short reason).
    fn deliver(&self, request: http::Request<Bytes>) -> DeliverFuture<'_>;
}

/// Why a delivery failed before the app gave an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct DeliverError {
    /// What went wrong, and so who is at fault.
    pub kind: DeliverErrorKind,
    /// A sentence for logs and for the sender.
    pub message: String,
}

/// The classes of delivery failure. All of them are worth retrying except
/// [`DeliverErrorKind::Rejected`]-like answers, which are responses, not errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliverErrorKind {
    /// No tunnel is connected for the target right now (offline or resuming).
    #[error("tunnel offline")]
    Offline,
    /// The tunnel is up but the local app does not answer.
    #[error("app unreachable")]
    Unreachable,
    /// The app did not answer in time.
    #[error("timed out")]
    Timeout,
    /// The exchange broke in the middle (connection reset, bad HTTP).
    #[error("transport failure")]
    Transport,
}

impl DeliverError {
    /// Builds an error of the given kind.
    pub fn new(kind: DeliverErrorKind, message: impl Into<String>) -> DeliverError {
        DeliverError {
            kind,
            message: message.into(),
        }
    }

    /// Whether trying the same delivery later may succeed. Every failure
    /// before an answer is retryable: the app never said no.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

impl<D: Deliver + ?Sized> Deliver for std::sync::Arc<D> {
    fn deliver(&self, request: http::Request<Bytes>) -> DeliverFuture<'_> {
        (**self).deliver(request)
    }
}
