//! The syslog adapter: a port per tunnel, UDP (RFC 5426) and TCP (RFC
//! 6587, octet-counted or line-framed) on the same number; each message
//! read as RFC 5424, RFC 3164 or raw text and POSTed as signed JSON.
//!
//! - [`parse`]: one message read as well as it can be, never refused.
//! - [`frame`]: frames of a TCP stream, cut or refused past the largest
//!   message.
//! - [`post`]: the JSON body.
//! - [`settings`]: a tunnel's wishes, the grant, the server's config.
//! - `receive`: one port's datagrams and connections, delivered in order
//!   per connection, spooled when the app cannot take them.
//! - [`service`]: [`SyslogService`], the ports and whose they are.
//! - [`plugin`]: the `droid` command's flags and file keys for syslog.

pub mod frame;
pub mod parse;
pub mod plugin;
pub mod post;
mod receive;
pub mod service;
pub mod settings;

pub use plugin::SyslogPlugin;
pub use service::SyslogService;
pub use settings::{SyslogConfig, SyslogGrant, SyslogSettings};

/// The adapter's name: its key in hellos, grants and config files, and
/// its `Droid-Adapter` header.
pub const NAME: &str = "syslog";
