//! The app's answer head, read only for what relaying it needs: its status
//! (for the metrics and request lines), where its body ends, and whether
//! the connection carries another exchange after it. The head's bytes are
//! relayed as the app wrote them.

/// The longest answer head accepted from an app.
pub(crate) const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// The header lines an answer head may have.
const MAX_ANSWER_HEADERS: usize = 128;

/// How an answer's body is framed (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerFraming {
    /// No body: an answer to HEAD, a 1xx, 204 or 304.
    None,
    Length(u64),
    Chunked,
    /// Until the app closes the connection.
    UntilClose,
}

/// What relaying an answer needs from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AnswerHead {
    pub(crate) status: u16,
    /// The head's length in bytes.
    pub(crate) len: usize,
    pub(crate) framing: AnswerFraming,
    /// The connection may carry another exchange after this one.
    pub(crate) keep_alive: bool,
}

/// Why an app's answer cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BadAnswer {
    #[error("its head is larger than {MAX_ANSWER_HEAD} bytes")]
    TooLarge,
    #[error("it is not valid HTTP/1.1")]
    Malformed,
    #[error("its Content-Length is not a number")]
    BadLength,
}

/// Parses the answer head at the start of `buf`; `None` while incomplete.
/// `to_head` is whether the request was a HEAD.
pub(crate) fn parse(buf: &[u8], to_head: bool) -> Result<Option<AnswerHead>, BadAnswer> {
    // Uninitialised room for the header lines: nothing to fill per answer.
    let mut headers = [std::mem::MaybeUninit::<httparse::Header>::uninit(); MAX_ANSWER_HEADERS];
    let mut answer = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut answer,
        buf,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_ANSWER_HEAD => {
            return Err(BadAnswer::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadAnswer::TooLarge),
        Err(_) => return Err(BadAnswer::Malformed),
    };
    let status = answer.code.unwrap_or(0);
    if status < 100 {
        return Err(BadAnswer::Malformed);
    }
    let http10 = answer.version == Some(0);
    let (mut length, mut chunked, mut coded, mut close, mut keep_alive) =
        (None, false, false, false, false);
    for header in answer.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = header.value.trim_ascii();
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(BadAnswer::BadLength)?;
            if length.is_some_and(|seen| seen != n) {
                return Err(BadAnswer::BadLength);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            coded = true;
            let last = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default();
            chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let framing = if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        AnswerFraming::None
    } else if coded && chunked {
        AnswerFraming::Chunked
    } else if coded {
        AnswerFraming::UntilClose
    } else if let Some(n) = length {
        AnswerFraming::Length(n)
    } else {
        AnswerFraming::UntilClose
    };
    let keep_alive = framing != AnswerFraming::UntilClose
        // Both framings at once: relayed by the chunks, but the connection
        // is not trusted with another exchange.
        && !(coded && length.is_some())
        && if http10 { keep_alive } else { !close };
    Ok(Some(AnswerHead {
        status,
        len,
        framing,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> AnswerHead {
        parse(text.as_bytes(), false).unwrap().unwrap()
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let a = head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
        assert_eq!(
            (a.status, a.len, a.framing),
            (200, 38, AnswerFraming::Length(5))
        );
        assert!(a.keep_alive);
        let a = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert_eq!(a.framing, AnswerFraming::Chunked);
        let a = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(a.framing, AnswerFraming::UntilClose);
        assert!(!a.keep_alive);
        let a = head("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n");
        assert_eq!(a.framing, AnswerFraming::None);
        let a = head("HTTP/1.1 100 Continue\r\n\r\n");
        assert_eq!(a.framing, AnswerFraming::None);
        let a = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true);
        assert_eq!(a.unwrap().unwrap().framing, AnswerFraming::None);
        let a = head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(a.framing, AnswerFraming::Chunked);
        assert!(!a.keep_alive);
    }

    #[test]
    fn the_connection_is_kept_as_the_version_and_connection_say() {
        assert!(
            !head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").keep_alive
        );
        assert!(!head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(
            head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n")
                .keep_alive
        );
    }

    #[test]
    fn bad_heads_are_told_apart_from_incomplete_ones() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\ncontent-le", false), Ok(None));
        assert_eq!(parse(b"garbage\r\n\r\n", false), Err(BadAnswer::Malformed));
        assert_eq!(
            parse(b"HTTP/1.1 099 X\r\n\r\n", false),
            Err(BadAnswer::Malformed)
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false),
            Err(BadAnswer::BadLength)
        );
        assert_eq!(
            parse(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                false
            ),
            Err(BadAnswer::BadLength)
        );
    }
}
