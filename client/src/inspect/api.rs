//! The inspector's HTTP side: the page, the JSON API and `/metrics`.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the page (served from the binary) |
//! | `GET /api/tunnels` | this client's tunnels |
//! | `GET /api/requests?limit&tunnel&kind&method&status&path&q` | exchanges, newest first |
//! | `DELETE /api/requests` | forget every exchange |
//! | `GET /api/requests/{id}` | one exchange, with both messages |
//! | `GET /api/requests/{id}/{request,response}/body` | a body's kept bytes |
//! | `GET /api/requests/{id}/attachments/{n}` | a mail's attachment |
//! | `POST /api/requests/{id}/replay` | send it again, with optional edits |
//! | `POST /api/ADAPTER/ACTION` | a call to an adapter of the server (`/api/mqtt/publish`: to the devices) |
//! | `POST /email`, `POST /email/batch` | mail the app sends, in Postmark's shape (`/api/smtp/send`, `/api/smtp/send-batch`) |
//! | `GET /api/events` | new exchanges as server-sent events |
//! | `GET /metrics` | the client's metrics, Prometheus text format |
//!
//! It shows secrets (cookies, tokens, mail), so it guards itself: a Host
//! that is not a loopback name or an IP address gets 403 (DNS rebinding),
//! a POST or DELETE without `Content-Type: application/json` gets 403 (a
//! cross-site form cannot send one), and with a password set every request
//! must log in. What a visitor sent is never run in its origin: captured
//! bytes are served as downloads with a CSP that forbids scripts
//! ([`captured`]), every answer says `nosniff`, and the page runs only its
//! own script ([`page_policy`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::store::Filter;
use super::{Shared, StoreEvent, call, mail, replay, sent};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The page: one file, no CDN, nothing fetched at run time.
const PAGE: &str = include_str!("page.html");

/// The largest edit a replay accepts.
const MAX_EDIT: usize = 16 * 1024 * 1024;

/// How often the event stream says it is alive.
const EVENT_PING: Duration = Duration::from_secs(15);

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    auth: Option<String>,
    shutdown: CancellationToken,
) {
    let auth: Option<Arc<str>> = auth.map(|a| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(a.as_bytes());
        Arc::from(format!("Basic {encoded}"))
    });
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                debug!(error = %e, "the inspector could not accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (shared, auth, shutdown) = (shared.clone(), auth.clone(), shutdown.clone());
        let closing = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let (shared, auth, shutdown) = (shared.clone(), auth.clone(), shutdown.clone());
                async move {
                    Ok::<_, Infallible>(answer(&shared, auth.as_deref(), request, shutdown).await)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service);
            tokio::select! {
                served = connection => if let Err(e) = served {
                    debug!(%peer, error = %e, "inspector connection ended");
                },
                () = closing.cancelled() => {}
            }
        });
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed_unsync());
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

/// Bytes a visitor or a mail sender wrote, as a download: whatever their
/// type says, a browser that navigates here saves them instead of showing
/// them, and runs nothing of them in the inspector's origin (where a script
/// could read every capture and replay it). `filename` is made safe.
fn captured(content_type: &str, body: impl Into<Bytes>, filename: &str) -> Response<Body> {
    let mut response = full(StatusCode::OK, content_type, body);
    let disposition = format!("attachment; filename=\"{}\"", safe_filename(filename));
    let headers = response.headers_mut();
    if let Ok(value) = header::HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    response
}

/// A file name that is safe in a quoted header parameter and on any disk:
/// ASCII letters, digits, `.`, `-` and `_`, the rest `_`; at most 100
/// characters; never empty or hidden.
fn safe_filename(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() {
        "download".to_string()
    } else {
        cleaned.to_string()
    }
}

/// The page's Content-Security-Policy: its own script and nothing else
/// (by hash: no injected script runs, inline or loaded), requests only to
/// this origin, images from here or inline, no plugins, no framing, no
/// forms. Styles may be inline: a mail's HTML, shown in a sandboxed frame,
/// uses them, and a style cannot run code or, with these sources, reach
/// another host.
fn page_policy() -> &'static str {
    static POLICY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    POLICY.get_or_init(|| {
        let script = PAGE
            .split_once("<script>")
            .and_then(|(_, rest)| rest.split_once("</script>"))
            .map_or("", |(script, _)| script);
        let hash = base64::engine::general_purpose::STANDARD
            .encode(<sha2::Sha256 as sha2::Digest>::digest(script.as_bytes()));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             img-src 'self' data:; connect-src 'self'; frame-src 'self'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        )
    })
}

fn json_answer(status: StatusCode, value: &Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Body> {
    json_answer(status, &json!({"error": message.to_string()}))
}

/// Whether a Host names this machine: `localhost`, `*.localhost`, or an
/// IP address. A DNS name that resolves here is how a rebinding attack
/// reaches a local port, so it is refused.
pub(crate) fn host_is_local(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

async fn answer(
    shared: &Arc<Shared>,
    auth: Option<&str>,
    request: http::Request<Incoming>,
    shutdown: CancellationToken,
) -> Response<Body> {
    if let Some(expected) = auth {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !bool::from(given.ct_eq(expected.as_bytes())) {
            let mut response = error(StatusCode::UNAUTHORIZED, "log in to see the inspector");
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"droid inspector\""),
            );
            return response;
        }
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !host_is_local(host) {
        return error(
            StatusCode::FORBIDDEN,
            format!("the inspector answers only to localhost or an IP address, not Host: {host}"),
        );
    }
    let changes_state = request.method() == Method::POST || request.method() == Method::DELETE;
    if changes_state {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return error(
                StatusCode::FORBIDDEN,
                "send Content-Type: application/json (a cross-site form cannot)",
            );
        }
    }
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (request.method(), segments.as_slice()) {
        (&Method::GET, [""] | ["index.html"]) => {
            let mut page = full(StatusCode::OK, "text/html; charset=utf-8", PAGE);
            if let Ok(policy) = header::HeaderValue::from_str(page_policy()) {
                page.headers_mut()
                    .insert(header::CONTENT_SECURITY_POLICY, policy);
            }
            page
        }
        (&Method::GET, ["metrics"]) => full(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.encode(),
        ),
        (&Method::GET, ["api", "tunnels"]) => json_answer(StatusCode::OK, &tunnels(shared)),
        (&Method::GET, ["api", "requests"]) => {
            let filter = filter(&query);
            let list = shared
                .store
                .lock()
                .map(|s| s.list(&filter))
                .unwrap_or_default();
            let items: Vec<Value> = list.iter().map(|e| e.summary()).collect();
            json_answer(StatusCode::OK, &json!({"requests": items}))
        }
        (&Method::DELETE, ["api", "requests"]) => {
            shared.clear();
            json_answer(StatusCode::OK, &json!({"cleared": true}))
        }
        (&Method::GET, ["api", "events"]) => events(shared, shutdown),
        (method, ["api", "requests", id, rest @ ..]) => {
            let Some(exchange) = id
                .parse::<u64>()
                .ok()
                .and_then(|id| shared.store.lock().ok()?.get(id))
            else {
                return error(StatusCode::NOT_FOUND, format!("no exchange {id} is kept"));
            };
            match (method, rest) {
                (&Method::GET, []) => {
                    let mut detail = exchange.detail();
                    detail["curl"] = Value::from(super::curl::command(&exchange));
                    if exchange.kind.is_mail()
                        && let Some(view) = mail::read(&exchange.request)
                    {
                        detail["mail"] = view.to_json(exchange.id);
                    }
                    json_answer(StatusCode::OK, &detail)
                }
                (&Method::GET, [which @ ("request" | "response"), "body"]) => {
                    let message = if *which == "request" {
                        Some(&exchange.request)
                    } else {
                        exchange.response.as_ref()
                    };
                    match message {
                        Some(m) => captured(
                            m.header("content-type")
                                .unwrap_or("application/octet-stream"),
                            m.body.to_vec(),
                            &format!("exchange-{}-{which}", exchange.id),
                        ),
                        None => error(StatusCode::NOT_FOUND, "no response yet"),
                    }
                }
                (&Method::GET, ["attachments", n]) => attachment(&exchange, n),
                (&Method::POST, ["replay"]) => {
                    let body = match Limited::new(request.into_body(), MAX_EDIT).collect().await {
                        Ok(body) => body.to_bytes(),
                        Err(e) => {
                            return error(
                                StatusCode::BAD_REQUEST,
                                format!("cannot read the edits: {e}"),
                            );
                        }
                    };
                    let edits = if body.iter().all(u8::is_ascii_whitespace) {
                        replay::Edits::default()
                    } else {
                        match serde_json::from_slice(&body) {
                            Ok(edits) => edits,
                            Err(e) => {
                                return error(
                                    StatusCode::BAD_REQUEST,
                                    format!("the edits are not the JSON expected: {e}"),
                                );
                            }
                        }
                    };
                    match replay::replay(shared, &exchange, edits).await {
                        Ok(new) => json_answer(StatusCode::OK, &new.summary()),
                        Err(
                            e @ (replay::ReplayError::Truncated { .. }
                            | replay::ReplayError::NoTunnel(_)),
                        ) => error(StatusCode::CONFLICT, e),
                        Err(e @ replay::ReplayError::BadEdit(_)) => {
                            error(StatusCode::BAD_REQUEST, e)
                        }
                        Err(e) => error(StatusCode::BAD_GATEWAY, e),
                    }
                }
                _ => error(StatusCode::NOT_FOUND, format!("no route {path}")),
            }
        }
        (&Method::POST, ["api", adapter, action]) => {
            let (adapter, action) = (adapter.to_string(), action.to_string());
            let body = match call_body(request).await {
                Ok(body) => body,
                Err(answer) => return answer,
            };
            let answer = call::call(shared, &adapter, &action, &body).await;
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            json_answer(status, &answer.body)
        }
        // Postmark's API, so its SDKs send through Droid with only their
        // base URL changed: mail's `send` and `send-batch`.
        (&Method::POST, ["email"]) | (&Method::POST, ["email", "batch"]) => {
            let action = if segments.len() == 1 {
                "send"
            } else {
                "send-batch"
            };
            let body = match call_body(request).await {
                Ok(body) => body,
                Err(answer) => return answer,
            };
            let started = std::time::Instant::now();
            let answer = call::call(shared, super::exchange::MAIL_ADAPTER, action, &body).await;
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let answer = postmark_shaped(answer);
            sent::record(shared, &body, status.as_u16(), &answer, started.elapsed());
            json_answer(status, &answer)
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route {} {path}", request.method()),
        ),
    }
}

/// A call's body, at most [`droid_core::protocol::MAX_CALL_BODY`] bytes.
async fn call_body(request: http::Request<Incoming>) -> Result<Bytes, Response<Body>> {
    let limit = usize::try_from(droid_core::protocol::MAX_CALL_BODY).unwrap_or(usize::MAX);
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            format!("cannot read it: {e}"),
        )),
    }
}

/// An answer in Postmark's shape: the adapter's, or a refusal that came
/// before it (`{"error": why}`) as `{"ErrorCode", "Message"}`.
fn postmark_shaped(answer: droid_core::protocol::CallAnswer) -> Value {
    if answer.status < 300 || answer.body.get("ErrorCode").is_some() {
        return answer.body;
    }
    let why = answer.body["error"]
        .as_str()
        .unwrap_or("the server refused the message")
        .to_string();
    json!({ "ErrorCode": answer.status, "Message": why })
}

fn tunnels(shared: &Shared) -> Value {
    let list = shared.tunnels.lock().map(|t| t.clone()).unwrap_or_default();
    let down = shared.down.lock().ok().and_then(|d| d.clone());
    let (requests, mails) = shared
        .store
        .lock()
        .map(|s| (s.count("http"), s.count("mail")))
        .unwrap_or_default();
    let tunnels: Vec<Value> = list
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "url": t.url,
                "kind": if t.spec.kind == crate::TunnelKind::Tcp { "tcp" } else { "http" },
                "target": if t.spec.kind == crate::TunnelKind::Tcp {
                    format!("tcp://{}", t.spec.target)
                } else {
                    format!("http://{}", t.spec.target)
                },
                "state": t.state,
                "adapters": t.adapters,
            })
        })
        .collect();
    json!({"tunnels": tunnels, "down": down, "kept": {"http": requests, "mail": mails}})
}

fn attachment(exchange: &super::Exchange, n: &str) -> Response<Body> {
    let view = exchange
        .kind
        .is_mail()
        .then(|| mail::read(&exchange.request))
        .flatten();
    let found = view.and_then(|view| {
        let n: usize = n.parse().ok()?;
        view.attachments.into_iter().nth(n)
    });
    let Some(attachment) = found else {
        return error(StatusCode::NOT_FOUND, format!("no attachment {n}"));
    };
    let Some(bytes) = attachment.bytes else {
        return error(
            StatusCode::NOT_FOUND,
            "the POST did not carry this attachment's bytes",
        );
    };
    let name = attachment
        .filename
        .unwrap_or_else(|| format!("attachment-{n}"));
    captured(&attachment.content_type, bytes, &name)
}

fn filter(query: &str) -> Filter {
    let mut filter = Filter::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value);
        if value.is_empty() {
            continue;
        }
        match key {
            "limit" => filter.limit = value.parse().ok(),
            "tunnel" => filter.tunnel = Some(value),
            "kind" => filter.kind = Some(value),
            "method" => filter.method = Some(value),
            "status" => filter.status = Some(value),
            "path" => filter.path = Some(value),
            "q" => filter.search = Some(value),
            _ => {}
        }
    }
    filter
}

/// Decodes `%XX` and `+` of a query value; invalid escapes stay as they are.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /api/events`: each exchange kept from now on, as an `exchange`
/// event with its summary; `clear` when the list was emptied; `lagged`
/// when this reader fell behind and should reload the list.
fn events(shared: &Shared, shutdown: CancellationToken) -> Response<Body> {
    let receiver = shared.events.subscribe();
    let stream = futures::stream::unfold(
        (receiver, shutdown, true),
        |(mut receiver, shutdown, first)| async move {
            if first {
                let hello = Bytes::from_static(b"retry: 1000\n\n");
                return Some((Ok(Frame::data(hello)), (receiver, shutdown, false)));
            }
            let text = tokio::select! {
                event = receiver.recv() => match event {
                    Ok(StoreEvent::Put(e)) => format!("event: exchange\ndata: {}\n\n", e.summary()),
                    Ok(StoreEvent::Cleared) => "event: clear\ndata: {}\n\n".to_string(),
                    Err(broadcast::error::RecvError::Lagged(n)) => format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n"),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                () = tokio::time::sleep(EVENT_PING) => ": ping\n\n".to_string(),
                () = shutdown.cancelled() => return None,
            };
            Some((
                Ok(Frame::data(Bytes::from(text))),
                (receiver, shutdown, false),
            ))
        },
    );
    let body = BodyExt::boxed_unsync(StreamBody::new(stream.boxed()));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_hosts_pass() {
        for ok in [
            "localhost",
            "localhost:4040",
            "127.0.0.1:4040",
            "[::1]:4040",
            "app.localhost:4041",
            "192.168.1.5:4040",
            "LOCALHOST.",
        ] {
            assert!(host_is_local(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example:4040",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
        ] {
            assert!(!host_is_local(bad), "{bad}");
        }
    }

    #[test]
    fn file_names_are_made_safe() {
        assert_eq!(safe_filename("report.pdf"), "report.pdf");
        assert_eq!(safe_filename("a\u{1}b\"c\r\n.html"), "a_b_c__.html");
        assert_eq!(safe_filename("../../.bashrc"), "_.._.bashrc");
        assert_eq!(safe_filename("..."), "download");
        assert_eq!(safe_filename("résumé.txt"), "r_sum_.txt");
        assert_eq!(safe_filename(&"x".repeat(300)).len(), 100);
    }

    #[test]
    fn the_page_policy_allows_exactly_its_own_script() {
        let policy = page_policy();
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"));
        assert!(!policy.contains("unsafe-eval"));
        assert_eq!(
            PAGE.matches("<script>").count(),
            1,
            "one inline script, hashed"
        );
    }

    #[test]
    fn query_values_decode() {
        assert_eq!(percent_decode("a%20b+c%2Fd%zz%4"), "a b c/d%zz%4");
        let f = filter("limit=5&status=4xx&q=hello%20world&path=%2Fapi&unknown=1&kind=");
        assert_eq!(f.limit, Some(5));
        assert_eq!(f.status.as_deref(), Some("4xx"));
        assert_eq!(f.search.as_deref(), Some("hello world"));
        assert_eq!(f.path.as_deref(), Some("/api"));
        assert_eq!(f.kind, None);
    }
}
