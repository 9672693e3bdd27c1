//! The parts of Droid that both ends of a tunnel share.
//!
//! - [`protocol`]: the wire protocol: control messages on the first stream, the
//!   header line on every data stream, the version, and the frame limits.
//!   `PROTOCOL.md` at the top of the repository describes the same thing in prose.
//! - [`session`]: a yamux session driven by one task, with a cloneable
//!   [`session::Opener`] for outbound streams and a channel of inbound ones.
//! - [`proxy`]: HTTP forwarding both ends do alike: hop-by-hop headers,
//!   upgrades (websockets), error pages.
//! - [`transport`]: the connection a session runs on, plain TCP or TLS
//!   (rustls): the server's certificate, the client's trust, and errors that
//!   say which side is misconfigured.
//! - [`deliver`]: the [`deliver::Deliver`] seam through which adapters hand an
//!   HTTP request to a sink (a tunnel or a plain URL) and get the answer back.
//! - [`watch`]: a connection whose bytes are seen as they pass (metrics,
//!   the inspector).
//! - [`sign`]: the Standard Webhooks signature of every delivery: made by the server's
//!   adapters, made afresh by the client when it replays one, checked by apps.
//!
//! - [`conn_caps`]: connections open at once, in total and per address, for
//!   every listener.
//!
//! This crate knows no server, client or adapter.
#![warn(missing_docs)]

pub mod conn_caps;
pub mod deliver;
pub mod protocol;
pub mod proxy;
pub mod session;
pub mod sign;
pub mod transport;
pub mod watch;
