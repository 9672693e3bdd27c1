//! Reads one direction of an HTTP/1.1 connection as its bytes pass by.
//!
//! The client forwards a stream's bytes without parsing them; when the
//! inspector is on, each chunk is also shown to a [`MessageReader`], which
//! finds where each message's head and body are. It never changes or holds
//! back a byte: it sees a copy of what was already forwarded. A stream it
//! cannot follow (garbage, a head over [`MAX_HEAD`]) is given up on, and
//! the bytes keep flowing as before.

use std::borrow::Cow;

/// The largest head (start line and headers) followed; the server refuses
/// larger ones before they reach the tunnel.
pub(crate) const MAX_HEAD: usize = 128 * 1024;

/// The most header fields read from one head.
const MAX_FIELDS: usize = 128;

/// The longest chunk-size line (with extensions) or trailer section.
const MAX_CHUNK_LINE: usize = 4096;

/// Which way the messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// Requests, from the visitor to the app.
    Request,
    /// Responses, from the app to the visitor.
    Response,
}

/// A message's start line and headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// A request's method; empty for a response. The standard ones are
    /// static, no allocation each.
    pub method: Cow<'static, str>,
    /// A request's target (path and query); empty for a response.
    pub path: String,
    /// A response's status; 0 for a request.
    pub status: u16,
    /// The head's bytes as they crossed, blank line included: the fields
    /// are read from them when asked for, so a capture allocates nothing
    /// per field.
    pub raw: Vec<u8>,
    /// Where the header fields begin in `raw` (after the start line).
    pub fields_at: usize,
    /// Whether `Content-Type` says `text/event-stream`.
    pub event_stream: bool,
}

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the connection closes (a response without length).
    UntilClose,
    /// The connection became another protocol (101, or CONNECT's 2xx):
    /// what follows is not HTTP.
    Upgraded,
}

/// What the reader found in the bytes given to it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// A message began; its body is framed as said.
    Head(Head, Framing),
    /// Bytes of the current message's body (chunked framing removed).
    Body(&'a [u8]),
    /// The current message ended.
    End,
    /// Bytes after an upgrade.
    Raw(&'a [u8]),
    /// The bytes are not HTTP/1 the reader can follow; it reads no more.
    Lost(String),
}

#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    UntilClose,
    Upgraded,
    Lost,
}

/// Reads `bytes` as one direction of a connection (requests, or with
/// `responses` the app's answers), cut into pieces of `cut` bytes as they
/// might arrive, the way a capture does; returns how many messages began.
/// For the fuzz target and tests: a capture never panics or loops on what
/// this never panics or loops on.
pub fn messages_in(bytes: &[u8], responses: bool, cut: usize) -> usize {
    let side = if responses {
        Side::Response
    } else {
        Side::Request
    };
    let mut reader = MessageReader::new(side);
    let mut heads = 0;
    for mut chunk in bytes.chunks(cut.max(1)) {
        // Each call uses some bytes or ends a piece: bounded by twice the
        // input and its pieces, so a loop that makes no progress fails.
        let (mut calls, limit) = (0, 2 * chunk.len() + 4);
        loop {
            calls += 1;
            assert!(calls <= limit, "the reader made no progress");
            let (used, piece) = reader.next(chunk);
            chunk = &chunk[used..];
            match piece {
                Some(Piece::Head(..)) => heads += 1,
                Some(Piece::Lost(_)) => return heads,
                Some(_) => {}
                None if chunk.is_empty() => break,
                None => {}
            }
            if chunk.is_empty() && used == 0 {
                break;
            }
        }
    }
    let _ = reader.finish();
    heads
}

/// Follows the messages of one direction.
#[derive(Debug)]
pub(crate) struct MessageReader {
    side: Side,
    state: State,
    /// A head, chunk-size line or trailer section being gathered.
    line: Vec<u8>,
}

impl MessageReader {
    pub fn new(side: Side) -> MessageReader {
        MessageReader {
            side,
            state: State::Head,
            line: Vec::new(),
        }
    }

    /// Changes how the body of the message whose head was just returned
    /// ends: a response to HEAD has none, whatever its headers say.
    pub fn set_framing(&mut self, framing: Framing) {
        self.state = state_for(framing);
    }

    /// Reads from `data` up to the next piece. Returns how many bytes it
    /// used and the piece, if one is complete; call again with the rest.
    pub fn next<'a>(&mut self, data: &'a [u8]) -> (usize, Option<Piece<'a>>) {
        match self.state {
            State::Lost => (data.len(), None),
            State::Upgraded if data.is_empty() => (0, None),
            State::Upgraded => (data.len(), Some(Piece::Raw(data))),
            State::UntilClose if data.is_empty() => (0, None),
            State::UntilClose => (data.len(), Some(Piece::Body(data))),
            State::Body(0) => {
                self.state = State::Head;
                (0, Some(Piece::End))
            }
            State::Body(_) | State::ChunkData(_) if data.is_empty() => (0, None),
            State::Body(left) => {
                let n = take(left, data.len());
                self.state = State::Body(left - n as u64);
                (n, Some(Piece::Body(&data[..n])))
            }
            State::ChunkData(left) => {
                let n = take(left, data.len());
                self.state = if n as u64 == left {
                    State::ChunkEnd
                } else {
                    State::ChunkData(left - n as u64)
                };
                (n, Some(Piece::Body(&data[..n])))
            }
            State::Head => self.head(data),
            State::ChunkSize => self.chunk_size(data),
            State::ChunkEnd => self.chunk_end(data),
            State::Trailers => self.trailers(data),
        }
    }

    /// The connection closed: ends a body that runs until the close.
    pub fn finish(&mut self) -> Option<Piece<'static>> {
        match std::mem::replace(&mut self.state, State::Lost) {
            State::UntilClose => Some(Piece::End),
            _ => None,
        }
    }

    fn lose<'a>(&mut self, used: usize, why: String) -> (usize, Option<Piece<'a>>) {
        self.state = State::Lost;
        self.line = Vec::new();
        (used, Some(Piece::Lost(why)))
    }

    fn head<'a>(&mut self, data: &'a [u8]) -> (usize, Option<Piece<'a>>) {
        // Empty lines between messages are allowed (RFC 9112, 2.2).
        let mut skipped = 0;
        if self.line.is_empty() {
            while skipped < data.len() && matches!(data[skipped], b'\r' | b'\n') {
                skipped += 1;
            }
        }
        let data_rest = &data[skipped..];
        if self.line.is_empty()
            && let Some(end) = find_head_end(data_rest, 0)
        {
            // The whole head in one piece, the usual case: copy just it.
            return self.parsed(data_rest[..end].to_vec(), skipped + end, data.len());
        }
        let searched_from = self.line.len().saturating_sub(3);
        let room = MAX_HEAD.saturating_sub(self.line.len());
        let added = data_rest.len().min(room);
        self.line.extend_from_slice(&data_rest[..added]);
        let Some(end) = find_head_end(&self.line, searched_from) else {
            if self.line.len() >= MAX_HEAD {
                return self.lose(data.len(), format!("a head over {MAX_HEAD} bytes"));
            }
            return (skipped + added, None);
        };
        // Bytes of this call past the head's end are not the head's.
        let used = skipped + added - (self.line.len() - end);
        let mut raw = std::mem::take(&mut self.line);
        raw.truncate(end);
        self.parsed(raw, used, data.len())
    }

    fn parsed<'a>(&mut self, raw: Vec<u8>, used: usize, all: usize) -> (usize, Option<Piece<'a>>) {
        match parse_head(self.side, raw) {
            Ok((head, framing)) => {
                self.state = state_for(framing);
                (used, Some(Piece::Head(head, framing)))
            }
            Err(why) => self.lose(all, why),
        }
    }

    fn chunk_size<'a>(&mut self, data: &'a [u8]) -> (usize, Option<Piece<'a>>) {
        let Some((used, complete)) = self.gather_line(data) else {
            return self.lose(data.len(), "a chunk-size line too long".into());
        };
        if !complete {
            return (used, None);
        }
        let line = std::mem::take(&mut self.line);
        let digits = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| u64::from_str_radix(d, 16).ok());
        match size {
            Some(0) => {
                self.state = State::Trailers;
                (used, None)
            }
            Some(size) => {
                self.state = State::ChunkData(size);
                (used, None)
            }
            None => self.lose(data.len(), "a bad chunk size".into()),
        }
    }

    fn chunk_end<'a>(&mut self, data: &'a [u8]) -> (usize, Option<Piece<'a>>) {
        let Some((used, complete)) = self.gather_line(data) else {
            return self.lose(data.len(), "no CRLF after a chunk".into());
        };
        if !complete {
            return (used, None);
        }
        if !self.line.is_empty() {
            return self.lose(data.len(), "bytes after a chunk's data".into());
        }
        self.state = State::ChunkSize;
        (used, None)
    }

    fn trailers<'a>(&mut self, data: &'a [u8]) -> (usize, Option<Piece<'a>>) {
        // Trailer fields, each a line, until an empty line.
        let mut used = 0;
        loop {
            let Some((n, complete)) = self.gather_line(&data[used..]) else {
                return self.lose(data.len(), "a trailer line too long".into());
            };
            used += n;
            if !complete {
                return (used, None);
            }
            let empty = self.line.is_empty();
            self.line.clear();
            if empty {
                self.state = State::Head;
                return (used, Some(Piece::End));
            }
        }
    }

    /// Gathers a line into `self.line`, without its CRLF (or bare LF).
    /// Returns the bytes used and whether the line is complete, or `None`
    /// when it grows past [`MAX_CHUNK_LINE`].
    fn gather_line(&mut self, data: &[u8]) -> Option<(usize, bool)> {
        match data.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.line.extend_from_slice(&data[..i]);
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
                (self.line.len() <= MAX_CHUNK_LINE).then_some((i + 1, true))
            }
            None => {
                self.line.extend_from_slice(data);
                (self.line.len() <= MAX_CHUNK_LINE).then_some((data.len(), false))
            }
        }
    }
}

fn state_for(framing: Framing) -> State {
    match framing {
        Framing::Empty => State::Body(0),
        Framing::Length(n) => State::Body(n),
        Framing::Chunked => State::ChunkSize,
        Framing::UntilClose => State::UntilClose,
        Framing::Upgraded => State::Upgraded,
    }
}

fn take(left: u64, available: usize) -> usize {
    usize::try_from(left).map_or(available, |left| left.min(available))
}

/// The end of a head (just past its blank line), searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1..].starts_with(b"\r\n") {
                return Some(i + 3);
            }
            if buf[i + 1..].starts_with(b"\n") {
                return Some(i + 2);
            }
        }
        i += 1;
    }
    None
}

/// A method's name, static for the standard ones.
fn method_name(name: &str) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.iter().find(|m| **m == name) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Owned(name.to_string()),
    }
}

/// What the fields of a head say about its body.
#[derive(Default)]
struct Fields {
    content_length: Option<Result<u64, ()>>,
    chunked: bool,
    event_stream: bool,
}

fn read_fields(fields: &[httparse::Header<'_>]) -> Fields {
    let mut out = Fields::default();
    for f in fields {
        if f.name.eq_ignore_ascii_case("content-length") {
            out.content_length = Some(
                std::str::from_utf8(f.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or(()),
            );
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            out.chunked |= f
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if f.name.eq_ignore_ascii_case("content-type") {
            out.event_stream = f.value.trim_ascii_start().starts_with(b"text/event-stream");
        }
    }
    out
}

/// Parses a head and says how its body is framed.
fn parse_head(side: Side, raw: Vec<u8>) -> Result<(Head, Framing), String> {
    // Uninitialised room for the fields: nothing to fill for each head.
    let mut storage =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let (method, path, status, fields, parsed) = match side {
        Side::Request => {
            let mut request = httparse::Request::new(&mut []);
            let parsed = request.parse_with_uninit_headers(&raw, &mut storage);
            let fields = read_fields(request.headers);
            (
                method_name(request.method.unwrap_or_default()),
                request.path.unwrap_or_default().to_string(),
                0,
                fields,
                parsed,
            )
        }
        Side::Response => {
            let mut response = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut response,
                &raw,
                &mut storage,
            );
            let fields = read_fields(response.headers);
            (
                Cow::Borrowed(""),
                String::new(),
                response.code.unwrap_or_default(),
                fields,
                parsed,
            )
        }
    };
    match parsed {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("an incomplete head".into()),
        Err(e) => return Err(format!("not HTTP/1: {e}")),
    }
    let length = match fields.content_length {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(())) => return Err("a bad Content-Length".into()),
    };
    let framing = match side {
        Side::Request if fields.chunked => Framing::Chunked,
        Side::Request => match length {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        },
        Side::Response if status == 101 => Framing::Upgraded,
        Side::Response if (100..200).contains(&status) || status == 204 || status == 304 => {
            Framing::Empty
        }
        Side::Response if fields.chunked => Framing::Chunked,
        Side::Response => match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        },
    };
    let fields_at = raw
        .iter()
        .position(|&b| b == b'\n')
        .map_or(raw.len(), |i| i + 1);
    let head = Head {
        method,
        path,
        status,
        raw,
        fields_at,
        event_stream: fields.event_stream,
    };
    Ok((head, framing))
}

#[cfg(test)]
mod tests {
    #[test]
    fn messages_in_counts_heads_however_the_bytes_are_cut() {
        let two = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in [1, 2, 7, 1000] {
            assert_eq!(super::messages_in(two, false, cut), 2, "cut {cut}");
        }
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(super::messages_in(chunked, true, 5), 2);
        assert_eq!(super::messages_in(b"\x16\x03\x01 not http", false, 3), 0);
    }

    use super::*;

    /// Feeds `bytes` in pieces of `step` and describes what was found.
    fn read(side: Side, bytes: &[u8], step: usize) -> Vec<String> {
        let mut reader = MessageReader::new(side);
        let mut out = Vec::new();
        let mut body = Vec::new();
        for chunk in bytes.chunks(step.max(1)) {
            let mut rest = chunk;
            loop {
                let (used, piece) = reader.next(rest);
                rest = &rest[used..];
                match piece {
                    Some(Piece::Head(h, f)) => {
                        out.push(format!("head {}{}{} {:?}", h.method, h.path, h.status, f))
                    }
                    Some(Piece::Body(b)) => body.extend_from_slice(b),
                    Some(Piece::End) => {
                        out.push(format!("end {}", String::from_utf8_lossy(&body)));
                        body.clear();
                    }
                    Some(Piece::Raw(r)) => out.push(format!("raw {}", r.len())),
                    Some(Piece::Lost(why)) => out.push(format!("lost {why}")),
                    None if rest.is_empty() => break,
                    None => {}
                }
            }
        }
        if reader.finish() == Some(Piece::End) {
            out.push(format!("end {}", String::from_utf8_lossy(&body)));
        }
        out
    }

    #[test]
    fn requests_are_followed_whatever_the_chunking() {
        let stream = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n\
            GET /d HTTP/1.1\r\n\r\n";
        let want = [
            "head GET/a0 Empty",
            "end ",
            "head POST/b0 Length(5)",
            "end hello",
            "head PUT/c0 Chunked",
            "end abcde",
            "head GET/d0 Empty",
            "end ",
        ];
        for step in [1, 2, 3, 7, 64, stream.len()] {
            assert_eq!(read(Side::Request, stream, step), want, "step {step}");
        }
    }

    #[test]
    fn responses_end_by_length_chunks_close_or_upgrade() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
            HTTP/1.1 204 No Content\r\n\r\n\
            HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n\
            HTTP/1.1 200 OK\r\n\r\nuntil the end";
        let want = [
            "head 200 Length(2)",
            "end ok",
            "head 204 Empty",
            "end ",
            "head 200 Chunked",
            "end wiki",
            "head 200 UntilClose",
            "end until the end",
        ];
        for step in [1, 5, stream.len()] {
            assert_eq!(read(Side::Response, stream, step), want, "step {step}");
        }
        let upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi";
        assert_eq!(
            read(Side::Response, upgrade, upgrade.len()),
            ["head 101 Upgraded", "raw 4"]
        );
    }

    #[test]
    fn garbage_and_huge_heads_are_given_up_on() {
        assert_eq!(
            read(Side::Request, b"\x16\x03\x01 not http\r\n\r\n", 100)[0],
            "lost not HTTP/1: invalid token"
        );
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        let found = read(Side::Request, &huge, 4096);
        assert_eq!(found, [format!("lost a head over {MAX_HEAD} bytes")]);
        let bad_chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(
            read(Side::Request, bad_chunk, 3),
            ["head POST/0 Chunked", "lost a bad chunk size"]
        );
    }

    #[test]
    fn a_head_response_has_no_body_when_told() {
        let mut reader = MessageReader::new(Side::Response);
        let data = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let (used, piece) = reader.next(data);
        assert!(matches!(piece, Some(Piece::Head(_, Framing::Length(100)))));
        reader.set_framing(Framing::Empty);
        let rest = &data[used..];
        assert_eq!(reader.next(rest), (0, Some(Piece::End)));
        assert!(matches!(reader.next(rest).1, Some(Piece::Head(..))));
    }
}
