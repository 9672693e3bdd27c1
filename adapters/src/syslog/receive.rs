//! One tunnel's port: datagrams and TCP connections in, signed POSTs out.
//!
//! A message is delivered through the tunnel, or spooled for its owner
//! when the app cannot take it now. TCP frames are delivered one after
//! the other, so a connection's messages arrive in order, and a message
//! neither delivered nor spooled makes its connection wait: its sender
//! keeps the rest. UDP senders cannot wait: their messages queue (up to
//! [`SyslogConfig::queue`]) and past it are dropped and counted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::NAME;
use super::frame::Framer;
use super::post::{self, Received, Transport};
use super::settings::SyslogConfig;
use crate::adapter::{Adapter, Conn, ServeFuture, TlsSession};
use crate::delivery::{self, Attempt, Content, Delivery, PostOptions};
use crate::host::Host;
use crate::stats::DeliveryStats;

/// What one port's listeners share.
pub(crate) struct PortTarget {
    /// The tunnel.
    pub name: String,
    /// Its owner key: messages are the owner's, spooled or not.
    pub owner: String,
    /// The address its client connected from (an IPv6 /64 as one).
    pub client: std::net::IpAddr,
    /// How its messages are POSTed; updated when the tunnel reconnects.
    pub post: Mutex<PostOptions>,
    pub config: Arc<SyslogConfig>,
    pub host: Host,
    pub stats: DeliveryStats,
}

/// How a message came out.
enum Outcome {
    /// Delivered, refused by the app, or spooled: done with.
    Done,
    /// Neither delivered nor kept: the sender should wait.
    NotKept(String),
}

impl PortTarget {
    fn post(&self) -> PostOptions {
        self.post.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Delivers `body`, or spools it; an attempt still running at `stop`
    /// is given up and the message spooled (it may then arrive twice,
    /// never not at all).
    async fn deliver(&self, body: Bytes, stop: &CancellationToken) -> Outcome {
        let delivery = Delivery {
            id: delivery::new_id(),
            owner: self.owner.clone(),
            destination: self.name.clone(),
            content: Content::Post { post: self.post() },
            raw: body,
        };
        let sink = match self.host.tunnels.find(&self.name).await {
            Ok(Some(tunnel)) if tunnel.owner == self.owner => Some(tunnel.sink),
            _ => None,
        };
        let attempt = match sink {
            Some(sink) => tokio::select! {
                attempt = delivery.attempt(&*sink, self.config.deliver_timeout) => attempt,
                () = stop.cancelled() => Attempt::Retry {
                    reason: "the server stopped during the attempt".into(),
                },
            },
            None => Attempt::Retry {
                reason: "the tunnel is not connected".into(),
            },
        };
        match attempt {
            Attempt::Accepted => {
                self.stats.delivered.inc();
                Outcome::Done
            }
            Attempt::Rejected { status, reason } => {
                self.stats.refused.inc();
                info!(id = %delivery.id, tunnel = %self.name, status, %reason, "the app refused a syslog message");
                Outcome::Done
            }
            Attempt::Retry { reason } => self.keep(&delivery, &reason).await,
        }
    }

    async fn keep(&self, delivery: &Delivery, reason: &str) -> Outcome {
        let Some(spool) = &self.host.spool else {
            return Outcome::NotKept(format!("{reason}; no spool"));
        };
        match spool.store(delivery, reason).await {
            Ok(()) => {
                self.stats.spooled.inc();
                Outcome::Done
            }
            Err(e) => Outcome::NotKept(format!("{reason}; not spooled: {e}")),
        }
    }
}

/// A datagram as it came, waiting to be read and delivered.
struct Datagram {
    bytes: Bytes,
    truncated: bool,
    remote: SocketAddr,
    at: SystemTime,
}

/// Receives datagrams until `stop`; delivers them `config.concurrency` at
/// a time. The receiving loop only copies each one into the queue, so a
/// burst finds the socket's buffer drained.
pub(crate) async fn udp(socket: UdpSocket, target: Arc<PortTarget>, stop: CancellationToken) {
    let (queue, waiting) = mpsc::channel::<Datagram>(target.config.queue.max(1));
    let deliveries = tokio::spawn(deliver_datagrams(target.clone(), waiting, stop.clone()));
    let max = target.config.max_message;
    // One byte over the largest message tells a longer one.
    let mut buf = vec![0u8; max.saturating_add(1).min(65_536)];
    let mut dropped: u64 = 0;
    loop {
        let (n, remote) = tokio::select! {
            () = stop.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "syslog datagram not received");
                    continue;
                }
            },
        };
        target.stats.received.inc();
        let datagram = Datagram {
            bytes: Bytes::copy_from_slice(&buf[..n.min(max)]),
            truncated: n > max,
            remote,
            at: SystemTime::now(),
        };
        if queue.try_send(datagram).is_err() {
            dropped += 1;
            target.stats.refused.inc();
            if dropped.is_power_of_two() {
                warn!(tunnel = %target.name, dropped, "syslog datagrams dropped: the app is not keeping up");
            }
        }
    }
    drop(queue);
    let _ = deliveries.await;
}

async fn deliver_datagrams(
    target: Arc<PortTarget>,
    waiting: mpsc::Receiver<Datagram>,
    stop: CancellationToken,
) {
    let concurrency = target.config.concurrency.max(1);
    futures::stream::unfold(
        waiting,
        |mut rx| async move { rx.recv().await.map(|d| (d, rx)) },
    )
    .for_each_concurrent(concurrency, |datagram| {
        let (target, stop) = (target.clone(), stop.clone());
        async move {
            let body = post::body(&Received {
                bytes: &datagram.bytes,
                truncated: datagram.truncated,
                transport: Transport::Udp,
                remote: datagram.remote,
                at: datagram.at,
            });
            if let Outcome::NotKept(why) = target.deliver(Bytes::from(body), &stop).await {
                info!(tunnel = %target.name, %why, "a syslog datagram was lost");
            }
        }
    })
    .await;
}

/// A port's TCP side, for the adapter runtime.
pub(crate) struct TcpSide(pub Arc<PortTarget>);

impl Adapter for TcpSide {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serve(
        self: Arc<Self>,
        io: Conn,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> ServeFuture {
        Box::pin(async move { stream(io, peer, Transport::Tcp, &self.0, shutdown).await })
    }

    fn serve_tls(
        self: Arc<Self>,
        io: Conn,
        peer: SocketAddr,
        _tls: TlsSession,
        shutdown: CancellationToken,
    ) -> ServeFuture {
        Box::pin(async move { stream(io, peer, Transport::Tls, &self.0, shutdown).await })
    }
}

/// Reads frames until the sender closes, a frame is bad, or `stop`.
async fn stream(
    mut io: Conn,
    remote: SocketAddr,
    transport: Transport,
    target: &PortTarget,
    stop: CancellationToken,
) {
    let mut framer = Framer::new(target.config.max_message);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let frame = match framer.next(&mut buf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let read = tokio::select! {
                    () = stop.cancelled() => return,
                    read = io.read_buf(&mut buf) => read,
                };
                match read {
                    // The sender is done: close our side too (over TLS,
                    // with a close_notify, as RFC 5425 asks).
                    Ok(0) => {
                        let _ = io.shutdown().await;
                        return;
                    }
                    Err(_) => return,
                    Ok(_) => continue,
                }
            }
            Err(e) => {
                info!(%remote, error = %e, "syslog connection closed");
                return;
            }
        };
        target.stats.received.inc();
        let body = Bytes::from(post::body(&Received {
            bytes: &frame.bytes,
            truncated: frame.truncated,
            transport,
            remote,
            at: SystemTime::now(),
        }));
        if !deliver_or_wait(target, body, &stop).await {
            return;
        }
    }
}

/// Delivers or spools `body`, trying again while neither works; `false`
/// when `stop` came first (the message was not kept).
async fn deliver_or_wait(target: &PortTarget, body: Bytes, stop: &CancellationToken) -> bool {
    let mut wait = Duration::from_millis(500);
    loop {
        match target.deliver(body.clone(), stop).await {
            Outcome::Done => return true,
            Outcome::NotKept(why) => {
                info!(tunnel = %target.name, %why, ?wait, "a syslog message waits; its connection is held");
            }
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}
