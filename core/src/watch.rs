//! A connection whose bytes are seen as they pass, after they pass: counted
//! for metrics, or shown to the inspector. The bytes themselves are not
//! changed or held back.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What sees the bytes of a [`Watched`] connection.
pub trait Watch: Unpin {
    /// Bytes just read from the connection.
    fn read(&mut self, bytes: &[u8]);
    /// Bytes just written to it.
    fn written(&mut self, bytes: &[u8]);
}

/// A connection, and what sees its bytes.
pub struct Watched<IO, W> {
    inner: IO,
    watch: W,
}

impl<IO, W> Watched<IO, W> {
    /// Watches `inner` with `watch`.
    pub fn new(inner: IO, watch: W) -> Watched<IO, W> {
        Watched { inner, watch }
    }
}

impl<IO: AsyncRead + Unpin, W: Watch> AsyncRead for Watched<IO, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.watch.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin, W: Watch> AsyncWrite for Watched<IO, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.watch.written(&buf[..n]);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            for buf in bufs {
                let part = n.min(buf.len());
                if part == 0 {
                    break;
                }
                this.watch.written(&buf[..part]);
                n -= part;
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[derive(Default)]
    struct Tally {
        read: Vec<u8>,
        written: Vec<u8>,
    }

    impl Watch for Tally {
        fn read(&mut self, bytes: &[u8]) {
            self.read.extend_from_slice(bytes);
        }
        fn written(&mut self, bytes: &[u8]) {
            self.written.extend_from_slice(bytes);
        }
    }

    #[tokio::test]
    async fn every_byte_each_way_is_seen_once() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut watched = Watched::new(a, Tally::default());
        watched.write_all(b"out").await.unwrap();
        let mut got = [0u8; 3];
        b.read_exact(&mut got).await.unwrap();
        b.write_all(b"in!").await.unwrap();
        watched.read_exact(&mut got).await.unwrap();
        let n = watched
            .write_vectored(&[IoSlice::new(b"ve"), IoSlice::new(b"c")])
            .await
            .unwrap();
        assert_eq!(watched.watch.written, [&b"out"[..], &b"vec"[..n]].concat());
        assert_eq!(watched.watch.read, b"in!");
    }
}
