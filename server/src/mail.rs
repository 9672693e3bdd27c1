//! Mail for tunnels: the server's side of the SMTP adapter.
//!
//! The adapter knows nothing of tunnels; it asks a [`MailRouter`] where a
//! recipient goes and hands the POST it built to a [`Deliver`] sink. Here the
//! router is the registry: `anything@NAME.domain` goes to NAME's tunnel while
//! NAME is live or resuming, and nowhere otherwise (550, never an open
//! relay). The route's owner key is `OWNER_ID/NAME`, so a spooled message
//! goes back only to the same owner's tunnel of the same name, never to
//! whoever holds the name later.

use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use droid_adapters::{Format, MailOptions, MailRouter, Route};
use droid_core::deliver::{Deliver, DeliverError, DeliverErrorKind, DeliverFuture};
use droid_core::protocol::{self, MailSettings, StreamHeader};
use droid_core::proxy;
use http::header::{HOST, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use tokio::io::AsyncWriteExt;
use tracing::warn;

use crate::Shared;
use crate::registry::{Lookup, Tunnel};

/// The most of an app's answer kept for the SMTP reply.
const MAX_ANSWER: usize = 64 * 1024;

/// Routes recipients `*@NAME.domain` to tunnels.
pub(crate) struct TunnelRouter {
    pub(crate) shared: Arc<Shared>,
}

/// The spool key of a tunnel's mail.
pub(crate) fn owner_key(tunnel: &Tunnel) -> String {
    format!("{}/{}", tunnel.owner_id, tunnel.name)
}

impl MailRouter for TunnelRouter {
    fn resolve(&self, recipient: &str) -> Option<Route> {
        let name = tunnel_of(recipient, &self.shared.config.domain)?;
        let tunnel = self.shared.registry.holder(&name)?;
        let mut options = mail_options(&tunnel.mail);
        // With mail routes, each path is a destination of its own, so the
        // adapter delivers once per path; the owner (what the spool retries
        // through) stays the tunnel's.
        let destination = if tunnel.mail.routes.is_empty() {
            tunnel.name.clone()
        } else {
            if let Some(path) = routed_path(&tunnel.mail, recipient) {
                options.path = path.to_string();
            }
            format!("{}{}", tunnel.name, options.path)
        };
        Some(Route {
            owner: owner_key(&tunnel),
            destination,
            sink: Arc::new(TunnelSink {
                shared: self.shared.clone(),
                name: tunnel.name.clone(),
                owner_id: tunnel.owner_id.clone(),
            }),
            options,
        })
    }

    fn sink(&self, owner: &str) -> Option<Arc<dyn Deliver>> {
        let (owner_id, name) = owner.split_once('/')?;
        match self.shared.registry.lookup(name) {
            Lookup::Live(t) if t.owner_id == owner_id => Some(Arc::new(TunnelSink {
                shared: self.shared.clone(),
                name: name.to_string(),
                owner_id: owner_id.to_string(),
            })),
            _ => None,
        }
    }
}

/// The tunnel name a recipient's domain names, if it is `NAME.domain`.
fn tunnel_of(recipient: &str, domain: &str) -> Option<String> {
    let recipient = recipient
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let (_, host) = recipient.rsplit_once('@')?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let name = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!name.is_empty() && !name.contains('.')).then(|| name.to_string())
}

/// The path of the first mail route `recipient` matches (routes whose path
/// does not start with `/` are skipped), if any.
fn routed_path<'a>(settings: &'a MailSettings, recipient: &str) -> Option<&'a str> {
    settings
        .routes
        .iter()
        .filter(|r| r.path.starts_with('/'))
        .find(|r| r.matches(recipient))
        .map(|r| r.path.as_str())
}

/// The adapter's options from what the client asked for.
fn mail_options(settings: &MailSettings) -> MailOptions {
    let defaults = MailOptions::default();
    let format = settings.format.as_deref().map(Format::from_str);
    MailOptions {
        path: settings
            .path
            .clone()
            .filter(|p| p.starts_with('/'))
            .unwrap_or(defaults.path),
        format: match format {
            Some(Ok(f)) => f,
            Some(Err(_)) => {
                warn!(format = ?settings.format, "unknown mail format asked for; using json");
                Format::Json
            }
            None => defaults.format,
        },
        secret: settings.secret.clone().unwrap_or_default().into_bytes(),
        ..defaults
    }
}

/// Delivers an adapter's request through one owner's tunnel.
struct TunnelSink {
    shared: Arc<Shared>,
    name: String,
    owner_id: String,
}

impl Deliver for TunnelSink {
    fn deliver(&self, request: http::Request<Bytes>) -> DeliverFuture<'_> {
        Box::pin(self.send(request))
    }
}

impl TunnelSink {
    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, DeliverError> {
        let offline = || {
            DeliverError::new(
                DeliverErrorKind::Offline,
                format!("the tunnel {} is not connected", self.name),
            )
        };
        let tunnel = match self.shared.registry.lookup(&self.name) {
            Lookup::Live(t) if t.owner_id == self.owner_id => t,
            _ => return Err(offline()),
        };
        let mut stream = match tokio::time::timeout(
            self.shared.config.stream_open_timeout,
            tunnel.opener.open(),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            _ => return Err(offline()),
        };
        let id = request
            .headers()
            .get("droid-delivery-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let header = StreamHeader::Delivery {
            tunnel: self.name.clone(),
            adapter: "smtp".into(),
            id,
        };
        let broken = |e: &dyn std::fmt::Display| {
            DeliverError::new(
                DeliverErrorKind::Transport,
                format!("the tunnel {} broke: {e}", self.name),
            )
        };
        stream
            .write_all(&protocol::encode_line(&header))
            .await
            .map_err(|e| broken(&e))?;
        let mut sender = proxy::handshake::<_, Full<Bytes>>(stream)
            .await
            .map_err(|e| broken(&e))?;
        let (mut parts, body) = request.into_parts();
        let host = match &tunnel.host_header {
            Some(app_host) => Some(app_host.clone()),
            None => {
                HeaderValue::from_str(&format!("{}.{}", self.name, self.shared.config.domain)).ok()
            }
        };
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
        let started = std::time::Instant::now();
        let path = parts.uri.path().to_string();
        let response = sender
            .send_request(http::Request::from_parts(parts, Full::new(body)))
            .await
            .map_err(|e| broken(&e))?;
        tunnel.log.record(
            &self.name,
            "POST",
            &path,
            response.status().as_u16(),
            started.elapsed(),
        );
        let (parts, body) = response.into_parts();
        let body = match Limited::new(body, MAX_ANSWER).collect().await {
            Ok(collected) => collected.to_bytes(),
            // The app answered; a long or broken body does not change its status.
            Err(_) => Bytes::new(),
        };
        Ok(http::Response::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_map_to_one_label_names_under_the_domain() {
        assert_eq!(
            tunnel_of("anything@quiet-otter-42.localhost", "localhost").as_deref(),
            Some("quiet-otter-42")
        );
        assert_eq!(
            tunnel_of("<A+tag@MyApp.Tunnel.Example.com>", "tunnel.example.com").as_deref(),
            Some("myapp")
        );
        assert_eq!(tunnel_of("x@localhost", "localhost"), None);
        assert_eq!(tunnel_of("x@a.b.localhost", "localhost"), None);
        assert_eq!(tunnel_of("x@gmail.com", "localhost"), None);
        assert_eq!(tunnel_of("no-at-sign", "localhost"), None);
    }

    #[test]
    fn mail_settings_become_adapter_options() {
        let o = mail_options(&MailSettings {
            path: Some("/inbound".into()),
            format: Some("multipart".into()),
            secret: Some("s3cret".into()),
            routes: Vec::new(),
        });
        assert_eq!(o.path, "/inbound");
        assert_eq!(o.format, Format::Multipart);
        assert_eq!(o.secret, b"s3cret");
        let o = mail_options(&MailSettings::default());
        assert_eq!(o.path, "/");
        assert_eq!(o.format, Format::Json);
    }

    #[test]
    fn the_first_matching_route_gives_the_path() {
        let route = |pattern: &str, path: &str| protocol::MailRoute {
            pattern: pattern.into(),
            path: path.into(),
        };
        let settings = MailSettings {
            path: Some("/fallback".into()),
            routes: vec![
                route("bad@*", "no-slash"),
                route("support@*", "/support"),
                route("*", "/inbound"),
            ],
            ..MailSettings::default()
        };
        assert_eq!(routed_path(&settings, "support@shop.x"), Some("/support"));
        assert_eq!(routed_path(&settings, "sales@shop.x"), Some("/inbound"));
        assert_eq!(routed_path(&settings, "bad@shop.x"), Some("/inbound"));
        assert_eq!(routed_path(&MailSettings::default(), "a@b"), None);
    }
}
