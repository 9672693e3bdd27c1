//! Request lines for the client: the server sees every request a tunnel
//! answers (and the ones it refuses for it), so it tells the client, which
//! prints them. The client itself only moves bytes.

use std::borrow::Cow;
use std::time::Duration;

use droid_core::protocol::RequestLine;
use tokio::sync::mpsc;

/// How many lines may wait for a slow client before new ones are dropped:
/// the lines are for a person to read, never worth unbounded memory.
pub(crate) const QUEUE: usize = 1024;

/// Where one session's request lines go. Cheap to clone; the default goes
/// nowhere. Lines travel boxed: the channel keeps room for a block of them
/// per session from the start, and a pointer's worth is what an idle
/// session should pay.
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Option<mpsc::Sender<Box<RequestLine>>>);

impl RequestLog {
    /// A log and the receiving end that the session's control stream drains.
    pub(crate) fn channel() -> (RequestLog, mpsc::Receiver<Box<RequestLine>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (RequestLog(Some(tx)), rx)
    }

    /// Records one request; dropped when the queue is full.
    pub(crate) fn record(
        &self,
        tunnel: &str,
        method: &str,
        path: String,
        status: u16,
        elapsed: Duration,
    ) {
        let Some(tx) = &self.0 else { return };
        let _ = tx.try_send(Box::new(RequestLine {
            tunnel: tunnel.to_string(),
            method: method_name(method),
            path,
            status,
            micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        }));
    }
}

/// A method's name as a line carries it: the standard methods as static
/// strings, others copied.
fn method_name(method: &str) -> Cow<'static, str> {
    const STATIC: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STATIC.iter().find(|m| **m == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(method.to_string()),
    }
}
