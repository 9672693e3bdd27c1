//! The control side of a client's session: handshake, heartbeats, goodbye.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use droid_core::protocol::{
    self, ControlMessage, ErrorCode, ErrorMessage, Hello, PROTOCOL_VERSION, ProtocolError,
    TunnelGrant, Welcome,
};
use droid_core::session::{Session, Side};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use droid_adapters::host::{Grantee, ServerAdapter, refused};

use crate::Shared;
use crate::access::Access;
use crate::auth::TokenRefusal;
use crate::cluster::LiveClaim;
use crate::name_budget::Claimant;
use crate::registry::{ClaimRules, TcpRules, Tunnel};
use crate::request_log::{Pending, RequestLog};

/// Serves one client connection on the control port, from handshake to end.
pub(crate) async fn serve<IO>(
    shared: Arc<Shared>,
    io: IO,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut session = Session::start(io, Side::Server, shared.config.max_streams_per_tunnel);
    let opener = session.opener.clone();
    let control = match timeout(protocol::HANDSHAKE_TIMEOUT, session.inbound.recv()).await {
        Ok(Some(stream)) => stream,
        Ok(None) => {
            debug!("connection closed before the control stream opened");
            return;
        }
        Err(_) => {
            debug!("no control stream within the handshake timeout");
            opener.close();
            return;
        }
    };
    // The client opens streams of its own only to call an adapter for its
    // app; they are served once its tunnels are known.
    let inbound = session.inbound;
    let (read, write) = tokio::io::split(control);
    let mut control = Control {
        reader: protocol::MessageReader::new(read, protocol::MAX_CONTROL_LINE),
        writer: write,
    };

    let hello = match timeout(protocol::HANDSHAKE_TIMEOUT, control.read()).await {
        Ok(Ok(ControlMessage::Hello(hello))) => hello,
        Ok(Ok(other)) => {
            let e = refuse(
                ErrorCode::BadRequest,
                format!("expected hello, got {other:?}"),
            );
            control.fail(e).await;
            opener.close();
            return;
        }
        Ok(Err(e @ (ProtocolError::Malformed(_) | ProtocolError::TooLong(_)))) => {
            // Say what was wrong (a client of another version, or a bug)
            // rather than just hanging up.
            info!(%peer, error = %e, "refused a malformed hello");
            let e = refuse(
                ErrorCode::BadRequest,
                format!("the hello was not understood: {e}"),
            );
            control.fail(e).await;
            opener.close();
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "handshake failed");
            opener.close();
            return;
        }
        Err(_) => {
            debug!("no hello within the handshake timeout");
            opener.close();
            return;
        }
    };
    let taken_back = take_back_ports(&shared, &hello).await;
    let session_id = shared.registry.next_session_id();
    let (log, lines) = RequestLog::channel();
    let granted = grant(&shared, &hello, session_id, &opener, peer, log);
    let tunnels = match agreed(&shared, granted, &taken_back).await {
        Ok((welcome, tunnels)) => {
            if let Err(e) = control.write(&ControlMessage::Welcome(welcome)).await {
                debug!(error = %e, "could not send welcome");
                release(&shared, &tunnels, false).await;
                opener.close();
                return;
            }
            tunnels
        }
        Err(e) => {
            info!(%peer, code = ?e.code, reason = %e.message, "refused a client");
            control.fail(e).await;
            opener.close();
            return;
        }
    };
    let names: Vec<&str> = tunnels.iter().map(|t| t.name.as_str()).collect();
    info!(%peer, session = session_id, ?names, "tunnels up");
    shared.wake_deliveries(&tunnels);
    for tunnel in &tunnels {
        if let Some(port) = &tunnel.tcp {
            crate::tcp_front::serve_port(shared.clone(), port);
        }
    }
    let calls = tokio::spawn(crate::calls::serve(
        shared.clone(),
        inbound,
        tunnels.clone(),
    ));

    let session = SessionRef {
        opener: &opener,
        tunnels: &tunnels,
    };
    let ended = heartbeat(&shared, &mut control, &lines, session, &shutdown).await;
    calls.abort();
    match ended {
        // Its names are another node's now: forgotten here, not released.
        Ended::Moved => shared.registry.forget(&tunnels),
        Ended::Goodbye => release(&shared, &tunnels, true).await,
        Ended::Lost => release(&shared, &tunnels, false).await,
    }
    info!(%peer, session = session_id, ?names, ?ended, "tunnels down");
    let _ = control.writer.shutdown().await;
    opener.close();
}

/// A grant, once the cluster (if any) agreed to it too: its tunnels are
/// then [`Tunnel::agreed`]. A refusal undoes the claim here, and opens
/// again the ports `taken_back` for it.
async fn agreed(
    shared: &Arc<Shared>,
    granted: Result<(Welcome, Vec<Arc<Tunnel>>), ErrorMessage>,
    taken_back: &[u16],
) -> Result<(Welcome, Vec<Arc<Tunnel>>), ErrorMessage> {
    let refused = |e: ErrorMessage| {
        reopen_ports(shared, taken_back);
        Err(e)
    };
    let (welcome, tunnels) = match granted {
        Ok(granted) => granted,
        Err(e) => return refused(e),
    };
    if let Some(cluster) = shared.cluster.get()
        && let Some(claim) = LiveClaim::of(&tunnels)
        && let Err(e) = cluster.claim(&claim).await
    {
        shared.registry.forget(&tunnels);
        debug!(code = ?e.code, reason = %e.message, "the cluster refused a client");
        return refused(e);
    }
    for tunnel in &tunnels {
        tunnel
            .agreed
            .store(true, std::sync::atomic::Ordering::Release);
    }
    Ok((welcome, tunnels))
}

/// Gives up the ports this node opened for another node's TCP tunnels
/// that their owner now asks for here (it moves here), so the tunnels'
/// own listeners can take them (returned, to open again if the claim
/// fails). A stranger asking closes nothing.
async fn take_back_ports(shared: &Shared, hello: &Hello) -> Vec<u16> {
    let mut taken = Vec::new();
    let (Some(cluster), Some(secret)) = (shared.cluster.get(), &hello.resume) else {
        return taken;
    };
    let owner = crate::registry::owner_id(secret);
    for port in hello.tunnels.iter().filter_map(|t| t.port) {
        if !shared.mirrors.is_open(port) {
            continue;
        }
        let key = crate::registry::port_key(port);
        if let Ok(Some(found)) = cluster.locate(&key).await
            && found.owner == owner
        {
            shared.mirrors.give_up(port).await;
            taken.push(port);
        }
    }
    taken
}

/// Opens again the ports [`take_back_ports`] gave up for a claim that
/// failed: their tunnels are still another node's.
fn reopen_ports(shared: &Arc<Shared>, ports: &[u16]) {
    for &port in ports {
        shared.mirrors.open(shared, port);
    }
}

/// Releases a session's names, here and in the cluster.
async fn release(shared: &Shared, tunnels: &[Arc<Tunnel>], clean: bool) {
    shared.registry.release(tunnels, clean);
    if let Some(cluster) = shared.cluster.get()
        && let Some(claim) = LiveClaim::of(tunnels)
    {
        cluster.release(claim, clean).await;
    }
}

/// How long request lines gather after a batch is sent: under load one
/// write carries hundreds of them. Sent one at a time, each took a wakeup
/// of this task, a frame and often a thread switch.
const LINE_GATHER: Duration = Duration::from_millis(5);

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client said goodbye: its names are released at once.
    Goodbye,
    /// The client went away, or the server stopped: its names are held
    /// for it for the grace period.
    Lost,
    /// Told to move (the server drains), the client took its names to
    /// another node of the cluster, and nothing was left in flight here.
    Moved,
}

/// One session, as its heartbeat sees it.
#[derive(Clone, Copy)]
struct SessionRef<'a> {
    opener: &'a droid_core::session::Opener,
    tunnels: &'a [Arc<Tunnel>],
}

/// How often a session told to move checks whether its names went.
const MOVE_CHECK: Duration = Duration::from_millis(20);

/// How long a session whose names went to another node goes on serving
/// them here: requests the other nodes routed here before they heard of
/// the move (they hear within milliseconds) still find the tunnel.
const MOVE_SETTLE: Duration = Duration::from_millis(500);

/// Answers pings and sends request lines until the client leaves, goes
/// quiet, moves or the server stops. Lines go out in batches at most
/// [`LINE_GATHER`] apart. When the server drains, the client is told to
/// move ([`ControlMessage::Move`]).
async fn heartbeat<R, W>(
    shared: &Shared,
    control: &mut Control<R, W>,
    lines: &Pending,
    session: SessionRef<'_>,
    shutdown: &CancellationToken,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let SessionRef { opener, tunnels } = session;
    let quiet_limit = shared.config.heartbeat_timeout;
    let mut deadline = Instant::now() + quiet_limit;
    // Set while lines gather after a batch: until then none is taken.
    let mut gather_until: Option<Instant> = None;
    let mut moving = Moving::Not;
    let mut check = tokio::time::interval(MOVE_CHECK);
    loop {
        tokio::select! {
            message = control.read() => {
                deadline = Instant::now() + quiet_limit;
                match message {
                    Ok(ControlMessage::Ping) => {
                        if control.write(&ControlMessage::Pong).await.is_err() {
                            return Ended::Lost;
                        }
                    }
                    Ok(ControlMessage::Release) => return Ended::Goodbye,
                    Ok(ControlMessage::TargetUp(up)) => {
                        // The app is back: its waiting deliveries need not
                        // wait for their next back-off step.
                        let back: Vec<Arc<Tunnel>> =
                            tunnels.iter().filter(|t| t.name == up.tunnel).cloned().collect();
                        debug!(tunnel = %up.tunnel, "the client says its target answers again");
                        shared.wake_deliveries(&back);
                    }
                    Ok(other) => debug!(message = ?other, "ignored a control message"),
                    Err(ProtocolError::Malformed(e)) => {
                        warn!(error = %e, "malformed control message; closing the session");
                        return Ended::Lost;
                    }
                    Err(e) => {
                        debug!(error = %e, "control stream ended");
                        return Ended::Lost;
                    }
                }
            }
            batch = lines.take(), if gather_until.is_none() => {
                if control.write_lines(&batch).await.is_err() {
                    return Ended::Lost;
                }
                gather_until = Some(Instant::now() + LINE_GATHER);
            }
            () = sleep_until(gather_until.unwrap_or(deadline)), if gather_until.is_some() => {
                gather_until = None;
            }
            () = sleep_until(deadline) => {
                warn!(quiet = ?quiet_limit, "client sent no heartbeat; closing its session");
                return Ended::Lost;
            }
            () = shared.draining.cancelled(), if moving == Moving::Not => {
                moving = Moving::Told;
                if let Some(cluster) = shared.cluster.get()
                    && let Some(claim) = LiveClaim::of(tunnels)
                {
                    // Its names may go to another node while this one holds them.
                    cluster.let_move(&claim).await;
                }
                if control.write(&ControlMessage::Move).await.is_err() {
                    return Ended::Lost;
                }
                debug!("told the client to move");
            }
            _ = check.tick(), if moving != Moving::Not && shared.cluster.get().is_some() => {
                if moving == Moving::Told && moved_away(shared, tunnels).await {
                    moving = Moving::Gone(Instant::now());
                }
                let in_flight = shared.config.max_streams_per_tunnel - opener.available_streams();
                if let Moving::Gone(at) = moving
                    && at.elapsed() >= MOVE_SETTLE
                    && in_flight == 0
                {
                    return Ended::Moved;
                }
            }
            () = opener.ended() => return Ended::Lost,
            () = shutdown.cancelled() => return Ended::Lost,
        }
    }
}

/// Where a session told to move is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moving {
    Not,
    /// Told; its names are still here.
    Told,
    /// Its names are live on another node, since then.
    Gone(Instant),
}

/// Whether every name of `tunnels` is live on another node of the cluster.
async fn moved_away(shared: &Shared, tunnels: &[Arc<Tunnel>]) -> bool {
    let Some(cluster) = shared.cluster.get() else {
        return false;
    };
    for key in tunnels.iter().flat_map(|t| t.keys()) {
        match cluster.locate(&key).await {
            Ok(Some(found)) if found.live && found.node != cluster.node_id() => {}
            _ => return false,
        }
    }
    true
}

fn grant(
    shared: &Shared,
    hello: &Hello,
    session: u64,
    opener: &droid_core::session::Opener,
    peer: SocketAddr,
    log: RequestLog,
) -> Result<(Welcome, Vec<Arc<Tunnel>>), ErrorMessage> {
    if hello.version != PROTOCOL_VERSION {
        return Err(refuse(
            ErrorCode::Version,
            format!(
                "this server speaks Droid protocol {PROTOCOL_VERSION} and the client protocol {}; \
                 run the same release of droid on both",
                hello.version
            ),
        ));
    }
    let caller = shared
        .auth
        .identify(hello.token.as_deref())
        .map_err(|why| {
            let message = match why {
                TokenRefusal::Missing => {
                    "this server requires a token: pass --token (or set DROID_TOKEN)"
                }
                TokenRefusal::Unknown => "the token is not valid on this server",
            };
            refuse(ErrorCode::Unauthorized, message.to_string())
        })?;
    let most = shared.auth.policy.max_tunnels_per_session;
    if hello.tunnels.is_empty() || hello.tunnels.len() > most {
        return Err(refuse(
            ErrorCode::BadRequest,
            format!("ask for 1 to {most} tunnels per connection"),
        ));
    }
    let names: Vec<&str> = hello
        .tunnels
        .iter()
        .filter_map(|t| t.name.as_deref())
        .collect();
    let ports: Vec<String> = hello
        .tunnels
        .iter()
        .filter_map(|t| t.port.map(crate::registry::port_key))
        .collect();
    let keys: Vec<&str> = names
        .iter()
        .copied()
        .chain(ports.iter().map(String::as_str))
        .collect();
    let owned = shared.auth.owned_by(caller, &keys);
    if let Some(name) = names
        .iter()
        .find(|n| shared.auth.owner_of(n).is_some() && !owned.contains(**n))
    {
        return Err(refuse(
            ErrorCode::BadName,
            format!("the name {name} is reserved on this server; only its token may claim it"),
        ));
    }
    let adapters = shared.adapters();
    let kept = |name: &str| {
        crate::names::is_kept_by_default(name)
            || adapters.iter().any(|a| a.reserved_names().contains(&name))
    };
    if shared.config.names.keep_service_names
        && let Some(name) = names.iter().find(|n| kept(n) && !owned.contains(**n))
    {
        return Err(refuse(
            ErrorCode::BadName,
            format!(
                "the name {name} is kept on this server (common service names such as www, mail \
                 and api, and punycode names, go only to a token that reserves them); choose another"
            ),
        ));
    }
    let access = hello
        .tunnels
        .iter()
        .map(|t| Access::new(t.auth.as_deref(), &t.allow_ip))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|why| refuse(ErrorCode::BadRequest, why))?;
    let token = match caller {
        crate::auth::Caller::Token(i) => Some(i),
        crate::auth::Caller::Anonymous => None,
    };
    let index = hello
        .tunnels
        .iter()
        .map(|t| {
            let settings = t.adapter_settings();
            adapters
                .iter()
                .filter(|a| settings.of(a.name()).is_some())
                .flat_map(|a| {
                    a.index_keys(&settings)
                        .into_iter()
                        .map(|key| format!("{}:{key}", a.name()))
                })
                .collect()
        })
        .collect();
    let rules = ClaimRules {
        claimant: Claimant::new(&shared.config.names.limits, peer.ip(), token),
        index,
        owned,
        limits: shared.auth.limit_keys(caller, peer.ip()),
        access,
        rate: shared.config.request_rate,
        log,
        tcp: shared.config.tcp_ports.clone().map(|ports| TcpRules {
            ports,
            bind: shared.config.tcp_bind,
        }),
    };
    let grant = shared.registry.claim_with(
        &hello.tunnels,
        hello.resume.as_deref(),
        session,
        opener,
        rules,
    )?;
    let welcome = Welcome {
        version: PROTOCOL_VERSION,
        session: format!("{session}"),
        resume: grant.secret,
        tunnels: grant
            .tunnels
            .iter()
            .map(|t| match &t.tcp {
                Some(port) => TunnelGrant {
                    name: t.name.clone(),
                    url: shared.config.tcp_url_for(port.port),
                    tcp: Some(port.port),
                    adapters: Default::default(),
                },
                None => TunnelGrant {
                    name: t.name.clone(),
                    url: shared.config.url_for(&t.name),
                    tcp: None,
                    adapters: adapter_grants(&adapters, t, &shared.config.domain, peer.ip()),
                },
            })
            .collect(),
        heartbeat_ms: duration_ms(shared.config.heartbeat_interval),
    };
    Ok((welcome, grant.tunnels))
}

/// What each adapter the tunnel asked for says to it; an adapter this
/// server does not run says so.
fn adapter_grants(
    adapters: &[Arc<dyn ServerAdapter>],
    tunnel: &Tunnel,
    domain: &str,
    client: std::net::IpAddr,
) -> BTreeMap<String, serde_json::Value> {
    let owner = crate::deliveries::owner_key(&tunnel.owner_id, &tunnel.name);
    let grantee = Grantee {
        name: &tunnel.name,
        owner: &owner,
        domain,
        settings: &tunnel.adapters,
        client,
    };
    tunnel
        .adapters
        .adapters
        .keys()
        .map(|name| {
            let granted = match adapters.iter().find(|a| a.name() == name) {
                Some(adapter) => adapter.grant(&grantee),
                None => Some(refused(format!(
                    "this server does not run the {name} adapter"
                ))),
            };
            (name.clone(), granted)
        })
        .filter_map(|(name, granted)| Some((name, granted?)))
        .collect()
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn refuse(code: ErrorCode, message: String) -> ErrorMessage {
    ErrorMessage { code, message }
}

struct Control<R, W> {
    reader: protocol::MessageReader<R>,
    writer: W,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Control<R, W> {
    async fn read(&mut self) -> Result<ControlMessage, ProtocolError> {
        self.reader.next().await
    }

    async fn write(&mut self, message: &ControlMessage) -> Result<(), ProtocolError> {
        protocol::write_message(&mut self.writer, message).await
    }

    /// Sends a batch of request lines in one write.
    async fn write_lines(&mut self, batch: &[u8]) -> Result<(), ProtocolError> {
        self.writer.write_all(batch).await?;
        self.writer.flush().await?;
        Ok(())
    }

    /// Sends a fatal error and closes the stream, so the client reads it
    /// before the session goes away.
    async fn fail(&mut self, error: ErrorMessage) {
        let _ = timeout(Duration::from_secs(2), async {
            let _ = self.write(&ControlMessage::Error(error)).await;
            let _ = self.writer.shutdown().await;
            // Wait for the client to close its side (or the timeout).
            let _ = self.read().await;
        })
        .await;
    }
}
