//! A yamux session as tokio streams.
//!
//! yamux 0.14 has no control handle: whoever owns the `Connection` must keep
//! polling `poll_next_inbound`, on both sides, because that call is what moves
//! bytes on the socket. [`Session::start`] spawns one task that owns the
//! connection and does exactly that; other tasks open streams through a
//! cloneable [`Opener`], and inbound streams arrive on a channel.
//!
//! Two yamux pitfalls are handled here rather than by every caller:
//! - going past the peer's stream limit kills the whole session, so [`Opener`]
//!   holds a semaphore far below [`MAX_STREAMS`] and a stream carries its
//!   permit until it is dropped;
//! - dropping a stream without closing it sends RST, so callers should
//!   `shutdown()` a [`Stream`] when they are done writing.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::thread::LocalKey;

use futures::Stream as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace};

/// The yamux stream limit of a client's end. Far above what a server's
/// [`Opener`] lets be open at once, so streams that linger half-closed
/// never reach it.
pub const MAX_STREAMS: usize = 8192;

/// Streams a client may have open at once that it opened itself: its
/// control stream and its app's publishes (the server opens every other
/// stream). Past it the server resets the new stream at once, so a client
/// that opens streams and sends nothing on them (or data nobody reads)
/// holds at most this many yamux windows (256 KiB each) of the server's
/// memory.
pub const CLIENT_STREAMS: usize = 32;

/// The write buffer under yamux: a download reaches the socket 128 KiB per
/// syscall. At 32 KiB (with 16 KiB frames) it went one frame per syscall (a
/// frame and the next header filled it), and each syscall woke the other
/// end.
const WRITE_BUFFER: usize = 128 * 1024;

/// The largest data frame a stream sends.
const SPLIT_SEND_SIZE: usize = 8 * 1024;

/// The read buffer under yamux: a few frames per read.
const READ_BUFFER: usize = 64 * 1024;

/// The most a session reads from its socket before it lets other tasks run.
/// yamux reads as long as the socket has bytes, and every stream may have
/// 256 KiB in flight: under 16 parallel 1 MiB downloads the server took all
/// 4 MiB into its memory before the streams' readers ran. Yielding after
/// this much lets them pass each burst on, and the rest waits in the
/// kernel's socket buffer: the server's peak RSS fell by 1.3-2.5 MiB (eleven
/// A/B rounds), at the same MiB/s and CPU per MiB.
const READ_BURST: usize = 256 * 1024;

/// Buffers of each kind a thread keeps for the next session that has bytes
/// to move (see [`Spare`]).
const SPARE_BUFFERS: usize = 4;

/// The default number of streams an [`Opener`] lets be open at once.
pub const DEFAULT_CONCURRENT_STREAMS: usize = 1024;

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The end that dialed: the Droid client.
    Client,
    /// The end that accepted: the Droid server.
    Server,
}

/// Errors from a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session has ended; no stream can be opened on it.
    #[error("the tunnel session is closed")]
    Closed,
    /// yamux refused to open a stream.
    #[error("could not open a stream: {0}")]
    Open(String),
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, SessionError>>;

/// A running yamux session: an [`Opener`] for outbound streams and the
/// channel of inbound ones. Dropping it does not end the session: call
/// [`Opener::close`].
pub struct Session {
    /// Opens outbound streams; clone it freely.
    pub opener: Opener,
    /// Streams the peer opened, in order.
    pub inbound: mpsc::UnboundedReceiver<Stream>,
}

impl Session {
    /// Starts a yamux session over `io` and spawns the task that drives it.
    /// At most `concurrent_streams` outbound streams are open at once; more
    /// wait in [`Opener::open`].
    pub fn start<T>(io: T, side: Side, concurrent_streams: usize) -> Session
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut config = yamux::Config::default();
        // A server's yamux holds the streams it opens (twice what may be
        // open at once, for those that linger half-closed) and the few a
        // client may open. The connection window bounds what the peer may
        // send that is not read yet; yamux panics when it is below streams
        // × 256 KiB, so the window grows first. It is a credit, not an
        // allocation.
        let (max_streams, inbound_limit) = match side {
            Side::Server => (
                (2 * concurrent_streams).max(64) + CLIENT_STREAMS,
                CLIENT_STREAMS,
            ),
            Side::Client => (MAX_STREAMS, MAX_STREAMS),
        };
        // (Each setter checks the pair against the other's current value.)
        config.set_max_connection_receive_window(None);
        config.set_max_num_streams(max_streams);
        config.set_max_connection_receive_window(Some(max_streams * 256 * 1024));
        // Each stream queues up to eleven frames for the session's task: at
        // 8 KiB a frame (yamux's default is 16) 16 parallel downloads held
        // 1.1 MiB less in the client, at the same MiB/s and CPU per MiB.
        config.set_split_send_size(SPLIT_SEND_SIZE);
        let mode = match side {
            Side::Client => yamux::Mode::Client,
            Side::Server => yamux::Mode::Server,
        };
        // yamux reads and writes a frame's 12-byte header and its body
        // separately, and flushes after every frame: buffers on both sides
        // make one syscall carry a whole frame (or, reading, several), and
        // the cork holds yamux's flushes until it has no frame left to send,
        // so one syscall carries every frame that was ready. The buffers
        // exist only while they hold bytes, so an idle session costs none.
        let corked = Arc::new(AtomicBool::new(false));
        let io = Buffered::new(io, corked.clone());
        let connection = yamux::Connection::new(io.compat(), config, mode);
        let (open_tx, open_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        let closing = CancellationToken::new();
        let ended = CancellationToken::new();
        let limit = Arc::new(Semaphore::new(concurrent_streams.max(1)));
        let peer_streams = Inbound {
            tx: Some(inbound_tx),
            open: Arc::new(Semaphore::new(inbound_limit)),
        };
        tokio::spawn(drive(
            connection,
            corked,
            open_rx,
            peer_streams,
            closing.clone(),
            ended.clone(),
        ));
        Session {
            opener: Opener {
                open_tx,
                closing,
                ended,
                limit,
            },
            inbound,
        }
    }
}

/// Opens streams on a session, and closes it. Cheap to clone.
#[derive(Clone)]
pub struct Opener {
    open_tx: mpsc::UnboundedSender<OpenReply>,
    closing: CancellationToken,
    ended: CancellationToken,
    limit: Arc<Semaphore>,
}

impl Opener {
    /// Opens a new outbound stream, waiting while the concurrent-stream limit
    /// is reached.
    pub async fn open(&self) -> Result<Stream, SessionError> {
        let permit = self.reserve().await?;
        self.open_holding(Some(permit)).await
    }

    /// Opens a stream that carries requests which each take a place of
    /// their own under the limit ([`Opener::reserve`]): the stream itself
    /// takes none.
    pub async fn open_carrier(&self) -> Result<Stream, SessionError> {
        self.open_holding(None).await
    }

    async fn open_holding(
        &self,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Stream, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.open_tx.send(tx).map_err(|_| SessionError::Closed)?;
        let stream = rx.await.map_err(|_| SessionError::Closed)??;
        Ok(Stream {
            inner: stream,
            unread: None,
            _permit: permit,
        })
    }

    /// A place under the concurrent-stream limit for a request that
    /// crosses on a stream already open (an HTTP/2 visitor's request, one
    /// of many on its connection's stream): it counts as a stream until
    /// the permit is dropped. Waits while the limit is reached.
    pub async fn reserve(&self) -> Result<OwnedSemaphorePermit, SessionError> {
        tokio::select! {
            permit = self.limit.clone().acquire_owned() => permit.map_err(|_| SessionError::Closed),
            () = self.ended.cancelled() => Err(SessionError::Closed),
        }
    }

    /// Streams that may still be opened before [`Opener::open`] waits.
    pub fn available_streams(&self) -> usize {
        self.limit.available_permits()
    }

    /// Asks the session to close: yamux sends GoAway and the socket closes.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Whether the session has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.is_cancelled()
    }

    /// Resolves once the session has ended, for whatever reason.
    pub async fn ended(&self) {
        self.ended.cancelled().await;
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("ended", &self.is_ended())
            .finish()
    }
}

/// One yamux stream as a tokio `AsyncRead + AsyncWrite`.
pub struct Stream {
    inner: yamux::Stream,
    /// A frame read from yamux that did not fit the caller's buffer, and
    /// how much of it has been handed out.
    unread: Option<(yamux::Packet, usize)>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Stream {
    fn inbound(stream: yamux::Stream, permit: OwnedSemaphorePermit) -> Stream {
        Stream {
            inner: stream,
            unread: None,
            _permit: Some(permit),
        }
    }

    /// Acknowledges a stream the peer opened, now rather than with the
    /// first bytes of the answer. yamux lets a side have at most 256 opened
    /// streams the other has not acknowledged and makes further opens wait:
    /// without this, 256 requests waiting on a slow app would stop every
    /// other request on the tunnel. An empty write is how yamux sends the
    /// acknowledgement alone (a data frame with no body).
    pub async fn acknowledge(&mut self) -> io::Result<()> {
        poll_fn(|cx| futures::AsyncWrite::poll_write(Pin::new(&mut self.inner), cx, &[]))
            .await
            .map(|_| ())
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stream({})", self.inner.id())
    }
}

/// Reads whole frames from yamux and copies them into the caller's buffer.
/// yamux's own `AsyncRead` writes into a `&mut [u8]`, so a tokio adapter
/// must zero the caller's whole free buffer first: hyper's is 8 KiB and
/// up, and that memset was 3.7% of the server's CPU under downloads. Taking
/// frames copies the same bytes once and zeroes nothing.
impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let start = buf.filled().len();
        while buf.remaining() > 0 {
            if let Some((packet, taken)) = &mut this.unread {
                let rest = &packet.as_ref()[*taken..];
                let k = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..k]);
                *taken += k;
                if *taken == packet.as_ref().len() {
                    this.unread = None;
                }
                continue;
            }
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(packet))) => this.unread = Some((packet, 0)),
                Poll::Ready(Some(Err(e))) if buf.filled().len() == start => {
                    return Poll::Ready(Err(e));
                }
                // The end, or an error, after some bytes: hand the bytes
                // out first and let the next read find what follows.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending if buf.filled().len() == start => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(())),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::AsyncWrite::poll_write(Pin::new(&mut self.inner), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::AsyncWrite::poll_flush(Pin::new(&mut self.inner), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::AsyncWrite::poll_close(Pin::new(&mut self.inner), cx)
    }

    /// yamux has no vectored write: each buffer would become a frame of its
    /// own (and a syscall). Saying so makes hyper flatten a message's head and
    /// body into one buffer, so a small exchange is one frame each way.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Owns the connection: answers open requests, hands out inbound streams, and
/// keeps bytes moving until the connection ends or `closing` fires.
async fn drive<T>(
    mut connection: yamux::Connection<Compat<Buffered<T>>>,
    corked: Arc<AtomicBool>,
    mut open_rx: mpsc::UnboundedReceiver<OpenReply>,
    mut inbound: Inbound,
    closing: CancellationToken,
    ended: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut waiting: VecDeque<OpenReply> = VecDeque::new();
    let closing_fut = closing.cancelled();
    tokio::pin!(closing_fut);
    let result: Result<(), yamux::ConnectionError> = poll_fn(|cx| {
        if closing_fut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if inbound.tx.as_ref().is_some_and(|tx| tx.is_closed()) {
            inbound.tx = None;
        }
        // Outbound: take requests while yamux can open streams.
        loop {
            if waiting.is_empty() {
                match open_rx.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => waiting.push_back(reply),
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            match connection.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    if let Some(reply) = waiting.pop_front() {
                        // The opener may have given up; the stream is then dropped.
                        let _ = reply.send(Ok(stream));
                    }
                }
                Poll::Ready(Err(e)) => {
                    if let Some(reply) = waiting.pop_front() {
                        let _ = reply.send(Err(SessionError::Open(e.to_string())));
                    }
                }
                Poll::Pending => break,
            }
        }
        // Inbound: this is also what drives the socket. The first pass
        // writes every frame that is ready without flushing; once yamux has
        // nothing left to do, a second pass flushes them all at once.
        corked.store(true, Ordering::Relaxed);
        let first = poll_inbound(&mut connection, &mut inbound, cx);
        corked.store(false, Ordering::Relaxed);
        if first.is_ready() {
            return first;
        }
        poll_inbound(&mut connection, &mut inbound, cx)
    })
    .await;
    match result {
        Ok(()) => debug!("session ended"),
        Err(e) => debug!(error = %e, "session failed"),
    }
    ended.cancel();
    // Wake everyone waiting for a stream, then say goodbye if we still can.
    open_rx.close();
    drop(waiting);
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        poll_fn(|cx| connection.poll_close(cx)),
    )
    .await;
}

/// Where the streams the peer opens go, and how many may be open at once.
struct Inbound {
    /// `None` once nobody takes inbound streams (the server takes only the
    /// control stream): the channel's memory then goes with its last end.
    tx: Option<mpsc::UnboundedSender<Stream>>,
    /// A place per open inbound stream; a stream that finds none is reset.
    open: Arc<Semaphore>,
}

/// Polls the connection until it has nothing to do: hands out inbound
/// streams and moves frames both ways. Ready when the connection ends.
fn poll_inbound<T>(
    connection: &mut yamux::Connection<T>,
    inbound: &mut Inbound,
    cx: &mut Context<'_>,
) -> Poll<Result<(), yamux::ConnectionError>>
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    loop {
        match connection.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(stream))) => {
                trace!(id = %stream.id(), "inbound stream");
                let Ok(permit) = inbound.open.clone().try_acquire_owned() else {
                    // Dropped unclosed: yamux resets it, and its window goes.
                    debug!(id = %stream.id(), "the peer opened more streams than it may; reset one");
                    continue;
                };
                // A receiver that is gone does not want streams: drop them.
                if let Some(tx) = &inbound.tx
                    && tx.send(Stream::inbound(stream, permit)).is_err()
                {
                    inbound.tx = None;
                }
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// The socket as yamux sees it: a read buffer, a write buffer and the cork.
///
/// Each buffer is taken when bytes need it and given back as soon as it is
/// empty at a point where nothing more is coming: the read buffer when the
/// socket has nothing more to read, the write buffer when a flush has put
/// everything on the socket. A session that waits for its next heartbeat
/// holds no buffer at all.
struct Buffered<T> {
    io: T,
    /// Bytes read from the socket that yamux has not taken yet:
    /// `read[read_pos..]`.
    read: Vec<u8>,
    read_pos: usize,
    /// What may still be read from the socket before the session yields.
    burst_left: usize,
    /// Frames yamux wrote that are not on the socket yet:
    /// `write[written..]`.
    write: Vec<u8>,
    written: usize,
    /// While corked, a flush is a no-op and frames gather in `write` (which
    /// still goes to the socket when it fills up).
    corked: Arc<AtomicBool>,
}

impl<T> Buffered<T> {
    fn new(io: T, corked: Arc<AtomicBool>) -> Buffered<T> {
        Buffered {
            io,
            read: Vec::new(),
            read_pos: 0,
            burst_left: READ_BURST,
            write: Vec::new(),
            written: 0,
            corked,
        }
    }

    /// Counts `n` bytes read from the socket against the burst, or starts a
    /// new burst when the socket had nothing (`pending`).
    fn spend(&mut self, pending: bool, n: usize) {
        if pending {
            self.burst_left = READ_BURST;
        } else {
            self.burst_left = self.burst_left.saturating_sub(n);
        }
    }
}

impl<T: AsyncWrite + Unpin> Buffered<T> {
    /// Writes `write` out to the socket; keeps its allocation for more.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.write.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.write.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Buffered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read_pos == this.read.len() {
            if this.burst_left == 0 {
                // A burst is done: run again after the tasks that are ready.
                this.burst_left = READ_BURST;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // Nothing buffered. A read as large as the buffer gains nothing
            // from it.
            this.read_pos = 0;
            if buf.remaining() >= READ_BUFFER {
                Spare::READ.give_back(&mut this.read);
                let before = buf.filled().len();
                let result = Pin::new(&mut this.io).poll_read(cx, buf);
                this.spend(result.is_pending(), buf.filled().len() - before);
                return result;
            }
            this.read.clear();
            if this.read.capacity() == 0 {
                this.read = Spare::READ.take();
            }
            // Reads into the spare capacity: nothing is zeroed first.
            let result = poll_read_buf(Pin::new(&mut this.io), cx, &mut this.read);
            if this.read.is_empty() {
                // Nothing to read (or the end): an idle session keeps no buffer.
                Spare::READ.give_back(&mut this.read);
            }
            this.spend(result.is_pending(), this.read.len());
            ready!(result)?;
        }
        let n = buf.remaining().min(this.read.len() - this.read_pos);
        buf.put_slice(&this.read[this.read_pos..this.read_pos + n]);
        this.read_pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Buffered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.write.len() + buf.len() > WRITE_BUFFER {
            ready!(this.poll_write_out(cx))?;
        }
        if buf.len() >= WRITE_BUFFER {
            return Pin::new(&mut this.io).poll_write(cx, buf);
        }
        if this.write.capacity() == 0 {
            this.write = Spare::WRITE.take();
        }
        this.write.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.corked.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_write_out(cx))?;
        // Everything is on the socket: an idle session keeps no buffer.
        Spare::WRITE.give_back(&mut this.write);
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_out(cx))?;
        Spare::WRITE.give_back(&mut this.write);
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Buffers that sessions gave back, a few per thread, for the next session
/// that has bytes to move: a busy process does not go to the allocator for
/// 96 KiB on every wakeup of a session, and what is kept does not grow with
/// the number of sessions.
struct Spare {
    buffers: &'static LocalKey<RefCell<Vec<Vec<u8>>>>,
    capacity: usize,
}

thread_local! {
    static SPARE_READ: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static SPARE_WRITE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

impl Spare {
    const READ: Spare = Spare {
        buffers: &SPARE_READ,
        capacity: READ_BUFFER,
    };
    const WRITE: Spare = Spare {
        buffers: &SPARE_WRITE,
        capacity: WRITE_BUFFER,
    };

    /// An empty buffer of the full capacity.
    fn take(&self) -> Vec<u8> {
        self.buffers
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(self.capacity))
    }

    /// Takes `buffer`'s memory, keeping it for [`Spare::take`] or freeing it.
    fn give_back(&self, buffer: &mut Vec<u8>) {
        let mut buffer = std::mem::take(buffer);
        if buffer.capacity() != self.capacity {
            return;
        }
        buffer.clear();
        let _ = self.buffers.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < SPARE_BUFFERS {
                spare.push(buffer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn streams_flow_both_ways_and_many_at_once() {
        let (a, b) = tokio::io::duplex(8);
        let client = Session::start(a, Side::Client, 16);
        let mut server = Session::start(b, Side::Server, 16);
        tokio::spawn(async move {
            while let Some(mut s) = server.inbound.recv().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await.unwrap();
                    s.write_all(&buf).await.unwrap();
                    s.shutdown().await.unwrap();
                });
            }
        });
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let opener = client.opener.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = opener.open().await.unwrap();
                let msg = format!("hello {i}").repeat(100);
                s.write_all(msg.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
                let mut back = String::new();
                s.read_to_string(&mut back).await.unwrap();
                assert_eq!(back, msg);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // the limit of 16 held: every permit is back
        assert_eq!(client.opener.available_streams(), 16);
    }

    #[tokio::test]
    async fn large_transfers_cross_the_buffers_whole() {
        let (a, b) = tokio::io::duplex(4096);
        let client = Session::start(a, Side::Client, 4);
        let mut server = Session::start(b, Side::Server, 4);
        tokio::spawn(async move {
            let mut s = server.inbound.recv().await.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let sent: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let mut s = client.opener.open().await.unwrap();
        let (mut read, mut write) = tokio::io::split(&mut s);
        let writer = async {
            write.write_all(&sent).await.unwrap();
            write.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let reader = read.read_to_end(&mut back);
        let ((), got) = tokio::join!(writer, reader);
        got.unwrap();
        assert!(back == sent, "the echo differs");
    }

    #[tokio::test]
    async fn reads_of_any_size_take_frames_in_order() {
        let (a, b) = tokio::io::duplex(4096);
        let client = Session::start(a, Side::Client, 4);
        let mut server = Session::start(b, Side::Server, 4);
        // Three frames (SPLIT_SEND_SIZE is 8 KiB) after an empty one.
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let answer = sent.clone();
        tokio::spawn(async move {
            let mut s = server.inbound.recv().await.unwrap();
            s.acknowledge().await.unwrap();
            s.write_all(&answer).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let mut s = client.opener.open().await.unwrap();
        s.write_all(b"go").await.unwrap();
        // Reads smaller than a frame leave the rest for the next read; reads
        // larger than one take several; the empty frame is not an end.
        let mut back = Vec::new();
        for size in [3, 5000, 7000, 1, 9000, 100_000, 100_000] {
            let mut part = vec![0; size];
            let n = s.read(&mut part).await.unwrap();
            assert!(n > 0 || back.len() == sent.len(), "an early end");
            back.extend_from_slice(&part[..n]);
        }
        assert_eq!(back.len(), sent.len());
        assert!(back == sent, "the bytes differ");
        assert_eq!(s.read(&mut [0; 16]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn buffers_are_freed_once_empty() {
        let (a, mut peer) = tokio::io::duplex(1024);
        let corked = Arc::new(AtomicBool::new(true));
        let mut io = Buffered::new(a, corked.clone());
        assert_eq!((io.read.capacity(), io.write.capacity()), (0, 0));
        // While corked, frames gather and a flush keeps them.
        io.write_all(b"header").await.unwrap();
        io.write_all(b"body").await.unwrap();
        io.flush().await.unwrap();
        assert!(io.write.capacity() > 0);
        // Uncorked, the flush sends them and the buffer goes.
        corked.store(false, Ordering::Relaxed);
        io.flush().await.unwrap();
        assert_eq!(io.write.capacity(), 0);
        let mut got = [0u8; 10];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"headerbody");
        // A read takes what is there into a buffer...
        peer.write_all(b"0123456789").await.unwrap();
        let mut first = [0u8; 4];
        io.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"0123");
        assert!(io.read.capacity() > 0);
        let mut rest = [0u8; 6];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"456789");
        // ...which goes once the socket has nothing more to read.
        let mut more = [0u8; 4];
        let pending = poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut more);
            Poll::Ready(Pin::new(&mut io).poll_read(cx, &mut buf).is_pending())
        })
        .await;
        assert!(pending);
        assert_eq!(io.read.capacity(), 0);
    }

    /// Counts the wakes a task asked for.
    struct WakeCount(AtomicUsize);

    impl futures::task::ArcWake for WakeCount {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_long_read_stops_after_a_burst_and_asks_to_run_again() {
        let (a, mut peer) = tokio::io::duplex(4 * READ_BURST);
        let mut io = Buffered::new(a, Arc::new(AtomicBool::new(false)));
        let sent: Vec<u8> = (0..READ_BURST * 3 / 2).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).await.unwrap();
        let woken = Arc::new(WakeCount(AtomicUsize::new(0)));
        let waker = futures::task::waker(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        // One turn of the task: read frame-sized pieces until told to wait.
        let mut turn = |io: &mut Buffered<_>, got: &mut Vec<u8>| {
            let mut piece = [0u8; 8192];
            loop {
                let mut buf = ReadBuf::new(&mut piece);
                match Pin::new(&mut *io).poll_read(&mut cx, &mut buf) {
                    Poll::Ready(r) => {
                        r.unwrap();
                        got.extend_from_slice(buf.filled());
                    }
                    Poll::Pending => return,
                }
            }
        };
        turn(&mut io, &mut got);
        // Bytes were still waiting, but it stopped at the burst (plus what
        // the last socket read had buffered) and woke itself.
        assert!(got.len() >= READ_BURST && got.len() < READ_BURST + READ_BUFFER);
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        turn(&mut io, &mut got);
        // The next turn read the rest; this time the socket was empty, and
        // waking is the socket's job.
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "the bytes differ");
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn closing_one_side_ends_both() {
        let (a, b) = tokio::io::duplex(1024);
        let client = Session::start(a, Side::Client, 4);
        let server = Session::start(b, Side::Server, 4);
        client.opener.close();
        server.opener.ended().await;
        client.opener.ended().await;
        assert!(matches!(
            client.opener.open().await,
            Err(SessionError::Closed)
        ));
    }
}
