//! HTTP/1 as the server's front speaks it: each request's head parsed once
//! (`request`), the app's answer read only for its status and framing
//! (`answer`, `chunked`) and relayed as bytes (`relay`), and the pages the
//! server answers itself (`page`).

pub(crate) mod answer;
pub(crate) mod chunked;
pub(crate) mod page;
pub(crate) mod relay;
pub(crate) mod request;

use bytes::{Buf, BytesMut};

/// Reads `bytes` as the server reads a visitor's requests (each head,
/// written again for the app, then its body by its framing) and as it
/// reads an app's answer, for the `visitor_http` fuzz target. Nothing may
/// panic; a head written for the app parses again to the same framing;
/// a body never takes more bytes than it is given.
#[doc(hidden)]
pub fn read_as_visitor_and_app(bytes: &[u8]) {
    let mut buf = BytesMut::from(bytes);
    while let Ok(Some(head)) = request::RequestHead::parse(&mut buf, 64 * 1024, 100) {
        let mut out = Vec::new();
        let how = request::Forwarding {
            visitor_ip: "192.0.2.1",
            https: false,
            host: "a.example",
            app_host: None,
            strip_authorization: true,
        };
        head.write_forwarded(&mut out, &how);
        let again = request::RequestHead::parse(&mut BytesMut::from(&out[..]), usize::MAX, 200);
        let framing = again.ok().flatten().map(|h| h.framing);
        assert_eq!(framing, Some(head.framing), "{out:?}");
        let mut body = relay::Body::new(head.framing, Some(1 << 20));
        match body.take(&buf) {
            Ok(n) if n <= buf.len() && body.done() => buf.advance(n),
            Ok(n) => {
                assert!(n <= buf.len());
                break;
            }
            Err(_) => break,
        }
    }
    if let Ok(Some(head)) = answer::parse(bytes, false) {
        assert!(head.len <= bytes.len());
        if head.framing == answer::AnswerFraming::Chunked {
            let used = chunked::Chunked::default().scan(&bytes[head.len..]);
            assert!(used.map_or(true, |n| n <= bytes.len() - head.len));
        }
    }
}
