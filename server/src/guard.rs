//! A visitor's request body with limits: at most `max` bytes, whether it
//! came with a Content-Length or chunked, and no pause longer than
//! `idle` between two pieces. When a limit trips, the body fails (so the
//! tunnel stream is abandoned) and [`Tripped`] tells the front which page
//! to answer with.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep, sleep_until};

/// Which limit a body tripped, shared with the request's handler.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tripped(Arc<AtomicU8>);

const NONE: u8 = 0;
const TOO_LARGE: u8 = 1;
const TOO_SLOW: u8 = 2;

impl Tripped {
    pub(crate) fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == TOO_LARGE
    }

    pub(crate) fn too_slow(&self) -> bool {
        self.0.load(Ordering::Relaxed) == TOO_SLOW
    }

    fn set(&self, what: u8) {
        let _ = self
            .0
            .compare_exchange(NONE, what, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Why a guarded body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GuardError {
    /// More bytes than allowed.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    /// The visitor paused too long.
    #[error("the visitor sent no body bytes for {0:?}")]
    TooSlow(Duration),
    /// The visitor's connection failed.
    #[error(transparent)]
    Visitor(#[from] hyper::Error),
}

/// A visitor's body with a size cap and a pause limit.
pub(crate) struct GuardedBody {
    inner: Incoming,
    max: Option<u64>,
    seen: u64,
    idle: Duration,
    /// Made at the first pause: most requests have no body to wait for.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the last poll found nothing: the pause is being timed. A
    /// pause only counts while Droid waits for the visitor, not while the
    /// tunnel is slow to take the bytes.
    waiting: bool,
    tripped: Tripped,
}

impl GuardedBody {
    pub(crate) fn new(
        inner: Incoming,
        max: Option<u64>,
        idle: Duration,
        tripped: Tripped,
    ) -> GuardedBody {
        GuardedBody {
            inner,
            max,
            seen: 0,
            idle,
            timer: None,
            waiting: false,
            tripped,
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = GuardError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, GuardError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen = this.seen.saturating_add(data.len() as u64);
                    if let Some(max) = this.max
                        && this.seen > max
                    {
                        this.tripped.set(TOO_LARGE);
                        return Poll::Ready(Some(Err(GuardError::TooLarge(max))));
                    }
                }
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    let deadline = Instant::now() + this.idle;
                    match &mut this.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(sleep_until(deadline))),
                    }
                }
                if let Some(timer) = &mut this.timer
                    && timer.as_mut().poll(cx).is_ready()
                {
                    this.tripped.set(TOO_SLOW);
                    return Poll::Ready(Some(Err(GuardError::TooSlow(this.idle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
