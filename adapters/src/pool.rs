//! [`Pool`]: idle HTTP/1.1 connections kept for the next delivery.
//!
//! A sink that POSTs mail after mail to one place (a URL, a tunnel) would
//! otherwise open a connection per mail, and with it a TCP handshake, a
//! task, and through a tunnel a new stream and a new connection from the
//! client to the app. [`Pool::send`] takes the connection returned last
//! that is still open, or opens one with the caller's `connect`; the caller
//! reads the answer and gives the connection back with [`Pool::put`] once
//! the exchange ended cleanly.
//!
//! Bounds: at most `max_idle` connections wait at once (the oldest goes
//! first), and one that waited the idle timeout ([`IDLE_TIMEOUT`] for the
//! sinks here) is closed by a task that runs only while some wait. The
//! timeout is short on purpose: an app that closes a kept connection just
//! as a request goes out on it is the classic keep-alive race, so the pool
//! closes first (Node's default is 5 s, gunicorn's 2 s).
//!
//! A request is sent a second time only when it failed on a kept
//! connection before any byte of it was written (hyper hands it back): the
//! app saw nothing of it. A request that may have reached the app is never
//! resent here; the caller's retry policy (the spool) decides.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

/// The sending half of one HTTP/1.1 connection.
pub type Sender = SendRequest<Full<Bytes>>;

/// How long an idle connection is kept by default.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why [`Pool::send`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError<E> {
    /// No connection could be opened; `connect` said why.
    #[error("{0}")]
    Connect(E),
    /// The exchange failed (the connection broke, the answer was not HTTP).
    #[error("{0}")]
    Http(hyper::Error),
}

/// Idle connections to one destination. Share it as `Arc<Pool>`.
pub struct Pool {
    max_idle: usize,
    idle_timeout: Duration,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Oldest first.
    senders: Vec<(Instant, Sender)>,
    /// Whether a task is closing expired connections.
    reaping: bool,
}

impl Pool {
    /// A pool that keeps up to `max_idle` connections for `idle_timeout`
    /// each. With `max_idle` 0 nothing is kept.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            max_idle,
            idle_timeout,
            idle: Mutex::new(Idle::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connections waiting now.
    pub fn idle(&self) -> usize {
        self.lock().senders.len()
    }

    /// The most recently returned connection that is still open.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.lock();
        while let Some((since, sender)) = idle.senders.pop() {
            if !sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request. Call it only after the answer
    /// was read to its end.
    pub fn put(self: &Arc<Self>, sender: Sender) {
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.senders.len() >= self.max_idle {
            idle.senders.remove(0);
        }
        idle.senders.push((Instant::now(), sender));
        if !idle.reaping {
            idle.reaping = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Sends `request` on a kept connection, or on a new one from
    /// `connect`. Returns the answer's head (its body still to be read) and
    /// the connection, to [`Pool::put`] back once the body is read.
    pub async fn send<C, F, E>(
        &self,
        mut request: http::Request<Full<Bytes>>,
        connect: C,
    ) -> Result<(http::Response<Incoming>, Sender), SendError<E>>
    where
        C: FnOnce() -> F,
        F: Future<Output = Result<Sender, E>>,
    {
        while let Some(mut sender) = self.take() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, sender)),
                Err(mut e) => match e.take_message() {
                    // Never written: the app saw nothing, try again.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let mut sender = connect().await.map_err(SendError::Connect)?;
        sender.ready().await.map_err(SendError::Http)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Http)?;
        Ok((response, sender))
    }
}

/// Closes connections once they have been idle too long; ends when none
/// is left (or the pool is gone).
async fn reap(pool: Weak<Pool>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let mut idle = pool.lock();
            let timeout = pool.idle_timeout;
            idle.senders
                .retain(|(since, sender)| !sender.is_closed() && since.elapsed() < timeout);
            match idle.senders.first() {
                Some((since, _)) => *since + timeout,
                None => {
                    idle.reaping = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    /// A local app on 127.0.0.1 that answers 200.
    struct Origin {
        addr: std::net::SocketAddr,
        /// Connections accepted so far.
        accepted: Arc<AtomicUsize>,
        /// One message each time a connection ends.
        closed: mpsc::UnboundedReceiver<()>,
    }

    /// `keep_alive` false closes each connection after one answer.
    async fn origin(keep_alive: bool) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (tx, closed) = mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                });
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(io), service)
                        .await;
                    let _ = tx.send(());
                });
            }
        });
        Origin {
            addr,
            accepted,
            closed,
        }
    }

    async fn connect(addr: std::net::SocketAddr) -> Result<Sender, std::io::Error> {
        let io = TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn request() -> http::Request<Full<Bytes>> {
        let mut r = http::Request::new(Full::new(Bytes::from_static(b"mail")));
        *r.method_mut() = http::Method::POST;
        r.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("origin"));
        r
    }

    /// One exchange through the pool; the connection goes back to it.
    async fn exchange(pool: &Arc<Pool>, addr: std::net::SocketAddr) {
        let (response, sender) = pool.send(request(), || connect(addr)).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
        pool.put(sender);
    }

    #[tokio::test]
    async fn requests_in_sequence_share_one_connection() {
        let origin = origin(true).await;
        let pool = Pool::new(4, Duration::from_secs(60));
        for _ in 0..20 {
            exchange(&pool, origin.addr).await;
        }
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn no_more_than_max_idle_are_kept() {
        let origin = origin(true).await;
        let pool = Pool::new(2, Duration::from_secs(60));
        let mut held = Vec::new();
        for _ in 0..5 {
            let (response, sender) = pool.send(request(), || connect(origin.addr)).await.unwrap();
            response.into_body().collect().await.unwrap();
            held.push(sender);
        }
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 5);
        for sender in held {
            pool.put(sender);
        }
        assert_eq!(pool.idle(), 2);
        assert_eq!(Pool::new(0, Duration::from_secs(60)).idle(), 0);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_timeout() {
        let mut origin = origin(true).await;
        let pool = Pool::new(4, Duration::from_millis(20));
        exchange(&pool, origin.addr).await;
        // The reaper closes it: the origin sees the connection end.
        tokio::time::timeout(Duration::from_secs(10), origin.closed.recv())
            .await
            .expect("the idle connection was never closed");
        assert_eq!(pool.idle(), 0);
        exchange(&pool, origin.addr).await;
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_not_used() {
        let mut origin = origin(false).await;
        let pool = Pool::new(4, Duration::from_secs(60));
        for _ in 0..5 {
            exchange(&pool, origin.addr).await;
            tokio::time::timeout(Duration::from_secs(10), origin.closed.recv())
                .await
                .unwrap();
        }
        assert_eq!(origin.accepted.load(Ordering::SeqCst), 5);
    }
}
