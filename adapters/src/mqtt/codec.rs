//! MQTT 3.1.1 and 5.0 packets, read and written with rumqttc's codecs
//! (sans-IO, maintained with rumqttc), behind one shape for both versions:
//! the session speaks in [`Incoming`] packets and the few answers it
//! sends. Nothing here prints: what a device sends reaches the log only
//! through the session's `tracing`.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as bytes4, QoS, v4};
use rumqttc::v5::mqttbytes::{self as bytes5, v5};

/// The protocol version a connection speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    /// 3.1.1 (protocol level 4).
    V4,
    /// 5.0 (protocol level 5).
    V5,
}

/// MQTT 5 properties of a publish that reach the app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Properties {
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
}

/// A message a device published, or its Will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    pub properties: Properties,
}

/// What a device's CONNECT says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect {
    pub version: Version,
    pub client_id: String,
    pub keep_alive: u16,
    pub login: Option<(String, String)>,
    pub will: Option<Message>,
}

/// A packet from a device, as the session needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    Connect(Connect),
    Publish {
        message: Message,
        pkid: u16,
    },
    /// Filters, each with the QoS asked for.
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A packet a device does not send a server, or one the session ignores
    /// (acknowledgements of messages it never sent).
    Other,
}

/// Why the bytes are not a packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ReadError {
    #[error("a packet of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("a malformed packet: {0}")]
    Malformed(String),
    #[error("protocol level {0} is not MQTT 3.1.1 (4) or 5.0 (5)")]
    Level(u8),
}

/// The protocol level of a CONNECT at the start of `buf`: `Ok(None)` when
/// more bytes are needed.
pub(crate) fn connect_version(buf: &[u8]) -> Result<Option<Version>, ReadError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] >> 4 != 1 {
        return Err(ReadError::Malformed(
            "the first packet is not a CONNECT".into(),
        ));
    }
    // The remaining length: 1 to 4 bytes of 7 bits each.
    let mut at = 1;
    loop {
        let Some(byte) = buf.get(at) else {
            return Ok(None);
        };
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(ReadError::Malformed("a bad remaining length".into()));
        }
    }
    // The protocol name: a 2-byte length, then "MQTT"; then the level.
    let Some(name_len) = buf.get(at..at + 2) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([name_len[0], name_len[1]]));
    match buf.get(at + 2 + name_len) {
        None => Ok(None),
        Some(4) => Ok(Some(Version::V4)),
        Some(5) => Ok(Some(Version::V5)),
        Some(&level) => Err(ReadError::Level(level)),
    }
}

fn qos(q: QoS) -> u8 {
    q as u8
}

fn qos5(q: bytes5::QoS) -> u8 {
    q as u8
}

/// A topic as the codec read it (MQTT 5 keeps it as bytes): UTF-8, as
/// MQTT requires.
fn text(topic: Bytes) -> Result<String, ReadError> {
    String::from_utf8(topic.to_vec())
        .map_err(|_| ReadError::Malformed("a topic that is not UTF-8".into()))
}

/// Reads the next packet from `buf`: `Ok(None)` when more bytes are needed.
pub(crate) fn read(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Incoming>, ReadError> {
    let packet = match version {
        Version::V4 => match v4::Packet::read(buf, max) {
            Ok(p) => from_v4(p),
            Err(bytes4::Error::InsufficientBytes(_)) => return Ok(None),
            Err(bytes4::Error::PayloadSizeLimitExceeded(n)) => return Err(ReadError::TooLarge(n)),
            Err(e) => return Err(ReadError::Malformed(format!("{e:?}"))),
        },
        // A DISCONNECT with no reason code (0x00, "normal") has no body,
        // which the MQTT 5 codec does not take.
        Version::V5 if buf.starts_with(&[0xE0, 0x00]) => {
            let _ = buf.split_to(2);
            Incoming::Disconnect
        }
        Version::V5 => match v5::Packet::read(buf, u32::try_from(max).ok()) {
            Ok(p) => from_v5(p)?,
            Err(bytes5::Error::InsufficientBytes(_)) => return Ok(None),
            Err(bytes5::Error::PayloadSizeLimitExceeded { pkt_size, .. }) => {
                return Err(ReadError::TooLarge(pkt_size));
            }
            Err(e) => return Err(ReadError::Malformed(format!("{e:?}"))),
        },
    };
    Ok(Some(packet))
}

fn from_v4(packet: v4::Packet) -> Incoming {
    match packet {
        v4::Packet::Connect(c) => Incoming::Connect(Connect {
            version: Version::V4,
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            login: c.login.map(|l| (l.username, l.password)),
            will: c.last_will.map(|w| Message {
                topic: w.topic,
                qos: qos(w.qos),
                retain: w.retain,
                payload: w.message,
                properties: Properties::default(),
            }),
        }),
        v4::Packet::Publish(p) => Incoming::Publish {
            pkid: p.pkid,
            message: Message {
                topic: p.topic,
                qos: qos(p.qos),
                retain: p.retain,
                payload: p.payload,
                properties: Properties::default(),
            },
        },
        v4::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos(f.qos)))
                .collect(),
        },
        v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Incoming::PingReq,
        v4::Packet::Disconnect => Incoming::Disconnect,
        _ => Incoming::Other,
    }
}

fn from_v5(packet: v5::Packet) -> Result<Incoming, ReadError> {
    Ok(match packet {
        v5::Packet::Connect(c, will, login) => Incoming::Connect(Connect {
            version: Version::V5,
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            login: login.map(|l| (l.username, l.password)),
            will: match will {
                Some(w) => {
                    let p = w.properties.unwrap_or(v5::LastWillProperties {
                        delay_interval: None,
                        payload_format_indicator: None,
                        message_expiry_interval: None,
                        content_type: None,
                        response_topic: None,
                        correlation_data: None,
                        user_properties: Vec::new(),
                    });
                    Some(Message {
                        topic: text(w.topic)?,
                        qos: qos5(w.qos),
                        retain: w.retain,
                        payload: w.message,
                        properties: Properties {
                            user_properties: p.user_properties,
                            content_type: p.content_type,
                            response_topic: p.response_topic,
                            correlation_data: p.correlation_data,
                            payload_format_indicator: p.payload_format_indicator,
                            message_expiry_interval: p.message_expiry_interval,
                        },
                    })
                }
                None => None,
            },
        }),
        v5::Packet::Publish(p) => {
            let properties = p
                .properties
                .map(|p| Properties {
                    user_properties: p.user_properties,
                    content_type: p.content_type,
                    response_topic: p.response_topic,
                    correlation_data: p.correlation_data,
                    payload_format_indicator: p.payload_format_indicator,
                    message_expiry_interval: p.message_expiry_interval,
                })
                .unwrap_or_default();
            Incoming::Publish {
                pkid: p.pkid,
                message: Message {
                    topic: text(p.topic)?,
                    qos: qos5(p.qos),
                    retain: p.retain,
                    payload: p.payload,
                    properties,
                },
            }
        }
        v5::Packet::Subscribe(s) => Incoming::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos5(f.qos)))
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Incoming::PingReq,
        v5::Packet::Disconnect(_) => Incoming::Disconnect,
        _ => Incoming::Other,
    })
}

/// How a CONNECT is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectAnswer {
    Accepted,
    BadLogin,
    /// Logins cannot be checked now.
    Unavailable,
}

/// Writes a CONNACK. For MQTT 5 it says what this server does not do:
/// QoS 2, retained messages, wildcard and shared subscriptions.
pub(crate) fn connack(
    version: Version,
    answer: ConnectAnswer,
    max_packet: usize,
    out: &mut BytesMut,
) {
    let _ = match version {
        Version::V4 => {
            let code = match answer {
                ConnectAnswer::Accepted => v4::ConnectReturnCode::Success,
                ConnectAnswer::BadLogin => v4::ConnectReturnCode::BadUserNamePassword,
                ConnectAnswer::Unavailable => v4::ConnectReturnCode::ServiceUnavailable,
            };
            v4::ConnAck::new(code, false).write(out).is_ok()
        }
        Version::V5 => {
            let code = match answer {
                ConnectAnswer::Accepted => v5::ConnectReturnCode::Success,
                ConnectAnswer::BadLogin => v5::ConnectReturnCode::BadUserNamePassword,
                ConnectAnswer::Unavailable => v5::ConnectReturnCode::ServerUnavailable,
            };
            let properties = v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: None,
                max_qos: Some(1),
                retain_available: Some(0),
                max_packet_size: u32::try_from(max_packet).ok(),
                assigned_client_identifier: None,
                topic_alias_max: None,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: Some(0),
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            };
            let ack = v5::ConnAck {
                session_present: false,
                code,
                properties: Some(properties),
            };
            ack.write(out).is_ok()
        }
    };
}

/// Writes a PUBACK; `reason` (MQTT 5 only) is a reason code of 0x80 or
/// above with a reason string when the message was not taken.
pub(crate) fn puback(version: Version, pkid: u16, refused: Option<(u8, &str)>, out: &mut BytesMut) {
    let _ = match version {
        Version::V4 => v4::PubAck::new(pkid).write(out).is_ok(),
        Version::V5 => {
            let mut ack = v5::PubAck::new(pkid, None);
            if let Some((code, reason)) = refused {
                ack.reason = match code {
                    0x87 => v5::PubAckReason::NotAuthorized,
                    0x90 => v5::PubAckReason::TopicNameInvalid,
                    0x97 => v5::PubAckReason::QuotaExceeded,
                    0x99 => v5::PubAckReason::PayloadFormatInvalid,
                    0x83 => v5::PubAckReason::ImplementationSpecificError,
                    _ => v5::PubAckReason::UnspecifiedError,
                };
                ack.properties = Some(v5::PubAckProperties {
                    reason_string: Some(reason.chars().take(200).collect()),
                    user_properties: Vec::new(),
                });
            }
            ack.write(out).is_ok()
        }
    };
}

/// Writes a PINGRESP.
pub(crate) fn pingresp(version: Version, out: &mut BytesMut) {
    let _ = match version {
        Version::V4 => v4::PingResp.write(out).is_ok(),
        Version::V5 => v5::PingResp::write(out).is_ok(),
    };
}

/// What a SUBSCRIBE's filter got: the QoS granted, or a refusal (MQTT 5:
/// 0x87 not authorized, 0x8F filter invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Granted {
    QoS(u8),
    Refused(u8),
}

/// Answers a SUBSCRIBE, a code per filter.
pub(crate) fn suback(version: Version, pkid: u16, granted: &[Granted], out: &mut BytesMut) {
    let _ = match version {
        Version::V4 => {
            let codes = granted
                .iter()
                .map(|g| match g {
                    Granted::QoS(0) => v4::SubscribeReasonCode::Success(QoS::AtMostOnce),
                    Granted::QoS(_) => v4::SubscribeReasonCode::Success(QoS::AtLeastOnce),
                    Granted::Refused(_) => v4::SubscribeReasonCode::Failure,
                })
                .collect();
            v4::SubAck::new(pkid, codes).write(out).is_ok()
        }
        Version::V5 => {
            let return_codes = granted
                .iter()
                .map(|g| match g {
                    Granted::QoS(0) => v5::SubscribeReasonCode::Success(bytes5::QoS::AtMostOnce),
                    Granted::QoS(_) => v5::SubscribeReasonCode::Success(bytes5::QoS::AtLeastOnce),
                    Granted::Refused(0x87) => v5::SubscribeReasonCode::NotAuthorized,
                    Granted::Refused(_) => v5::SubscribeReasonCode::TopicFilterInvalid,
                })
                .collect();
            let ack = v5::SubAck {
                pkid,
                return_codes,
                properties: None,
            };
            ack.write(out).is_ok()
        }
    };
}

/// Writes a PUBLISH to a device.
pub(crate) fn publish(
    version: Version,
    topic: &str,
    payload: &Bytes,
    qos: u8,
    retain: bool,
    pkid: u16,
    out: &mut BytesMut,
) {
    let q = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let pkid = if qos == 0 { 0 } else { pkid };
    let _ = match version {
        Version::V4 => {
            let mut p = v4::Publish::from_bytes(topic, q, payload.clone());
            p.retain = retain;
            p.pkid = pkid;
            p.write(out).is_ok()
        }
        Version::V5 => {
            let q = if qos == 0 {
                bytes5::QoS::AtMostOnce
            } else {
                bytes5::QoS::AtLeastOnce
            };
            let mut p = v5::Publish::new(topic, q, payload.clone(), None);
            p.retain = retain;
            p.pkid = pkid;
            p.write(out).is_ok()
        }
    };
}

/// Answers an UNSUBSCRIBE.
pub(crate) fn unsuback(version: Version, pkid: u16, filters: usize, out: &mut BytesMut) {
    let _ = match version {
        Version::V4 => v4::UnsubAck::new(pkid).write(out).is_ok(),
        Version::V5 => {
            let ack = v5::UnsubAck {
                pkid,
                reasons: vec![v5::UnsubAckReason::Success; filters],
                properties: None,
            };
            ack.write(out).is_ok()
        }
    };
}

/// Writes an MQTT 5 DISCONNECT with `reason` (a reason code) and a sentence.
pub(crate) fn disconnect(version: Version, reason: u8, sentence: &str, out: &mut BytesMut) {
    if version != Version::V5 {
        return;
    }
    let code = v5::DisconnectReasonCode::try_from(reason)
        .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError);
    let mut packet = v5::Disconnect::new(code);
    packet.properties = Some(v5::DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some(sentence.into()),
        user_properties: Vec::new(),
        server_reference: None,
    });
    let _ = packet.write(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_the_connect() {
        let mut v4 = BytesMut::new();
        v4::Connect::new("dev").write(&mut v4).unwrap();
        for cut in 0..v4.len() {
            let partial = connect_version(&v4[..cut]).unwrap();
            assert!(partial.is_none() || cut >= 9, "{cut}");
        }
        assert_eq!(connect_version(&v4).unwrap(), Some(Version::V4));
        let mut v5 = BytesMut::new();
        let connect = v5::Connect {
            keep_alive: 10,
            client_id: "dev".into(),
            clean_start: true,
            properties: None,
        };
        connect.write(&None, &None, &mut v5).unwrap();
        assert_eq!(connect_version(&v5).unwrap(), Some(Version::V5));
        assert!(connect_version(b"\x30\x00").is_err(), "a PUBLISH first");
        let mut level3 = v4.to_vec();
        level3[8] = 3;
        assert_eq!(connect_version(&level3), Err(ReadError::Level(3)));
    }

    #[test]
    fn publishes_read_alike_in_both_versions() {
        let mut buf = BytesMut::new();
        let mut p = v4::Publish::new("t/a", QoS::AtLeastOnce, b"hi".to_vec());
        p.pkid = 7;
        p.write(&mut buf).unwrap();
        let got = read(Version::V4, &mut buf, 1024).unwrap().unwrap();
        assert!(
            matches!(got, Incoming::Publish { pkid: 7, ref message } if message.topic == "t/a" && message.qos == 1)
        );
        let mut buf = BytesMut::new();
        let mut p = v5::Publish::new("t/b", bytes5::QoS::AtMostOnce, b"yo".to_vec(), None);
        p.properties = Some(v5::PublishProperties {
            payload_format_indicator: None,
            message_expiry_interval: None,
            topic_alias: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![("k".into(), "v".into())],
            subscription_identifiers: Vec::new(),
            content_type: Some("text/plain".into()),
        });
        p.write(&mut buf).unwrap();
        let Incoming::Publish { message, .. } = read(Version::V5, &mut buf, 1024).unwrap().unwrap()
        else {
            panic!("not a publish")
        };
        assert_eq!(
            message.properties.content_type.as_deref(),
            Some("text/plain")
        );
        assert_eq!(
            message.properties.user_properties,
            [("k".to_string(), "v".to_string())]
        );
        // A packet over the limit is refused before it is read.
        let mut buf = BytesMut::new();
        v4::Publish::new("t", QoS::AtMostOnce, vec![0u8; 5000])
            .write(&mut buf)
            .unwrap();
        assert!(matches!(
            read(Version::V4, &mut buf, 1000),
            Err(ReadError::TooLarge(_))
        ));
    }

    #[test]
    fn an_mqtt_5_disconnect_with_no_reason_code_is_a_clean_end() {
        let mut buf = BytesMut::from(&[0xE0, 0x00, 0xC0, 0x00][..]);
        assert_eq!(
            read(Version::V5, &mut buf, 1024),
            Ok(Some(Incoming::Disconnect))
        );
        assert_eq!(
            read(Version::V5, &mut buf, 1024),
            Ok(Some(Incoming::PingReq))
        );
        assert_eq!(read(Version::V5, &mut buf, 1024), Ok(None));
    }

    #[test]
    fn an_mqtt_5_unsubscribe_is_read_quietly() {
        // mqttbytes 0.6 printed a line on stderr for each of these (dbg!).
        let mut buf = BytesMut::new();
        v5::Unsubscribe::new("t/#", None).write(&mut buf).unwrap();
        assert!(matches!(
            read(Version::V5, &mut buf, 1024),
            Ok(Some(Incoming::Unsubscribe { filters, .. })) if filters == ["t/#"]
        ));
    }
}
