//! Mail for tunnels: `anything@NAME.domain` goes to NAME's tunnel while
//! NAME is live or resuming and asked for mail, and nowhere otherwise (550,
//! never an open relay), POSTed as that tunnel's client asked (`smtp` in
//! its hello: the path, the format, routes by recipient; signed with the
//! tunnel's secret).

use std::str::FromStr;
use std::sync::Arc;

use droid_core::deliver::Deliver;
use tracing::warn;

use super::settings::MailSettings;

use crate::mail::Format;
use crate::route::{Answer, MailOptions, MailRouter, Owners, Route, Tunnels, Unavailable};

/// Routes recipients `*@NAME.domain` to the tunnels.
pub struct TunnelMail {
    tunnels: Arc<dyn Tunnels>,
    domain: String,
}

impl TunnelMail {
    /// Mail for `*@NAME.domain` to the tunnel NAME of `tunnels`.
    pub fn new(tunnels: Arc<dyn Tunnels>, domain: &str) -> TunnelMail {
        TunnelMail {
            tunnels,
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
        }
    }
}

impl MailRouter for TunnelMail {
    fn resolve<'a>(&'a self, recipient: &'a str) -> Answer<'a, Result<Option<Route>, Unavailable>> {
        Box::pin(self.route(recipient))
    }
}

impl TunnelMail {
    async fn route(&self, recipient: &str) -> Result<Option<Route>, Unavailable> {
        let Some(name) = tunnel_of(recipient, &self.domain) else {
            return Ok(None);
        };
        let Some(tunnel) = self.tunnels.find(&name).await? else {
            return Ok(None);
        };
        let Some(settings) = tunnel.settings.of(super::NAME) else {
            return Ok(None);
        };
        let settings: MailSettings = serde_json::from_value(settings.clone()).unwrap_or_else(|e| {
            warn!(tunnel = %tunnel.name, error = %e, "mail settings not understood; using the defaults");
            MailSettings::default()
        });
        let mut options = mail_options(&settings, tunnel.settings.secret.as_deref());
        // With mail routes, each path is a destination of its own, so the
        // adapter delivers once per path; the owner (what the spool retries
        // through) stays the tunnel's.
        let destination = if settings.routes.is_empty() {
            tunnel.name
        } else {
            if let Some(path) = routed_path(&settings, recipient) {
                options.path = path.to_string();
            }
            format!("{}{}", tunnel.name, options.path)
        };
        Ok(Some(Route {
            owner: tunnel.owner,
            destination,
            sink: tunnel.sink,
            options,
        }))
    }
}

impl Owners for TunnelMail {
    fn sink<'a>(&'a self, owner: &'a str) -> Answer<'a, Option<Arc<dyn Deliver>>> {
        self.tunnels.sink(owner)
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
fn mail_options(settings: &MailSettings, secret: Option<&str>) -> MailOptions {
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
        secret: crate::Secret::key_of(secret.unwrap_or_default()),
        ..defaults
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
        let o = mail_options(
            &MailSettings {
                path: Some("/inbound".into()),
                format: Some("multipart".into()),
                routes: Vec::new(),
            },
            Some("s3cret"),
        );
        assert_eq!(o.path, "/inbound");
        assert_eq!(o.format, Format::Multipart);
        assert_eq!(o.secret, b"s3cret");
        let o = mail_options(&MailSettings::default(), None);
        assert_eq!(o.path, "/");
        assert_eq!(o.format, Format::Json);
    }

    #[test]
    fn the_first_matching_route_gives_the_path() {
        let route = |pattern: &str, path: &str| super::super::settings::MailRoute {
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
