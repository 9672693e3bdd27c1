//! Request lines for the client: the server sees every request a tunnel
//! answers (and the ones it refuses for it), so it tells the client, which
//! prints them. The client itself only moves bytes.
//!
//! A line is written as JSON into the session's pending batch the moment it
//! is recorded, straight from the request's parts; the session's control
//! task takes the whole batch and sends it in one write.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use droid_core::protocol::RequestLineRef;
use tokio::sync::Notify;

/// How many bytes of lines may wait for a slow client before new ones are
/// dropped (about a thousand lines): the lines are for a person to read,
/// never worth unbounded memory.
pub(crate) const MAX_PENDING: usize = 128 * 1024;

/// How long a batch gathers lines after its first before it is sent:
/// nobody reads a line 10 ms late, and under load one frame (and one
/// wakeup each side) carries many lines instead of one a request.
const GATHER: Duration = Duration::from_millis(10);

/// Where one session's request lines go. Cheap to clone; the default goes
/// nowhere.
#[derive(Debug, Clone, Default)]
pub struct RequestLog(Option<Arc<Pending>>);

/// The lines of one session not yet sent, as newline-delimited JSON.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    lines: Mutex<Vec<u8>>,
    /// Signalled when a line arrives to an empty batch.
    arrived: Notify,
}

impl Pending {
    /// Waits until there are lines, then takes them all.
    pub(crate) async fn take(&self) -> Vec<u8> {
        loop {
            self.arrived.notified().await;
            tokio::time::sleep(GATHER).await;
            let lines = std::mem::take(&mut *self.lock());
            if !lines.is_empty() {
                return lines;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RequestLog {
    /// A log and the batch that the session's control stream drains.
    pub(crate) fn channel() -> (RequestLog, Arc<Pending>) {
        let pending = Arc::new(Pending::default());
        (RequestLog(Some(pending.clone())), pending)
    }

    /// Records one request; dropped when the batch is full.
    pub(crate) fn record(
        &self,
        tunnel: &str,
        method: &str,
        path: &str,
        status: u16,
        elapsed: Duration,
    ) {
        let Some(pending) = &self.0 else { return };
        let line = RequestLineRef {
            tunnel,
            method,
            path,
            status,
            micros: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        };
        let mut lines = pending.lock();
        if lines.len() >= MAX_PENDING {
            return;
        }
        let first = lines.is_empty();
        line.append_to(&mut lines);
        drop(lines);
        if first {
            // A permit is kept when nobody waits, so no line is missed.
            pending.arrived.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use droid_core::protocol::{self, ControlMessage};

    #[tokio::test]
    async fn lines_gather_into_one_batch_up_to_a_bound() {
        let (log, pending) = RequestLog::channel();
        let elapsed = Duration::from_micros(1500);
        log.record("t", "GET", "/a", 200, elapsed);
        log.record("t", "POST", "/b?c=d", 404, elapsed);
        let batch = pending.take().await;
        let lines: Vec<ControlMessage> = batch
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| protocol::decode_control(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let ControlMessage::Request(second) = &lines[1] else {
            panic!("not a request line: {:?}", lines[1]);
        };
        assert_eq!(
            (
                second.method.as_ref(),
                second.path.as_str(),
                second.status,
                second.micros
            ),
            ("POST", "/b?c=d", 404, 1500)
        );
        // A full batch drops new lines rather than grow.
        let path = "/".repeat(1000);
        for _ in 0..1000 {
            log.record("t", "GET", &path, 200, elapsed);
        }
        let batch = pending.take().await;
        assert!(batch.len() < MAX_PENDING + 2 * 1024, "{}", batch.len());
        // Lines after a take start a new batch and wake the next take.
        log.record("t", "GET", "/again", 200, elapsed);
        let batch = pending.take().await;
        assert!(batch.ends_with(b"\n") && batch.windows(6).any(|w| w == b"/again"));
        // The default log records nothing and costs nothing.
        RequestLog::default().record("t", "GET", "/", 200, elapsed);
    }
}
