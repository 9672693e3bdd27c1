//! Turns the bytes of one tunnel stream into exchanges for the inspector.
//!
//! A [`StreamTap`] sees every chunk the client forwards, each way, after it
//! was forwarded. It follows the HTTP/1 messages ([`super::http1`]), keeps
//! each body up to the body cap and within the memory budget, and hands each
//! finished exchange to the store without waiting: when the store is behind,
//! the exchange is dropped and counted. Nothing here can slow the stream
//! beyond the parsing and the copy of what is kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::Shared;
use super::exchange::{Exchange, Kind, Message, Progress};
use super::http1::{Framing, Head, MessageReader, Piece, Side};

/// Kept body bytes of at least this many are kept as a share of the
/// buffer they were read into (at most twice as large), fewer are copied.
const SHARE_FROM: usize = 16 * 1024;

/// What one stream's tap knows about the stream.
#[derive(Debug, Clone)]
pub(crate) struct StreamInfo {
    /// The tunnel it came through.
    pub tunnel: Arc<str>,
    /// The visitor's address, for a visitor's stream.
    pub remote: Option<Arc<str>>,
    /// `http`, `tcp`, or the adapter's for an adapter's delivery.
    pub kind: Kind,
    /// The delivery id of an adapter's POST.
    pub delivery_id: Option<String>,
}

/// Watches one stream; cheap to call per chunk.
pub(crate) struct StreamTap {
    shared: Arc<Shared>,
    info: StreamInfo,
    state: Mutex<TapState>,
}

struct TapState {
    requests: MessageReader,
    responses: MessageReader,
    /// Exchanges whose response has not ended, oldest first; the last may
    /// still be receiving its request.
    open: VecDeque<Open>,
    /// The request being received has this exchange's index in `open`.
    receiving: bool,
    /// Set once either direction could not be followed.
    lost: bool,
}

/// An exchange in progress.
pub(super) struct Open {
    pub(super) exchange: Exchange,
    pub(super) started: Instant,
    /// Bytes reserved from the in-flight budget for its bodies.
    reserved: usize,
    /// The body lengths the heads declared (0: not declared).
    request_length: u64,
    response_length: u64,
}

impl Open {
    /// An exchange that begins now, its bodies' lengths not declared.
    pub(super) fn new(exchange: Exchange) -> Open {
        Open {
            exchange,
            started: Instant::now(),
            reserved: 0,
            request_length: 0,
            response_length: 0,
        }
    }
}

impl StreamTap {
    pub fn new(shared: Arc<Shared>, info: StreamInfo) -> StreamTap {
        let mut open = VecDeque::new();
        if info.kind == Kind::Tcp {
            // A TCP connection is one exchange, shown while it is open.
            let mut exchange = Exchange::new(
                shared.next_id(),
                Kind::Tcp,
                info.tunnel.clone(),
                SystemTime::now(),
            );
            exchange.remote = info.remote.clone();
            exchange.progress = Progress::Streaming;
            shared.publish(exchange.clone());
            open.push_back(Open {
                exchange,
                started: Instant::now(),
                reserved: 0,
                request_length: 0,
                response_length: 0,
            });
        }
        StreamTap {
            shared,
            info,
            state: Mutex::new(TapState {
                requests: MessageReader::new(Side::Request),
                responses: MessageReader::new(Side::Response),
                open,
                receiving: false,
                lost: false,
            }),
        }
    }

    /// A TCP connection's bytes each way, when it ends.
    pub fn counted(&self, to_app: u64, from_app: u64) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Some(open) = state.open.front_mut() {
            open.exchange.request.size = to_app;
            open.exchange
                .response
                .get_or_insert_with(Default::default)
                .size = from_app;
        }
    }

    /// Bytes that went from the visitor to the app.
    pub fn asked(&self, data: &[u8]) {
        self.shared.metrics.bytes_to_app(data.len());
        self.feed(Side::Request, data);
    }

    /// Bytes that went from the app to the visitor. What of them is kept
    /// is kept by reference, not copied.
    pub fn answered(&self, data: &Bytes) {
        self.shared.metrics.bytes_from_app(data.len());
        self.feed_shared(Side::Response, data, Some(data));
    }

    fn feed(&self, side: Side, data: &[u8]) {
        self.feed_shared(side, data, None);
    }

    /// Feeds `data`; `shared`, when given, holds the same bytes, and kept
    /// body bytes are taken from it without a copy.
    fn feed_shared(&self, side: Side, mut data: &[u8], shared: Option<&Bytes>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.lost {
            return;
        }
        loop {
            let reader = match side {
                Side::Request => &mut state.requests,
                Side::Response => &mut state.responses,
            };
            let (used, piece) = reader.next(data);
            data = &data[used..];
            match piece {
                Some(piece) => self.apply(&mut state, side, piece, shared),
                None if data.is_empty() => return,
                None => {}
            }
            if state.lost {
                return;
            }
        }
    }

    fn apply(&self, state: &mut TapState, side: Side, piece: Piece<'_>, shared: Option<&Bytes>) {
        match (side, piece) {
            (_, Piece::Lost(why)) => self.lose(state, &why),
            (Side::Request, Piece::Head(head, framing)) => {
                let exchange = self.new_exchange(head);
                state.open.push_back(Open {
                    exchange,
                    started: Instant::now(),
                    reserved: 0,
                    request_length: declared(framing),
                    response_length: 0,
                });
                state.receiving = true;
            }
            (Side::Request, Piece::Body(bytes)) => {
                if let Some(open) = state.open.back_mut().filter(|_| state.receiving) {
                    self.keep(open, true, bytes, None);
                }
            }
            (Side::Request, Piece::End) => {
                if let Some(open) = state.open.back_mut().filter(|_| state.receiving) {
                    open.exchange.request.complete = true;
                }
                state.receiving = false;
            }
            (Side::Request, Piece::Raw(bytes)) => {
                if let Some(open) = state.open.front_mut() {
                    open.exchange.request.size += bytes.len() as u64;
                }
            }
            (Side::Response, Piece::Head(head, framing)) => {
                self.response_head(state, head, framing)
            }
            (Side::Response, Piece::Body(bytes)) => {
                if let Some(open) = state.open.front_mut() {
                    self.keep(open, false, bytes, shared);
                }
            }
            (Side::Response, Piece::Raw(bytes)) => {
                if let Some(open) = state.open.front_mut()
                    && let Some(response) = &mut open.exchange.response
                {
                    response.size += bytes.len() as u64;
                }
            }
            (Side::Response, Piece::End) => self.response_end(state),
        }
    }

    fn new_exchange(&self, head: Head) -> Exchange {
        let mut exchange = Exchange::new(
            self.shared.next_id(),
            self.info.kind.clone(),
            self.info.tunnel.clone(),
            SystemTime::now(),
        );
        exchange.remote = self.info.remote.clone();
        exchange.request = Message::from_head(head);
        // A delivery stream carries one adapter's requests after another:
        // each says its own adapter and id.
        if self.info.delivery_id.is_some() {
            exchange.kind = match exchange.request.header("droid-adapter") {
                Some(adapter) => Kind::Delivery(adapter.into()),
                None => self.info.kind.clone(),
            };
            exchange.delivery_id = exchange
                .request
                .header(droid_core::sign::ID_HEADER)
                .map(str::to_string)
                .or_else(|| self.info.delivery_id.clone());
        }
        exchange
    }

    fn response_head(&self, state: &mut TapState, head: Head, framing: Framing) {
        // An interim answer (100 Continue) is not the response.
        if (100..200).contains(&head.status) && head.status != 101 {
            return;
        }
        let Some(method) = state
            .open
            .front()
            .map(|o| o.exchange.request.method.clone())
        else {
            // An answer with no request: the app spoke first; not HTTP we follow.
            self.lose(state, "a response before any request");
            return;
        };
        let to_head = method.eq_ignore_ascii_case("HEAD");
        let connect = method.eq_ignore_ascii_case("CONNECT");
        let streaming = head.event_stream;
        let mut framing = framing;
        if to_head && framing != Framing::Upgraded {
            framing = Framing::Empty;
        } else if connect && (200..300).contains(&head.status) {
            framing = Framing::Upgraded;
        }
        if framing != Framing::Upgraded {
            state.responses.set_framing(framing);
        }
        if framing == Framing::Upgraded {
            // What follows the request is not HTTP either.
            state.requests.set_framing(Framing::Upgraded);
        }
        let Some(open) = state.open.front_mut() else {
            return;
        };
        open.response_length = declared(framing);
        open.exchange.time_to_head = Some(open.started.elapsed());
        open.exchange.response = Some(Message::from_head(head));
        if framing == Framing::Upgraded {
            open.exchange.progress = Progress::Upgraded;
        } else if streaming {
            open.exchange.progress = Progress::Streaming;
        }
        // An upgrade or a stream of events is shown when its head arrives,
        // and again, with its byte counts, when it ends.
        if open.exchange.progress != Progress::Complete {
            self.shared.publish(open.exchange.clone());
        }
    }

    fn response_end(&self, state: &mut TapState) {
        let Some(mut open) = state.open.pop_front() else {
            return;
        };
        if state.open.is_empty() {
            state.receiving = false;
        }
        open.exchange.duration = Some(open.started.elapsed());
        if let Some(response) = &mut open.exchange.response {
            response.complete = true;
        }
        if open.exchange.progress == Progress::Streaming {
            open.exchange.progress = Progress::Complete;
        }
        self.finish(open);
    }

    fn keep(&self, open: &mut Open, request: bool, bytes: &[u8], shared: Option<&Bytes>) {
        keep(&self.shared, open, request, bytes, shared);
    }

    fn finish(&self, open: Open) {
        finish(&self.shared, open);
    }

    fn lose(&self, state: &mut TapState, why: &str) {
        tracing::debug!(tunnel = %self.info.tunnel, %why, "the inspector stops following a stream");
        state.lost = true;
        for mut open in state.open.drain(..) {
            open.exchange.error =
                Some(format!("the inspector could not follow this stream: {why}"));
            open.exchange.progress = Progress::Incomplete;
            open.exchange.duration = Some(open.started.elapsed());
            self.finish(open);
        }
    }
}

impl Drop for StreamTap {
    /// The stream ended: whatever is still open is shown as it stands.
    fn drop(&mut self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.responses.finish().is_some() {
            self.response_end(&mut state);
        }
        let open: Vec<Open> = state.open.drain(..).collect();
        drop(state);
        for mut open in open {
            open.exchange.duration = Some(open.started.elapsed());
            if self.info.kind == Kind::Tcp {
                open.exchange.progress = Progress::Complete;
                self.finish(open);
                continue;
            }
            match open.exchange.progress {
                // An upgraded connection's life ends with the stream.
                Progress::Upgraded => {}
                _ => {
                    open.exchange.progress = Progress::Incomplete;
                    if open.exchange.error.is_none() {
                        open.exchange.error = Some(
                            if open.exchange.response.is_none() {
                                "the connection closed before a response"
                            } else {
                                "the connection closed before the response ended"
                            }
                            .into(),
                        );
                    }
                }
            }
            self.finish(open);
        }
    }
}

/// Keeps `bytes` of a body, within the cap and the in-flight budget.
pub(super) fn keep(
    shared: &Shared,
    open: &mut Open,
    request: bool,
    bytes: &[u8],
    from: Option<&Bytes>,
) {
    let streaming = open.exchange.progress == Progress::Streaming;
    let (message, declared) = if request {
        (&mut open.exchange.request, open.request_length)
    } else {
        match &mut open.exchange.response {
            Some(response) => (response, open.response_length),
            None => return,
        }
    };
    message.size += bytes.len() as u64;
    if message.truncated {
        return;
    }
    let room = if streaming {
        0
    } else {
        shared.body_cap.saturating_sub(message.body.len())
    };
    let wanted = bytes.len().min(room);
    if wanted > 0 && shared.budget.reserve(wanted) {
        open.reserved += wanted;
        let kept = &bytes[..wanted];
        match from {
            // A share holds its whole read buffer alive: worth it only
            // for a large part of one.
            Some(from) if kept.len() >= SHARE_FROM => {
                message.body.push_shared(from.slice_ref(kept));
            }
            _ => {
                let left = declared.saturating_sub(message.size - bytes.len() as u64);
                let left = usize::try_from(left).unwrap_or(usize::MAX);
                message.body.push(kept, left.min(room).max(wanted));
            }
        }
    }
    if message.body.len() as u64 != message.size {
        message.truncated = true;
    }
}

/// Hands a finished exchange to the store and gives its in-flight
/// reservation back (the store counts what it keeps).
pub(super) fn finish(shared: &Shared, open: Open) {
    shared.budget.release(open.reserved);
    shared.publish(open.exchange);
}

/// The body length a framing declares; 0 when it declares none.
fn declared(framing: Framing) -> u64 {
    match framing {
        Framing::Length(n) => n,
        _ => 0,
    }
}
