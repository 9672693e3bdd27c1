//! Syslog over a byte stream (RFC 6587): each frame is either
//! octet-counted (`LEN SP MSG`) or ends at a line feed (or a NUL, as
//! Python's `SysLogHandler` ends its messages). Senders pick one per
//! frame; a frame that starts with a digit is counted.

use bytes::{Buf, BytesMut};

/// The most digits a frame's length may have.
const MAX_LENGTH_DIGITS: usize = 10;

/// A frame, cut to the largest message when it was longer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message's bytes.
    pub bytes: BytesMut,
    /// The frame was longer than the largest message and was cut.
    pub truncated: bool,
}

/// Why a connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An octet-counted frame declared more than the largest message.
    #[error("a frame declares {declared} bytes, over the largest message ({max} bytes)")]
    TooLong {
        /// What the frame said.
        declared: u64,
        /// The largest message.
        max: usize,
    },
    /// Digits that are not followed by a space, or too many of them.
    #[error("a frame's length is not a number followed by a space")]
    BadLength,
}

/// Splits a stream into frames.
#[derive(Debug)]
pub struct Framer {
    max: usize,
    /// In a line-feed frame already cut: its rest is skipped up to the
    /// line feed.
    skipping: bool,
}

impl Framer {
    /// Frames of at most `max` bytes.
    pub fn new(max: usize) -> Framer {
        Framer {
            max,
            skipping: false,
        }
    }

    /// The next whole frame in `buf` (taken out of it), `None` until more
    /// bytes come.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.skipping {
            match buf.iter().position(|&b| b == b'\n' || b == b'\0') {
                Some(end) => {
                    buf.advance(end + 1);
                    self.skipping = false;
                }
                None => {
                    buf.clear();
                    return Ok(None);
                }
            }
        }
        // Blank lines between frames say nothing.
        let blank = buf
            .iter()
            .take_while(|&&b| matches!(b, b'\n' | b'\r' | b'\0'))
            .count();
        buf.advance(blank);
        match buf.first() {
            None => Ok(None),
            Some(b'1'..=b'9') => self.counted(buf),
            Some(_) => Ok(self.line(buf)),
        }
    }

    fn counted(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let digits = buf.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > MAX_LENGTH_DIGITS {
            return Err(FrameError::BadLength);
        }
        match buf.get(digits) {
            None => return Ok(None),
            Some(b' ') => {}
            Some(_) => return Err(FrameError::BadLength),
        }
        let declared: u64 = std::str::from_utf8(&buf[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or(FrameError::BadLength)?;
        if declared > self.max as u64 {
            return Err(FrameError::TooLong {
                declared,
                max: self.max,
            });
        }
        let length = declared as usize;
        if buf.len() < digits + 1 + length {
            buf.reserve(digits + 1 + length - buf.len());
            return Ok(None);
        }
        buf.advance(digits + 1);
        Ok(Some(Frame {
            bytes: buf.split_to(length),
            truncated: false,
        }))
    }

    fn line(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        if let Some(end) = buf
            .iter()
            .take(self.max + 1)
            .position(|&b| b == b'\n' || b == b'\0')
        {
            let bytes = buf.split_to(end);
            buf.advance(1);
            return Some(Frame {
                bytes,
                truncated: false,
            });
        }
        if buf.len() > self.max {
            self.skipping = true;
            return Some(Frame {
                bytes: buf.split_to(self.max),
                truncated: true,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut Framer, input: &[u8]) -> Result<Vec<(Vec<u8>, bool)>, FrameError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = framer.next(&mut buf)? {
            out.push((f.bytes.to_vec(), f.truncated));
        }
        Ok(out)
    }

    #[test]
    fn counted_and_line_frames_mixed() {
        let mut f = Framer::new(100);
        let got = frames(&mut f, b"5 <1>ab<2>line one\n\n6 <3>cd\n<4>py\0<5>thon\0").unwrap();
        assert_eq!(
            got,
            vec![
                (b"<1>ab".to_vec(), false),
                (b"<2>line one".to_vec(), false),
                (b"<3>cd\n".to_vec(), false),
                (b"<4>py".to_vec(), false),
                (b"<5>thon".to_vec(), false)
            ]
        );
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut f = Framer::new(100);
        let mut buf = BytesMut::from(&b"11 <1>he"[..]);
        assert_eq!(f.next(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"llo wo<2>x");
        assert_eq!(
            f.next(&mut buf).unwrap().unwrap().bytes,
            &b"<1>hello wo"[..]
        );
        assert_eq!(f.next(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"\n");
        assert_eq!(f.next(&mut buf).unwrap().unwrap().bytes, &b"<2>x"[..]);
    }

    #[test]
    fn a_long_line_is_cut_and_its_rest_skipped() {
        let mut f = Framer::new(8);
        let mut input = b"<1>".to_vec();
        input.extend_from_slice(&[b'x'; 50]);
        input.extend_from_slice(b"\n<2>next\n");
        let got = frames(&mut f, &input).unwrap();
        assert_eq!(
            got,
            vec![(b"<1>xxxxx".to_vec(), true), (b"<2>next".to_vec(), false)]
        );
    }

    #[test]
    fn a_frame_declaring_too_much_ends_the_connection() {
        let mut f = Framer::new(100);
        assert_eq!(
            frames(&mut f, b"101 <1>x"),
            Err(FrameError::TooLong {
                declared: 101,
                max: 100
            })
        );
        assert_eq!(
            frames(&mut Framer::new(100), b"99999999999 x"),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            frames(&mut Framer::new(100), b"12x"),
            Err(FrameError::BadLength)
        );
    }
}
