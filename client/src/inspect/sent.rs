//! Mail the app sent (`POST /email`, `/email/batch`), kept as exchanges of
//! kind `mail` with `direction: out`: the message as the app gave it, and
//! the answer it got (caught, sent through the relay, or refused, and
//! why). The page shows them as mails, beside the received ones.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use droid_core::protocol::TunnelKind;
use serde_json::Value;

use super::Shared;
use super::exchange::{Exchange, Kind, MAIL_ADAPTER, Message};

/// Keeps what `send` (one message: `body`) or `send-batch` (a list)
/// was answered, one exchange a message.
pub(crate) fn record(shared: &Shared, body: &[u8], status: u16, answer: &Value, took: Duration) {
    let Ok(sent) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let pairs: Vec<(Value, Value, u16)> = match (sent, answer) {
        (Value::Array(messages), Value::Array(answers)) => messages
            .into_iter()
            .zip(answers.iter().cloned())
            .map(|(m, a)| {
                let status = if a["ErrorCode"].as_u64() == Some(0) {
                    200
                } else {
                    422
                };
                (m, a, status)
            })
            .collect(),
        (message, answer) => vec![(message, answer.clone(), status)],
    };
    let tunnel: Arc<str> = shared
        .tunnels
        .lock()
        .ok()
        .and_then(|t| {
            t.iter()
                .find(|t| t.spec.kind == TunnelKind::Http)
                .map(|t| Arc::from(t.name.as_str()))
        })
        .unwrap_or_else(|| Arc::from("-"));
    let exchanges = pairs.into_iter().map(|(message, answer, status)| {
        let mut exchange = Exchange::new(
            shared.next_id(),
            Kind::Delivery(Arc::from(MAIL_ADAPTER)),
            tunnel.clone(),
            SystemTime::now(),
        );
        exchange.outgoing = true;
        exchange.duration = Some(took);
        exchange.request = json_message(Cow::Borrowed("POST"), "/email".into(), 0, &message);
        exchange.response = Some(json_message(
            Cow::Borrowed(""),
            String::new(),
            status,
            &answer,
        ));
        exchange
    });
    shared.put_all(exchanges);
}

fn json_message(method: Cow<'static, str>, path: String, status: u16, value: &Value) -> Message {
    let bytes = value.to_string().into_bytes();
    let fields = [("content-type".to_string(), b"application/json".to_vec())];
    let mut message = Message::with_fields(method, path, status, &fields);
    message.size = bytes.len() as u64;
    message.body.push(&bytes, bytes.len());
    message.complete = true;
    message
}
