//! A received message as the JSON body the app gets.

use std::net::SocketAddr;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::parse::{self, Parsed};

/// How a message came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One datagram (RFC 5426).
    Udp,
    /// A frame of a TCP connection (RFC 6587).
    Tcp,
    /// A frame of a TLS connection (RFC 5425).
    Tls,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// One message as it arrived.
#[derive(Debug)]
pub struct Received<'a> {
    /// Its bytes, cut to the largest message.
    pub bytes: &'a [u8],
    /// It was longer and was cut.
    pub truncated: bool,
    /// How it came.
    pub transport: Transport,
    /// Who sent it.
    pub remote: SocketAddr,
    /// When.
    pub at: SystemTime,
}

/// The POST body of `received`.
pub fn body(received: &Received<'_>) -> Vec<u8> {
    let year = humantime::format_rfc3339(received.at).to_string()[..4]
        .parse()
        .unwrap_or(1970);
    let Parsed {
        facility,
        severity,
        timestamp,
        hostname,
        app_name,
        procid,
        msgid,
        structured_data,
        message,
        format,
    } = parse::parse(received.bytes, year);
    let out = json!({
        "facility": facility,
        "facility_name": parse::facility_name(facility),
        "severity": severity,
        "severity_name": parse::severity_name(severity),
        "timestamp": timestamp,
        "hostname": hostname,
        "app_name": app_name,
        "procid": procid,
        "msgid": msgid,
        "structured_data": Value::Object(structured_data),
        "message": message,
        "format": format,
        "transport": received.transport.as_str(),
        "remote": received.remote.to_string(),
        "received_at": humantime::format_rfc3339_millis(received.at).to_string(),
        "truncated": received.truncated,
    });
    serde_json::to_vec(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_field_is_there() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        let received = Received {
            bytes: b"<13>Dec  7 14:03:09 box app: hi",
            truncated: true,
            transport: Transport::Tcp,
            remote: "127.0.0.1:5000".parse().unwrap(),
            at,
        };
        let v: Value = serde_json::from_slice(&body(&received)).unwrap();
        assert_eq!(v["facility"], 1);
        assert_eq!(v["facility_name"], "user");
        assert_eq!(v["severity_name"], "notice");
        assert_eq!(v["timestamp"], "2026-12-07T14:03:09Z");
        assert_eq!(v["format"], "rfc3164");
        assert_eq!(v["transport"], "tcp");
        assert_eq!(v["remote"], "127.0.0.1:5000");
        assert_eq!(v["received_at"], "2026-11-30T00:53:20.123Z");
        assert_eq!(v["truncated"], true);
        assert_eq!(v["msgid"], Value::Null);
        assert!(v["structured_data"].as_object().unwrap().is_empty());
    }
}
