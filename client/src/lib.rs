//! Droid's client: keeps a session with a server up and forwards every
//! stream the server opens to the tunnel's local target.
//!
//! - [`target`]: the local target (a port, `HOST:PORT` or a URL).
//! - [`state`]: the resume secret and names kept in the user's state dir.
//! - `local`: one stream forwarded to the local app.
//! - [`inspect`]: the inspector: every exchange kept within a budget, the
//!   page, the JSON API with replay, and the client's metrics.
//!
//! [`run`] connects, says hello, answers heartbeats and reconnects with
//! exponential backoff and jitter, asking for the same names with the resume
//! secret, until its shutdown token fires; then it tells the server to
//! release the names at once.
#![warn(missing_docs)]

mod app;
pub mod inspect;
mod local;
mod probe;
mod served;
pub mod state;
pub mod target;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use droid_core::protocol::{
    self, ControlMessage, ErrorCode, ErrorMessage, Hello, PROTOCOL_VERSION, ProtocolError,
    TunnelGrant, TunnelRequest, Welcome,
};
pub use droid_core::protocol::{AdapterParts, TunnelKind};
use droid_core::session::{Opener, Session, Side, Stream};
pub use droid_core::transport::{ClientTls, ConnectError, Trust};
use rand::RngExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

pub use app::AppProtocol;
pub use inspect::{Inspector, InspectorOptions};
pub use target::Target;

/// Whether the local app sees the public Host or its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HostHeader {
    /// Keep the visitor's Host (`NAME.domain`); the default.
    #[default]
    Preserve,
    /// Set Host to the target's `host:port`, for apps that check it.
    Rewrite,
}

/// One tunnel the client asks for. Its `Debug` masks the password.
#[derive(Clone)]
pub struct TunnelSpec {
    /// The name wanted; `None` for a random one (remembered between runs).
    pub name: Option<String>,
    /// Where requests go.
    pub target: Target,
    /// Whether to rewrite Host.
    pub host_header: HostHeader,
    /// The secret its deliveries are signed with (`whsec_...`); `None`:
    /// one made once and remembered in the state directory.
    pub secret: Option<String>,
    /// What it asks of each adapter of the server, by the adapter's name
    /// (`{"smtp": {"path": "/inbound"}}`); an adapter it does not name
    /// leaves it alone.
    pub adapters: AdapterParts,
    /// HTTP basic auth the server asks of every visitor, `user:password`.
    pub auth: Option<String>,
    /// Visitor addresses the server lets through (IPs or CIDR blocks);
    /// empty lets everyone through.
    pub allow_ip: Vec<String>,
    /// HTTP (routed by name) or raw TCP (on a public port of its own).
    pub kind: TunnelKind,
    /// The public port a TCP tunnel asks for; `None`: the one it held
    /// last (remembered between runs), else any.
    pub port: Option<u16>,
    /// What the app speaks: HTTP/1.1, or HTTP/2 with prior knowledge.
    pub app_protocol: AppProtocol,
}

impl TunnelSpec {
    /// An HTTP tunnel to `target` with a random name and defaults.
    pub fn http(target: Target) -> TunnelSpec {
        TunnelSpec {
            name: None,
            target,
            host_header: HostHeader::Preserve,
            secret: None,
            adapters: AdapterParts::new(),
            auth: None,
            allow_ip: Vec::new(),
            kind: TunnelKind::Http,
            port: None,
            app_protocol: AppProtocol::Http1,
        }
    }

    /// A TCP tunnel to `target`, on `port` if given.
    pub fn tcp(target: Target, port: Option<u16>) -> TunnelSpec {
        TunnelSpec {
            kind: TunnelKind::Tcp,
            port,
            ..TunnelSpec::http(target)
        }
    }
}

impl std::fmt::Debug for TunnelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelSpec")
            .field("name", &self.name)
            .field("target", &self.target)
            .field("host_header", &self.host_header)
            .field("secret", &self.secret.as_ref().map(|_| "MASKED"))
            .field("adapters", &self.adapters)
            .field("auth", &self.auth.as_ref().map(|_| "MASKED"))
            .field("allow_ip", &self.allow_ip)
            .field("kind", &self.kind)
            .field("port", &self.port)
            .field("app_protocol", &self.app_protocol)
            .finish()
    }
}

/// What a client needs to know.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server's control address, `HOST:PORT`; several, comma-separated,
    /// are tried in turn (each name's every address too), starting from the
    /// one that answered last: a client whose server is lost goes on to the
    /// next.
    pub server: String,
    /// TLS to the server, and whom to trust; `None` connects in plain TCP.
    /// The server's certificate must be valid for the HOST it is reached by.
    pub tls: Option<ClientTls>,
    /// An auth token, when the server requires one.
    pub token: Option<String>,
    /// The tunnels, all carried by one session.
    pub tunnels: Vec<TunnelSpec>,
    /// Where the resume secret is kept; `None` keeps it in memory only.
    pub state_dir: Option<PathBuf>,
    /// What names the record in the state dir; the same command gets the
    /// same key (see [`ClientConfig::default_state_key`]).
    pub state_key: String,
    /// A server silent for this long is dead.
    pub heartbeat_timeout: Duration,
    /// The first delay before reconnecting; it doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest delay between reconnects.
    pub max_backoff: Duration,
    /// Where exchanges are captured and metrics counted; `None` captures
    /// nothing.
    pub inspector: Option<Inspector>,
}

impl ClientConfig {
    /// A configuration with defaults: state in the user's state directory,
    /// 30 s heartbeat timeout, backoff from 0.5 s to 30 s.
    pub fn new(server: impl Into<String>, tunnels: Vec<TunnelSpec>) -> ClientConfig {
        let server = server.into();
        let state_key = ClientConfig::default_state_key(&server, &tunnels);
        ClientConfig {
            server,
            tls: None,
            token: None,
            tunnels,
            state_dir: state::default_state_dir(),
            state_key,
            heartbeat_timeout: protocol::DEFAULT_HEARTBEAT_TIMEOUT,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            inspector: None,
        }
    }

    /// The state key of a command: its server and its tunnels.
    pub fn default_state_key(server: &str, tunnels: &[TunnelSpec]) -> String {
        let mut key = server.to_string();
        for t in tunnels {
            key.push_str(&format!(
                "+{}={}",
                t.name.as_deref().unwrap_or("random"),
                t.target
            ));
            if t.kind == TunnelKind::Tcp {
                key.push_str("/tcp");
            }
        }
        key
    }
}

/// What the client reports as it runs, for the command line to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The session is up; one grant per tunnel, in order.
    Connected {
        /// The tunnels granted.
        tunnels: Vec<TunnelGrant>,
        /// Whether this is a reconnection.
        reconnected: bool,
        /// The secret this client made (and remembers) for the tunnels that
        /// were not given one; `None` when every tunnel was given one, so
        /// it signs nothing.
        signing_secret: Option<String>,
    },
    /// The session is down; the client tries again after `retry_in`.
    Disconnected {
        /// Why.
        reason: String,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// A request went through a tunnel.
    Request {
        /// The tunnel's name.
        tunnel: String,
        /// The method.
        method: Cow<'static, str>,
        /// Path and query.
        path: String,
        /// The status sent back.
        status: u16,
        /// Time to the response's head.
        elapsed: Duration,
    },
    /// A request found nothing listening at the target.
    TargetDown {
        /// The tunnel's name.
        tunnel: String,
        /// The target, `host:port`.
        target: String,
        /// The connect error.
        error: String,
    },
}

/// The capacity of the channel [`run`] sends its events on. A reader that
/// falls behind (a stdout nobody reads) loses events rather than growing
/// the client's memory or stalling its tunnels.
pub const EVENT_QUEUE: usize = 1024;

/// Slots of [`EVENT_QUEUE`] that per-request events leave free, so that the
/// events saying what state the tunnel is in still get through.
pub const KEPT_FOR_STATE: usize = 64;

/// Where events go; a closed receiver just drops them, a full one drops
/// per-request events first.
#[derive(Clone)]
pub(crate) struct Events(Option<mpsc::Sender<ClientEvent>>);

impl Events {
    fn send(&self, event: ClientEvent) {
        let Some(tx) = &self.0 else { return };
        let per_request = matches!(
            event,
            ClientEvent::Request { .. } | ClientEvent::TargetDown { .. }
        );
        if per_request && tx.capacity() <= KEPT_FOR_STATE {
            trace!("the event reader is behind; a per-request event is dropped");
            return;
        }
        let _ = tx.try_send(event);
    }
}

/// Why a client gave up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the hello for a reason retrying will not change.
    #[error("the server refused: {}", .0.message)]
    Refused(ErrorMessage),
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The first connection failed in a way retrying will not fix: the
    /// server's certificate is not trusted, or TLS is on at one end only.
    #[error(transparent)]
    Connect(ConnectError),
}

/// Runs the client until `shutdown` fires (then releases its names and
/// returns `Ok`) or the server refuses it for good. Events go to `events`,
/// a channel of [`EVENT_QUEUE`] slots.
pub async fn run(
    config: ClientConfig,
    events: Option<mpsc::Sender<ClientEvent>>,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    if config.tunnels.is_empty() {
        return Err(ClientError::Config("no tunnel to open".into()));
    }
    let events = Events(events);
    let apps = Arc::new(app::Apps::default());
    let (state_file, mut remembered) = open_state(&config);
    // A secret remembered from before deliveries were signed the Standard
    // Webhooks way (hex, not whsec_) is replaced.
    remembered
        .mail_secret
        .take_if(|s| droid_core::sign::Secret::parse(s).is_err());
    let mail_secret = remembered
        .mail_secret
        .get_or_insert_with(new_mail_secret)
        .clone();
    let mut config = config;
    let default_used = config.tunnels.iter().any(|t| t.secret.is_none());
    let mail_secret = default_used.then_some(mail_secret);
    for spec in &mut config.tunnels {
        if let Some(default) = &mail_secret {
            spec.secret.get_or_insert_with(|| default.clone());
        }
    }
    let mut backoff = config.min_backoff;
    let mut connected_before = false;
    let mut servers = Servers::new(&config.server);
    let mut moves = Moves::default();
    loop {
        let hello = hello_for(&config, &remembered);
        let attempt = tokio::select! {
            attempt = connect(&config, &mut servers, hello) => attempt,
            () = shutdown.cancelled() => return Ok(()),
        };
        let reason = match attempt {
            Ok(mut live) => {
                let began = Instant::now();
                backoff = config.min_backoff;
                remembered.secret = Some(live.welcome.resume.clone());
                if let Some(old) = config
                    .tunnels
                    .iter()
                    .zip(&live.welcome.tunnels)
                    .find(|(spec, grant)| spec.kind == TunnelKind::Tcp && grant.tcp.is_none())
                {
                    live.opener.close();
                    return Err(ClientError::Config(format!(
                        "the server at {} granted the tunnel {} without a TCP port: it is older than this client and offers HTTP tunnels only",
                        config.server, old.1.name
                    )));
                }
                remembered.names = live
                    .welcome
                    .tunnels
                    .iter()
                    .map(|t| t.name.clone())
                    .collect();
                remembered.ports = live.welcome.tunnels.iter().map(|t| t.tcp).collect();
                if let Some(file) = &state_file
                    && let Err(e) = file.save(&remembered)
                {
                    warn!(error = %e, "could not save the resume secret; a restart will get new names");
                }
                if let Some(inspector) = &config.inspector {
                    inspector.connected(
                        &live.welcome.tunnels,
                        &config.tunnels,
                        live.opener.clone(),
                    );
                }
                events.send(ClientEvent::Connected {
                    tunnels: live.welcome.tunnels.clone(),
                    reconnected: connected_before,
                    signing_secret: mail_secret.clone(),
                });
                connected_before = true;
                let routes: Arc<Vec<(String, TunnelSpec)>> = Arc::new(
                    live.welcome
                        .tunnels
                        .iter()
                        .map(|t| t.name.clone())
                        .zip(config.tunnels.iter().cloned())
                        .collect(),
                );
                let end = live
                    .serve(&config, routes.clone(), &apps, &events, &shutdown)
                    .await;
                match end {
                    SessionEnd::Shutdown => return Ok(()),
                    SessionEnd::Lost(reason) => reason,
                    SessionEnd::Moved => {
                        let old = (
                            config.clone(),
                            apps.clone(),
                            events.clone(),
                            shutdown.clone(),
                        );
                        servers.skip();
                        let reason = "the server is going away; moving to the next";
                        if moves.moved((live, began), routes, old) {
                            info!(
                                "the server asked this client to move; connecting to the next one"
                            );
                            events.send(ClientEvent::Disconnected {
                                reason: reason.into(),
                                retry_in: Duration::ZERO,
                            });
                            continue;
                        }
                        // Told to move again a moment after the last
                        // move: the back-off, as after any loss.
                        reason.into()
                    }
                }
            }
            Err(Failure::Refused(e))
                if e.code == ErrorCode::NameTaken && forget_random(&config, &mut remembered) =>
            {
                info!(reason = %e.message, "a remembered name is no longer ours; asking for a new one");
                continue;
            }
            Err(Failure::Refused(e)) if e.code == ErrorCode::Unavailable => e.message,
            Err(Failure::Refused(e)) => return Err(ClientError::Refused(e)),
            // Before the first success this is a configuration mistake;
            // after it, the server may be changing and is worth waiting for.
            Err(Failure::Connect(e)) if !connected_before => return Err(ClientError::Connect(e)),
            Err(Failure::Connect(e)) => e.to_string(),
            Err(Failure::Transient(reason)) => reason,
        };
        let delay = jitter(backoff);
        if let Some(inspector) = &config.inspector {
            inspector.disconnected(&reason);
        }
        events.send(ClientEvent::Disconnected {
            reason: reason.clone(),
            retry_in: delay,
        });
        info!(%reason, retry_in = ?delay, "tunnel down; reconnecting");
        tokio::select! {
            () = sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

fn open_state(config: &ClientConfig) -> (Option<state::StateFile>, state::Remembered) {
    let Some(dir) = &config.state_dir else {
        return (None, state::Remembered::default());
    };
    match state::StateFile::open(dir, &config.state_key) {
        Ok(Some((file, remembered))) => (Some(file), remembered),
        Ok(None) => {
            info!("another droid runs the same command; this one gets names of its own");
            (None, state::Remembered::default())
        }
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot use the state directory; names will not survive a restart");
            (None, state::Remembered::default())
        }
    }
}

/// Drops remembered random names and ports (not the ones the user asked
/// for). Returns whether there was any to drop.
fn forget_random(config: &ClientConfig, remembered: &mut state::Remembered) -> bool {
    let names = config
        .tunnels
        .iter()
        .zip(&remembered.names)
        .any(|(spec, _)| spec.name.is_none());
    let ports = config
        .tunnels
        .iter()
        .zip(&remembered.ports)
        .any(|(spec, port)| spec.kind == TunnelKind::Tcp && spec.port.is_none() && port.is_some());
    remembered.names.clear();
    remembered.ports.clear();
    names || ports
}

fn hello_for(config: &ClientConfig, remembered: &state::Remembered) -> Hello {
    let reuse = remembered.names.len() == config.tunnels.len();
    Hello {
        version: PROTOCOL_VERSION,
        token: config.token.clone(),
        resume: remembered.secret.clone(),
        tunnels: config
            .tunnels
            .iter()
            .enumerate()
            .map(|(i, spec)| TunnelRequest {
                name: spec
                    .name
                    .clone()
                    .or_else(|| reuse.then(|| remembered.names[i].clone())),
                secret: spec.secret.clone(),
                adapters: match spec.kind {
                    TunnelKind::Http => spec.adapters.clone(),
                    _ => Default::default(),
                },
                auth: spec.auth.clone(),
                allow_ip: spec.allow_ip.clone(),
                host_header: (spec.host_header == HostHeader::Rewrite
                    && spec.kind == TunnelKind::Http)
                    .then(|| spec.target.host_header()),
                kind: (spec.kind != TunnelKind::Http).then_some(spec.kind),
                port: match spec.kind {
                    TunnelKind::Tcp => spec.port.or_else(|| {
                        reuse
                            .then(|| remembered.ports.get(i).copied().flatten())
                            .flatten()
                    }),
                    _ => None,
                },
            })
            .collect(),
    }
}

/// A new secret for signing deliveries: `whsec_` and 256 random bits in
/// base64, as Standard Webhooks libraries take it.
fn new_mail_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    droid_core::sign::Secret::from_key(bytes.to_vec()).to_string()
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..1.5))
}

enum Failure {
    Refused(ErrorMessage),
    /// TLS or address trouble that retrying will not fix.
    Connect(ConnectError),
    Transient(String),
}

/// A session told to move sooner than this after it began is a quick
/// move: from the second quick move in a row, the client waits its
/// back-off first, so servers that say move right after every welcome do
/// not make it spin.
const SHORTEST_STAY: Duration = Duration::from_millis(250);

/// What a client told to move keeps: the old session, serving what it
/// has in flight until its server closes it (one at most), and how many
/// quick moves in a row it made.
#[derive(Default)]
struct Moves {
    old: Option<tokio::task::JoinHandle<SessionEnd>>,
    quick: u32,
}

impl Moves {
    /// Keeps `live` (which began at `began`) serving in the background;
    /// whether to go to the next server at once (not on the second quick
    /// move in a row).
    fn moved(
        &mut self,
        (mut live, began): (Live, Instant),
        routes: Arc<Vec<(String, TunnelSpec)>>,
        (config, apps, events, shutdown): (ClientConfig, Arc<app::Apps>, Events, CancellationToken),
    ) -> bool {
        let serving =
            tokio::spawn(
                async move { live.serve(&config, routes, &apps, &events, &shutdown).await },
            );
        if let Some(before) = self.old.replace(serving) {
            before.abort();
        }
        self.quick = if began.elapsed() < SHORTEST_STAY {
            self.quick + 1
        } else {
            0
        };
        self.quick < 2
    }
}

enum SessionEnd {
    Shutdown,
    Lost(String),
    /// The server asked the client to move to its next server.
    Moved,
}

struct Live {
    welcome: Welcome,
    opener: Opener,
    inbound: mpsc::UnboundedReceiver<Stream>,
    reader: protocol::MessageReader<ReadHalf<Stream>>,
    writer: WriteHalf<Stream>,
    /// Told to move ([`ControlMessage::Move`]).
    moved: bool,
}

/// The session lives exactly as long as the client holds it: streams still
/// being forwarded must not keep a session whose owner is gone.
impl Drop for Live {
    fn drop(&mut self) {
        self.opener.close();
    }
}

/// The servers a client may use, and which to try first.
struct Servers {
    addrs: Vec<String>,
    first: usize,
}

impl Servers {
    fn new(list: &str) -> Servers {
        let addrs: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        Servers {
            addrs: if addrs.is_empty() {
                vec![list.to_string()]
            } else {
                addrs
            },
            first: 0,
        }
    }

    /// The next attempt starts with the server after the current one.
    fn skip(&mut self) {
        self.first = (self.first + 1) % self.addrs.len();
    }
}

/// Connects to the first server that answers, starting from the one that
/// answered last, and says hello. A failure is permanent (a mistake to
/// report) only when every server failed that way.
async fn connect(
    config: &ClientConfig,
    servers: &mut Servers,
    hello: Hello,
) -> Result<Live, Failure> {
    let count = servers.addrs.len();
    let mut failures = Vec::with_capacity(count);
    for i in 0..count {
        let k = (servers.first + i) % count;
        let addr = &servers.addrs[k];
        match droid_core::transport::connect(addr, config.tls.as_ref()).await {
            Ok(conn) => {
                servers.first = k;
                let result = handshake(conn, hello).await;
                if matches!(result, Err(Failure::Transient(_))) && count > 1 {
                    // This server is in trouble: the next attempt starts
                    // with the next one.
                    servers.first = (k + 1) % count;
                }
                return result;
            }
            Err(e) => {
                if count > 1 {
                    debug!(server = %addr, error = %e, "server unreachable; trying the next");
                }
                failures.push(e);
            }
        }
    }
    if failures.iter().all(|e| e.is_permanent())
        && let Some(e) = failures.pop()
    {
        return Err(Failure::Connect(e));
    }
    let reasons: Vec<String> = failures.iter().map(ToString::to_string).collect();
    Err(Failure::Transient(reasons.join("; ")))
}

async fn handshake<IO>(io: IO, hello: Hello) -> Result<Live, Failure>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = Session::start(io, Side::Client, 4);
    let lost = |e: &dyn std::fmt::Display| {
        Failure::Transient(format!("handshake with the server failed: {e}"))
    };
    let result = timeout(protocol::HANDSHAKE_TIMEOUT, async {
        let control = session.opener.open().await.map_err(|e| lost(&e))?;
        let (read, mut writer) = tokio::io::split(control);
        let mut reader = protocol::MessageReader::new(read, protocol::MAX_CONTROL_LINE);
        protocol::write_message(&mut writer, &ControlMessage::Hello(hello))
            .await
            .map_err(|e| lost(&e))?;
        loop {
            match reader.next().await {
                Ok(ControlMessage::Welcome(welcome)) if welcome.version != PROTOCOL_VERSION => {
                    return Err(Failure::Refused(ErrorMessage {
                        code: ErrorCode::Version,
                        message: format!(
                            "this client speaks Droid protocol {PROTOCOL_VERSION} and the server protocol {}; \
                             run the same release of droid on both",
                            welcome.version
                        ),
                    }));
                }
                Ok(ControlMessage::Welcome(welcome)) => return Ok((welcome, reader, writer)),
                Ok(ControlMessage::Error(e)) => return Err(Failure::Refused(e)),
                Ok(other) => debug!(message = ?other, "ignored before welcome"),
                Err(e) => return Err(lost(&e)),
            }
        }
    })
    .await;
    match result {
        Ok(Ok((welcome, reader, writer))) => Ok(Live {
            welcome,
            opener: session.opener,
            inbound: session.inbound,
            reader,
            writer,
            moved: false,
        }),
        Ok(Err(failure)) => {
            session.opener.close();
            Err(failure)
        }
        Err(_) => {
            session.opener.close();
            Err(Failure::Transient(
                "the server did not answer the hello in time".into(),
            ))
        }
    }
}

impl Live {
    /// Forwards streams and keeps the heartbeat until the session ends.
    async fn serve(
        &mut self,
        config: &ClientConfig,
        routes: Arc<Vec<(String, TunnelSpec)>>,
        apps: &Arc<app::Apps>,
        events: &Events,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let interval = Duration::from_millis(self.welcome.heartbeat_ms.max(100));
        let quiet_limit = config.heartbeat_timeout;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deadline = Instant::now() + quiet_limit;
        let (probes, mut back) = probe::Probes::new();
        // A session that was told to move already serves only what is in
        // flight, and leaves without a goodbye: its names live elsewhere.
        let moved = self.moved;
        let end = loop {
            tokio::select! {
                stream = self.inbound.recv() => match stream {
                    Some(stream) => {
                        tokio::spawn(local::serve_stream(
                            stream,
                            routes.clone(),
                            events.clone(),
                            config.inspector.clone(),
                            probes.clone(),
                            apps.clone(),
                        ));
                    }
                    None => break SessionEnd::Lost("the server closed the connection".into()),
                },
                message = self.reader.next() => {
                    deadline = Instant::now() + quiet_limit;
                    match message {
                        Ok(ControlMessage::Error(e)) => break SessionEnd::Lost(format!("the server closed the session: {}", e.message)),
                        Ok(ControlMessage::Move) if !moved => {
                            self.moved = true;
                            // Returns without closing: the caller keeps it.
                            return SessionEnd::Moved;
                        }
                        Ok(ControlMessage::Request(line)) => {
                            if let Some(inspector) = &config.inspector {
                                inspector.request_answered(line.status);
                            }
                            events.send(ClientEvent::Request {
                                tunnel: line.tunnel,
                                method: line.method,
                                path: line.path,
                                status: line.status,
                                elapsed: Duration::from_micros(line.micros),
                            });
                        }
                        Ok(_) => {}
                        Err(ProtocolError::Closed) => break SessionEnd::Lost("the server closed the connection".into()),
                        Err(e) => break SessionEnd::Lost(format!("the control stream failed: {e}")),
                    }
                }
                Some(tunnel) = back.recv() => {
                    let up = ControlMessage::TargetUp(protocol::TargetUp { tunnel });
                    if let Err(e) = protocol::write_message(&mut self.writer, &up).await {
                        break SessionEnd::Lost(format!("the connection to the server failed: {e}"));
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = protocol::write_message(&mut self.writer, &ControlMessage::Ping).await {
                        break SessionEnd::Lost(format!("the connection to the server failed: {e}"));
                    }
                }
                () = sleep_until(deadline) => {
                    break SessionEnd::Lost(format!("no heartbeat from the server for {}s", quiet_limit.as_secs_f32()));
                }
                () = shutdown.cancelled(), if moved => break SessionEnd::Shutdown,
                () = shutdown.cancelled() => {
                    // Say goodbye so the server releases the names at once.
                    let _ = timeout(Duration::from_secs(2), async {
                        let _ = protocol::write_message(&mut self.writer, &ControlMessage::Release).await;
                        let _ = self.writer.shutdown().await;
                        // the server closes the session once it has read the release
                        self.opener.ended().await;
                    })
                    .await;
                    break SessionEnd::Shutdown;
                }
            }
        };
        self.opener.close();
        end
    }
}
