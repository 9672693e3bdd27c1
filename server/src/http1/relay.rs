//! Moving one exchange's bytes: a request body from the visitor to the app
//! with its framing followed and its limits kept, the app's answer back as
//! the app wrote it, and an upgraded connection's bytes both ways.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::answer::{self, AnswerFraming, BadAnswer};
use super::chunked::{ChunkError, Chunked};
use super::request::Framing;

/// How long an upgraded connection (a websocket) may stay open. Long:
/// websockets idle a lot.
const UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A read buffer starts this small (most heads and answers fit) and
/// doubles while reads fill it, up to [`READ_MAX`].
const READ_FIRST: usize = 4 * 1024;
const READ_MAX: usize = 64 * 1024;

/// One side's reading half and the bytes read from it but not yet used.
pub(crate) struct Reader<R> {
    pub(crate) io: R,
    pub(crate) buf: BytesMut,
    want: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub(crate) fn new(io: R) -> Reader<R> {
        Reader {
            io,
            buf: BytesMut::new(),
            want: READ_FIRST,
        }
    }

    /// Reads more bytes after those buffered; 0 at the end.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < self.want / 2 {
            self.buf.reserve(self.want);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = self.io.read_buf(&mut self.buf).await?;
        if n == room && self.want < READ_MAX {
            self.want *= 2;
        }
        Ok(n)
    }

    /// Whether the other side has neither closed nor sent anything while
    /// nobody was waiting for it: a connection kept between exchanges is
    /// reused only then.
    pub(crate) fn idle_and_open(&mut self) -> bool {
        use futures::FutureExt;
        self.buf.is_empty() && self.fill().now_or_never().is_none()
    }
}

/// Writes `bytes` and flushes them (a TLS connection holds what is not
/// flushed).
async fn send<W: AsyncWrite + Unpin>(to: &mut W, bytes: &[u8]) -> io::Result<()> {
    to.write_all(bytes).await?;
    to.flush().await
}

/// Why a request body stopped on its way.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the request body stopped arriving")]
    TooSlow,
    #[error("the request body is malformed: {0}")]
    Malformed(#[from] ChunkError),
    #[error("the visitor closed the connection during the request body")]
    VisitorGone,
    #[error("the tunnel stopped taking the request body")]
    UpstreamGone,
}

/// A request body on its way: what is left of it, and its limit.
#[derive(Debug)]
pub(crate) struct Body {
    left: Left,
    max: Option<u64>,
    sent: u64,
}

#[derive(Debug)]
enum Left {
    Bytes(u64),
    Chunks(Chunked),
}

impl Body {
    pub(crate) fn new(framing: Framing, max: Option<u64>) -> Body {
        let left = match framing {
            Framing::None => Left::Bytes(0),
            Framing::Length(n) => Left::Bytes(n),
            Framing::Chunked => Left::Chunks(Chunked::default()),
        };
        Body { left, max, sent: 0 }
    }

    pub(crate) fn done(&self) -> bool {
        match &self.left {
            Left::Bytes(n) => *n == 0,
            Left::Chunks(c) => c.done(),
        }
    }

    /// How many of `bytes` (what the visitor sent next) are this body's.
    pub(crate) fn take(&mut self, bytes: &[u8]) -> Result<usize, BodyError> {
        let (n, data) = match &mut self.left {
            Left::Bytes(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                (n as usize, self.sent + n)
            }
            Left::Chunks(chunks) => (chunks.scan(bytes)?, chunks.announced()),
        };
        self.sent = data;
        match self.max {
            Some(max) if data > max => Err(BodyError::TooLarge(max)),
            _ => Ok(n),
        }
    }
}

/// Sends the rest of `body` from the visitor to the app, waiting at most
/// `idle` for each piece.
pub(crate) async fn send_body<R, W>(
    body: &mut Body,
    from: &mut Reader<R>,
    to: &mut W,
    idle: Duration,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while !body.done() {
        if from.buf.is_empty() {
            match tokio::time::timeout(idle, from.fill()).await {
                Ok(Ok(0) | Err(_)) => return Err(BodyError::VisitorGone),
                Ok(Ok(_)) => {}
                Err(_) => return Err(BodyError::TooSlow),
            }
        }
        let n = body.take(&from.buf)?;
        to.write_all(&from.buf[..n])
            .await
            .map_err(|_| BodyError::UpstreamGone)?;
        from.buf.advance(n);
    }
    to.flush().await.map_err(|_| BodyError::UpstreamGone)
}

/// An answer relayed whole.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answered {
    pub(crate) status: u16,
    /// When its head arrived.
    pub(crate) head_at: Instant,
    /// The app's connection may carry another exchange.
    pub(crate) keep_alive: bool,
    /// A 101: the connection now carries another protocol.
    pub(crate) upgraded: bool,
}

/// Why an answer did not reach the visitor whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnswerError {
    #[error("the connection closed before the answer ended")]
    Closed,
    #[error("the answer is not valid HTTP: {0}")]
    Bad(#[from] BadAnswer),
    #[error("the answer's chunks are malformed: {0}")]
    BadChunks(#[from] ChunkError),
    #[error("the visitor's connection failed")]
    Visitor,
}

/// Relays the app's answer to the visitor: interim (1xx) heads (unless
/// `interim_ok` is false: an HTTP/1.0 visitor would take one for the answer),
/// then the final head and its body, as the app wrote them. `started` is set to a
/// head's status once its bytes go to the visitor (after that, no page can
/// replace the answer).
pub(crate) async fn relay_answer<R, W>(
    from: &mut Reader<R>,
    to: &mut W,
    to_head: bool,
    interim_ok: bool,
    started: &AtomicU16,
) -> Result<Answered, AnswerError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let head = loop {
            if let Some(head) = answer::parse(&from.buf, to_head)? {
                break head;
            }
            if from.fill().await.map_err(|_| AnswerError::Closed)? == 0 {
                return Err(AnswerError::Closed);
            }
        };
        let interim = head.status < 200 && head.status != 101;
        let head_at = Instant::now();
        if interim && !interim_ok {
            from.buf.advance(head.len);
            continue;
        }
        started.store(head.status, Ordering::Relaxed);
        if interim || head.status == 101 {
            send(to, &from.buf[..head.len])
                .await
                .map_err(|_| AnswerError::Visitor)?;
            from.buf.advance(head.len);
            if interim {
                continue;
            }
        } else {
            relay_body(from, to, head.len, head.framing).await?;
        }
        return Ok(Answered {
            status: head.status,
            head_at,
            keep_alive: head.keep_alive,
            upgraded: head.status == 101,
        });
    }
}

/// Relays a final head (`head_len` bytes at the start of `from`'s buffer)
/// and its body.
async fn relay_body<R, W>(
    from: &mut Reader<R>,
    to: &mut W,
    head_len: usize,
    framing: AnswerFraming,
) -> Result<(), AnswerError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut chunks = Chunked::default();
    let mut left = match framing {
        AnswerFraming::Length(n) => n,
        _ => 0,
    };
    // The head goes with as much of the body as is already here.
    let mut skip = head_len;
    loop {
        let body = &from.buf[skip..];
        let (n, done) = match framing {
            AnswerFraming::None => (0, true),
            AnswerFraming::Length(_) => {
                let n = left.min(body.len() as u64);
                left -= n;
                (n as usize, left == 0)
            }
            AnswerFraming::Chunked => {
                let n = chunks.scan(body)?;
                (n, chunks.done())
            }
            AnswerFraming::UntilClose => (body.len(), false),
        };
        let end = skip + n;
        if end > 0 {
            send(to, &from.buf[..end])
                .await
                .map_err(|_| AnswerError::Visitor)?;
            from.buf.advance(end);
        }
        skip = 0;
        if done {
            return Ok(());
        }
        if from.fill().await.map_err(|_| AnswerError::Closed)? == 0 {
            return match framing {
                AnswerFraming::UntilClose => Ok(()),
                _ => Err(AnswerError::Closed),
            };
        }
    }
}

/// Splices an upgraded connection: the bytes each side sent past the 101
/// first, then everything until both sides close (or an hour passes).
pub(crate) async fn splice<VR, VW, UR, UW>(
    mut visitor: Reader<VR>,
    mut to_visitor: VW,
    mut app: Reader<UR>,
    mut to_app: UW,
) where
    VR: AsyncRead + Unpin,
    VW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let up = async {
        to_app.write_all(&visitor.buf).await?;
        let n = tokio::io::copy(&mut visitor.io, &mut to_app).await?;
        to_app.shutdown().await?;
        Ok::<u64, io::Error>(n)
    };
    let down = async {
        to_visitor.write_all(&app.buf).await?;
        let n = tokio::io::copy(&mut app.io, &mut to_visitor).await?;
        to_visitor.shutdown().await?;
        Ok::<u64, io::Error>(n)
    };
    match tokio::time::timeout(UPGRADE_IDLE_TIMEOUT, futures::future::try_join(up, down)).await {
        Ok(Ok((a, b))) => tracing::debug!(up = a, down = b, "upgraded connection closed"),
        Ok(Err(e)) => tracing::debug!(error = %e, "upgraded connection failed"),
        Err(_) => tracing::debug!("upgraded connection open too long"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_takes_only_its_own_bytes_and_keeps_its_limit() {
        let mut body = Body::new(Framing::Length(5), None);
        assert_eq!(body.take(b"helloGET /").unwrap(), 5);
        assert!(body.done());
        let mut body = Body::new(Framing::Chunked, Some(4));
        assert_eq!(body.take(b"3\r\nabc\r\n").unwrap(), 8);
        assert!(matches!(body.take(b"2\r\n"), Err(BodyError::TooLarge(4))));
        let mut body = Body::new(Framing::Length(10), Some(8));
        assert!(matches!(
            body.take(b"0123456789"),
            Err(BodyError::TooLarge(8))
        ));
    }

    #[tokio::test]
    async fn an_answer_is_relayed_as_written_and_ends_where_its_framing_says() {
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\netag: x\r\n\r\n",
        ];
        for answer in answers {
            let mut wire = answer.to_vec();
            wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let mut from = Reader::new(&wire[..]);
            let mut to = Vec::new();
            let started = AtomicU16::new(0);
            let done = relay_answer(&mut from, &mut to, false, true, &started)
                .await
                .unwrap();
            assert!(done.keep_alive && !done.upgraded);
            assert_eq!(to, answer, "{}", String::from_utf8_lossy(answer));
            assert_eq!(&from.buf[..], b"HTTP/1.1 200 OK\r\n");
        }
        let mut from = Reader::new(&b"HTTP/1.1 200 OK\r\n\r\nuntil the end"[..]);
        let mut to = Vec::new();
        let done = relay_answer(&mut from, &mut to, false, true, &AtomicU16::new(0)).await;
        assert!(!done.unwrap().keep_alive);
        assert!(to.ends_with(b"until the end"));
        let mut from = Reader::new(&b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort"[..]);
        let done = relay_answer(&mut from, &mut Vec::new(), false, true, &AtomicU16::new(0)).await;
        assert!(matches!(done, Err(AnswerError::Closed)));
    }
}
