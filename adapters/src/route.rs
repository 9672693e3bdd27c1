//! Where adapters' messages go: the one seam between every adapter and
//! whoever hosts it.
//!
//! - [`Tunnels`] is what a server gives its adapters: a tunnel by name
//!   ([`Destination`]: its spool owner, a sink through it, and the
//!   settings its client asked of each adapter), and a sink by owner
//!   ([`Owners`], the one question the spool asks when it retries). The
//!   owner is the tunnel's owner id (derived from its resume secret) and
//!   its name, so a spooled message never reaches a later holder of the
//!   name. Each adapter maps its own addresses onto it
//!   ([`crate::smtp::TunnelMail`]: `*@NAME.domain`;
//!   [`crate::mqtt::TunnelTopics`]: `NAME/...`), in its own folder.
//! - A [`MailRouter`] answers, at `RCPT TO`, which destination takes a
//!   recipient (`None` means 550, so the adapter is never an open relay;
//!   [`Unavailable`] means 451, try again later).
//!   [`UrlRouter`] is the standalone mode: one URL for every accepted
//!   recipient.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use droid_core::deliver::Deliver;
use droid_core::protocol::AdapterSettings;
use serde::{Deserialize, Serialize};

use crate::mail::Format;

/// How mail for one destination is delivered.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailOptions {
    /// The request path, e.g. `/` or `/inbound`.
    pub path: String,
    /// The body format.
    pub format: Format,
    /// The key of the `webhook-signature` HMAC.
    #[serde(with = "hex_bytes")]
    pub secret: Vec<u8>,
    /// Attachments larger than this (decoded bytes) are listed in JSON
    /// without their content.
    pub max_attachment_inline: usize,
}

impl Default for MailOptions {
    fn default() -> MailOptions {
        MailOptions {
            path: "/".into(),
            format: Format::Json,
            secret: Vec::new(),
            max_attachment_inline: 10 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for MailOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailOptions")
            .field("path", &self.path)
            .field("format", &self.format)
            .field("secret", &"MASKED")
            .field("max_attachment_inline", &self.max_attachment_inline)
            .finish()
    }
}

pub(crate) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::sign::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        crate::sign::unhex(&text).ok_or_else(|| D::Error::custom("secret is not hex"))
    }
}

/// Where the mail for one recipient goes.
#[derive(Clone)]
pub struct Route {
    /// An opaque key of whoever owns the destination. A spooled message
    /// belongs to it: retries ask [`Owners::sink`] for this owner.
    pub owner: String,
    /// A readable name for logs and grouping (e.g. the tunnel name).
    pub destination: String,
    /// The sink to try during the SMTP session.
    pub sink: Arc<dyn Deliver>,
    /// How to build the request.
    pub options: MailOptions,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("owner", &self.owner)
            .field("destination", &self.destination)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// An answer of the seam: a future, since finding a tunnel may ask another
/// machine (a cluster's registry).
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where tunnels are cannot be known now (a cluster's registry does not
/// answer): a message must be refused for now, never for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Who a spooled message can reach now.
pub trait Owners: Send + Sync {
    /// The sink that reaches `owner` now, or `None` while it is offline.
    fn sink<'a>(&'a self, owner: &'a str) -> Answer<'a, Option<Arc<dyn Deliver>>>;
}

/// A tunnel as the adapters see it.
#[derive(Clone)]
pub struct Destination {
    /// Its name, the first label of its host name.
    pub name: String,
    /// The owner key its spooled messages belong to.
    pub owner: String,
    /// A sink through it (failing at once while it is resuming).
    pub sink: Arc<dyn Deliver>,
    /// What its client asked of each adapter.
    pub settings: Arc<AdapterSettings>,
}

/// The tunnels, for adapters; the server implements it over its registry.
pub trait Tunnels: Owners {
    /// The tunnel `name` while it is live or resuming (its owner may come
    /// back). An adapter serves it only if its settings name the adapter.
    fn find<'a>(&'a self, name: &'a str) -> Answer<'a, Result<Option<Destination>, Unavailable>>;

    /// Whether some live tunnel, on any node, has `key` among the
    /// [`crate::ServerAdapter::index_keys`] of `adapter`.
    fn indexed<'a>(
        &'a self,
        adapter: &'static str,
        key: &'a str,
    ) -> Answer<'a, Result<bool, Unavailable>>;
}

/// Maps recipients to destinations; the spool asks it for owners' sinks.
pub trait MailRouter: Owners {
    /// The route for `recipient` (the address from `RCPT TO`, as given), or
    /// `None` to refuse it with 550; [`Unavailable`] to refuse it for now
    /// (451).
    fn resolve<'a>(&'a self, recipient: &'a str) -> Answer<'a, Result<Option<Route>, Unavailable>>;
}

/// The standalone router: every accepted recipient goes to one sink.
///
/// With a domain, only `*@domain` (case-insensitive) is accepted; without
/// one, any recipient is.
pub struct UrlRouter {
    sink: Arc<dyn Deliver>,
    options: MailOptions,
    domain: Option<String>,
    destination: String,
}

/// The owner key [`UrlRouter`] gives every route.
pub const URL_OWNER: &str = "url";

impl UrlRouter {
    /// A router that sends all accepted mail to `sink` with `options`.
    /// `destination` names the sink in logs (e.g. the URL).
    pub fn new(
        sink: Arc<dyn Deliver>,
        destination: impl Into<String>,
        options: MailOptions,
        domain: Option<String>,
    ) -> UrlRouter {
        UrlRouter {
            sink,
            options,
            domain: domain.map(|d| d.trim_start_matches('@').to_ascii_lowercase()),
            destination: destination.into(),
        }
    }
}

impl MailRouter for UrlRouter {
    fn resolve<'a>(&'a self, recipient: &'a str) -> Answer<'a, Result<Option<Route>, Unavailable>> {
        Box::pin(std::future::ready(Ok(self.route(recipient))))
    }
}

impl UrlRouter {
    fn route(&self, recipient: &str) -> Option<Route> {
        let (_, domain) = recipient.rsplit_once('@')?;
        if let Some(wanted) = &self.domain
            && !domain.eq_ignore_ascii_case(wanted)
        {
            return None;
        }
        Some(Route {
            owner: URL_OWNER.into(),
            destination: self.destination.clone(),
            sink: self.sink.clone(),
            options: self.options.clone(),
        })
    }
}

impl Owners for UrlRouter {
    fn sink<'a>(&'a self, owner: &'a str) -> Answer<'a, Option<Arc<dyn Deliver>>> {
        Box::pin(std::future::ready(
            (owner == URL_OWNER).then(|| self.sink.clone()),
        ))
    }
}
