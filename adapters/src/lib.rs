//! Adapters: other protocols turned into HTTP POSTs for a [`Deliver`] sink.
//!
//! An adapter owns one protocol and nothing else. The runtime around it owns
//! the listeners (plain or TLS), the connection limits and shutdown; the sink it delivers
//! through is either a tunnel (the server's business) or a plain URL
//! ([`UrlSink`], the standalone mode). No adapter touches yamux.
//!
//! Module map:
//! - [`adapter`]: the [`Adapter`] trait and [`run_adapter`], the accept loop
//!   with per-IP and total connection caps, back-off and graceful shutdown.
//! - [`host`]: how a server runs its adapters: [`ServerAdapter`] (a name,
//!   its listeners, the grant, index keys, broadcasts between nodes, calls
//!   from apps) and the [`Host`] it is given.
//! - [`route`]: the seam every adapter shares with its host: [`Tunnels`]
//!   (a tunnel by name, a sink by spool owner: [`Owners`]); and mail's own
//!   routing, [`MailRouter`], [`Route`], [`MailOptions`], and [`UrlRouter`]
//!   for the standalone mode.
//! - [`url_sink`]: [`UrlSink`], a [`Deliver`] that POSTs to an `http://` URL.
//! - [`pool`]: [`Pool`], idle HTTP/1.1 connections a sink keeps for its
//!   next delivery (the URL sink's, and the server's per tunnel).
//! - [`sign`]: the Standard Webhooks headers of every delivery
//!   (`webhook-id`, `webhook-timestamp`, `webhook-signature`), [`Secret`]
//!   and [`verify`] for apps.
//! - [`mail`]: an email (raw bytes plus [`Envelope`]) turned into a JSON,
//!   multipart/form-data or raw `message/rfc822` request body.
//! - [`delivery`]: one message for one destination ([`Delivery`]), how it
//!   is attempted and how the app's answer is classified.
//! - [`spool`]: the durable [`Spool`]: fsynced files, retries with
//!   exponential back-off, wake-ups on reconnect, dead letters.
//! - [`stats`]: [`DeliveryStats`], what deliveries came to, for metrics.
//! - [`smtp`]: the SMTP adapter, a tokio loop over Stalwart's sans-IO
//!   `smtp-proto` parser; [`TunnelMail`] routes `*@NAME.domain`.
//! - [`mqtt`]: the MQTT adapter (3.1.1 and 5.0), a tokio loop over the
//!   sans-IO rumqttc codecs; [`TunnelTopics`] routes `NAME/...`.
//! - [`plugin`]: [`Plugin`], an adapter as the `droid` command knows it
//!   (flags, file keys, the printed line).
//! - `syslog`: a port per tunnel, each message a signed JSON POST.
//!
//! [`Deliver`]: droid_core::deliver::Deliver
#![warn(missing_docs)]

pub mod adapter;
pub mod delivery;
pub mod host;
pub mod mail;
pub mod mqtt;
pub mod plugin;
pub mod pool;
pub mod route;
pub use droid_core::sign;
pub mod smtp;
pub mod spool;
pub mod stats;
pub mod syslog;
pub mod url_sink;

pub use adapter::{Adapter, Conn, ConnLimits, Io, Listener, Refusal, bind_listener, run_adapter};
pub use delivery::{Attempt, Content, Delivery, PostOptions};
pub use host::{Alone, Broadcast, Call, Grantee, Host, ServerAdapter, SharedMaps};
pub use mail::{Envelope, Format};
pub use mqtt::{
    MqttAdapter, MqttConfig, MqttService, MqttSettings, Tenancy, TopicRefusal, TopicRoute,
    TopicRouter, TunnelTopics,
};
pub use plugin::{Part, Place, Plugin, Setup, SetupError, Started};
pub use pool::Pool;
pub use route::{
    Answer, Destination, MailOptions, MailRouter, Owners, Route, Tunnels, Unavailable, UrlRouter,
};
pub use sign::{Secret, verify};
pub use smtp::{
    MailSettings, SmtpAdapter, SmtpConfig, SmtpOptions, SmtpService, SmtpTable, TunnelMail,
};
pub use spool::{RetryPolicy, Spool, SpoolConfig, SpoolError};
pub use stats::DeliveryStats;
pub use url_sink::{UrlSink, UrlSinkError};
