//! What a tunnel asks of the MQTT adapter, in its hello (`"mqtt"` in the
//! tunnel's adapters): the path of the POST, routes by topic, and the login
//! its devices must give.

use serde::{Deserialize, Serialize};

/// How a tunnel wants its MQTT messages. Its `Debug` masks the login.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttSettings {
    /// The path messages no route matches are POSTed to (default `/mqtt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `user:password` devices must log in with to publish to this tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Topic filters (after `NAME/`, with `+` and `#`) to paths, tried in
    /// order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<MqttRoute>,
}

impl std::fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSettings")
            .field("path", &self.path)
            .field("auth", &self.auth.as_ref().map(|_| "MASKED"))
            .field("routes", &self.routes)
            .finish()
    }
}

impl MqttSettings {
    /// The path a message to `subtopic` (the topic after `NAME/`) goes to.
    pub fn path_for(&self, subtopic: &str) -> &str {
        self.routes
            .iter()
            .find(|r| topic_matches(&r.topic, subtopic))
            .map_or_else(
                || self.path.as_deref().unwrap_or("/mqtt"),
                |r| r.path.as_str(),
            )
    }
}

/// One MQTT route: messages whose topic (after `NAME/`) matches the filter
/// `topic` are POSTed to `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttRoute {
    /// A topic filter: `sensors/+/temp`, `alerts/#`.
    pub topic: String,
    /// The path, e.g. `/temp`.
    pub path: String,
}

/// Whether `topic` matches the MQTT topic filter `filter` (`+` one level,
/// `#` the rest, including none).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut levels = topic.split('/');
    for want in filter.split('/') {
        match (want, levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (want, Some(level)) if want == level => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_as_mqtt_says() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(topic_matches("#", "anything/at/all"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
        let routes = MqttSettings {
            routes: vec![MqttRoute {
                topic: "sensors/+/temp".into(),
                path: "/temp".into(),
            }],
            ..MqttSettings::default()
        };
        assert_eq!(routes.path_for("sensors/1/temp"), "/temp");
        assert_eq!(routes.path_for("other"), "/mqtt");
    }
}
