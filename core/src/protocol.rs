//! The wire protocol, version 2.
//!
//! A client opens one connection and runs a yamux session on it as the client
//! side. The first stream it opens is the *control stream*: newline-delimited
//! JSON [`ControlMessage`]s, at most [`MAX_CONTROL_LINE`] bytes each. Every other
//! stream is opened by the server and starts with one JSON [`StreamHeader`]
//! line, followed by the bytes of an HTTP/1.1 exchange.
//!
//! Both ends ignore fields they do not know, and unknown control messages
//! decode as [`ControlMessage::Unknown`], so the protocol can grow without a
//! version bump. A change that old peers cannot ignore bumps
//! [`PROTOCOL_VERSION`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, FramedRead};

/// The protocol version spoken by this build. Sent in `hello` and `welcome`.
pub const PROTOCOL_VERSION: u32 = 2;

/// The longest control message accepted, newline excluded.
pub const MAX_CONTROL_LINE: usize = 64 * 1024;

/// The longest stream header accepted, newline excluded.
pub const MAX_HEADER_LINE: usize = 4 * 1024;

/// How long a peer may take to complete the hello/welcome handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's default interval between heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// A peer that has sent nothing for this long is dead.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// A message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMessage {
    /// Client → server, first message: who I am and which tunnels I want.
    Hello(Hello),
    /// Server → client: the tunnels granted, and the secret that resumes them.
    Welcome(Welcome),
    /// Either way: a fatal error; the sender closes the session after it.
    Error(ErrorMessage),
    /// Client → server heartbeat. The server answers with [`ControlMessage::Pong`].
    Ping,
    /// Server → client answer to a ping.
    Pong,
    /// Client → server: I am leaving for good; release my names now.
    Release,
    /// Server → client: a request the server answered for one of the
    /// client's tunnels, for the client to show. Best effort: a server whose
    /// client reads slowly drops these rather than queue them.
    Request(RequestLine),
    /// Client → server: a tunnel's local target answers again after it did
    /// not; the server retries that tunnel's spooled deliveries now.
    TargetUp(TargetUp),
    /// Server → client: this server is going away (it drains before a
    /// restart). Connect to your next server now, without back-off, and
    /// resume your names there; keep serving this session's streams until
    /// the server closes it. A client that ignores it is closed at the end
    /// of the drain and reconnects as after any loss.
    Move,
    /// A message type this build does not know. It is ignored.
    #[serde(other)]
    Unknown,
}

/// The client's opening message. Its `Debug` masks the token, so a hello
/// can be logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's protocol version.
    pub version: u32,
    /// An auth token, if the server requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The secret from an earlier `welcome`, proving the client owns the names
    /// it asks for again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// The tunnels wanted on this session; at least one.
    pub tunnels: Vec<TunnelRequest>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("version", &self.version)
            .field("token", &self.token.as_ref().map(|_| "MASKED"))
            .field("resume", &self.resume.as_ref().map(|_| "MASKED"))
            .field("tunnels", &self.tunnels)
            .finish()
    }
}

/// One tunnel asked for in [`Hello`]. Its `Debug` masks the password.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRequest {
    /// The name wanted; `None` asks the server for a random one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// HTTP basic auth the server asks of every visitor, `user:password`.
    /// The server keeps only a salted hash of it. An addition old servers
    /// ignore (they then serve the tunnel without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The visitor addresses allowed, each an IP or a CIDR block
    /// (`203.0.113.0/24`, `2001:db8::/32`); empty allows everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ip: Vec<String>,
    /// The `Host` the local app expects (`127.0.0.1:3000`): the server puts
    /// it on every request in place of the visitor's, which it keeps in
    /// `X-Forwarded-Host`. `None` keeps the visitor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    /// What the tunnel carries; absent means [`TunnelKind::Http`]. An
    /// addition old servers ignore: they grant an HTTP tunnel, whose grant
    /// has no `tcp` port, and the client says the server is too old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<TunnelKind>,
    /// The public port a TCP tunnel asks for; absent: the one its owner
    /// held, else any free one in the server's range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The secret the tunnel's deliveries are signed with, `whsec_...`
    /// (Standard Webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// What the tunnel asks of each adapter, by the adapter's name: JSON
    /// that only that adapter reads. An adapter it does not name leaves it
    /// alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub adapters: AdapterParts,
}

/// Each adapter's part of a tunnel's request or grant, by the adapter's
/// name: JSON that only that adapter reads and writes.
pub type AdapterParts = BTreeMap<String, serde_json::Value>;

impl TunnelRequest {
    /// What this tunnel asks of the server's adapters.
    pub fn adapter_settings(&self) -> AdapterSettings {
        AdapterSettings {
            secret: self.secret.clone(),
            adapters: self.adapters.clone(),
        }
    }
}

/// What one tunnel asks of the server's adapters: the secret its
/// deliveries are signed with, and each adapter's settings by its name.
/// The server only keeps them with the tunnel and hands them to the
/// adapters, which read their own part. A cluster's nodes keep them in
/// Redis as JSON, so that any node's adapters can take messages for a
/// tunnel another node serves. Its `Debug` masks the secret.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdapterSettings {
    /// The key of the `webhook-signature` HMAC (`whsec_...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Each adapter's settings, by the adapter's name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub adapters: AdapterParts,
}

impl AdapterSettings {
    /// The settings of `adapter`, if the tunnel asked for it.
    pub fn of(&self, adapter: &str) -> Option<&serde_json::Value> {
        self.adapters.get(adapter)
    }
}

impl std::fmt::Debug for AdapterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterSettings")
            .field("secret", &self.secret.as_ref().map(|_| "MASKED"))
            .field("adapters", &self.adapters.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelKind {
    /// HTTP, routed by Host (and mail, routed by recipient).
    #[default]
    Http,
    /// Raw TCP on a public port of its own.
    Tcp,
    /// A kind this build does not know.
    #[serde(other)]
    Unknown,
}

impl std::fmt::Debug for TunnelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelRequest")
            .field("name", &self.name)
            .field("auth", &self.auth.as_ref().map(|_| "MASKED"))
            .field("allow_ip", &self.allow_ip)
            .field("host_header", &self.host_header)
            .field("kind", &self.kind)
            .field("port", &self.port)
            .field("secret", &self.secret.as_ref().map(|_| "MASKED"))
            .field("adapters", &self.adapters.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The server's answer to a successful [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The server's protocol version.
    pub version: u32,
    /// An id for this session, for logs.
    pub session: String,
    /// The secret that resumes these names after a disconnect. Keep it private.
    pub resume: String,
    /// The tunnels granted, in the order asked.
    pub tunnels: Vec<TunnelGrant>,
    /// How often the client should send a ping, in milliseconds.
    pub heartbeat_ms: u64,
}

/// One tunnel granted in [`Welcome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelGrant {
    /// The tunnel's name, the first label of its host name.
    pub name: String,
    /// The public URL that reaches it.
    pub url: String,
    /// A TCP tunnel's public port (its `url` is `tcp://HOST:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u16>,
    /// What each adapter of the server that serves the tunnel says of it
    /// (the mail domain that reaches it, its topics, its port), by the
    /// adapter's name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub adapters: AdapterParts,
}

/// A fatal error on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// A stable, machine-readable code, see [`ErrorCode`].
    pub code: ErrorCode,
    /// A sentence for the user.
    pub message: String,
}

/// The codes an [`ErrorMessage`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The name asked for belongs to someone else (live, resuming or quarantined).
    NameTaken,
    /// The name asked for is not a valid DNS label, or is reserved.
    BadName,
    /// The peer speaks a protocol version this build cannot serve.
    Version,
    /// The token is missing or wrong.
    Unauthorized,
    /// The message was malformed or out of order.
    BadRequest,
    /// A limit of the server was reached; trying again later may work.
    Unavailable,
    /// A code this build does not know.
    #[serde(other)]
    Unknown,
}

/// See [`ControlMessage::TargetUp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetUp {
    /// The tunnel whose target answers again.
    pub tunnel: String,
}

/// One request through a tunnel, as the server saw it: what `droid http`
/// prints a line for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLine {
    /// The tunnel's name.
    pub tunnel: String,
    /// The method (a delivery's is `POST`). Static for the standard
    /// methods, which is most requests: no allocation each.
    #[serde(deserialize_with = "method_name")]
    pub method: Cow<'static, str>,
    /// Path and query.
    pub path: String,
    /// The status the visitor got.
    pub status: u16,
    /// Microseconds from the request's head to the response's.
    pub micros: u64,
}

/// A [`ControlMessage::Request`] made of borrowed parts, as the server
/// writes it: the same line of JSON, without copying each part first.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "request")]
pub struct RequestLineRef<'a> {
    /// See [`RequestLine`].
    pub tunnel: &'a str,
    /// See [`RequestLine`].
    pub method: &'a str,
    /// See [`RequestLine`].
    pub path: &'a str,
    /// See [`RequestLine`].
    pub status: u16,
    /// See [`RequestLine`].
    pub micros: u64,
}

impl RequestLineRef<'_> {
    /// Appends the line, newline included, to `out`.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // Writing into a Vec cannot fail; were it to, no half line stays.
        match serde_json::to_writer(&mut *out, self) {
            Ok(()) => out.push(b'\n'),
            Err(_) => out.truncate(start),
        }
    }
}

/// Decodes a method name, as a static string for the standard methods.
fn method_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Cow<'static, str>, D::Error> {
    #[derive(Deserialize)]
    struct Name<'a>(#[serde(borrow)] Cow<'a, str>);
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    let Name(name) = Name::deserialize(d)?;
    Ok(match STANDARD.iter().find(|m| **m == name) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(name.into_owned()),
    })
}

/// The header line that starts every server-opened stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StreamHeader {
    /// A visitor's HTTP connection, forwarded as it is.
    Http {
        /// The tunnel the visitor asked for.
        tunnel: String,
        /// The visitor's address, `ip:port`.
        remote: String,
    },
    /// A visitor's HTTP/2 connection: the stream carries HTTP/2 with prior
    /// knowledge (h2c), one HTTP/2 stream per visitor request, each already
    /// routed, checked and given its forwarding headers by the server.
    H2 {
        /// The tunnel the visitor asked for.
        tunnel: String,
        /// The visitor's address, `ip:port`.
        remote: String,
    },
    /// A request built by an adapter (for example a mail turned into a POST).
    Delivery {
        /// The tunnel it is for.
        tunnel: String,
        /// The adapter that built it, by its name.
        adapter: String,
        /// The delivery id; the same on every retry of one delivery.
        id: String,
    },
    /// Client → server, on a stream the client opens: the app calls an
    /// adapter (`POST /api/ADAPTER/ACTION` on its client), for one of the
    /// session's tunnels. `size` bytes of the call's body follow the line;
    /// the server answers one line, a [`CallAnswer`].
    Call {
        /// The client's tunnel the call is made for.
        tunnel: String,
        /// The adapter called.
        adapter: String,
        /// What it is asked to do (`publish`).
        action: String,
        /// The body's length, at most [`MAX_CALL_BODY`].
        size: u64,
    },
    /// A visitor's connection to a TCP tunnel's port: raw bytes both ways.
    Tcp {
        /// The tunnel.
        tunnel: String,
        /// The visitor's address, `ip:port`.
        remote: String,
    },
    /// A stream kind this build does not know; the client closes such streams.
    #[serde(other)]
    Unknown,
}

impl StreamHeader {
    /// The tunnel the stream is for, if the kind is known.
    pub fn tunnel(&self) -> Option<&str> {
        match self {
            StreamHeader::Http { tunnel, .. }
            | StreamHeader::H2 { tunnel, .. }
            | StreamHeader::Delivery { tunnel, .. }
            | StreamHeader::Tcp { tunnel, .. }
            | StreamHeader::Call { tunnel, .. } => Some(tunnel),
            StreamHeader::Unknown => None,
        }
    }
}

/// The server's answer to a [`StreamHeader::Call`], as the client gives it
/// to the app: an HTTP status and a JSON body (`{"error": "..."}` when it
/// failed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallAnswer {
    /// The status the app gets.
    pub status: u16,
    /// The body the app gets.
    #[serde(default)]
    pub body: serde_json::Value,
}

impl CallAnswer {
    /// A refusal with `status` and a sentence.
    pub fn error(status: u16, message: impl Into<String>) -> CallAnswer {
        CallAnswer {
            status,
            body: serde_json::json!({ "error": message.into() }),
        }
    }
}

/// The most body bytes one call may carry.
pub const MAX_CALL_BODY: u64 = 4 * 1024 * 1024;

/// Errors reading or writing protocol lines.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the stream before a complete line.
    #[error("the peer closed the stream")]
    Closed,
    /// A line was longer than allowed.
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    /// A line was not the JSON expected.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Encodes a message as one line of JSON, newline included.
pub fn encode_line<T: Serialize>(message: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail: no map has
    // non-string keys and no Serialize impl is hand-written.
    let mut line = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Decodes one line (without its newline) as a message.
pub fn decode_line<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, ProtocolError> {
    Ok(serde_json::from_slice(line)?)
}

/// Decodes one control line. serde decodes an internally tagged enum by
/// first copying every field of the object into a buffer of its own; a
/// request line, which comes once per request, is decoded straight into
/// its struct instead (the `type` field, as any unknown one, is skipped).
pub fn decode_control(line: &[u8]) -> Result<ControlMessage, ProtocolError> {
    const REQUEST: &[u8] = br#"{"type":"request","#;
    if line.starts_with(REQUEST) {
        return Ok(ControlMessage::Request(decode_line(line)?));
    }
    decode_line(line)
}

/// Writes one message as a JSON line and flushes it.
pub async fn write_message<W, T>(writer: &mut W, message: &T) -> Result<(), ProtocolError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    writer.write_all(&encode_line(message)).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one line of at most `max` bytes (newline excluded), consuming no more
/// than that line from `reader`. Memory stays bounded by `max` whatever the
/// peer sends. Returns `Ok(None)` on a clean end of stream before any byte.
pub async fn read_line<R>(reader: &mut R, max: usize) -> Result<Option<Vec<u8>>, ProtocolError>
where
    R: AsyncBufRead + Unpin,
{
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(ProtocolError::Closed)
            };
        }
        let (taken, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let content = if done { taken - 1 } else { taken };
        if line.len() + content > max {
            return Err(ProtocolError::TooLong(max));
        }
        line.extend_from_slice(&buf[..content]);
        reader.consume(taken);
        if done {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
    }
}

/// Reads one message line and decodes it.
pub async fn read_message<R, T>(reader: &mut R, max: usize) -> Result<T, ProtocolError>
where
    R: AsyncBufRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let line = read_line(reader, max).await?.ok_or(ProtocolError::Closed)?;
    decode_line(&line)
}

/// Reads newline-delimited messages from the control stream. Unlike
/// [`read_message`], [`MessageReader::next`] is cancel-safe (a message is
/// never half consumed), so it can wait in a `select!` beside timers.
pub struct MessageReader<R> {
    frames: FramedRead<R, Lines>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// Reads lines of at most `max` bytes from `reader`.
    pub fn new(reader: R, max: usize) -> MessageReader<R> {
        MessageReader {
            // Control lines are short and a session waits on one for its
            // whole life: a small first buffer (it grows for a long line)
            // halves what an idle tunnel costs the server.
            frames: FramedRead::with_capacity(reader, Lines { max, searched: 0 }, 512),
        }
    }

    /// The next message, decoded by [`decode_control`];
    /// [`ProtocolError::Closed`] at the end of the stream.
    pub async fn next(&mut self) -> Result<ControlMessage, ProtocolError> {
        match self.frames.next().await {
            None => Err(ProtocolError::Closed),
            Some(Ok(line)) => decode_control(line.strip_suffix(b"\r").unwrap_or(&line)),
            Some(Err(e)) => Err(e),
        }
    }
}

/// Newline-delimited lines as bytes (not `LinesCodec`: that one reports a
/// line that is not UTF-8 as an I/O error, and a peer's bad bytes are
/// malformed input, found by the `control_message` fuzz target), found
/// with `memchr` and never searched twice.
struct Lines {
    max: usize,
    /// How much of the buffer is known to hold no newline.
    searched: usize,
}

impl Decoder for Lines {
    type Item = BytesMut;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
        let window = &buf[self.searched..buf.len().min(self.max + 1)];
        match memchr::memchr(b'\n', window) {
            Some(i) => {
                let end = self.searched + i;
                self.searched = 0;
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                Ok(Some(line))
            }
            None if buf.len() > self.max => Err(ProtocolError::TooLong(self.max)),
            None => {
                self.searched = buf.len();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            // A last line without its newline is still read.
            None if buf.is_empty() => Ok(None),
            None => {
                self.searched = 0;
                Ok(Some(buf.split()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, BufReader};

    #[test]
    fn unknown_message_types_and_fields_are_ignored() {
        let m: ControlMessage = decode_line(br#"{"type":"metrics","x":1}"#).unwrap();
        assert_eq!(m, ControlMessage::Unknown);
        let m: ControlMessage = decode_line(
            br#"{"type":"hello","version":1,"tunnels":[{"name":"a","future":true}],"extra":[]}"#,
        )
        .unwrap();
        assert_eq!(
            m,
            ControlMessage::Hello(Hello {
                version: 1,
                tunnels: vec![TunnelRequest {
                    name: Some("a".into()),
                    ..TunnelRequest::default()
                }],
                ..Hello::default()
            })
        );
        let h: StreamHeader = decode_line(br#"{"kind":"ssh","tunnel":"a"}"#).unwrap();
        assert_eq!(h, StreamHeader::Unknown);
        let e: ErrorMessage = decode_line(br#"{"code":"new_code","message":"m"}"#).unwrap();
        assert_eq!(e.code, ErrorCode::Unknown);
    }

    #[test]
    fn messages_round_trip_as_one_line() {
        let h = StreamHeader::Http {
            tunnel: "quiet-otter-42".into(),
            remote: "1.2.3.4:5".into(),
        };
        let line = encode_line(&h);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"kind\":\"http\",\"tunnel\":\"quiet-otter-42\",\"remote\":\"1.2.3.4:5\"}\n"
        );
        let back: StreamHeader = decode_line(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn request_lines_encode_from_borrowed_parts_and_decode_directly() {
        for (method, path) in [("GET", "/"), ("PROPFIND", "/a \"quoted\"\\path?q=é\n")] {
            let owned = ControlMessage::Request(RequestLine {
                tunnel: "quiet-otter-42".into(),
                method: Cow::Owned(method.into()),
                path: path.into(),
                status: 200,
                micros: 1234,
            });
            let mut line = Vec::new();
            RequestLineRef {
                tunnel: "quiet-otter-42",
                method,
                path,
                status: 200,
                micros: 1234,
            }
            .append_to(&mut line);
            // The same bytes as the enum writes, so old clients read them.
            assert_eq!(line, encode_line(&owned));
            let line = &line[..line.len() - 1];
            assert_eq!(decode_control(line).unwrap(), owned);
            assert_eq!(decode_line::<ControlMessage>(line).unwrap(), owned);
        }
        // A standard method decodes to a static string.
        let line =
            br#"{"type":"request","tunnel":"t","method":"GET","path":"/","status":200,"micros":1}"#;
        let ControlMessage::Request(request) = decode_control(line).unwrap() else {
            panic!("not a request line");
        };
        assert!(matches!(request.method, Cow::Borrowed("GET")));
        // Another key order takes the general path, to the same message.
        let line =
            br#"{"tunnel":"t","type":"request","method":"GET","path":"/","status":200,"micros":1}"#;
        assert_eq!(
            decode_control(line).unwrap(),
            ControlMessage::Request(request)
        );
        // Other messages, and a broken request line, decode as before.
        assert_eq!(
            decode_control(br#"{"type":"pong"}"#).unwrap(),
            ControlMessage::Pong
        );
        assert_eq!(
            decode_control(br#"{"type":"later"}"#).unwrap(),
            ControlMessage::Unknown
        );
        assert!(matches!(
            decode_control(br#"{"type":"request","tunnel":"t"}"#),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn read_line_leaves_the_rest_of_the_stream() {
        let (mut a, b) = tokio::io::duplex(8);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(b"{\"type\":\"ping\"}\r\nGET / HTTP/1.1\r\n")
                .await
                .unwrap();
        });
        let mut r = BufReader::new(b);
        let m: ControlMessage = read_message(&mut r, 100).await.unwrap();
        assert_eq!(m, ControlMessage::Ping);
        let mut rest = String::new();
        r.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn read_line_bounds_memory() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let chunk = vec![b'x'; 1024];
            for _ in 0..1024 {
                if a.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut r = BufReader::new(b);
        let err = read_line(&mut r, 4096).await.unwrap_err();
        assert!(matches!(err, ProtocolError::TooLong(4096)), "{err}");
    }

    #[tokio::test]
    async fn message_reader_survives_cancellation_mid_line() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut reader = MessageReader::new(b, 100);
        use tokio::io::AsyncWriteExt;
        a.write_all(b"{\"type\":").await.unwrap();
        // a timer wins while half a line has arrived
        let r = tokio::time::timeout(std::time::Duration::from_millis(20), reader.next()).await;
        assert!(r.is_err());
        a.write_all(b"\"pong\"}\n").await.unwrap();
        assert_eq!(reader.next().await.unwrap(), ControlMessage::Pong);
        drop(a);
        assert!(matches!(reader.next().await, Err(ProtocolError::Closed)));
    }

    #[tokio::test]
    async fn message_reader_reads_lines_in_any_pieces_and_refuses_long_ones() {
        let (mut a, b) = tokio::io::duplex(8);
        let mut reader = MessageReader::new(b, 20);
        use tokio::io::AsyncWriteExt;
        let writer = tokio::spawn(async move {
            for byte in b"{\"type\":\"ping\"}\n{\"type\":\"pong\"}\r\n" {
                a.write_all(&[*byte]).await.unwrap();
            }
            a.write_all(&[b'x'; 30]).await.unwrap();
            a
        });
        assert_eq!(reader.next().await.unwrap(), ControlMessage::Ping);
        assert_eq!(reader.next().await.unwrap(), ControlMessage::Pong);
        assert!(matches!(
            reader.next().await,
            Err(ProtocolError::TooLong(20))
        ));
        drop(writer.await.unwrap());
    }

    /// Regression: the `control_message` fuzz target's first crash, bytes
    /// that are not UTF-8 (`d3 2a`), came out as an I/O error.
    #[tokio::test]
    async fn bytes_that_are_not_utf8_are_malformed_not_an_io_error() {
        let input: &[u8] = b"\xd3\x2a\n{\"type\":\"ping\"}\r\n\xff";
        let mut reader = MessageReader::new(input, 100);
        assert!(matches!(
            reader.next().await,
            Err(ProtocolError::Malformed(_))
        ));
        // the next line still reads, CRLF or not
        assert_eq!(reader.next().await.unwrap(), ControlMessage::Ping);
        assert!(matches!(
            reader.next().await,
            Err(ProtocolError::Malformed(_))
        ));
        assert!(matches!(reader.next().await, Err(ProtocolError::Closed)));
        let line = "{\"type\":\"hello\",\"version\":1,\"tunnels\":[{\"name\":\"caf\u{e9}\"}]}\n";
        let mut reader = MessageReader::new(line.as_bytes(), 100);
        assert!(matches!(reader.next().await, Ok(ControlMessage::Hello(_))));
    }

    #[tokio::test]
    async fn eof_before_a_line_is_none_and_mid_line_is_closed() {
        let mut empty: &[u8] = b"";
        assert!(read_line(&mut empty, 10).await.unwrap().is_none());
        let mut partial: &[u8] = b"abc";
        assert!(matches!(
            read_line(&mut partial, 10).await,
            Err(ProtocolError::Closed)
        ));
    }
}
