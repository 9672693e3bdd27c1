//! Sending a captured request again, straight to its tunnel's local target.
//!
//! A replay does not go through the server: the client connects to the
//! target itself, as it does for every stream, and captures the new
//! exchange with `replay_of` set. A mail delivery is signed afresh (a new
//! `webhook-timestamp` and `webhook-signature` with the tunnel's secret), so
//! the app's signature check passes; its `webhook-id` stays the
//! same, for it is the same message.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use droid_core::sign;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use super::Shared;
use super::exchange::{Exchange, Kind, Message, Progress};
use crate::app::{self, App, Failed};

/// How long a replay may take, connect to last byte.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// Changes to make before sending again (`POST /api/requests/{id}/replay`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Edits {
    pub method: Option<String>,
    pub path: Option<String>,
    /// The whole header list, replacing the captured one.
    pub headers: Option<Vec<(String, String)>>,
    /// The body as text.
    pub body: Option<String>,
}

/// Why a replay could not be sent; each says what to do.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayError {
    #[error("the tunnel {0} is not one of this client's")]
    NoTunnel(String),
    #[error(
        "the request body was not kept whole ({kept} of {size} bytes): replay it with an edited body"
    )]
    Truncated { kept: usize, size: u64 },
    #[error("{0}")]
    BadEdit(String),
    #[error("nothing answers at {target}: {error}")]
    Unreachable { target: String, error: String },
    #[error("the app at {target} failed the replay: {error}")]
    Failed { target: String, error: String },
}

/// Headers the client sets itself (the body's length) or that belong to
/// one connection only (`TE: trailers` stays: gRPC servers ask for it,
/// and the app's client drops any other `TE`).
fn dropped(name: &str) -> bool {
    // HTTP/2's pseudo-fields (`:authority`) are not headers.
    name.starts_with(':')
        || [
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "trailer",
            "upgrade",
            "proxy-connection",
        ]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

pub(crate) async fn replay(
    shared: &Arc<Shared>,
    original: &Exchange,
    edits: Edits,
) -> Result<Exchange, ReplayError> {
    if original.kind == Kind::Tcp {
        return Err(ReplayError::BadEdit(
            "a TCP connection cannot be replayed: only HTTP requests and mail can".into(),
        ));
    }
    let tunnel = shared
        .tunnel(&original.tunnel)
        .ok_or_else(|| ReplayError::NoTunnel(original.tunnel.to_string()))?;
    let body = match edits.body {
        Some(body) => body.into_bytes(),
        None if original.request.truncated || !original.request.complete => {
            return Err(ReplayError::Truncated {
                kept: original.request.body.len(),
                size: original.request.size,
            });
        }
        None => original.request.body.to_vec(),
    };
    let method = edits
        .method
        .map_or_else(|| original.request.method.clone(), Cow::Owned);
    let path = edits.path.unwrap_or_else(|| original.request.path.clone());
    let mut headers: Vec<(String, Vec<u8>)> = match edits.headers {
        Some(list) => list.into_iter().map(|(n, v)| (n, v.into_bytes())).collect(),
        None => original
            .request
            .headers()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect(),
    };
    // An HTTP/2 request's authority is its Host.
    let authority = headers.iter().find(|(n, _)| n == ":authority").cloned();
    if let Some((_, authority)) = authority
        && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"))
    {
        headers.push(("host".into(), authority));
    }
    headers.retain(|(name, _)| !dropped(name));
    let signed = original.kind.is_mail()
        || headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(sign::SIGNATURE_HEADER));
    if signed && let Some(secret) = &tunnel.spec.secret {
        // The same delivery id, a new timestamp, signed afresh.
        let id = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(sign::ID_HEADER))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        let key = sign::Secret::key_of(secret);
        let signature = sign::sign(&key, &id, &timestamp, &body);
        headers.retain(|(n, _)| {
            !n.eq_ignore_ascii_case(sign::TIMESTAMP_HEADER)
                && !n.eq_ignore_ascii_case(sign::SIGNATURE_HEADER)
        });
        headers.push((sign::TIMESTAMP_HEADER.into(), timestamp.into_bytes()));
        headers.push((sign::SIGNATURE_HEADER.into(), signature.into_bytes()));
    }

    let mut request = http::Request::builder().method(&*method).uri(path.as_str());
    for (name, value) in &headers {
        request = request.header(name.as_str(), value.as_slice());
    }
    let request = request
        .body(Full::new(Bytes::from(body.clone())))
        .map_err(|e| ReplayError::BadEdit(format!("the edited request is not valid HTTP: {e}")))?;

    let mut exchange = Exchange::new(
        shared.next_id(),
        original.kind.clone(),
        original.tunnel.clone(),
        SystemTime::now(),
    );
    exchange.replay_of = Some(original.id);
    exchange.http2 = original.http2;
    exchange.grpc = original.grpc.clone().map(|mut grpc| {
        grpc.status = None;
        grpc.message = None;
        grpc
    });
    exchange.delivery_id = original.delivery_id.clone();
    exchange.request = Message::with_fields(method, path, 0, &headers);
    exchange.request.size = body.len() as u64;
    exchange.request.body.push(&body, body.len());
    exchange.request.complete = true;
    let started = Instant::now();
    let target = tunnel.spec.target.to_string();
    let sent = tokio::time::timeout(
        REPLAY_TIMEOUT,
        send(shared, &tunnel.spec, request, &mut exchange, started),
    )
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            return Err(match error {
                SendError::Connect(error) => ReplayError::Unreachable { target, error },
                SendError::Exchange(error) => ReplayError::Failed { target, error },
            });
        }
        Err(_) => {
            return Err(ReplayError::Failed {
                target,
                error: format!("no answer within {}s", REPLAY_TIMEOUT.as_secs()),
            });
        }
    }
    exchange.duration = Some(started.elapsed());
    shared.put(exchange.clone());
    Ok(exchange)
}

enum SendError {
    Connect(String),
    Exchange(String),
}

async fn send(
    shared: &Shared,
    spec: &crate::TunnelSpec,
    request: http::Request<Full<Bytes>>,
    exchange: &mut Exchange,
    started: Instant,
) -> Result<(), SendError> {
    // The tunnel's own way to its app: HTTP/2 to an h2c app, TLS to an
    // https one.
    let app = App::new(&spec.target, spec.app_protocol);
    let response = app
        .send(request.map(app::boxed))
        .await
        .map_err(|e| match e {
            Failed::Unreachable(e) => SendError::Connect(e),
            Failed::Tls(e) | Failed::NoAnswer(e) => SendError::Exchange(e),
        })?;
    exchange.time_to_head = Some(started.elapsed());
    let (parts, mut body) = response.into_parts();
    let fields: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let mut message = Message::with_fields(
        Cow::Borrowed(""),
        String::new(),
        parts.status.as_u16(),
        &fields,
    );
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SendError::Exchange(e.to_string()))?;
        match frame.into_data() {
            Ok(data) => {
                message.size += data.len() as u64;
                let room = shared.body_cap.saturating_sub(message.body.len());
                let kept = &data[..data.len().min(room)];
                message.body.push(kept, kept.len());
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    if let Some(grpc) = &mut exchange.grpc {
                        grpc.status = trailers
                            .get("grpc-status")
                            .map(|s| droid_core::proxy::grpc_status_name(s.as_bytes()));
                    }
                    message.trailers = trailers
                        .iter()
                        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                        .collect();
                }
            }
        }
    }
    message.truncated = message.body.len() as u64 != message.size;
    message.complete = true;
    exchange.response = Some(message);
    exchange.progress = Progress::Complete;
    Ok(())
}
