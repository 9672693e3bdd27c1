//! MQTT for tunnels: the server's side of the MQTT adapter.
//!
//! The adapter knows nothing of tunnels; it asks a [`TopicRouter`] where a
//! topic goes. Here the first topic level is the tunnel's name, and the
//! message goes through that tunnel while it is live or resuming, on the
//! same delivery streams and with the same owner key (so the same spool)
//! as its mail. A tunnel that set a login takes messages only from
//! devices that logged in with it.

use std::sync::Arc;

use droid_adapters::{PostOptions, TopicRefusal, TopicRoute, TopicRouter};
use subtle::ConstantTimeEq;

use crate::Shared;
use crate::mail::{TunnelRouter, owner_key};

/// Routes topics `NAME/...` to tunnels.
pub(crate) struct TunnelTopics {
    shared: Arc<Shared>,
    tunnels: TunnelRouter,
}

impl TunnelTopics {
    pub(crate) fn new(shared: Arc<Shared>) -> TunnelTopics {
        TunnelTopics {
            tunnels: TunnelRouter::new(shared.clone()),
            shared,
        }
    }
}

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

impl TopicRouter for TunnelTopics {
    fn resolve(&self, topic: &str, login: Option<&str>) -> Result<TopicRoute, TopicRefusal> {
        let (name, subtopic) = topic.split_once('/').unwrap_or((topic, ""));
        let tunnel = self
            .shared
            .registry
            .holder(name)
            .filter(|t| t.tcp.is_none())
            .ok_or_else(|| {
                TopicRefusal::NoTunnel(format!(
                    "no tunnel named {name} is connected to this server; topics start with a tunnel's name"
                ))
            })?;
        if let Some(wanted) = &tunnel.mqtt.auth
            && !login.is_some_and(|given| same(given, wanted))
        {
            return Err(TopicRefusal::NotAuthorized(format!(
                "the tunnel {name} takes messages only from devices that log in with its user name and password"
            )));
        }
        let settings = &tunnel.mqtt;
        let path = settings.path_for(subtopic).to_string();
        let secret = settings
            .secret
            .clone()
            .or_else(|| tunnel.mail.secret.clone())
            .unwrap_or_default();
        Ok(TopicRoute {
            owner: owner_key(&tunnel),
            destination: if settings.routes.is_empty() {
                tunnel.name.clone()
            } else {
                format!("{}{path}", tunnel.name)
            },
            sink: self.tunnels.sink(&tunnel.name, &tunnel.owner_id),
            post: PostOptions {
                adapter: "mqtt".into(),
                path,
                content_type: "application/json".into(),
                secret: secret.into_bytes(),
            },
            subtopic: subtopic.to_string(),
        })
    }

    fn login(&self, credentials: &str) -> bool {
        self.shared.registry.any_live(|t| {
            t.mqtt
                .auth
                .as_deref()
                .is_some_and(|wanted| same(wanted, credentials))
        })
    }
}
