//! The test harness: a real origin, a real server and real clients, all on
//! 127.0.0.1 port 0, and a TCP "cutter" between client and server that can
//! drop or black-hole the connection. Nothing here sleeps to synchronize:
//! every wait is for an event, with a deadline.
#![allow(dead_code, clippy::unwrap_used)]

pub mod browser;
pub mod grpc;
pub mod pki;
pub mod redis_server;
pub mod tcp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use droid_client::{ClientConfig, ClientError, ClientEvent, Target, TunnelSpec};
use droid_core::protocol::TunnelGrant;
use droid_server::{Server, ServerConfig};
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DOMAIN: &str = "droid.test";
pub const WAIT: Duration = Duration::from_secs(20);

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Waits for `fut`, failing the test with `what` after [`WAIT`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------- origin

/// A local app to tunnel to. Its routes:
/// - `/echo`: the request body back, streamed;
/// - `/headers`: the request line and headers as JSON;
/// - `/bytes/N`: N bytes (chunked), generated as they are sent;
/// - `/sse`: one event, then a second one once `sse_next` is notified;
/// - `/hang`: notifies `hang_started`, then never answers;
/// - `/gather`: answers once `gather` requests are in flight at once;
/// - `/ws`: a websocket echo;
/// - `/status/N`: status N;
/// - anything else: `origin LABEL PATH`.
pub struct Origin {
    pub addr: SocketAddr,
    pub sse_next: Arc<Notify>,
    pub hang_started: Arc<Notify>,
    pub target: Target,
    /// Every request to `/inbound*`: a mail delivery.
    pub inbox: mpsc::UnboundedReceiver<Received>,
    /// The status `/inbound*` answers with (200 unless set).
    pub inbox_status: Arc<AtomicU16>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

/// A request the origin received at `/inbound*`.
#[derive(Debug)]
pub struct Received {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Origin {
    /// The next mail delivery the app received.
    pub async fn next_mail(&mut self) -> Received {
        within("a mail delivery", self.inbox.recv()).await.unwrap()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct OriginState {
    label: String,
    inbox: mpsc::UnboundedSender<Received>,
    inbox_status: Arc<AtomicU16>,
    sse_next: Arc<Notify>,
    hang_started: Arc<Notify>,
    gather: Option<Arc<Barrier>>,
}

pub async fn origin(label: &str) -> Origin {
    origin_with(label, None).await
}

pub async fn origin_with(label: &str, gather: Option<usize>) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (inbox_tx, inbox) = mpsc::unbounded_channel();
    let inbox_status = Arc::new(AtomicU16::new(200));
    let state = Arc::new(OriginState {
        label: label.to_string(),
        inbox: inbox_tx,
        inbox_status: inbox_status.clone(),
        sse_next: Arc::new(Notify::new()),
        hang_started: Arc::new(Notify::new()),
        gather: gather.map(|n| Arc::new(Barrier::new(n))),
    });
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let s = state.clone();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                a = listener.accept() => a.unwrap(),
                () = token.cancelled() => return,
            };
            accepted.fetch_add(1, Ordering::SeqCst);
            let s = s.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let s = s.clone();
                    async move { Ok::<_, Infallible>(route(s, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Origin {
        addr,
        sse_next: state.sse_next.clone(),
        hang_started: state.hang_started.clone(),
        target: Target::new("127.0.0.1", addr.port()),
        inbox,
        inbox_status,
        connections,
        shutdown,
    }
}

async fn route(s: Arc<OriginState>, req: Request<Incoming>) -> Response<TestBody> {
    let path = req.uri().path().to_string();
    if path.starts_with("/inbound") {
        let (parts, body) = req.into_parts();
        let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
            // the visitor's body was cut off: nothing was received
            return Response::new(full("incomplete body"));
        };
        let status = s.inbox_status.load(Ordering::SeqCst);
        if status < 300 {
            let _ = s.inbox.send(Received {
                path: path.clone(),
                headers: parts.headers,
                body,
            });
        }
        let mut r = Response::new(full(format!("inbox says {status}")));
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        return r;
    }
    if path == "/echo" {
        return Response::new(req.into_body().map_err(Into::into).boxed());
    }
    if path == "/headers" {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        let body = serde_json::json!({
            "method": req.method().as_str(),
            "uri": req.uri().to_string(),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        });
        return Response::new(full(body.to_string()));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let total: usize = n.parse().unwrap();
        return Response::new(pattern_body(total));
    }
    if path == "/sse" {
        let next = s.sse_next.clone();
        let (tx, rx) =
            mpsc::channel::<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>(4);
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::from("data: one\n\n")))).await;
            next.notified().await;
            let _ = tx.send(Ok(Frame::data(Bytes::from("data: two\n\n")))).await;
        });
        let stream = tokio_stream_from(rx);
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        return r;
    }
    if path == "/hang" {
        s.hang_started.notify_one();
        std::future::pending::<()>().await;
    }
    if path == "/gather" {
        if let Some(b) = &s.gather {
            b.wait().await;
        }
        return Response::new(full(format!(
            "gathered {}",
            req.uri().query().unwrap_or("")
        )));
    }
    if path == "/ws" {
        return websocket_echo(req);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(format!("status {code}")));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        return r;
    }
    Response::new(full(format!("origin {} {}", s.label, path)))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The byte at offset `i` of every generated body.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Reads a body to its end, checking every byte against the pattern, and
/// returns how many there were; nothing is kept.
pub async fn drain_checked(mut body: hyper::body::Incoming) -> usize {
    let mut seen = 0usize;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Ok(data) = frame.unwrap().into_data() {
            for (i, b) in data.iter().enumerate() {
                assert_eq!(*b, pattern(seen + i), "byte {} differs", seen + i);
            }
            seen += data.len();
        }
    }
    seen
}

/// A body of `total` pattern bytes, made 64 KiB at a time as it is read.
pub fn pattern_body(total: usize) -> TestBody {
    const CHUNK: usize = 64 * 1024;
    let stream = futures::stream::unfold(0usize, move |sent| async move {
        if sent >= total {
            return None;
        }
        let n = CHUNK.min(total - sent);
        let chunk: Vec<u8> = (sent..sent + n).map(pattern).collect();
        Some((
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(chunk))),
            sent + n,
        ))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<TestBody> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key") else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = on_upgrade.await.unwrap();
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if msg.is_text() || msg.is_binary() {
                ws.send(msg).await.unwrap();
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(empty())
        .unwrap()
}

// ---------------------------------------------------------------- server

pub struct TestServer {
    pub server: Server,
    pub http: SocketAddr,
    pub control: SocketAddr,
    /// The SMTP listener, for servers made by [`mail_server`].
    pub smtp: Option<SocketAddr>,
    /// The MQTT listener, for servers made by [`mqtt_server`].
    pub mqtt: Option<SocketAddr>,
    pub shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl TestServer {
    /// Stops the server and waits until every listener is closed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            within("server stop", task).await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn server() -> TestServer {
    server_with(|_| {}).await
}

pub async fn server_with(tweak: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
    server_on(http, control, tweak).await
}

/// A server on listeners bound by the caller: the ports of a server that
/// was stopped, to restart it.
pub async fn server_on(
    http: TcpListener,
    control: TcpListener,
    tweak: impl FnOnce(&mut ServerConfig),
) -> TestServer {
    let mut config = ServerConfig::new(DOMAIN);
    config.public_port = Some(http.local_addr().unwrap().port());
    tweak(&mut config);
    let server = Server::new(config);
    let shutdown = CancellationToken::new();
    let (h, c) = (http.local_addr().unwrap(), control.local_addr().unwrap());
    let s = server.clone();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { s.run(http, control, token).await });
    TestServer {
        server,
        http: h,
        control: c,
        smtp: None,
        mqtt: None,
        shutdown,
        tasks: vec![task],
    }
}

/// A server that also accepts MQTT, spooling to `spool` (retried within
/// 200 ms) when given.
pub async fn mqtt_server(spool: Option<&std::path::Path>) -> TestServer {
    mqtt_server_retrying(spool, Duration::from_millis(50)).await
}

/// [`mqtt_server`] whose spool first retries after `first_retry`.
pub async fn mqtt_server_retrying(
    spool: Option<&std::path::Path>,
    first_retry: Duration,
) -> TestServer {
    mqtt_server_with(spool, first_retry, None, |_| {}).await.0
}

/// A server with MQTT on a plain listener and, with `tls`, on a TLS one
/// (whose address comes second).
pub async fn mqtt_server_with(
    spool: Option<&std::path::Path>,
    first_retry: Duration,
    tls: Option<droid_server::ServerTls>,
    tweak: impl FnOnce(&mut ServerConfig),
) -> (TestServer, Option<SocketAddr>) {
    let with_tls = tls.is_some();
    let mut srv = server_with(|c| {
        c.tls = tls;
        tweak(c);
    })
    .await;
    let any = || droid_adapters::bind_listener("127.0.0.1:0".parse().unwrap());
    let listener = any().await.unwrap();
    srv.mqtt = Some(listener.local_addr().unwrap());
    let tls_listener = match with_tls {
        true => Some(any().await.unwrap()),
        false => None,
    };
    let tls_addr = tls_listener.as_ref().map(|l| l.local_addr().unwrap());
    let spool = spool.map(|dir| {
        let mut config = droid_adapters::SpoolConfig::default();
        config.retry.first_delay = first_retry;
        config.retry.max_delay = first_retry.max(Duration::from_millis(200));
        droid_adapters::Spool::open(dir, config).unwrap()
    });
    let (s, token) = (srv.server.clone(), srv.shutdown.clone());
    let config = droid_adapters::MqttConfig {
        deliver_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    s.add_adapter(Arc::new(droid_adapters::MqttService::new(
        config,
        vec![listener],
        tls_listener.into_iter().collect(),
        droid_adapters::ConnLimits {
            max_connections: 2000,
            max_per_ip: 2000,
        },
    )));
    srv.tasks.push(tokio::spawn(s.serve_adapters(spool, token)));
    (srv, tls_addr)
}

/// A server that also accepts mail, spooling to `spool` when given.
pub async fn mail_server(spool: Option<&std::path::Path>) -> TestServer {
    mail_server_with(spool, |_| {}).await
}

/// [`mail_server`] with its configuration changed by `tweak` first.
pub async fn mail_server_with(
    spool: Option<&std::path::Path>,
    tweak: impl FnOnce(&mut ServerConfig),
) -> TestServer {
    mail_server_retrying(spool, Duration::from_millis(50), tweak).await
}

/// [`mail_server_with`] whose spool first retries after `first_retry`.
pub async fn mail_server_retrying(
    spool: Option<&std::path::Path>,
    first_retry: Duration,
    tweak: impl FnOnce(&mut ServerConfig),
) -> TestServer {
    let mut srv = server_with(tweak).await;
    let listener = droid_adapters::bind_listener("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    srv.smtp = Some(listener.local_addr().unwrap());
    let spool = spool.map(|dir| {
        let mut config = droid_adapters::SpoolConfig::default();
        config.retry.first_delay = first_retry;
        config.retry.max_delay = first_retry.max(Duration::from_millis(200));
        droid_adapters::Spool::open(dir, config).unwrap()
    });
    let (s, token) = (srv.server.clone(), srv.shutdown.clone());
    let smtp_config = droid_adapters::SmtpConfig {
        deliver_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    s.add_adapter(Arc::new(droid_adapters::SmtpService::new(
        smtp_config,
        vec![listener.into()],
        droid_adapters::ConnLimits::default(),
    )));
    srv.tasks.push(tokio::spawn(s.serve_adapters(spool, token)));
    srv
}

// ---------------------------------------------------------------- client

pub struct TestClient {
    pub events: mpsc::Receiver<ClientEvent>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), ClientError>>,
    pub grants: Vec<TunnelGrant>,
}

impl TestClient {
    pub fn name(&self) -> &str {
        &self.grants[0].name
    }

    pub fn host(&self) -> String {
        format!("{}.{DOMAIN}", self.grants[0].name)
    }

    /// Waits until the client is connected again, and returns its names.
    pub async fn reconnected(&mut self) -> Vec<String> {
        let tunnels = self
            .wait_for("reconnect", |e| match e {
                ClientEvent::Connected {
                    tunnels,
                    reconnected: true,
                    ..
                } => Some(tunnels.clone()),
                _ => None,
            })
            .await;
        tunnels.iter().map(|g| g.name.clone()).collect()
    }

    /// Waits for the next event that `pick` accepts.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ClientEvent) -> Option<T>,
    ) -> T {
        within(what, async {
            loop {
                let event = self
                    .events
                    .recv()
                    .await
                    .unwrap_or_else(|| panic!("client stopped before: {what}"));
                if let Some(t) = pick(&event) {
                    return t;
                }
            }
        })
        .await
    }

    /// Stops cleanly (the client releases its names) and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        within("client stop", &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn spec(name: Option<&str>, target: &Target) -> TunnelSpec {
    let mut spec = TunnelSpec {
        name: name.map(str::to_string),
        ..TunnelSpec::http(target.clone())
    };
    // As `droid http` asks: mail and MQTT, with their defaults.
    set_mail(&mut spec, droid_adapters::MailSettings::default());
    set_mqtt(&mut spec, droid_adapters::MqttSettings::default());
    spec
}

/// What `spec` asks of the SMTP adapter.
pub fn set_mail(spec: &mut TunnelSpec, mail: droid_adapters::MailSettings) {
    let value = serde_json::to_value(mail).unwrap();
    spec.adapters
        .insert(droid_adapters::smtp::NAME.into(), value);
}

/// Mail POSTed to `path`, as JSON.
pub fn inbound_mail(path: &str) -> droid_adapters::MailSettings {
    droid_adapters::MailSettings {
        path: Some(path.into()),
        ..Default::default()
    }
}

/// MQTT messages POSTed to `/inbound/mqtt`.
pub fn inbound_mqtt() -> droid_adapters::MqttSettings {
    droid_adapters::MqttSettings {
        path: Some("/inbound/mqtt".into()),
        ..Default::default()
    }
}

/// What `spec` asks of the MQTT adapter.
pub fn set_mqtt(spec: &mut TunnelSpec, mqtt: droid_adapters::MqttSettings) {
    let value = serde_json::to_value(mqtt).unwrap();
    spec.adapters
        .insert(droid_adapters::mqtt::NAME.into(), value);
}

/// A client config with no state dir and quick reconnects.
pub fn client_config(server: SocketAddr, specs: Vec<TunnelSpec>) -> ClientConfig {
    let mut config = ClientConfig::new(server.to_string(), specs);
    config.state_dir = None;
    config.min_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(200);
    config
}

/// Starts a client and waits until its tunnels are up.
pub async fn client(config: ClientConfig) -> TestClient {
    let mut c = client_unchecked(config);
    let grants = c
        .wait_for("tunnels up", |e| match e {
            ClientEvent::Connected { tunnels, .. } => Some(tunnels.clone()),
            _ => None,
        })
        .await;
    c.grants = grants;
    c
}

/// Starts a client without waiting for anything.
pub fn client_unchecked(config: ClientConfig) -> TestClient {
    let (tx, events) = mpsc::channel(droid_client::EVENT_QUEUE);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(droid_client::run(config, Some(tx), shutdown.clone()));
    TestClient {
        events,
        shutdown,
        task,
        grants: Vec::new(),
    }
}

/// A client started with `name` that must be refused because it is taken.
pub async fn refused(
    control: std::net::SocketAddr,
    name: &str,
    target: &droid_client::Target,
) -> String {
    let mut c = client_unchecked(client_config(control, vec![spec(Some(name), target)]));
    match within("refusal", &mut c.task).await.unwrap() {
        Err(droid_client::ClientError::Refused(e)) => {
            assert_eq!(
                e.code,
                droid_core::protocol::ErrorCode::NameTaken,
                "{}",
                e.message
            );
            e.message
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ---------------------------------------------------------------- mail

/// Runs `python3 -c script args...`; returns (ok, stdout, stderr).
pub async fn python(script: &str, args: &[&str]) -> (bool, String, String) {
    let out = within(
        "python",
        tokio::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends one mail with Python's smtplib to `smtp`; prints each recipient's
/// refusal as `REFUSED rcpt code`, or `SENT` when all were accepted, or
/// `ERROR code message` when the whole mail was refused, or `UNREACHABLE`
/// when the connection failed before that.
pub async fn smtplib_send(
    smtp: SocketAddr,
    from: &str,
    to: &[&str],
    subject: &str,
    body: &str,
) -> String {
    const SCRIPT: &str = r#"
import smtplib, sys
from email.message import EmailMessage
host, port, sender, subject, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
rcpts = sys.argv[6:]
m = EmailMessage()
m['From'] = sender
m['To'] = ', '.join(rcpts)
m['Subject'] = subject
m.set_content(body)
m.add_attachment(b'%PDF-1.4 binary \x00\x01\x02', maintype='application', subtype='pdf', filename='report.pdf')
s = None
try:
    s = smtplib.SMTP(host, port, timeout=30)
    refused = s.send_message(m, from_addr=sender, to_addrs=rcpts)
    for r, (code, msg) in refused.items():
        print('REFUSED', r, code)
    if not refused:
        print('SENT')
except smtplib.SMTPRecipientsRefused as e:
    for r, (code, msg) in e.recipients.items():
        print('REFUSED', r, code)
except smtplib.SMTPResponseException as e:
    print('ERROR', e.smtp_code, e.smtp_error.decode())
except OSError as e:
    print('UNREACHABLE', e)
finally:
    # What QUIT gets does not matter: the mail was taken or not by then.
    if s is not None:
        try:
            s.quit()
        except Exception:
            s.close()
"#;
    let port = smtp.port().to_string();
    let ip = smtp.ip().to_string();
    let mut args = vec![ip.as_str(), port.as_str(), from, subject, body];
    args.extend_from_slice(to);
    let (ok, out, err) = python(SCRIPT, &args).await;
    assert!(ok, "smtplib failed: {err}");
    out.trim().to_string()
}

// ---------------------------------------------------------------- requests

/// Sends one request on a new connection to `addr`.
pub async fn send(addr: SocketAddr, req: Request<TestBody>) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await.unwrap()
}

pub fn get_request(host: &str, path: &str) -> Request<TestBody> {
    Request::get(path)
        .header("host", host)
        .body(empty())
        .unwrap()
}

/// GETs `path` from `host` through the server; status and whole body.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    let response = send(addr, get_request(host, path)).await;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Writes raw bytes to `addr` and reads the whole answer.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = within("raw answer", stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------- cutter

/// A TCP proxy between a client and the server that can fail like a
/// network: [`Cutter::cut`] closes every current connection (what the OS does
/// when a process dies), [`Cutter::blackhole`] silently drops every byte of
/// the current connections (a cable pulled: no FIN, no RST). New connections
/// after either are forwarded normally.
pub struct Cutter {
    pub addr: SocketAddr,
    generation: Arc<std::sync::Mutex<Generation>>,
}

#[derive(Clone)]
struct Generation {
    cut: CancellationToken,
    blackholed: Arc<AtomicBool>,
}

impl Generation {
    fn new() -> Generation {
        Generation {
            cut: CancellationToken::new(),
            blackholed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Cutter {
    pub async fn start(upstream: SocketAddr) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = Arc::new(std::sync::Mutex::new(Generation::new()));
        let g = generation.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let current = g.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    let a = pump(dr, uw, current.clone());
                    let b = pump(ur, dw, current.clone());
                    tokio::select! {
                        _ = async { tokio::join!(a, b) } => {}
                        () = current.cut.cancelled() => {}
                    }
                });
            }
        });
        Cutter { addr, generation }
    }

    pub fn cut(&self) {
        let mut g = self.generation.lock().unwrap();
        g.cut.cancel();
        *g = Generation::new();
    }

    pub fn blackhole(&self) {
        let mut g = self.generation.lock().unwrap();
        g.blackholed.store(true, Ordering::SeqCst);
        *g = Generation::new();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    g: Generation,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if g.blackholed.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if !g.blackholed.load(Ordering::SeqCst) {
        let _ = to.shutdown().await;
    } else {
        // hold the socket open, as a dead network would
        g.cut.cancelled().await;
    }
}

/// A port on 127.0.0.1 where nothing listens.
pub async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------- the binary

/// An HTTP/2 client connection to `addr`.
pub async fn h2_connection(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, TestBody>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// The `droid` binary under test.
pub const DROID: &str = env!("CARGO_BIN_EXE_droid");

/// A `droid` command with its own state dir and none of the user's
/// DROID_* settings; logs at `warn` unless RUST_LOG says otherwise.
pub fn droid_command(args: &[&str], state_dir: &std::path::Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(DROID);
    command
        .args(args)
        .env("DROID_STATE_DIR", state_dir)
        .env_remove("DROID_SERVER")
        .env_remove("DROID_TOKEN")
        .env_remove("DROID_MAIL_SECRET")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true);
    command
}

/// The address printed after `label` in one of the binary's stdout lines,
/// `GET url` with curl, its body as JSON.
pub async fn curl_json(url: &str) -> serde_json::Value {
    let out = within(
        "curl",
        tokio::process::Command::new("curl")
            .args(["-s", url])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl is not installed (Debian: curl); run `bash .ci/test`");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `script` (openssl commands) with `sh -c`; its stdout, trimmed.
pub async fn sh(script: &str) -> String {
    let out = within(
        "openssl",
        tokio::process::Command::new("sh")
            .args(["-c", script])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{script}: {} (Debian: openssl; run `bash .ci/test`)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `droid server` for [`DOMAIN`] on loopback ports, then `extra`.
pub fn server_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "server",
        "--domain",
        DOMAIN,
        "--http",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    args
}

/// The tunnel's mail domain in `droid http`'s line `... mail to
/// anything@DOMAIN arrives as ...`.
pub fn mail_domain(line: &str) -> Option<String> {
    Some(
        line.split("mail to anything@")
            .nth(1)?
            .split(' ')
            .next()?
            .to_string(),
    )
}

/// e.g. `addr_after(line, "smtp on ")` for `droid server: smtp on 127.0.0.1:2525, ...`.
pub fn addr_after(line: &str, label: &str) -> Option<SocketAddr> {
    line.split(label)
        .nth(1)?
        .split([',', ' '])
        .next()?
        .trim()
        .parse()
        .ok()
}

/// `droid server`'s address line: its HTTP and control listeners.
pub fn server_addrs(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    Some((
        addr_after(line, "http on ")?,
        addr_after(line, "control on ")?,
    ))
}

/// Lines of a child's stdout.
pub type StdoutLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Reads stdout lines until `pick` accepts one.
pub async fn next_line<T>(
    lines: &mut StdoutLines,
    what: &str,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> T {
    within(what, async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("droid exited before: {what}"));
            if let Some(t) = pick(&line) {
                return t;
            }
        }
    })
    .await
}

/// A `droid` process whose stdout is read line by line.
pub struct Droid {
    pub child: tokio::process::Child,
    pub lines: StdoutLines,
}

impl Droid {
    /// Starts `droid ARGS` with `state_dir` as its state directory.
    pub fn start(args: &[&str], state_dir: &std::path::Path) -> Droid {
        Droid::start_with(args, state_dir, &[])
    }

    /// The same, with extra environment variables.
    pub fn start_with(args: &[&str], state_dir: &std::path::Path, env: &[(&str, &str)]) -> Droid {
        Droid::spawn(
            droid_command(args, state_dir),
            env,
            std::process::Stdio::inherit(),
        )
    }

    /// The same, with its stderr (its logs) written to `log`.
    pub fn start_logging(
        args: &[&str],
        state_dir: &std::path::Path,
        log: &std::path::Path,
    ) -> Droid {
        let file = std::fs::File::create(log).unwrap();
        Droid::spawn(droid_command(args, state_dir), &[], file.into())
    }

    fn spawn(
        mut command: tokio::process::Command,
        env: &[(&str, &str)],
        stderr: std::process::Stdio,
    ) -> Droid {
        use tokio::io::AsyncBufReadExt as _;
        command.envs(env.iter().copied());
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Droid { child, lines }
    }

    /// The next stdout line that `pick` accepts.
    pub async fn line<T>(&mut self, what: &str, pick: impl FnMut(&str) -> Option<T>) -> T {
        next_line(&mut self.lines, what, pick).await
    }

    /// Ctrl-C, and the exit status.
    pub async fn interrupt(self) -> std::process::ExitStatus {
        self.signal("-INT").await
    }

    /// SIGTERM (a service manager's stop), and the exit status.
    pub async fn terminate(self) -> std::process::ExitStatus {
        self.signal("-TERM").await
    }

    async fn signal(mut self, signal: &str) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        tokio::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .await
            .unwrap();
        within("droid exits", self.child.wait()).await.unwrap()
    }
}

// ---------------------------------------------------------------- mqtt

/// Runs `mosquitto_pub -d ARGS` against `host:port`; its exit status and
/// everything it printed.
pub async fn mosquitto_pub_at(host: &str, port: u16, args: &[&str]) -> (bool, String) {
    let out = within(
        "mosquitto_pub",
        tokio::process::Command::new("mosquitto_pub")
            .args(["-h", host, "-p", &port.to_string(), "-d"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|e| {
        panic!("mosquitto_pub is missing ({e}): install Debian's mosquitto-clients (bash .ci/test does)")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `mosquitto_sub` subscribed to `filters` on `addr`, printing `topic
/// payload` lines (and the retained flag with `-v -d`), once subscribed.
pub struct Subscriber {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Subscriber {
    pub async fn start(
        addr: SocketAddr,
        version: &str,
        filters: &[&str],
        login: Option<(&str, &str)>,
    ) -> Subscriber {
        use tokio::io::AsyncBufReadExt;
        if let Err(e) = std::process::Command::new("mosquitto_sub")
            .arg("--help")
            .output()
        {
            panic!(
                "mosquitto_sub is missing ({e}): install Debian's mosquitto-clients (bash .ci/test does)"
            );
        }
        // Its output is buffered when it is not a terminal: stdbuf makes it
        // come a line at a time.
        let mut command = tokio::process::Command::new("stdbuf");
        command
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-V",
                version,
                "-q",
                "1",
                "-v",
                "-d",
            ])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::piped());
        for filter in filters {
            command.args(["-t", filter]);
        }
        if let Some((user, password)) = login {
            command.args(["-u", user, "-P", password]);
        }
        let mut child = command.spawn().unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut s = Subscriber { child, lines };
        s.line("the SUBACK", |l| l.contains("received SUBACK"))
            .await;
        s
    }

    pub async fn line(&mut self, what: &str, pick: impl Fn(&str) -> bool) -> String {
        within(what, async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("mosquitto_sub ended before {what}"));
                if pick(&line) {
                    return line;
                }
            }
        })
        .await
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// `POST /api/mqtt/publish` on the inspector at `inspector`.
pub async fn app_publish(
    inspector: SocketAddr,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let request = http::Request::post("/api/mqtt/publish")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap();
    let response = send(inspector, request).await;
    let status = response.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

// ---------------------------------------------------------------- metrics

/// Checks metrics text with Prometheus's own parser (`promtool check
/// metrics`, Debian's prometheus package).
pub async fn promtool_check(text: &str) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is missing ({e}): install Debian's prometheus package (bash .ci/test does)")
        });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = within("promtool", child.wait_with_output()).await.unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- raw sessions

/// A session opened by hand, as a script would: a hello, and the answer.
pub struct RawSession {
    pub opener: droid_core::session::Opener,
    pub answer: Result<droid_core::protocol::Welcome, droid_core::protocol::ErrorMessage>,
    /// Kept open while the session lives: closing it is a goodbye-less end.
    _control: droid_core::session::Stream,
}

impl RawSession {
    /// Ends the session without a goodbye, as a crash or a cut cable would:
    /// its names wait for their owner.
    pub fn drop_without_goodbye(self) {
        self.opener.close();
    }

    /// Says goodbye, as `droid` does when it exits: its names are
    /// quarantined for their owner. Returns once the server has closed.
    pub async fn goodbye(mut self) {
        use droid_core::protocol::{self, ControlMessage};
        protocol::write_message(&mut self._control, &ControlMessage::Release)
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = within("the server to close", self._control.read_to_end(&mut rest)).await;
        self.opener.close();
    }
}

/// Opens a session to `control` with a hello for `names` (`None`: a random
/// name) and `resume`, and reads the answer.
pub async fn raw_hello(
    control: SocketAddr,
    names: &[Option<&str>],
    resume: Option<&str>,
) -> RawSession {
    raw_session(control, names, resume, 4).await
}

/// [`raw_hello`] on a session that may open `streams` streams at once.
pub async fn raw_session(
    control: SocketAddr,
    names: &[Option<&str>],
    resume: Option<&str>,
    streams: usize,
) -> RawSession {
    use droid_core::protocol::{self, ControlMessage, Hello, MessageReader, TunnelRequest};
    let tcp = TcpStream::connect(control).await.unwrap();
    let session =
        droid_core::session::Session::start(tcp, droid_core::session::Side::Client, streams);
    let mut stream = session.opener.open().await.unwrap();
    let hello = ControlMessage::Hello(Hello {
        version: protocol::PROTOCOL_VERSION,
        token: None,
        resume: resume.map(str::to_string),
        tunnels: names
            .iter()
            .map(|n| TunnelRequest {
                name: n.map(str::to_string),
                ..TunnelRequest::default()
            })
            .collect(),
    });
    protocol::write_message(&mut stream, &hello).await.unwrap();
    let mut reader = MessageReader::new(&mut stream, protocol::MAX_CONTROL_LINE);
    let answer = match within("the server's answer to a hello", reader.next()).await {
        Ok(ControlMessage::Welcome(w)) => Ok(w),
        Ok(ControlMessage::Error(e)) => Err(e),
        other => panic!("expected welcome or error, got {other:?}"),
    };
    drop(reader);
    RawSession {
        opener: session.opener,
        answer,
        _control: stream,
    }
}

/// The resident memory of process `pid`, in bytes.
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

// ---------------------------------------------------------------- signatures

/// A signing secret as Droid prints one (the Standard Webhooks example's).
pub const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Whether `post` carries a good Standard Webhooks signature (`webhook-id`,
/// `webhook-timestamp`, `webhook-signature`) by `secret` (`whsec_...`, or
/// a plain text used as its bytes).
pub fn signed_with(post: &Received, secret: &str) -> bool {
    droid_adapters::verify(
        &droid_adapters::Secret::key_of(secret),
        &post.header("webhook-id"),
        &post.header("webhook-timestamp"),
        &post.body,
        &post.header("webhook-signature"),
    )
}

/// Checks `post` with the official Standard Webhooks verifier (Python's
/// `standardwebhooks`, installed by `bash .ci/test`) and `secret`
/// (`whsec_...`); its verdict, or why it failed.
pub async fn standard_webhooks_verify(post: &Received, secret: &str) -> Result<(), String> {
    use base64::Engine as _;
    const SCRIPT: &str = r#"
import base64, sys
try:
    from standardwebhooks.webhooks import Webhook
except ImportError:
    print("MISSING: pip install standardwebhooks (bash .ci/test installs it)")
    sys.exit(3)
secret, id, ts, sig, body = sys.argv[1:6]
try:
    Webhook(secret).verify(base64.b64decode(body), {"webhook-id": id, "webhook-timestamp": ts, "webhook-signature": sig})
except Exception as e:
    print("REFUSED", e)
    sys.exit(1)
print("VERIFIED")
"#;
    let body = base64::engine::general_purpose::STANDARD.encode(&post.body);
    let args = [
        secret.to_string(),
        post.header("webhook-id"),
        post.header("webhook-timestamp"),
        post.header("webhook-signature"),
        body,
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = python(SCRIPT, &args).await;
    assert!(!out.starts_with("MISSING"), "{out}");
    match (ok, out.trim()) {
        (true, "VERIFIED") => Ok(()),
        _ => Err(format!("{out}{err}")),
    }
}
