//! Captures of the requests the client sends to the app itself (an
//! HTTP/2 visitor's, see `crate::served`): read from the request's and the
//! answer's parts, and from their bodies' frames as they pass, within the
//! same body cap and budget as the captures of HTTP/1 streams. A gRPC
//! call is shown with its service, method and status.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use super::capture::{self, Open};
use super::exchange::{Exchange, GrpcCall, Kind, Message, Progress};
use super::{Inspector, Shared};

/// One exchange being captured; shown when its answer ends, or as it
/// stands when the last of its bodies is dropped.
pub(crate) struct Capture {
    shared: Arc<Shared>,
    open: Mutex<Option<Open>>,
}

impl Inspector {
    /// Starts capturing a request to the app of `tunnel`, from `remote`.
    pub(crate) fn capture(
        &self,
        tunnel: &str,
        remote: &str,
        request: &http::request::Parts,
    ) -> Arc<Capture> {
        let shared = self.0.clone();
        let mut exchange = Exchange::new(
            shared.next_id(),
            Kind::Http,
            tunnel.into(),
            SystemTime::now(),
        );
        exchange.remote = Some(remote.into());
        exchange.http2 = request.version == http::Version::HTTP_2;
        let path = request.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut fields = Vec::new();
        if let Some(authority) = request.uri.authority() {
            fields.push((
                ":authority".to_string(),
                authority.as_str().as_bytes().to_vec(),
            ));
        }
        fields.extend(fields_of(&request.headers));
        let method = request.method.as_str().to_string().into();
        exchange.request = Message::with_fields(method, path.to_string(), 0, &fields);
        if is_grpc(&request.headers) {
            exchange.grpc = Some(GrpcCall::from_path(request.uri.path()));
        }
        Arc::new(Capture {
            shared,
            open: Mutex::new(Some(Open::new(exchange))),
        })
    }
}

impl Capture {
    /// The answer's head.
    pub(crate) fn answered(&self, answer: &http::response::Parts) {
        self.with(|open| {
            let status = answer.status.as_u16();
            let fields: Vec<_> = fields_of(&answer.headers).collect();
            let mut response = Message::with_fields("".into(), String::new(), status, &fields);
            if answer
                .headers
                .get("content-type")
                .is_some_and(|ct| ct.as_bytes().starts_with(b"text/event-stream"))
            {
                open.exchange.progress = Progress::Streaming;
            }
            open.exchange.time_to_head = Some(open.started.elapsed());
            // A trailers-only gRPC answer carries its status in the head.
            if let Some(grpc) = &mut open.exchange.grpc {
                read_status(grpc, &answer.headers);
            }
            response.complete = false;
            open.exchange.response = Some(response);
        });
    }

    fn data(&self, request: bool, bytes: &Bytes) {
        let shared = &self.shared;
        self.with(|open| capture::keep(shared, open, request, bytes, Some(bytes)));
    }

    fn trailers(&self, request: bool, trailers: &HeaderMap) {
        self.with(|open| {
            if !request && let Some(grpc) = &mut open.exchange.grpc {
                read_status(grpc, trailers);
            }
            let message = if request {
                Some(&mut open.exchange.request)
            } else {
                open.exchange.response.as_mut()
            };
            if let Some(message) = message {
                message.trailers = fields_of(trailers)
                    .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
                    .collect();
            }
        });
    }

    fn body_ended(&self, request: bool) {
        if request {
            self.with(|open| open.exchange.request.complete = true);
        } else {
            self.ended(None);
        }
    }

    /// The answer ended (`error`: how it broke): the exchange is shown.
    fn ended(&self, error: Option<String>) {
        let Some(mut open) = self.open.lock().ok().and_then(|mut o| o.take()) else {
            return;
        };
        open.exchange.duration = Some(open.started.elapsed());
        match (&mut open.exchange.response, error) {
            (Some(response), None) => {
                response.complete = true;
                open.exchange.progress = Progress::Complete;
            }
            (_, error) => {
                open.exchange.progress = Progress::Incomplete;
                open.exchange.error = Some(error.unwrap_or_else(|| {
                    "the request ended before its answer did (reset or cancelled)".into()
                }));
            }
        }
        if let Some(status) = open.exchange.grpc.as_ref().and_then(|g| g.status) {
            self.shared.metrics.grpc(status);
        }
        capture::finish(&self.shared, open);
    }

    fn with(&self, f: impl FnOnce(&mut Open)) {
        if let Ok(mut open) = self.open.lock()
            && let Some(open) = open.as_mut()
        {
            f(open);
        }
    }
}

impl Drop for Capture {
    /// Neither body ended: the exchange is shown as it stands.
    fn drop(&mut self) {
        self.ended(Some(
            "the exchange ended before its answer did (reset or cancelled)".into(),
        ));
    }
}

/// A body whose frames a capture sees as they pass.
pub(crate) struct Tapped<B> {
    body: B,
    capture: Arc<Capture>,
    /// The request's body (else the answer's).
    request: bool,
}

impl<B: Body> Tapped<B> {
    pub(crate) fn new(body: B, capture: Arc<Capture>, request: bool) -> Tapped<B> {
        // An empty body (a trailers-only gRPC answer) is never polled.
        if body.is_end_stream() {
            capture.body_ended(request);
        }
        Tapped {
            body,
            capture,
            request,
        }
    }
}

impl<B> Body for Tapped<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        let (capture, request) = (&self.capture, self.request);
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    capture.data(request, data);
                }
                if let Some(trailers) = frame.trailers_ref() {
                    capture.trailers(request, trailers);
                }
                // Trailers come last, and a body that says it is done
                // may not be polled again.
                if frame.is_trailers() || self.body.is_end_stream() {
                    capture.body_ended(request);
                }
            }
            Some(Err(e)) if !request => capture.ended(Some(e.to_string())),
            Some(Err(_)) => {}
            None => capture.body_ended(request),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Whether a request is a gRPC call.
fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

fn read_status(grpc: &mut GrpcCall, fields: &HeaderMap) {
    if let Some(status) = fields.get("grpc-status") {
        grpc.status = Some(droid_core::proxy::grpc_status_name(status.as_bytes()));
    }
    if let Some(message) = fields.get("grpc-message") {
        grpc.message = Some(String::from_utf8_lossy(message.as_bytes()).into_owned());
    }
}

fn fields_of(headers: &HeaderMap) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
}
