//! MQTT for tunnels: the first topic level is the tunnel's name, and a
//! message goes through that tunnel while it is live or resuming, POSTed as
//! its client asked (`mqtt` in its hello: the path, routes by topic filter,
//! the secret, falling back to the mail secret). A tunnel that set a login
//! takes messages and subscriptions only from devices that logged in with
//! it.

use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::{Tenancy, TopicRefusal, TopicRoute, TopicRouter};
use crate::delivery::PostOptions;
use crate::route::{Answer, Destination, Tunnels, Unavailable};

/// Routes topics `NAME/...` to the tunnels.
pub struct TunnelTopics {
    tunnels: Arc<dyn Tunnels>,
}

impl TunnelTopics {
    /// Topics `NAME/...` to the tunnel NAME of `tunnels`.
    pub fn new(tunnels: Arc<dyn Tunnels>) -> TunnelTopics {
        TunnelTopics { tunnels }
    }

    /// The tunnel `name`, if a device logged in as `login` may use it for
    /// `what` ("messages", "subscriptions").
    async fn tunnel(
        &self,
        name: &str,
        login: Option<&str>,
        what: &str,
    ) -> Result<Destination, TopicRefusal> {
        let found = self.tunnels.find(name).await;
        let found = found.map_err(|e| TopicRefusal::Unavailable(e.to_string()))?;
        let tunnel = found.ok_or_else(|| {
            TopicRefusal::NoTunnel(format!(
                "no tunnel named {name} is connected to this server; topics start with a tunnel's name"
            ))
        })?;
        if let Some(wanted) = &tunnel.settings.mqtt.auth
            && !login.is_some_and(|given| same(given, wanted))
        {
            return Err(TopicRefusal::NotAuthorized(format!(
                "the tunnel {name} takes {what} only from devices that log in with its user name and password"
            )));
        }
        Ok(tunnel)
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
            let tunnel = self.tunnel(name, login, "subscriptions").await?;
            let tenancy = Tenancy::new(&tunnel.owner, tunnel.settings.mqtt.auth.as_deref());
            Ok((tunnel.name, tenancy))
        })
    }

    fn login<'a>(&'a self, credentials: &'a str) -> Answer<'a, Result<bool, Unavailable>> {
        self.tunnels.knows_login(credentials)
    }
}

impl TunnelTopics {
    async fn route(&self, topic: &str, login: Option<&str>) -> Result<TopicRoute, TopicRefusal> {
        let (name, subtopic) = topic.split_once('/').unwrap_or((topic, ""));
        let tunnel = self.tunnel(name, login, "messages").await?;
        let settings = &tunnel.settings;
        let path = settings.mqtt.path_for(subtopic).to_string();
        let secret = settings
            .mqtt
            .secret
            .clone()
            .or_else(|| settings.mail.secret.clone())
            .unwrap_or_default();
        let destination = if settings.mqtt.routes.is_empty() {
            tunnel.name.clone()
        } else {
            format!("{}{path}", tunnel.name)
        };
        Ok(TopicRoute {
            owner: tunnel.owner,
            destination,
            sink: tunnel.sink,
            post: PostOptions {
                adapter: "mqtt".into(),
                path,
                content_type: "application/json".into(),
                secret: crate::Secret::key_of(&secret),
            },
            subtopic: subtopic.to_string(),
        })
    }
}
