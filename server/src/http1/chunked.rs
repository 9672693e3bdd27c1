//! A chunked body's framing (RFC 9112 §7.1), followed as its bytes pass:
//! where the body ends, how much data it announced, and whether it is well
//! formed. The bytes themselves are relayed unchanged; nothing is decoded
//! into a second buffer.

/// The longest chunk-size line extension, and all trailer lines together:
/// a body cannot grow without bound in bytes that are not data.
const MAX_LINE_EXTRA: usize = 8 * 1024;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("a chunk size is not a hexadecimal number")]
    BadSize,
    #[error("a chunk size is too large")]
    TooLarge,
    #[error("a chunk line does not end with CRLF")]
    BadLineEnd,
    #[error("chunk extensions or trailers are too long")]
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line's digits (`digits` read so far).
    Size {
        digits: u8,
    },
    /// After the digits, white space before `;` or the line's end.
    SizeSpace,
    /// In a chunk-size line after the digits: extensions, up to its CR.
    Extension,
    /// After the chunk-size line's CR.
    SizeLf,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    LineStart,
    /// Inside a trailer line, up to its CR.
    Trailer,
    /// After a trailer line's CR.
    TrailerLf,
    /// After the final empty line's CR.
    EndLf,
    /// The body has ended.
    Done,
}

/// Follows one chunked body.
#[derive(Debug)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    /// Data bytes announced by the chunk sizes read so far.
    announced: u64,
    /// Extension and trailer bytes read so far.
    extra: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { digits: 0 },
            size: 0,
            announced: 0,
            extra: 0,
        }
    }
}

impl Chunked {
    /// Whether the body has ended.
    pub(crate) fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The data bytes the chunk sizes have announced so far (counted as
    /// each size is read, before its data arrives).
    pub(crate) fn announced(&self) -> u64 {
        self.announced
    }

    /// Follows `bytes`, the body's next bytes; returns how many of them
    /// belong to it (all, unless it ends inside them).
    pub(crate) fn scan(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            if let State::Data(left) = self.state {
                // Data passes in one step, however long.
                let take = left.min((bytes.len() - i) as u64);
                i += take as usize;
                self.state = if take == left {
                    State::DataCr
                } else {
                    State::Data(left - take)
                };
                continue;
            }
            if self.state == State::Done {
                return Ok(i);
            }
            self.step(bytes[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn step(&mut self, byte: u8) -> Result<(), ChunkError> {
        self.state = match (self.state, byte) {
            (State::Size { digits }, b) if b.is_ascii_hexdigit() => {
                if digits >= 16 {
                    return Err(ChunkError::TooLarge);
                }
                let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                self.size = self.size * 16 + digit;
                State::Size { digits: digits + 1 }
            }
            (State::Size { digits: 0 }, _) => return Err(ChunkError::BadSize),
            (State::Size { .. } | State::SizeSpace, b' ' | b'\t') => State::SizeSpace,
            (State::Size { .. } | State::SizeSpace, b';') => State::Extension,
            (State::Size { .. } | State::SizeSpace | State::Extension, b'\r') => State::SizeLf,
            (State::SizeSpace, _) => return Err(ChunkError::BadSize),
            (State::Size { .. }, b'\n') => return Err(ChunkError::BadLineEnd),
            (State::Size { .. }, _) => return Err(ChunkError::BadSize),
            (State::Extension, b'\n') => return Err(ChunkError::BadLineEnd),
            (State::Extension | State::LineStart | State::Trailer, b) if is_control(b) => {
                return Err(ChunkError::BadLineEnd);
            }
            (State::Extension, _) => {
                self.count_extra()?;
                State::Extension
            }
            (State::SizeLf, b'\n') => self.chunk_begins()?,
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size { digits: 0 },
            (State::LineStart, b'\r') => State::EndLf,
            (State::EndLf, b'\n') => State::Done,
            (State::Trailer, b'\r') => State::TrailerLf,
            (State::TrailerLf, b'\n') => State::LineStart,
            (State::LineStart | State::Trailer, b'\n') => return Err(ChunkError::BadLineEnd),
            (State::LineStart | State::Trailer, _) => {
                self.count_extra()?;
                State::Trailer
            }
            _ => return Err(ChunkError::BadLineEnd),
        };
        Ok(())
    }

    fn chunk_begins(&mut self) -> Result<State, ChunkError> {
        let size = std::mem::take(&mut self.size);
        // The bound is per chunk-size line; the trailers share one.
        self.extra = 0;
        self.announced = self
            .announced
            .checked_add(size)
            .ok_or(ChunkError::TooLarge)?;
        Ok(if size == 0 {
            State::LineStart
        } else {
            State::Data(size)
        })
    }

    fn count_extra(&mut self) -> Result<(), ChunkError> {
        self.extra += 1;
        if self.extra > MAX_LINE_EXTRA {
            return Err(ChunkError::TooLong);
        }
        Ok(())
    }
}

/// A control character other than HTAB (and CR, which ends a line).
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t' && b != b'\r') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(body: &[u8]) -> Result<(usize, u64), ChunkError> {
        let mut c = Chunked::default();
        let n = c.scan(body)?;
        assert!(c.done(), "not done after {body:?}");
        Ok((n, c.announced()))
    }

    #[test]
    fn a_body_ends_where_its_last_chunk_says_whatever_follows() {
        let body = b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1";
        let end = body.len() - b"GET / HTTP/1.1".len();
        assert_eq!(scan_all(body), Ok((end, 6)));
        assert_eq!(scan_all(b"0\r\n\r\n"), Ok((5, 0)));
        assert_eq!(scan_all(b"1 \t;x\r\n!\r\n0 \r\n\r\n"), Ok((16, 1)));
        assert_eq!(scan_all(b"A\r\n0123456789\r\n0\r\n\r\n"), Ok((20, 10)));
    }

    #[test]
    fn a_body_split_anywhere_scans_the_same() {
        let body = b"10\r\n0123456789abcdef\r\n3\r\nxyz\r\n0\r\nA: b\r\n\r\n";
        for cut in 0..body.len() {
            let mut c = Chunked::default();
            let a = c.scan(&body[..cut]).unwrap();
            let b = c.scan(&body[cut..]).unwrap();
            assert_eq!(a + b, body.len(), "cut at {cut}");
            assert!(c.done());
            assert_eq!(c.announced(), 19);
        }
    }

    #[test]
    fn malformed_framing_is_refused() {
        for (body, error) in [
            (&b"0x\r\n\r\n"[..], ChunkError::BadSize),
            (b"-1\r\n", ChunkError::BadSize),
            (b"\r\n", ChunkError::BadSize),
            (b"5\nhello\r\n", ChunkError::BadLineEnd),
            (b"5\r\nhelloX\r\n", ChunkError::BadLineEnd),
            (b"0\r\n\n", ChunkError::BadLineEnd),
            (b"11111111111111111\r\n", ChunkError::TooLarge),
            // Found in review: only white space, then `;`, may follow
            // the digits (else an app reads `2f /admin HTTP/1.1`).
            (b"2f /admin HTTP/1.1\r\n", ChunkError::BadSize),
            (b"1;a\x00b\r\n", ChunkError::BadLineEnd),
            (b"0\r\nX: \x01\r\n\r\n", ChunkError::BadLineEnd),
        ] {
            let mut c = Chunked::default();
            assert_eq!(c.scan(body), Err(error), "{body:?}");
        }
        // Each chunk's line has its own bound.
        let mut many = Vec::new();
        for _ in 0..100 {
            many.extend_from_slice(format!("1;{}\r\nx\r\n", "e".repeat(200)).as_bytes());
        }
        assert_eq!(Chunked::default().scan(&many), Ok(many.len()));
        let mut c = Chunked::default();
        let mut long = b"1;".to_vec();
        long.resize(MAX_LINE_EXTRA + 10, b'a');
        assert_eq!(c.scan(&long), Err(ChunkError::TooLong));
    }
}
