//! `POST /api/mqtt/publish`: the app sends an MQTT message to its devices.
//!
//! The client opens a stream to the server (the only stream a client
//! opens besides its control stream), writes a `publish` header line and
//! the payload, and reads one answer line: how many devices got it.

use base64::Engine as _;
use droid_core::protocol::{self, PublishAnswer, StreamHeader, TunnelKind};
use serde::Deserialize;
use tokio::io::{AsyncWriteExt, BufReader};

use super::Shared;

/// How long a publish may take, stream to answer.
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Publish {
    /// Relative to the tunnel (`sensors/1/cmd`), or whole (`NAME/...`).
    pub topic: String,
    /// The payload as text...
    #[serde(default)]
    pub payload: Option<String>,
    /// ...or as base64.
    #[serde(default)]
    pub payload_base64: Option<String>,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    /// Which of this client's tunnels, when the topic does not say.
    #[serde(default)]
    pub tunnel: Option<String>,
}

/// Why a publish was not sent, with the HTTP status that says so.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
}

/// Sends `publish` to the server; the devices it was handed to.
pub(crate) async fn publish(
    shared: &Shared,
    publish: Publish,
) -> Result<(String, u64), PublishError> {
    if publish.qos > 1 {
        return Err(PublishError::BadRequest("qos must be 0 or 1".into()));
    }
    let payload = match (&publish.payload, &publish.payload_base64) {
        (Some(text), None) => text.clone().into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| PublishError::BadRequest(format!("payload_base64 is not base64: {e}")))?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            return Err(PublishError::BadRequest(
                "give payload or payload_base64, not both".into(),
            ));
        }
    };
    let ours: Vec<String> = shared
        .tunnels
        .lock()
        .map(|t| {
            t.iter()
                .filter(|t| t.spec.kind == TunnelKind::Http)
                .map(|t| t.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let (tunnel, topic) = resolve(&ours, publish.tunnel.as_deref(), &publish.topic)?;
    let Some(opener) = shared.opener.lock().ok().and_then(|o| o.clone()) else {
        return Err(PublishError::Unavailable(
            "the tunnel is not connected to its server right now; try again".into(),
        ));
    };
    let header = StreamHeader::Publish {
        tunnel: tunnel.clone(),
        topic: topic.clone(),
        qos: publish.qos,
        retain: publish.retain,
        size: payload.len() as u64,
    };
    let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async {
        let stream = opener.open().await.map_err(|e| e.to_string())?;
        let (read, mut write) = tokio::io::split(stream);
        write
            .write_all(&protocol::encode_line(&header))
            .await
            .map_err(|e| e.to_string())?;
        write.write_all(&payload).await.map_err(|e| e.to_string())?;
        write.flush().await.map_err(|e| e.to_string())?;
        let mut read = BufReader::new(read);
        protocol::read_message::<_, PublishAnswer>(&mut read, protocol::MAX_HEADER_LINE)
            .await
            .map_err(|e| format!("the server did not answer the publish: {e}"))
    })
    .await;
    let answer = match sent {
        Ok(Ok(answer)) => answer,
        Ok(Err(why)) => return Err(PublishError::Unavailable(why)),
        Err(_) => {
            return Err(PublishError::Unavailable(
                "the server did not answer in time".into(),
            ));
        }
    };
    match (answer.delivered_to, answer.error) {
        (Some(n), _) => Ok((topic, n)),
        (None, Some(why)) if answer.forbidden => Err(PublishError::Forbidden(why)),
        (None, Some(why)) => Err(PublishError::Unavailable(why)),
        (None, None) => Err(PublishError::Unavailable("the server said nothing".into())),
    }
}

/// The tunnel and whole topic of a publish: `NAME/...` names one of
/// `ours`; otherwise the topic is relative to the tunnel given, or to the
/// only one.
fn resolve(
    ours: &[String],
    tunnel: Option<&str>,
    topic: &str,
) -> Result<(String, String), PublishError> {
    let topic = topic.trim_start_matches('/');
    if topic.is_empty() || topic.contains(['+', '#']) {
        return Err(PublishError::BadRequest(
            "a topic is a name like sensors/1/cmd, with no wildcards".into(),
        ));
    }
    if let Some(tunnel) = tunnel {
        if !ours.iter().any(|t| t == tunnel) {
            return Err(PublishError::Forbidden(format!(
                "{tunnel} is not one of this client's tunnels; it may publish only in its own namespaces"
            )));
        }
        let whole = if topic.starts_with(&format!("{tunnel}/")) {
            topic.to_string()
        } else {
            format!("{tunnel}/{topic}")
        };
        return Ok((tunnel.to_string(), whole));
    }
    if let Some(name) = ours.iter().find(|t| topic.starts_with(&format!("{t}/"))) {
        return Ok((name.clone(), topic.to_string()));
    }
    match ours {
        [only] => Ok((only.clone(), format!("{only}/{topic}"))),
        [] => Err(PublishError::Unavailable(
            "this client has no HTTP tunnel to publish through yet".into(),
        )),
        _ => Err(PublishError::BadRequest(
            "this client has several tunnels: start the topic with one's name, or give \"tunnel\""
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_relative_to_the_tunnel_unless_they_name_one() {
        let one = vec!["api".to_string()];
        assert_eq!(resolve(&one, None, "sensors/1").unwrap().1, "api/sensors/1");
        assert_eq!(
            resolve(&one, None, "api/sensors/1").unwrap().1,
            "api/sensors/1"
        );
        assert!(matches!(
            resolve(&one, Some("other"), "x"),
            Err(PublishError::Forbidden(_))
        ));
        assert!(matches!(
            resolve(&one, None, "a/+/b"),
            Err(PublishError::BadRequest(_))
        ));
        let two = vec!["api".to_string(), "web".to_string()];
        assert_eq!(resolve(&two, None, "web/x").unwrap().0, "web");
        assert!(matches!(
            resolve(&two, None, "x"),
            Err(PublishError::BadRequest(_))
        ));
        assert_eq!(resolve(&two, Some("web"), "x").unwrap().1, "web/x");
    }
}
