//! Hostile or broken input to the public HTTP listener and to the control
//! port: each gets a clear error (a status where HTTP applies), nothing
//! panics, and a live tunnel on the same server serves before and after.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use droid_core::protocol::{self, ControlMessage, ErrorCode, MessageReader};
use droid_core::session::{Session, Side};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server with one live tunnel to a recording origin.
struct Setup {
    app: Origin,
    srv: TestServer,
    tunnel: TestClient,
}

impl Setup {
    async fn new() -> Setup {
        let app = origin("app").await;
        let srv = server().await;
        let tunnel = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
        let setup = Setup { app, srv, tunnel };
        setup.still_serving("before").await;
        setup
    }

    fn host(&self) -> String {
        self.tunnel.host()
    }

    /// A normal request through the live tunnel works.
    async fn still_serving(&self, when: &str) {
        let (status, body) = get(self.srv.http, &self.host(), &format!("/{when}")).await;
        assert_eq!(status, 200, "{when}: {body}");
        assert_eq!(body, format!("origin app /{when}"));
        assert_eq!(self.srv.server.registry().live_count(), 1);
    }

    /// Every path the origin received at `/inbound*` so far, once a last
    /// request has gone through (so anything sent before it had its chance
    /// to arrive).
    async fn received(&mut self) -> Vec<String> {
        let (status, _) = get(self.srv.http, &self.host(), "/inbound-sentinel").await;
        assert_eq!(status, 200);
        let mut paths = Vec::new();
        loop {
            let mail = self.app.next_mail().await;
            if mail.path == "/inbound-sentinel" {
                return paths;
            }
            paths.push(mail.path);
        }
    }
}

/// Writes `bytes` (ignoring a reset: the server may stop reading early),
/// and reads the answer until the server closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    });
    let _ = w.write_all(bytes).await;
    let out = within("the server's answer and close", reader)
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| answer.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// Deterministic noise (xorshift), starting with a byte no protocol here
/// begins with.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = vec![0xA5];
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------- HTTP

#[tokio::test]
async fn garbage_to_the_http_listener_gets_a_400() {
    let s = Setup::new().await;
    let tls_client_hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage-not-http";
    let inputs: Vec<Vec<u8>> = vec![
        noise(4096, 1),
        noise(100, 2),
        tls_client_hello.to_vec(),
        b"HELLO WORLD\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHo\x00st: x\r\n\r\n".to_vec(),
    ];
    for input in &inputs {
        let answer = exchange(s.srv.http, input).await;
        assert_eq!(status_of(&answer), 400, "{input:?} got {answer:?}");
    }
    s.still_serving("after").await;
}

#[tokio::test]
async fn a_request_line_of_one_mebibyte_is_refused() {
    let s = Setup::new().await;
    let mut request = b"GET /".to_vec();
    request.resize(request.len() + 1024 * 1024, b'a');
    request.extend_from_slice(format!(" HTTP/1.1\r\nHost: {}\r\n\r\n", s.host()).as_bytes());
    let answer = exchange(s.srv.http, &request).await;
    let status = status_of(&answer);
    assert!(matches!(status, 414 | 431), "{status}: {answer:?}");
    // and a mebibyte of header lines
    let mut request = format!("GET / HTTP/1.1\r\nHost: {}\r\n", s.host()).into_bytes();
    while request.len() < 1024 * 1024 {
        request.extend_from_slice(b"X-Filler: 0123456789abcdef0123456789abcdef\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let answer = exchange(s.srv.http, &request).await;
    assert_eq!(status_of(&answer), 431, "{answer:?}");
    s.still_serving("after").await;
}

#[tokio::test]
async fn invalid_hosts_get_a_400() {
    let mut s = Setup::new().await;
    let name = s.tunnel.name().to_string();
    let hosts = [
        String::new(),
        "bad host.droid.test".into(),
        "under_score.droid.test".into(),
        format!("{name}.droid.test@evil.example"),
        "-dash.droid.test".into(),
        "a..droid.test".into(),
        "[::1".into(),
        format!("{}.droid.test", "a".repeat(64)),
    ];
    for host in &hosts {
        let request =
            format!("GET /inbound-host HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = exchange(s.srv.http, request.as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "Host {host:?} got {answer:?}");
    }
    // two Host headers, even when one is right: which one wins is exactly
    // the ambiguity an attacker wants (RFC 9112 §3.2: 400)
    for pair in [
        format!("Host: {name}.droid.test\r\nHost: other.droid.test"),
        format!("Host: {name}.droid.test\r\nHost: {name}.droid.test"),
    ] {
        let request =
            format!("GET /inbound-two-hosts HTTP/1.1\r\n{pair}\r\nConnection: close\r\n\r\n");
        let answer = exchange(s.srv.http, request.as_bytes()).await;
        assert_eq!(status_of(&answer), 400, "{pair:?} got {answer:?}");
    }
    // non-ASCII bytes in Host
    let request =
        b"GET /inbound-host HTTP/1.1\r\nHost: caf\xc3\xa9.droid.test\r\nConnection: close\r\n\r\n";
    let answer = exchange(s.srv.http, request).await;
    assert_eq!(status_of(&answer), 400, "{answer:?}");
    let seen = s.received().await;
    assert!(seen.is_empty(), "reached the app: {seen:?}");
    s.still_serving("after").await;
}

/// The headers the app saw for a raw request to `/headers` (its answer's
/// JSON `headers` object).
async fn app_headers(s: &Setup, request: &str) -> serde_json::Value {
    let answer = exchange(s.srv.http, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 200, "{answer:?}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let seen: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    seen["headers"].clone()
}

#[tokio::test]
async fn a_visitor_cannot_strip_the_headers_droid_adds() {
    let s = Setup::new().await;
    let host = s.host();
    // `Connection` naming the forwarding headers and Host: before the fix
    // the app saw neither the visitor's address nor any Host.
    let request = format!(
        "GET /headers HTTP/1.1\r\nHost: {host}\r\n\
         Connection: X-Forwarded-For, Host, X-Forwarded-Host, X-Forwarded-Proto, X-Hop, close\r\n\
         X-Hop: 1\r\n\r\n"
    );
    let seen = app_headers(&s, &request).await;
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["host"], host.as_str(), "{seen}");
    assert_eq!(seen["x-forwarded-host"], host.as_str(), "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert!(
        seen.get("x-hop").is_none(),
        "a named hop-by-hop header passed: {seen}"
    );
    s.still_serving("after").await;
}

#[tokio::test]
async fn an_absolute_form_target_replaces_the_host_header() {
    let s = Setup::new().await;
    let host = s.host();
    // RFC 9112 §3.2.2: the target's authority wins over Host. Before the
    // fix the request was routed by the target but the app saw evil.example.
    let request = format!(
        "GET http://{host}/headers HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    );
    let seen = app_headers(&s, &request).await;
    assert_eq!(seen["host"], host.as_str(), "{seen}");
    assert_eq!(seen["x-forwarded-host"], host.as_str(), "{seen}");
    // With a port, the port stays in Host.
    let request = format!(
        "GET http://{host}:8080/headers HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n"
    );
    let seen = app_headers(&s, &request).await;
    assert_eq!(seen["host"], format!("{host}:8080").as_str(), "{seen}");
    s.still_serving("after").await;
}

#[tokio::test]
async fn request_smuggling_never_reaches_the_app() {
    let mut s = Setup::new().await;
    let host = s.host();
    let smuggled = |n: u32| format!("GET /inbound-smuggled-{n} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let te_cl_body = {
        // TE.CL: a chunk that holds a whole request, for a server that
        // would frame by Content-Length
        let inner = smuggled(2);
        format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len())
    };
    let attacks = [
        // CL.TE: a front end that trusts Content-Length, a back end that
        // trusts Transfer-Encoding (or the reverse)
        format!(
            "POST /inbound-a HTTP/1.1\r\nHost: {host}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
            smuggled(1)
        ),
        format!(
            "POST /inbound-b HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{te_cl_body}"
        ),
        // obfuscated Transfer-Encoding
        format!(
            "POST /inbound-c HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{}",
            smuggled(3)
        ),
        format!(
            "POST /inbound-d HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{}",
            smuggled(4)
        ),
        format!(
            "POST /inbound-e HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{}",
            smuggled(5)
        ),
        format!(
            "POST /inbound-f HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{}",
            smuggled(6)
        ),
        // two lengths
        format!(
            "POST /inbound-g HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nContent-Length: 47\r\n\r\n{}",
            smuggled(7)
        ),
        format!(
            "POST /inbound-h HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0, 47\r\n\r\n{}",
            smuggled(8)
        ),
        // a chunk size with junk after it, and a negative length
        format!(
            "POST /inbound-i HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0x\r\n\r\n{}",
            smuggled(9)
        ),
        format!(
            "POST /inbound-j HTTP/1.1\r\nHost: {host}\r\nContent-Length: -1\r\n\r\n{}",
            smuggled(10)
        ),
        // `Connection` naming the framing: the body must stay a body
        // (found in review of the relay, which frames bodies itself)
        format!(
            "POST /inbound-k HTTP/1.1\r\nHost: {host}\r\nConnection: content-length, close\r\nContent-Length: {}\r\n\r\n{}",
            smuggled(11).len(),
            smuggled(11)
        ),
        {
            let inner = smuggled(12);
            format!(
                "POST /inbound-l HTTP/1.1\r\nHost: {host}\r\nConnection: transfer-encoding, close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n",
                inner.len()
            )
        },
        // a chunk-size line that is a request line to a lax reader
        format!(
            "POST /inbound-m HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n2f /inbound-smuggled-13 HTTP/1.1\r\n\r\n0\r\n\r\n"
        ),
    ];
    for attack in &attacks {
        let answer = exchange(s.srv.http, attack.as_bytes()).await;
        // each is refused outright, or handled as one request and the
        // connection closed (RFC 9112 §6.1): never two answers
        let status = status_of(&answer);
        assert!(matches!(status, 200 | 400), "{attack:?} got {answer:?}");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{attack:?} got {answer:?}"
        );
    }
    let seen = s.received().await;
    assert!(
        !seen.iter().any(|p| p.contains("smuggled")),
        "a smuggled request reached the app: {seen:?}"
    );
    s.still_serving("after").await;
}

#[tokio::test]
async fn a_bare_lf_request_is_answered_or_refused_cleanly() {
    let mut s = Setup::new().await;
    let request = format!(
        "GET /inbound-lf HTTP/1.1\nHost: {}\nConnection: close\n\n",
        s.host()
    );
    let answer = exchange(s.srv.http, request.as_bytes()).await;
    let status = status_of(&answer);
    let seen = s.received().await;
    match status {
        // understood as the one request it is
        200 => assert_eq!(seen, ["/inbound-lf"]),
        400 => assert!(seen.is_empty(), "{seen:?}"),
        other => panic!("{other}: {answer:?}"),
    }
    // and a bare CR inside a header line is refused
    let request = format!(
        "GET /inbound-cr HTTP/1.1\r\nHost: {}\r\nX-A: a\rX-B: b\r\n\r\n",
        s.host()
    );
    let answer = exchange(s.srv.http, request.as_bytes()).await;
    assert_eq!(status_of(&answer), 400, "{answer:?}");
    s.still_serving("after").await;
}

// ---------------------------------------------------------------- control port

/// Sends `bytes` to the control port and waits until the server closes the
/// connection; returns what it sent back.
async fn control_garbage(control: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(control).await.unwrap();
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    within("the server closes the connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// A yamux frame header: version 0, type, flags, stream id, length.
fn yamux_header(kind: u8, flags: u16, stream: u32, length: u32) -> Vec<u8> {
    let mut h = vec![0, kind];
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&length.to_be_bytes());
    h
}

#[tokio::test]
async fn garbage_on_the_control_port_closes_that_connection_only() {
    let s = Setup::new().await;
    // random bytes, an HTTP request, a TLS hello
    for input in [
        noise(4096, 7),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
    ] {
        control_garbage(s.srv.control, &input).await;
    }
    // a valid yamux header (window update opening stream 1), then junk
    let mut input = yamux_header(1, 1, 1, 0);
    input.extend_from_slice(&noise(64, 9));
    control_garbage(s.srv.control, &input).await;
    // a frame that claims a huge body, then closes
    let mut input = yamux_header(0, 1, 1, u32::MAX);
    input.extend_from_slice(b"{\"type\":\"hello\"");
    control_garbage(s.srv.control, &input).await;
    // a data frame on the control stream whose payload is not JSON
    let payload = b"\x00\xffnot json at all\n";
    let mut input = yamux_header(0, 1, 1, payload.len() as u32);
    input.extend_from_slice(payload);
    control_garbage(s.srv.control, &input).await;
    s.still_serving("after").await;
}

/// Opens a real yamux session and control stream, sends `line`, and
/// returns the error the server answers with.
async fn hello_refused(control: SocketAddr, line: &[u8]) -> protocol::ErrorMessage {
    let tcp = TcpStream::connect(control).await.unwrap();
    let session = Session::start(tcp, Side::Client, 4);
    let stream = session.opener.open().await.unwrap();
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = MessageReader::new(read, protocol::MAX_CONTROL_LINE);
    let line = line.to_vec();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&line).await;
        let _ = write.flush().await;
        write
    });
    let answer = within("the server's answer", reader.next()).await;
    let _write = writer.await.unwrap();
    session.opener.close();
    match answer {
        Ok(ControlMessage::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_hellos_get_a_bad_request_error() {
    let s = Setup::new().await;
    let mut huge = br#"{"type":"hello","version":2,"tunnels":[{"name":""#.to_vec();
    huge.resize(huge.len() + 200 * 1024, b'a');
    huge.extend_from_slice(b"\"}]}\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("huge line", huge),
        (
            "wrong types",
            br#"{"type":"hello","version":"one","tunnels":{"name":7}}"#.to_vec(),
        ),
        (
            "negative version",
            br#"{"type":"hello","version":-1,"tunnels":[{}]}"#.to_vec(),
        ),
        ("not JSON", b"\x00\x01\x02 hello?".to_vec()),
        // found by the control_message fuzz target: once an I/O error
        ("not UTF-8", b"\xd3\x2a".to_vec()),
        ("a JSON array", b"[1,2,3]".to_vec()),
        ("not a hello", br#"{"type":"ping"}"#.to_vec()),
        (
            "no tunnels",
            br#"{"type":"hello","version":2,"tunnels":[]}"#.to_vec(),
        ),
        (
            "a name that is no DNS label",
            br#"{"type":"hello","version":2,"tunnels":[{"name":"../etc"}]}"#.to_vec(),
        ),
    ];
    for (what, mut line) in cases {
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        let e = hello_refused(s.srv.control, &line).await;
        assert!(
            matches!(e.code, ErrorCode::BadRequest | ErrorCode::BadName),
            "{what}: {e:?}"
        );
        assert!(!e.message.is_empty(), "{what}");
    }
    s.still_serving("after").await;
}

#[tokio::test]
async fn a_client_of_another_protocol_version_is_told_which_versions_differ() {
    let s = Setup::new().await;
    // The hello of protocol 1 (mail and MQTT settings as fields of their own).
    let old = br#"{"type":"hello","version":1,"tunnels":[{"name":"old","mail":{"path":"/"}}]}"#;
    let mut line = old.to_vec();
    line.push(b'\n');
    let e = hello_refused(s.srv.control, &line).await;
    assert_eq!(e.code, ErrorCode::Version);
    assert_eq!(
        e.message,
        "this server speaks Droid protocol 2 and the client protocol 1; run the same release of droid on both"
    );
    s.still_serving("after").await;
}
