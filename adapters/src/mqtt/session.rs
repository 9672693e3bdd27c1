//! One device's connection, from CONNECT to its end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::codec::{self, ConnectAnswer, Granted, Incoming, Message, ReadError, Version};
use super::post::{self, Publisher};
use super::subscriptions::Outgoing;
use super::{MqttAdapter, TopicRefusal};
use crate::delivery::{self, Attempt, Content, Delivery};

/// How a connection ended.
enum End {
    /// DISCONNECT, or the server stopping: no Will.
    Clean,
    /// The device dropped, went quiet, or broke the protocol: its Will goes.
    Lost,
}

/// What a device's publish came to.
enum Outcome {
    /// Acknowledge it.
    Ack,
    /// Refuse it: an MQTT 5 reason code and a sentence.
    Refuse(u8, String),
    /// MQTT 3.1.1 cannot refuse: end the connection, unacknowledged.
    Close(String),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) async fn run<S>(
    adapter: Arc<MqttAdapter>,
    mut io: S,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max = adapter.config.max_packet_size;
    let mut buf = BytesMut::with_capacity(4096);
    let connect = tokio::time::timeout(adapter.config.connect_timeout, async {
        loop {
            match codec::connect_version(&buf) {
                Ok(Some(version)) => match codec::read(version, &mut buf, max) {
                    Ok(Some(Incoming::Connect(connect))) => return Ok(connect),
                    Ok(Some(_)) => return Err("the first packet is not a CONNECT".to_string()),
                    Ok(None) => {}
                    Err(e) => return Err(e.to_string()),
                },
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Err("closed before its CONNECT".to_string()),
                Ok(_) => {}
            }
        }
    })
    .await;
    let connect = match connect {
        Ok(Ok(connect)) => connect,
        Ok(Err(why)) => {
            debug!(%peer, %why, "no MQTT session");
            return;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT in time");
            return;
        }
    };
    let version = connect.version;
    let mut out = BytesMut::new();
    let login = connect.login.as_ref().map(|(u, p)| format!("{u}:{p}"));
    let refusal = match &login {
        Some(login) => match adapter.router.login(login).await {
            Ok(true) => None,
            Ok(false) => Some(ConnectAnswer::BadLogin),
            Err(e) => {
                info!(%peer, reason = %e, "MQTT login cannot be checked now");
                Some(ConnectAnswer::Unavailable)
            }
        },
        None => None,
    };
    if let Some(refusal) = refusal {
        info!(%peer, client_id = %connect.client_id, ?refusal, "MQTT connection refused");
        codec::connack(version, refusal, max, &mut out);
        let _ = io.write_all(&out).await;
        let _ = io.shutdown().await;
        return;
    }
    let mut connect = connect;
    if connect.client_id.is_empty() {
        // A device that gave no id gets one of its own: it takes nobody over.
        connect.client_id = format!("droid-{}", delivery::new_id());
    }
    let client_key = super::client_key(&connect.client_id, login.as_deref(), peer.ip());
    let (number, taken) = adapter.take_over(&client_key);
    codec::connack(version, ConnectAnswer::Accepted, max, &mut out);
    if io.write_all(&out).await.is_err() {
        adapter.left(&client_key, number);
        return;
    }
    out.clear();
    debug!(%peer, client_id = %connect.client_id, ?version, "MQTT session up");
    let publisher = Publisher {
        client_id: connect.client_id.clone(),
        username: connect.login.as_ref().map(|(u, _)| u.clone()),
    };
    // What the app publishes to this device's subscriptions.
    let (to_device, mut outgoing) = tokio::sync::mpsc::channel::<Outgoing>(1024);
    let mut next_pkid: u16 = 0;
    let device = Device {
        version,
        login: login.clone(),
        publisher,
        session: number,
        to: to_device,
        at_most_once: Arc::new(tokio::sync::Semaphore::new(QOS0_PER_DEVICE)),
    };
    let quiet = match connect.keep_alive {
        0 => adapter.config.idle_timeout,
        seconds => Duration::from_millis(u64::from(seconds) * 1500),
    };
    let end = loop {
        // Every whole packet already read is handled before reading more.
        let packet = match codec::read(version, &mut buf, max) {
            Ok(packet) => packet,
            Err(e) => {
                let reason = if matches!(e, ReadError::TooLarge(_)) {
                    0x95
                } else {
                    0x81
                };
                info!(%peer, client_id = %connect.client_id, error = %e, "MQTT connection closed");
                codec::disconnect(version, reason, &e.to_string(), &mut out);
                break End::Lost;
            }
        };
        if let Some(packet) = packet {
            let ended = handle(&adapter, &device, packet, &mut out).await;
            if !out.is_empty() {
                if io.write_all(&out).await.is_err() {
                    break End::Lost;
                }
                out.clear();
            }
            match ended {
                Some(end) => break end,
                None => continue,
            }
        }
        tokio::select! {
            Some(message) = outgoing.recv() => {
                next_pkid = next_pkid.wrapping_add(1).max(1);
                codec::publish(version, &message.topic, &message.payload, message.qos, message.retain, next_pkid, &mut out);
                if io.write_all(&out).await.is_err() {
                    break End::Lost;
                }
                out.clear();
            }
            read = tokio::time::timeout(quiet, io.read_buf(&mut buf)) => match read {
                Ok(Ok(0)) | Ok(Err(_)) => break End::Lost,
                Ok(Ok(_)) => {}
                Err(_) => {
                    debug!(%peer, client_id = %connect.client_id, "MQTT keep-alive expired");
                    codec::disconnect(version, 0x8D, "no packet within 1.5 times the keep-alive", &mut out);
                    break End::Lost;
                }
            },
            () = taken.cancelled() => {
                codec::disconnect(version, 0x8E, "another connection took this client id over", &mut out);
                break End::Clean;
            }
            () = shutdown.cancelled() => {
                codec::disconnect(version, 0x8B, "the server is shutting down", &mut out);
                break End::Clean;
            }
        }
    };
    if !out.is_empty() {
        let _ = io.write_all(&out).await;
    }
    let _ = io.shutdown().await;
    adapter.left(&client_key, number);
    adapter.subscriptions.forget(number);
    if let (End::Lost, Some(will)) = (end, connect.will) {
        info!(client_id = %connect.client_id, topic = %will.topic, "posting the Will of a dropped device");
        let _ = publish(&adapter, &device, &will, true).await;
    }
}

/// One connected device, as its packets are handled.
struct Device {
    version: Version,
    login: Option<String>,
    publisher: Publisher,
    /// Its connection's number, which its subscriptions are filed under.
    session: u64,
    /// Where messages for its subscriptions go.
    to: tokio::sync::mpsc::Sender<Outgoing>,
    /// Its QoS 0 messages being delivered: past [`QOS0_PER_DEVICE`], its
    /// next publish waits (and its connection is not read meanwhile).
    at_most_once: Arc<tokio::sync::Semaphore>,
}

/// QoS 0 messages of one device delivered at once.
const QOS0_PER_DEVICE: usize = 16;

/// Handles one packet; `Some` when the connection ends after it.
async fn handle(
    adapter: &Arc<MqttAdapter>,
    device: &Device,
    packet: Incoming,
    out: &mut BytesMut,
) -> Option<End> {
    let version = device.version;
    match packet {
        Incoming::Publish { message, pkid } => {
            if message.qos > 1 {
                codec::disconnect(
                    version,
                    0x9B,
                    "QoS 2 is not supported here; publish with QoS 0 or 1",
                    out,
                );
                return Some(End::Lost);
            }
            match publish(adapter, device, &message, false).await {
                Outcome::Ack if message.qos == 1 => codec::puback(version, pkid, None, out),
                Outcome::Ack => {}
                Outcome::Refuse(code, why) if message.qos == 1 => {
                    codec::puback(version, pkid, Some((code, &why)), out);
                }
                Outcome::Refuse(_, why) => {
                    debug!(topic = %message.topic, %why, "a QoS 0 message refused");
                }
                Outcome::Close(why) => {
                    info!(topic = %message.topic, %why, "MQTT 3.1.1 connection closed");
                    return Some(End::Lost);
                }
            }
            None
        }
        Incoming::Subscribe { pkid, filters } => {
            let mut granted = Vec::with_capacity(filters.len());
            let mut retained = Vec::new();
            for (filter, qos) in filters {
                match adapter
                    .router
                    .subscribe(&filter, device.login.as_deref())
                    .await
                {
                    Ok((tunnel, tenancy)) => {
                        let qos = qos.min(1);
                        adapter.read_retained(&tunnel, &tenancy).await;
                        retained.extend(adapter.subscriptions.subscribe(
                            &tunnel,
                            &tenancy,
                            device.session,
                            &filter,
                            qos,
                            device.to.clone(),
                        ));
                        granted.push(Granted::QoS(qos));
                    }
                    Err(refusal) => {
                        debug!(%filter, ?refusal, "a subscription refused");
                        granted.push(Granted::Refused(match refusal {
                            TopicRefusal::NotAuthorized(_) => 0x87,
                            TopicRefusal::NoTunnel(_) => 0x8F,
                            TopicRefusal::Unavailable(_) => 0x80,
                        }));
                    }
                }
            }
            codec::suback(version, pkid, &granted, out);
            // Retained messages follow the SUBACK, through the same queue
            // as every other message for this device.
            for message in retained {
                let _ = device.to.try_send(message);
            }
            None
        }
        Incoming::Unsubscribe { pkid, filters } => {
            for filter in &filters {
                adapter.subscriptions.unsubscribe(device.session, filter);
            }
            codec::unsuback(version, pkid, filters.len(), out);
            None
        }
        Incoming::PingReq => {
            codec::pingresp(version, out);
            None
        }
        Incoming::Disconnect => Some(End::Clean),
        Incoming::Connect(_) => {
            codec::disconnect(version, 0x82, "a second CONNECT", out);
            Some(End::Lost)
        }
        Incoming::Other => None,
    }
}

/// Delivers one message: QoS 0 in the background, QoS 1 while the device
/// waits, spooled when the app cannot take it now.
async fn publish(
    adapter: &Arc<MqttAdapter>,
    device: &Device,
    message: &Message,
    will: bool,
) -> Outcome {
    let (version, login, publisher) = (device.version, device.login.as_deref(), &device.publisher);
    let stats = &adapter.stats;
    let refuse = |code: u8, why: String| match version {
        Version::V5 => Outcome::Refuse(code, why),
        Version::V4 => Outcome::Close(why),
    };
    if let Err(why) = valid_topic(&message.topic) {
        stats.refused.inc();
        info!(topic = %message.topic.escape_debug(), %why, "MQTT publish refused");
        return refuse(0x90, why.into());
    }
    let route = match adapter.router.resolve(&message.topic, login).await {
        Ok(route) => route,
        Err(TopicRefusal::NoTunnel(why)) => {
            stats.refused.inc();
            info!(topic = %message.topic, %why, "MQTT publish refused");
            return refuse(0x90, why);
        }
        Err(TopicRefusal::NotAuthorized(why)) => {
            stats.refused.inc();
            info!(topic = %message.topic, %why, "MQTT publish refused");
            return refuse(0x87, why);
        }
        // Not acknowledged: the device sends it again when it reconnects.
        Err(TopicRefusal::Unavailable(why)) => {
            info!(topic = %message.topic, %why, "MQTT publish deferred; closing");
            return Outcome::Close(why);
        }
    };
    let body = post::body(message, &route.subtopic, publisher, now_ms(), will);
    let delivery = Delivery {
        id: delivery::new_id(),
        owner: route.owner.clone(),
        destination: route.destination.clone(),
        content: Content::Post {
            post: route.post.clone(),
        },
        raw: Bytes::from(body),
    };
    stats.received.inc();
    let timeout = adapter.config.deliver_timeout;
    if message.qos == 0 {
        // At most once: posted once, never kept, nobody waits for the
        // app. Bounded all the same: past its device's share, or the
        // adapter's, the device waits (TCP holds the rest on its side)
        // rather than the server holding every message of a flood.
        let permits = (
            device.at_most_once.clone().acquire_owned().await,
            adapter.at_most_once.clone().acquire_owned().await,
        );
        let (sink, stats) = (route.sink.clone(), stats.clone());
        tokio::spawn(async move {
            let _permits = permits;
            match delivery.attempt(&*sink, timeout).await {
                Attempt::Accepted => {
                    stats.delivered.inc();
                }
                outcome => debug!(id = %delivery.id, ?outcome, "a QoS 0 message was not taken"),
            }
        });
        return Outcome::Ack;
    }
    match delivery.attempt(&*route.sink, timeout).await {
        Attempt::Accepted => {
            stats.delivered.inc();
            Outcome::Ack
        }
        Attempt::Rejected { status, reason } => {
            stats.refused.inc();
            info!(id = %delivery.id, destination = %delivery.destination, status, %reason, "the app refused an MQTT message");
            match version {
                Version::V5 => {
                    let code = if status == 401 || status == 403 {
                        0x87
                    } else {
                        0x80
                    };
                    Outcome::Refuse(code, reason)
                }
                // 3.1.1 has no way to say no: the app decided, so the
                // message is acknowledged rather than sent again forever.
                Version::V4 => Outcome::Ack,
            }
        }
        Attempt::Retry { reason } => {
            let kept = match &adapter.spool {
                Some(spool) => spool
                    .store(&delivery, &reason)
                    .await
                    .map_err(|e| e.to_string()),
                None => Err("no spool".to_string()),
            };
            match kept {
                Ok(()) => {
                    stats.spooled.inc();
                    Outcome::Ack
                }
                Err(why) => {
                    info!(id = %delivery.id, %reason, %why, "an MQTT message could be neither delivered nor kept");
                    refuse(
                        0x80,
                        format!(
                            "the app cannot take it now ({reason}) and it cannot be kept; publish it again later"
                        ),
                    )
                }
            }
        }
    }
}

/// Whether `topic` may be published to: MQTT forbids an empty topic, the
/// wildcards `+` and `#` (they are for filters) and NUL.
fn valid_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        Err("a topic may not be empty")
    } else if topic.contains(['+', '#']) {
        Err("a published topic may not hold the wildcards + or #")
    } else if topic.contains('\0') {
        Err("a topic may not hold NUL")
    } else {
        Ok(())
    }
}
