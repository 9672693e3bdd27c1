//! A published message as the JSON body the app receives.

use base64::Engine as _;
use serde_json::{Value, json};

use super::codec::Message;

/// Who published it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Publisher {
    pub client_id: String,
    pub username: Option<String>,
}

/// The POST body of `message`, published to `topic` whose part after the
/// tunnel's name is `subtopic`; `will` when the device dropped and this is
/// its Will.
pub(crate) fn body(
    message: &Message,
    subtopic: &str,
    publisher: &Publisher,
    received_at_ms: u64,
    will: bool,
) -> Vec<u8> {
    let mut out = json!({
        "topic": message.topic,
        "subtopic": subtopic,
        "qos": message.qos,
        "retain": message.retain,
        "client_id": publisher.client_id,
        "username": publisher.username,
        "received_at": received_at_ms,
        "will": will,
    });
    match std::str::from_utf8(&message.payload) {
        Ok(text) => out["payload"] = Value::from(text),
        Err(_) => {
            out["payload_base64"] =
                Value::from(base64::engine::general_purpose::STANDARD.encode(&message.payload))
        }
    }
    let p = &message.properties;
    let mut properties = serde_json::Map::new();
    if !p.user_properties.is_empty() {
        properties.insert(
            "user_properties".into(),
            json!(
                p.user_properties
                    .iter()
                    .map(|(k, v)| [k, v])
                    .collect::<Vec<_>>()
            ),
        );
    }
    if let Some(t) = &p.content_type {
        properties.insert("content_type".into(), Value::from(t.as_str()));
    }
    if let Some(t) = &p.response_topic {
        properties.insert("response_topic".into(), Value::from(t.as_str()));
    }
    if let Some(d) = &p.correlation_data {
        properties.insert(
            "correlation_data_base64".into(),
            Value::from(base64::engine::general_purpose::STANDARD.encode(d)),
        );
    }
    if let Some(f) = p.payload_format_indicator {
        properties.insert("payload_format_indicator".into(), Value::from(f));
    }
    if let Some(e) = p.message_expiry_interval {
        properties.insert("message_expiry_interval".into(), Value::from(e));
    }
    out["properties"] = Value::Object(properties);
    serde_json::to_vec(&out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::codec::Properties;
    use super::*;

    #[test]
    fn text_and_binary_payloads_and_properties() {
        let mut message = Message {
            topic: "api/sensors/1".into(),
            qos: 1,
            retain: false,
            payload: Bytes::from_static(b"21.5"),
            properties: Properties {
                user_properties: vec![("unit".into(), "C".into())],
                correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                ..Properties::default()
            },
        };
        let who = Publisher {
            client_id: "dev-1".into(),
            username: Some("ann".into()),
        };
        let v: Value =
            serde_json::from_slice(&body(&message, "sensors/1", &who, 5, false)).unwrap();
        assert_eq!(v["payload"], "21.5");
        assert_eq!(v["subtopic"], "sensors/1");
        assert_eq!(v["client_id"], "dev-1");
        assert_eq!(v["properties"]["user_properties"], json!([["unit", "C"]]));
        assert_eq!(v["properties"]["correlation_data_base64"], "AQI=");
        message.payload = Bytes::from_static(&[0xff, 0x00]);
        let v: Value = serde_json::from_slice(&body(&message, "s", &who, 5, true)).unwrap();
        assert_eq!(v["payload_base64"], "/wA=");
        assert!(v.get("payload").is_none());
        assert_eq!(v["will"], true);
    }
}
