//! MQTT for tunnels: the first topic level is the tunnel's name, and a
//! message goes through that tunnel while it is live or resuming and asked
//! for MQTT, POSTed as its client asked (`mqtt` in its hello: the path,
//! routes by topic filter; signed with the tunnel's secret). A tunnel that
//! set a login takes messages and subscriptions only from devices that
//! logged in with it.

use std::sync::Arc;

use droid_core::protocol::AdapterSettings;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::settings::MqttSettings;
use super::{NAME, Tenancy, TopicRefusal, TopicRoute, TopicRouter};
use crate::delivery::PostOptions;
use crate::route::{Answer, Destination, Tunnels, Unavailable};

/// Routes topics `NAME/...` to the tunnels.
pub struct TunnelTopics {
    tunnels: Arc<dyn Tunnels>,
}

/// A tunnel's MQTT settings, if it asked for MQTT.
pub(crate) fn settings_of(settings: &AdapterSettings) -> Option<MqttSettings> {
    let value = settings.of(NAME)?;
    Some(serde_json::from_value(value.clone()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "MQTT settings not understood; using the defaults");
        MqttSettings::default()
    }))
}

/// The tenancy of `tunnel`'s topics: its owner, and its devices' login.
pub(crate) fn tenancy_of(tunnel: &Destination) -> Tenancy {
    let login = settings_of(&tunnel.settings).and_then(|s| s.auth);
    Tenancy::new(&tunnel.owner, login.as_deref())
}

/// The key a login is indexed by across a cluster: a hash, never the
/// login.
pub(crate) fn login_key(credentials: &str) -> String {
    let digest = Sha256::digest(format!("droid-mqtt-login {credentials}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl TunnelTopics {
    /// Topics `NAME/...` to the tunnel NAME of `tunnels`.
    pub fn new(tunnels: Arc<dyn Tunnels>) -> TunnelTopics {
        TunnelTopics { tunnels }
    }

    /// The tunnel `name` and its MQTT settings, if a device logged in as
    /// `login` may use it for `what` ("messages", "subscriptions").
    async fn tunnel(
        &self,
        name: &str,
        login: Option<&str>,
        what: &str,
    ) -> Result<(Destination, MqttSettings), TopicRefusal> {
        let found = self.tunnels.find(name).await;
        let found = found.map_err(|e| TopicRefusal::Unavailable(e.to_string()))?;
        let no_tunnel = || {
            TopicRefusal::NoTunnel(format!(
                "no tunnel named {name} is connected to this server; topics start with a tunnel's name"
            ))
        };
        let tunnel = found.ok_or_else(no_tunnel)?;
        let settings = settings_of(&tunnel.settings).ok_or_else(no_tunnel)?;
        if let Some(wanted) = &settings.auth
            && !login.is_some_and(|given| same(given, wanted))
        {
            return Err(TopicRefusal::NotAuthorized(format!(
                "the tunnel {name} takes {what} only from devices that log in with its user name and password"
            )));
        }
        Ok((tunnel, settings))
    }
}

/// Compares in constant time: a login is a secret.
fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl TopicRouter for TunnelTopics {
    fn resolve<'a>(
        &'a self,
        topic: &'a str,
        login: Option<&'a str>,
    ) -> Answer<'a, Result<TopicRoute, TopicRefusal>> {
        Box::pin(self.route(topic, login))
    }

    fn subscribe<'a>(
        &'a self,
        filter: &'a str,
        login: Option<&'a str>,
    ) -> Answer<'a, Result<(String, Tenancy), TopicRefusal>> {
        Box::pin(async move {
            let name = filter.split('/').next().unwrap_or_default();
            if name == "+" || name == "#" || name.is_empty() {
                return Err(TopicRefusal::NoTunnel(
                    "a filter's first level must be a tunnel's name, not a wildcard".into(),
                ));
            }
            let (tunnel, _) = self.tunnel(name, login, "subscriptions").await?;
            let tenancy = tenancy_of(&tunnel);
            Ok((tunnel.name, tenancy))
        })
    }

    fn login<'a>(&'a self, credentials: &'a str) -> Answer<'a, Result<bool, Unavailable>> {
        Box::pin(async move { self.tunnels.indexed(NAME, &login_key(credentials)).await })
    }
}

impl TunnelTopics {
    async fn route(&self, topic: &str, login: Option<&str>) -> Result<TopicRoute, TopicRefusal> {
        let (name, subtopic) = topic.split_once('/').unwrap_or((topic, ""));
        let (tunnel, settings) = self.tunnel(name, login, "messages").await?;
        let path = settings.path_for(subtopic).to_string();
        let destination = if settings.routes.is_empty() {
            tunnel.name.clone()
        } else {
            format!("{}{path}", tunnel.name)
        };
        Ok(TopicRoute {
            owner: tunnel.owner,
            destination,
            sink: tunnel.sink,
            post: PostOptions {
                adapter: NAME.into(),
                path,
                content_type: "application/json".into(),
                secret: crate::Secret::key_of(
                    tunnel.settings.secret.as_deref().unwrap_or_default(),
                ),
            },
            subtopic: subtopic.to_string(),
        })
    }
}
