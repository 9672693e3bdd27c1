//! One captured exchange (a request and its response), and how the JSON API
//! shows it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use super::http1::Head;
use super::mail::MailSummary;

/// What carried the request to the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A visitor's request through the tunnel.
    Http,
    /// A connection to a TCP tunnel: its bytes are counted, not kept.
    Tcp,
    /// A request an adapter of the server built (a mail, an MQTT
    /// message), by the adapter's name.
    Delivery(Arc<str>),
}

/// The adapter whose deliveries are mail, shown as mail.
pub(crate) const MAIL_ADAPTER: &str = "smtp";

impl Kind {
    /// The name the API uses: `http`, `tcp`, the adapter's name, and
    /// `mail` for mail.
    pub fn as_str(&self) -> &str {
        match self {
            Kind::Http => "http",
            Kind::Tcp => "tcp",
            Kind::Delivery(adapter) if &**adapter == MAIL_ADAPTER => "mail",
            Kind::Delivery(adapter) => adapter,
        }
    }

    /// Whether it is a mail, read back and shown as one.
    pub fn is_mail(&self) -> bool {
        matches!(self, Kind::Delivery(adapter) if &**adapter == MAIL_ADAPTER)
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How far an exchange got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Progress {
    /// The response ended.
    Complete,
    /// The response is a stream of events still running.
    Streaming,
    /// The connection became a websocket (or another protocol); byte counts
    /// grow until it closes.
    Upgraded,
    /// The connection ended before the response did, or could not be followed.
    Incomplete,
}

/// The largest piece a kept body is stored in: below glibc's threshold for
/// mapping memory of its own, so a piece freed when an exchange is
/// forgotten serves the next capture without new page faults.
const PIECE: usize = 64 * 1024;

/// The kept bytes of a body, in pieces: copied ones of at most [`PIECE`],
/// or shares of the buffers the bytes were forwarded from.
#[derive(Debug, Clone, Default)]
pub struct Body {
    pieces: Vec<Bytes>,
    /// Copied bytes not yet made a piece.
    tail: Vec<u8>,
    len: usize,
}

impl Body {
    /// Appends a copy of `bytes`; `expect` is how many more are likely to
    /// be kept (a declared length), so a small body takes a small piece.
    pub(crate) fn push(&mut self, mut bytes: &[u8], expect: usize) {
        self.len += bytes.len();
        while !bytes.is_empty() {
            if self.tail.capacity() == self.tail.len() {
                self.seal();
                self.tail = Vec::with_capacity(expect.clamp(bytes.len().min(PIECE), PIECE));
            }
            let n = (self.tail.capacity() - self.tail.len()).min(bytes.len());
            self.tail.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
    }

    /// Appends bytes that are already in a buffer of their own: no copy.
    pub(crate) fn push_shared(&mut self, bytes: Bytes) {
        self.seal();
        self.len += bytes.len();
        self.pieces.push(bytes);
    }

    /// Makes the copied tail a piece.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.pieces
                .push(Bytes::from(std::mem::take(&mut self.tail)));
        }
    }

    /// The kept bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The kept bytes in one piece.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        for piece in &self.pieces {
            out.extend_from_slice(piece);
        }
        out.extend_from_slice(&self.tail);
        out
    }

    /// What keeping it costs: a shared piece holds its whole buffer.
    fn capacity(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum::<usize>() + self.tail.capacity()
    }

    fn contains(&self, needle: &[u8]) -> bool {
        match (self.pieces.as_slice(), self.tail.is_empty()) {
            ([], true) => false,
            ([], false) => find(&self.tail, needle),
            ([one], true) => find(one, needle),
            _ => find(&self.to_vec(), needle),
        }
    }
}

/// Whether `needle` occurs in `hay`, ASCII case-insensitively.
fn find(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A request or a response as captured.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// A request's method.
    pub method: Cow<'static, str>,
    /// A request's path and query.
    pub path: String,
    /// A response's status.
    pub status: u16,
    /// The head as it crossed; its fields are read from it when asked for.
    head: Vec<u8>,
    /// Where the fields begin in `head`.
    fields_at: usize,
    /// The body bytes kept (at most the body cap).
    pub body: Body,
    /// Body bytes seen.
    pub size: u64,
    /// Whether bytes of the body were seen and not kept.
    pub truncated: bool,
    /// Whether the message ended.
    pub complete: bool,
    /// Trailer fields, for a message that had them (HTTP/2 captures).
    pub trailers: Vec<(String, String)>,
}

impl Message {
    pub(crate) fn from_head(head: Head) -> Message {
        Message {
            method: head.method,
            path: head.path,
            status: head.status,
            head: head.raw,
            fields_at: head.fields_at,
            ..Message::default()
        }
    }

    /// A message made here (a replay), with these fields.
    pub(crate) fn with_fields(
        method: Cow<'static, str>,
        path: String,
        status: u16,
        fields: &[(String, Vec<u8>)],
    ) -> Message {
        let mut head = Vec::new();
        for (name, value) in fields {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        Message {
            method,
            path,
            status,
            head,
            fields_at: 0,
            ..Message::default()
        }
    }

    /// The header fields in order: name and value, as they crossed.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.head
            .get(self.fields_at..)
            .unwrap_or_default()
            .split(|&b| b == b'\n')
            .filter_map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                // From the second byte: HTTP/2's `:authority` is a name.
                let colon = line.iter().skip(1).position(|&b| b == b':')? + 1;
                let name = std::str::from_utf8(&line[..colon]).ok()?.trim();
                Some((name, line[colon + 1..].trim_ascii()))
            })
    }

    /// The first value of a header, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// What the message costs the store, roughly: what it keeps.
    fn cost(&self) -> usize {
        self.body.capacity() + self.head.capacity() + self.method.len() + self.path.len()
    }

    fn contains(&self, needle: &[u8]) -> bool {
        find(self.path.as_bytes(), needle)
            || find(self.head.get(self.fields_at..).unwrap_or_default(), needle)
            || self.body.contains(needle)
    }

    fn to_json(&self) -> Value {
        let headers: Vec<[String; 2]> = self
            .headers()
            .map(|(n, v)| [n.to_string(), String::from_utf8_lossy(v).into_owned()])
            .collect();
        let mut out = json!({
            "headers": headers,
            "size": self.size,
            "truncated": self.truncated,
            "complete": self.complete,
        });
        if !self.trailers.is_empty() {
            out["trailers"] = json!(self.trailers);
        }
        let body = self.body.to_vec();
        match String::from_utf8(body) {
            Ok(text) => out["body"] = Value::from(text),
            Err(e) => {
                out["body_base64"] =
                    Value::from(base64::engine::general_purpose::STANDARD.encode(e.as_bytes()))
            }
        }
        out
    }
}

/// A request through a tunnel and the app's answer.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Unique in this client's run, growing.
    pub id: u64,
    /// What carried it.
    pub kind: Kind,
    /// The tunnel's name.
    pub tunnel: Arc<str>,
    /// The visitor's address.
    pub remote: Option<Arc<str>>,
    /// When the request's head arrived.
    pub started_at: SystemTime,
    /// From the request's head to the response's end.
    pub duration: Option<Duration>,
    /// From the request's head to the response's.
    pub time_to_head: Option<Duration>,
    /// How far it got.
    pub progress: Progress,
    /// The request.
    pub request: Message,
    /// The response, once its head came.
    pub response: Option<Message>,
    /// Why it is incomplete.
    pub error: Option<String>,
    /// The exchange this one replayed.
    pub replay_of: Option<u64>,
    /// An adapter delivery's id.
    pub delivery_id: Option<String>,
    /// A mail's from, to and subject, read from the POST's body.
    pub mail: Option<MailSummary>,
    /// A mail the app sent (`POST /email`), not one it received.
    pub outgoing: bool,
    /// Whether the visitor spoke HTTP/2.
    pub http2: bool,
    /// A gRPC call's service, method and status.
    pub grpc: Option<GrpcCall>,
}

/// What a gRPC call is, read from its path, and how it ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GrpcCall {
    pub service: String,
    pub method: String,
    /// `grpc-status`, by name (`OK`, `UNAVAILABLE`...), once it came.
    pub status: Option<&'static str>,
    /// `grpc-message`, as sent (percent-encoded).
    pub message: Option<String>,
}

impl GrpcCall {
    /// The call a request for `path` (`/package.Service/Method`) makes.
    pub(crate) fn from_path(path: &str) -> GrpcCall {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        GrpcCall {
            service: parts.next().unwrap_or_default().to_string(),
            method: parts.next().unwrap_or_default().to_string(),
            ..GrpcCall::default()
        }
    }
}

/// A gRPC body as its length-prefixed messages (gRPC over HTTP/2,
/// "Length-Prefixed-Message"), each in hex: what can be shown of them
/// with no schema. A message cut by the body cap says so.
fn grpc_messages(body: &[u8]) -> Value {
    let mut messages = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let compressed = rest[0] == 1;
        let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let kept = &rest[5..];
        let shown = &kept[..length.min(kept.len())];
        let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
        messages.push(json!({
            "compressed": compressed,
            "length": length,
            "hex": hex,
            "cut": shown.len() < length,
        }));
        rest = &kept[shown.len()..];
    }
    Value::from(messages)
}

impl Exchange {
    pub(crate) fn new(id: u64, kind: Kind, tunnel: Arc<str>, started_at: SystemTime) -> Exchange {
        Exchange {
            id,
            kind,
            tunnel,
            remote: None,
            started_at,
            duration: None,
            time_to_head: None,
            progress: Progress::Complete,
            request: Message::default(),
            response: None,
            error: None,
            replay_of: None,
            delivery_id: None,
            mail: None,
            outgoing: false,
            http2: false,
            grpc: None,
        }
    }

    /// What keeping it costs, in bytes.
    pub fn cost(&self) -> usize {
        512 + self.request.cost() + self.response.as_ref().map_or(0, Message::cost)
    }

    /// The status, 0 before a response.
    pub fn status(&self) -> u16 {
        self.response.as_ref().map_or(0, |r| r.status)
    }

    /// Whether `needle` occurs in the path, a header or a kept body
    /// (case-insensitive for ASCII).
    pub fn contains(&self, needle: &str) -> bool {
        let needle = needle.as_bytes();
        self.request.contains(needle) || self.response.as_ref().is_some_and(|r| r.contains(needle))
    }

    /// The list item of `GET /api/requests`.
    pub fn summary(&self) -> Value {
        let mut out = json!({
            "id": self.id,
            "kind": self.kind,
            "tunnel": &*self.tunnel,
            "remote": self.remote.as_deref(),
            "method": &*self.request.method,
            "path": self.request.path,
            "status": self.response.as_ref().map(|r| r.status),
            "duration_ms": self.duration.map(millis),
            "time_to_head_ms": self.time_to_head.map(millis),
            "started_at": rfc3339(self.started_at),
            "progress": self.progress,
            "request_size": self.request.size,
            "response_size": self.response.as_ref().map(|r| r.size),
            "content_type": self.response.as_ref().and_then(|r| r.header("content-type")),
        });
        if let Some(error) = &self.error {
            out["error"] = Value::from(error.as_str());
        }
        if let Some(of) = self.replay_of {
            out["replay_of"] = Value::from(of);
        }
        if let Some(id) = &self.delivery_id {
            out["delivery_id"] = Value::from(id.as_str());
        }
        if let Some(mail) = &self.mail {
            out["mail"] = json!({"from": mail.from, "to": mail.to, "subject": mail.subject});
        }
        if self.kind.is_mail() {
            out["direction"] = Value::from(if self.outgoing { "out" } else { "in" });
        }
        if self.kind == Kind::Http {
            out["protocol"] = Value::from(if self.http2 { "HTTP/2" } else { "HTTP/1.1" });
        }
        if let Some(grpc) = &self.grpc {
            out["grpc"] = json!(grpc);
        }
        out
    }

    /// `GET /api/requests/{id}`: the summary with both messages whole.
    pub fn detail(&self) -> Value {
        let mut out = self.summary();
        out["request"] = self.request.to_json();
        out["response"] = self.response.as_ref().map_or(Value::Null, Message::to_json);
        if self.grpc.is_some() {
            out["request"]["grpc_messages"] = grpc_messages(&self.request.body.to_vec());
            if let Some(response) = &self.response {
                out["response"]["grpc_messages"] = grpc_messages(&response.body.to_vec());
            }
        }
        out
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// `2026-12-05T12:00:00.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_472_000_123);
        assert_eq!(rfc3339(t), "2026-12-05T12:00:00.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn bodies_show_as_text_or_base64() {
        let mut m = Message::default();
        m.body.push(b"{\"a\":1}", 7);
        assert_eq!(m.to_json()["body"], "{\"a\":1}");
        m.body = Body::default();
        m.body.push(&[0xff, 0x00], 0);
        assert_eq!(m.to_json()["body_base64"], "/wA=");
        assert!(m.to_json().get("body").is_none());
    }

    #[test]
    fn a_body_is_kept_in_pieces_sized_to_what_is_expected() {
        let mut small = Body::default();
        small.push(b"hello", 5);
        assert_eq!(small.capacity(), 5);
        let mut big = Body::default();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        for chunk in data.chunks(3000) {
            big.push(chunk, 200_000);
        }
        assert_eq!(big.len(), 200_000);
        assert_eq!(big.to_vec(), data);
        assert!(big.pieces.iter().all(|p| p.len() <= PIECE));
        big.push_shared(Bytes::from_static(b"shared"));
        assert_eq!(big.len(), 200_006);
        let all = big.to_vec();
        assert_eq!(&all[..200_000], &data[..]);
        assert!(all.ends_with(b"shared"));
        assert!(
            big.contains(&data[65_530..65_540]),
            "a match across two pieces"
        );
    }

    #[test]
    fn fields_are_read_from_the_head_as_it_crossed() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-A:  1 \r\n\r\n".to_vec();
        let m = Message::from_head(Head {
            status: 200,
            fields_at: 17,
            raw,
            ..Head::default()
        });
        let fields: Vec<(&str, &[u8])> = m.headers().collect();
        assert_eq!(
            fields,
            [("Content-Type", &b"text/plain"[..]), ("X-A", b"1")]
        );
        assert_eq!(m.header("content-type"), Some("text/plain"));
        let made = Message::with_fields(
            "GET".into(),
            "/".into(),
            0,
            &[("Host".into(), b"x".to_vec())],
        );
        assert_eq!(made.method, "GET");
        assert_eq!(made.header("host"), Some("x"));
    }
}
