//! Run with: `cargo run --release --example bench -- [http|smtp|mqtt|syslog|send|all|cluster] [--secs N]
//! [--max-mails N] [--only TEXT] [--mode conn|kept]`, or `... --example bench -- peers`.
//!
//! - `peers`: the `droid` binary as separate processes under `wrk`, beside
//!   an nginx origin reached directly and, where they are installed, bore
//!   and rathole: `../shared/bench/peers.sh` (it installs wrk and nginx on
//!   first use, builds `target/release/droid`, and prints the table of
//!   ratios to direct). `--all-peers` asks it to install the peers too.
//!
//! Droid against the same work without Droid, in one process and one run,
//! everything on 127.0.0.1 port 0. It is a report, not a test: nothing here
//! passes or fails on a number.
//!
//! - `smtp`: 10 KiB mails per second at 1 and 32 concurrent SMTP sessions,
//!   delivered two ways to every target alike:
//!   - `new conn` (the measurement the numbers are about): each mail comes
//!     on a connection of its own, as a sending MTA delivers to an inbound
//!     MX: connect, `220`, `EHLO`, then `MAIL`/`RCPT`/`DATA` pipelined, the
//!     body, the `250`, `QUIT`, `221`, close. p50/p99 run from the connect
//!     to the `250` after the body: accept to POST;
//!   - `kept`: each session says EHLO once, then pipelines
//!     `MAIL`/`RCPT`/`DATA` and sends the body, over and over on one
//!     connection (a relay with a queue to flush); p50/p99 run from `MAIL
//!     FROM` to the `250`.
//!
//!   Droid answers `250` only once the app took the POST, so for the last
//!   two targets every counted mail is a POST the app answered. Targets:
//!   - `bare sink`: a minimal SMTP server in this file that speaks the same
//!     commands, reads every body to its `.` line and answers `250` (no
//!     parser, no limits, no delivery): the ceiling of the load client and
//!     TCP;
//!   - `droid smtp, discard raw`: Droid's SMTP adapter with a sink that
//!     answers 200 at once and a raw body (no MIME parsing, no HTTP): the
//!     limit of Droid's SMTP side, as in `adapters/tests/bench.rs`;
//!   - `droid smtp, discard json`: the same, plus the JSON conversion and
//!     the signature: what a delivery costs before any HTTP;
//!   - `standalone`: `droid smtp --post`: the adapter and `UrlSink` POSTing
//!     JSON to a hyper app;
//!   - `tunnel`: `droid server --smtp` and `droid http` (in-process
//!     `droid_server::Server::serve_smtp` and `droid_client::run`) in front of
//!     the same app.
//!
//!   The last two have a spool, as `droid smtp` and `droid server` do by
//!   default (in a temporary directory): a mail the app takes at once never
//!   touches it, and one it does not take is not lost.
//!
//!   `/bare` and `/droid` are each row's rate over the bare sink's and over
//!   Droid's discard (raw) sink, in the same mode at the same session count;
//!   `app conns` counts the connections the app accepted during the row.
//!   `--only TEXT` runs only the targets whose label contains TEXT (and the
//!   bare sink, for the ratios); `--mode` runs one of the two modes.
//! - `mqtt`: QoS 1 messages per second, PUBLISH to PUBACK, at 1 and 32
//!   publishers, to a bare sink, to Droid's adapter with a discarding sink,
//!   and through the tunnel to the app (see `mqtt.rs`). `--max-mails`
//!   bounds each row's messages too.
//! - `syslog` (only when asked): syslog over TCP and UDP beside MQTT QoS 0,
//!   messages per second from the sender to the app (see `syslog.rs`).
//! - `send` (only when asked): mail the app sends (`POST /email`, through
//!   the tunnel and a relay: Python's aiosmtpd with STARTTLS and AUTH)
//!   beside mail it receives, per second, in the same run (see `send.rs`).
//! - `cluster` (only when asked; it starts a `redis-server`): GETs through
//!   the node that holds a tunnel and through another node that forwards
//!   them over the peer link (see `cluster.rs`).
//! - `http`: GETs of 100-byte bodies over 64 keep-alive connections and of
//!   1 MiB bodies over 16, straight to a hyper app, through an in-process
//!   Droid server and client (one yamux session), and through a second
//!   such pair whose client runs the inspector, capturing every exchange
//!   (`inspected`). `x direct` is a tunnel's rate over the direct one (1.00
//!   = free); for p50 and p99 it is the tunnel's latency over the direct
//!   latency (1.00 = no added delay). `inspected / tunnel` is what the
//!   inspector costs.
//!
//! Everything (load, app, server, client) shares one tokio runtime, so the
//! load generator takes CPU from what it measures, as `wrk` on the same
//! machine would: compare ratios, not absolute numbers, and rerun on a quiet
//! machine. `../shared/bench/peers.sh` runs the `droid` binary as separate
//! processes beside bore, rathole and nginx with `wrk`. A short warm-up
//! (a fifth of `--secs`, at most 1 s) runs before each measurement and is
//! not counted. Every wait is bounded (30 s per reply or connect), and so
//! is every loop, by the window and by `--max-mails` per row.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use droid_adapters::{
    ConnLimits, Format, MailOptions, MailRouter, SmtpAdapter, SmtpConfig, Spool, SpoolConfig,
    UrlRouter, UrlSink,
};
use droid_adapters::{MailSettings, MqttSettings};
use droid_client::{ClientConfig, ClientEvent, Target, TunnelSpec};
use droid_core::deliver::{Deliver, DeliverFuture};
use droid_server::{Server, ServerConfig};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod cluster;
mod mqtt;
mod send;
mod syslog;

const DOMAIN: &str = "bench.test";
const NAME: &str = "bench";
const SECRET: &str = "bench-secret";
const MAIL_SIZE: usize = 10 * 1024;
const SMALL: usize = 100;
const BIG: usize = 1024 * 1024;
/// The longest wait for one connect, one SMTP reply or one HTTP response.
const STALL: Duration = Duration::from_secs(30);
/// The most lines one SMTP reply may have.
const MAX_REPLY_LINES: usize = 32;
/// The pause after a failed `accept` (out of file descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

struct Args {
    http: bool,
    smtp: bool,
    mqtt: bool,
    cluster: bool,
    syslog: bool,
    send: bool,
    secs: f64,
    max_mails: u64,
    only: Option<String>,
    modes: Vec<SmtpMode>,
}

/// How the SMTP load client brings its mails.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SmtpMode {
    /// One connection per mail: connect, EHLO, one mail, QUIT.
    Connection,
    /// One connection per session, EHLO once, mail after mail.
    Kept,
}

impl SmtpMode {
    fn label(self) -> &'static str {
        match self {
            SmtpMode::Connection => "new conn",
            SmtpMode::Kept => "kept",
        }
    }
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        http: true,
        smtp: true,
        mqtt: true,
        cluster: false,
        syslog: false,
        send: false,
        secs: 5.0,
        max_mails: 1_000_000,
        only: None,
        modes: vec![SmtpMode::Connection, SmtpMode::Kept],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "http" => (a.http, a.smtp, a.mqtt) = (true, false, false),
            "smtp" => (a.http, a.smtp, a.mqtt) = (false, true, false),
            "mqtt" => (a.http, a.smtp, a.mqtt) = (false, false, true),
            "syslog" => {
                (a.http, a.smtp, a.mqtt) = (false, false, false);
                a.syslog = true;
            }
            "send" => {
                (a.http, a.smtp, a.mqtt) = (false, false, false);
                a.send = true;
            }
            "all" => (a.http, a.smtp, a.mqtt) = (true, true, true),
            "cluster" => {
                (a.http, a.smtp, a.mqtt) = (false, false, false);
                a.cluster = true;
            }
            "--secs" => {
                a.secs = it.next().context("--secs N")?.parse()?;
                if !(a.secs > 0.0 && a.secs < 3600.0) {
                    bail!("--secs must be between 0 and 3600");
                }
            }
            "--max-mails" => a.max_mails = it.next().context("--max-mails N")?.parse()?,
            "--only" => a.only = Some(it.next().context("--only TEXT")?),
            "--mode" => {
                a.modes = match it.next().context("--mode conn|kept")?.as_str() {
                    "conn" => vec![SmtpMode::Connection],
                    "kept" => vec![SmtpMode::Kept],
                    other => bail!("--mode {other:?}: conn or kept"),
                }
            }
            other => bail!(
                "unknown argument {other:?}; usage: bench [http|smtp|mqtt|syslog|send|all|cluster] [--secs N] \
                 [--max-mails N] [--only TEXT] [--mode conn|kept]"
            ),
        }
    }
    Ok(a)
}

/// When counting starts and stops.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn new(secs: f64) -> Window {
        let run = Duration::from_secs_f64(secs);
        let warm = (run / 5).min(Duration::from_secs(1));
        let start = Instant::now() + warm;
        Window {
            start,
            end: start + run,
        }
    }

    /// Whether an operation from `t0` to `t1` counts.
    fn counts(&self, t0: Instant, t1: Instant) -> bool {
        t0 >= self.start && t1 <= self.end
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if let Some(arg) = std::env::args().nth(1)
        && arg == "peers"
    {
        return peers(std::env::args().skip(2).any(|a| a == "--all-peers"));
    }
    let args = args()?;
    println!(
        "droid bench: {} s per row after warm-up, {} cores, one process, loopback",
        args.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let app = App::start().await?;
    if args.send {
        return send::send_bench(&args, &app).await;
    }
    let tunnel = Tunnel::start(&app, None, None).await?;
    if args.smtp {
        smtp_bench(&args, &app, &tunnel).await?;
    }
    if args.mqtt {
        mqtt::mqtt_bench(&args, &app, &tunnel).await?;
    }
    if args.syslog {
        syslog::syslog_bench(&args, &app, &tunnel).await?;
    }
    if args.cluster {
        cluster::cluster_bench(&args, &app).await?;
    }
    if args.http {
        let inspector = droid_client::Inspector::new(droid_client::InspectorOptions::default());
        let inspected = Tunnel::start(&app, Some(inspector), None).await?;
        http_bench(&args, &app, &tunnel, &inspected).await?;
        inspected.stop.cancel();
    }
    tunnel.stop.cancel();
    app.stop.cancel();
    Ok(())
}

/// Runs `../shared/bench/peers.sh` from the checkout's root with Droid,
/// direct, and the peers it has installed (all of them with `all_peers`).
fn peers(all_peers: bool) -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = std::env::var_os("DROID_PEERS_SH")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/bench/peers.sh"));
    if !script.is_file() {
        bail!(
            "{} not found: it ships in ../shared beside the checkout (or set DROID_PEERS_SH)",
            script.display()
        );
    }
    let cache = std::env::var_os("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/tmp/droid-peerbench".into());
    let mut targets = vec!["direct", "droid"];
    for (peer, binary) in [
        ("bore", "bin-bore/bin/bore"),
        ("rathole", "bin-rathole/bin/rathole"),
    ] {
        if all_peers || cache.join(binary).is_file() {
            targets.push(peer);
        }
    }
    println!(
        "droid bench peers: {} (TARGETS=\"{}\")",
        script.display(),
        targets.join(" ")
    );
    let status = std::process::Command::new("bash")
        .arg(&script)
        .env("TARGETS", targets.join(" "))
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!("{} failed: {status}", script.display());
    }
    Ok(())
}

// ---------------------------------------------------------------- the app

/// The local app: `/small` (100 B), `/big` (1 MiB), `/inbound` (takes a
/// mail POST, answers 200), anything else 404.
struct App {
    addr: SocketAddr,
    posts: Arc<AtomicU64>,
    /// Connections it accepted.
    connections: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl App {
    async fn start() -> anyhow::Result<App> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let posts = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let small = Bytes::from(vec![b's'; SMALL]);
        let big = Bytes::from(vec![b'b'; BIG]);
        let (p, token, accepted) = (posts.clone(), stop.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Some(io) = next_connection(&listener, &token).await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let _ = io.set_nodelay(true);
                let (small, big, p) = (small.clone(), big.clone(), p.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (small, big, p) = (small.clone(), big.clone(), p.clone());
                    async move {
                        let body = match req.uri().path() {
                            "/small" => small,
                            "/big" => big,
                            "/inbound" => {
                                let _ = req.into_body().collect().await;
                                p.fetch_add(1, Ordering::Relaxed);
                                Bytes::from_static(b"ok")
                            }
                            _ => {
                                let mut r = Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                return Ok::<_, Infallible>(r);
                            }
                        };
                        Ok(Response::new(Full::new(body)))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), service),
                );
            }
        });
        Ok(App {
            addr,
            posts,
            connections,
            stop,
        })
    }
}

// ---------------------------------------------------------------- the tunnel

/// An in-process Droid server (HTTP, control, SMTP and MQTT listeners) and
/// one client with one tunnel to the app, its mail and MQTT messages POSTed
/// to `/inbound`; with an inspector, every exchange through it is captured.
struct Tunnel {
    http: SocketAddr,
    smtp: SocketAddr,
    mqtt: SocketAddr,
    /// The tunnel's syslog port (UDP and TCP).
    syslog: SocketAddr,
    host: String,
    stop: CancellationToken,
    /// Its mail spool, removed when the bench ends.
    _spool: tempfile::TempDir,
}

impl Tunnel {
    /// A server and a client with the tunnel `NAME`; the server sends
    /// apps' mail through `relay`, if given.
    async fn start(
        app: &App,
        inspector: Option<droid_client::Inspector>,
        relay: Option<droid_adapters::smtp::relay::Relay>,
    ) -> anyhow::Result<Tunnel> {
        let stop = CancellationToken::new();
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let control = TcpListener::bind("127.0.0.1:0").await?;
        let smtp = droid_adapters::bind_listener("127.0.0.1:0".parse()?).await?;
        let mqtt = droid_adapters::bind_listener("127.0.0.1:0".parse()?).await?;
        let (http_addr, control_addr, smtp_addr, mqtt_addr) = (
            http.local_addr()?,
            control.local_addr()?,
            smtp.local_addr()?,
            mqtt.local_addr()?,
        );
        let mut config = ServerConfig::new(DOMAIN);
        config.public_port = Some(http_addr.port());
        // The load comes from 127.0.0.1: as if from many addresses.
        config.visitors.max_per_ip = config.visitors.max_connections;
        let server = Server::new(config);
        let (s, token) = (server.clone(), stop.clone());
        tokio::spawn(async move { s.run(http, control, token).await });
        let dir = tempfile::tempdir()?;
        let spool = Spool::open(dir.path(), SpoolConfig::default())?;
        let sending = match relay {
            Some(relay) => droid_adapters::smtp::outbound::Elsewhere::Relay(Box::new(relay)),
            None => droid_adapters::smtp::outbound::Elsewhere::Refuse,
        };
        server.add_adapter(Arc::new(
            droid_adapters::SmtpService::new(
                SmtpConfig::default(),
                vec![smtp.into()],
                smtp_limits(),
            )
            .sending(sending, u32::MAX),
        ));
        server.add_adapter(Arc::new(droid_adapters::MqttService::new(
            droid_adapters::MqttConfig::default(),
            vec![mqtt],
            Vec::new(),
            smtp_limits(),
        )));
        server.add_adapter(Arc::new(droid_adapters::syslog::SyslogService::new(
            droid_adapters::syslog::SyslogConfig {
                host: Some("127.0.0.1".into()),
                // 32 senders from one address: past the default of 20.
                limits: smtp_limits(),
                ..Default::default()
            },
        )));
        let (s, token) = (server.clone(), stop.clone());
        tokio::spawn(s.serve_adapters(Some(spool), token));

        let mail = MailSettings {
            path: Some("/inbound".into()),
            ..MailSettings::default()
        };
        let mqtt = MqttSettings {
            path: Some("/inbound".into()),
            ..MqttSettings::default()
        };
        let spec = TunnelSpec {
            name: Some(NAME.into()),
            secret: Some(SECRET.into()),
            adapters: [
                (
                    droid_adapters::smtp::NAME.to_string(),
                    serde_json::to_value(mail)?,
                ),
                (
                    droid_adapters::mqtt::NAME.to_string(),
                    serde_json::to_value(mqtt)?,
                ),
                (
                    droid_adapters::syslog::NAME.to_string(),
                    serde_json::json!({ "path": "/inbound" }),
                ),
            ]
            .into(),
            ..TunnelSpec::http(Target::new("127.0.0.1", app.addr.port()))
        };
        let mut config = ClientConfig::new(control_addr.to_string(), vec![spec]);
        config.state_dir = None;
        config.inspector = inspector;
        let (tx, mut events) = tokio::sync::mpsc::channel(droid_client::EVENT_QUEUE);
        tokio::spawn(droid_client::run(config, Some(tx), stop.clone()));
        let grant = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(event) = events.recv().await {
                match event {
                    ClientEvent::Connected { tunnels, .. } => return Ok(tunnels),
                    ClientEvent::Disconnected { reason, .. } => bail!("tunnel down: {reason}"),
                    _ => {}
                }
            }
            bail!("the client stopped")
        })
        .await
        .context("no tunnel within 20 s")??;
        // The client reports every request: keep the channel empty.
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let syslog_port = grant[0].adapters[droid_adapters::syslog::NAME]["port"]
            .as_u64()
            .context("no syslog port in the grant")?;
        Ok(Tunnel {
            http: http_addr,
            smtp: smtp_addr,
            mqtt: mqtt_addr,
            syslog: SocketAddr::from(([127, 0, 0, 1], u16::try_from(syslog_port)?)),
            host: format!("{}.{DOMAIN}", grant[0].name),
            stop,
            _spool: dir,
        })
    }
}

/// Room for 32 sessions from one IP, for every SMTP target alike.
fn smtp_limits() -> ConnLimits {
    ConnLimits {
        max_connections: 1000,
        max_per_ip: 100,
    }
}

// ---------------------------------------------------------------- smtp

/// Answers 200 at once, without looking at the request.
struct Discard;

impl Deliver for Discard {
    fn deliver(&self, _request: http::Request<Bytes>) -> DeliverFuture<'_> {
        Box::pin(async { Ok(http::Response::new(Bytes::new())) })
    }
}

/// Droid's SMTP adapter on 127.0.0.1:0 delivering through `router`, with
/// `spool` (retried until `stop`) if given.
async fn droid_smtp(
    router: Arc<dyn MailRouter>,
    spool: Option<Arc<Spool>>,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = droid_adapters::bind_listener("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    if let Some(spool) = &spool {
        tokio::spawn(spool.clone().run(router.clone(), stop.clone()));
    }
    let adapter = Arc::new(SmtpAdapter::new(SmtpConfig::default(), router, spool));
    tokio::spawn(droid_adapters::run_adapter(
        [listener.into()],
        adapter,
        smtp_limits(),
        stop.clone(),
    ));
    Ok(addr)
}

/// The next connection on `listener`, or `None` once `stop` fires; a
/// failed accept (out of file descriptors, say) backs off and tries again.
async fn next_connection(listener: &TcpListener, stop: &CancellationToken) -> Option<TcpStream> {
    loop {
        tokio::select! {
            a = listener.accept() => match a {
                Ok((io, _)) => return Some(io),
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
            () = stop.cancelled() => return None,
        }
    }
}

/// The smallest SMTP server that works with the load client: it answers
/// every command with 250 (354 for DATA, 221 for QUIT, then closes), reads
/// the body up to its `.` line, and writes its replies once it has read all
/// that was pipelined, as Droid does.
async fn bare_sink(stop: &CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = droid_adapters::bind_listener("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    let stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let Some(io) = next_connection(&listener, &stop).await else {
                return;
            };
            tokio::spawn(async move {
                let _ = io.set_nodelay(true);
                let (r, mut w) = io.into_split();
                let mut r = BufReader::with_capacity(64 * 1024, r);
                let mut out = b"220 bare ESMTP\r\n".to_vec();
                let (mut line, mut in_data) = (Vec::new(), false);
                loop {
                    if r.buffer().is_empty() && !out.is_empty() {
                        if w.write_all(&out).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                    line.clear();
                    match r.read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if in_data {
                        if line == b".\r\n" {
                            in_data = false;
                            out.extend_from_slice(b"250 ok\r\n");
                        }
                        continue;
                    }
                    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                    match &verb[..] {
                        b"EHLO" => out.extend_from_slice(b"250-bare\r\n250 PIPELINING\r\n"),
                        b"DATA" => {
                            in_data = true;
                            out.extend_from_slice(b"354 go on\r\n");
                        }
                        b"QUIT" => {
                            out.extend_from_slice(b"221 bye\r\n");
                            let _ = w.write_all(&out).await;
                            return;
                        }
                        _ => out.extend_from_slice(b"250 ok\r\n"),
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A 10 KiB message (headers and text), ending in the `.` line.
fn message() -> Bytes {
    let mut m = String::from(
        "From: Ann <ann@example.com>\r\nTo: inbox@example.com\r\nSubject: bench\r\n\
         Message-ID: <bench@example.com>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
    );
    let line = "The quick brown fox jumps over the lazy dog, 0123456789.\r\n";
    while m.len() + line.len() <= MAIL_SIZE {
        m.push_str(line);
    }
    m.push_str(&"x".repeat(MAIL_SIZE - m.len() - 2));
    m.push_str("\r\n");
    assert_eq!(m.len(), MAIL_SIZE);
    m.push_str(".\r\n");
    Bytes::from(m)
}

#[derive(Default)]
struct Measured {
    /// Operations that started and ended inside the window.
    done: u64,
    /// Body bytes of those (HTTP only).
    bytes: u64,
    errors: u64,
    first_error: Option<String>,
    /// Latency of each counted operation, in microseconds.
    latencies: Vec<u32>,
}

impl Measured {
    fn merge(&mut self, other: Measured) {
        self.done += other.done;
        self.bytes += other.bytes;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies.extend(other.latencies);
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn percentile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        Duration::from_micros(u64::from(self.latencies[i]))
    }
}

/// Reads one SMTP reply (all its lines) and checks its code.
async fn reply(r: &mut Reader, line: &mut String, want: &str) -> anyhow::Result<()> {
    for _ in 0..MAX_REPLY_LINES {
        line.clear();
        let n = tokio::time::timeout(STALL, r.read_line(line))
            .await
            .context("no SMTP reply within 30 s")??;
        if n == 0 {
            bail!("the server closed the connection (waiting for {want})");
        }
        if !line.starts_with(want) {
            bail!("wanted {want}, got {}", line.trim_end());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
    bail!("a reply of more than {MAX_REPLY_LINES} lines")
}

/// One SMTP session: mails until the window closes or `budget` runs out, in
/// `mode`. The first error ends it.
async fn smtp_session(
    addr: SocketAddr,
    rcpt: Arc<str>,
    mail: Bytes,
    window: Window,
    budget: Arc<AtomicU64>,
    mode: SmtpMode,
) -> Measured {
    let mut m = Measured::default();
    let envelope = format!("MAIL FROM:<ann@example.com>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
    let result = match mode {
        SmtpMode::Connection => {
            mails_on_new_connections(addr, &envelope, &mail, window, &budget, &mut m).await
        }
        SmtpMode::Kept => {
            mails_on_one_connection(addr, &envelope, &mail, window, &budget, &mut m).await
        }
    };
    if let Err(e) = result {
        m.error(e);
    }
    m
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;
type Writer = tokio::net::tcp::OwnedWriteHalf;

/// Connects and reads the greeting and the EHLO reply.
async fn smtp_open(addr: SocketAddr, line: &mut String) -> anyhow::Result<(Reader, Writer)> {
    let io = tokio::time::timeout(STALL, TcpStream::connect(addr))
        .await
        .context("no connection within 30 s")??;
    io.set_nodelay(true)?;
    let (r, mut w) = io.into_split();
    let mut r = BufReader::new(r);
    reply(&mut r, line, "220").await?;
    w.write_all(b"EHLO bench.example.com\r\n").await?;
    reply(&mut r, line, "250").await?;
    Ok((r, w))
}

/// Sends one mail (envelope pipelined, then the body) and reads the `250`.
async fn smtp_mail(
    r: &mut Reader,
    w: &mut Writer,
    line: &mut String,
    envelope: &str,
    mail: &[u8],
) -> anyhow::Result<()> {
    w.write_all(envelope.as_bytes()).await?;
    for want in ["250", "250", "354"] {
        reply(r, line, want).await?;
    }
    w.write_all(mail).await?;
    reply(r, line, "250").await
}

/// Takes one mail from the row's budget; false once it is spent.
fn take_one(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// Counts one mail from `t0` to `t1` if it falls in the window.
fn count(m: &mut Measured, window: &Window, t0: Instant, t1: Instant) {
    if window.counts(t0, t1) {
        m.done += 1;
        m.latencies
            .push(u32::try_from((t1 - t0).as_micros()).unwrap_or(u32::MAX));
    }
}

/// Each mail on a connection of its own, as an MTA delivers to an MX.
async fn mails_on_new_connections(
    addr: SocketAddr,
    envelope: &str,
    mail: &[u8],
    window: Window,
    budget: &AtomicU64,
    m: &mut Measured,
) -> anyhow::Result<()> {
    let mut line = String::new();
    while Instant::now() < window.end && take_one(budget) {
        let t0 = Instant::now();
        let (mut r, mut w) = smtp_open(addr, &mut line).await?;
        smtp_mail(&mut r, &mut w, &mut line, envelope, mail).await?;
        let t1 = Instant::now();
        w.write_all(b"QUIT\r\n").await?;
        reply(&mut r, &mut line, "221").await?;
        count(m, &window, t0, t1);
    }
    Ok(())
}

/// EHLO once, then mail after mail on the same connection.
async fn mails_on_one_connection(
    addr: SocketAddr,
    envelope: &str,
    mail: &[u8],
    window: Window,
    budget: &AtomicU64,
    m: &mut Measured,
) -> anyhow::Result<()> {
    let mut line = String::new();
    let (mut r, mut w) = smtp_open(addr, &mut line).await?;
    while Instant::now() < window.end && take_one(budget) {
        let t0 = Instant::now();
        smtp_mail(&mut r, &mut w, &mut line, envelope, mail).await?;
        count(m, &window, t0, Instant::now());
    }
    w.write_all(b"QUIT\r\n").await?;
    reply(&mut r, &mut line, "221").await
}

async fn smtp_load(
    addr: SocketAddr,
    rcpt: &str,
    sessions: usize,
    mode: SmtpMode,
    args: &Args,
) -> anyhow::Result<(Measured, f64)> {
    let (rcpt, mail) = (Arc::<str>::from(rcpt), message());
    let budget = Arc::new(AtomicU64::new(args.max_mails));
    let window = Window::new(args.secs);
    let mut set = JoinSet::new();
    for _ in 0..sessions {
        set.spawn(smtp_session(
            addr,
            rcpt.clone(),
            mail.clone(),
            window,
            budget.clone(),
            mode,
        ));
    }
    let mut all = Measured::default();
    while let Some(m) = set.join_next().await {
        all.merge(m?);
    }
    all.latencies.sort_unstable();
    // A count-bounded run may end before the window does.
    let secs = (Instant::now().min(window.end) - window.start).as_secs_f64();
    Ok((all, secs.max(1e-3)))
}

/// One SMTP target of the bench.
struct SmtpTarget {
    label: &'static str,
    addr: SocketAddr,
    rcpt: String,
    /// Whether its mail reaches the app (then every counted mail must be a
    /// POST the app answered).
    posts: bool,
}

async fn smtp_bench(args: &Args, app: &App, tunnel: &Tunnel) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let raw = MailOptions {
        format: Format::Raw,
        secret: SECRET.into(),
        ..MailOptions::default()
    };
    let json = MailOptions {
        secret: SECRET.into(),
        ..MailOptions::default()
    };
    let discard = |options| -> Arc<dyn MailRouter> {
        Arc::new(UrlRouter::new(Arc::new(Discard), "discard", options, None))
    };
    // Like `droid smtp`, the standalone adapter has a spool; a mail the app
    // takes at once never touches it.
    let spool_dir = tempfile::tempdir()?;
    let spool = Spool::open(spool_dir.path(), SpoolConfig::default())?;
    let url = format!("http://{}/inbound", app.addr);
    let sink = UrlSink::new(&url)?.with_timeout(STALL);
    let standalone = Arc::new(UrlRouter::new(
        Arc::new(sink),
        url.clone(),
        MailOptions {
            path: "/inbound".into(),
            ..json.clone()
        },
        None,
    ));
    let local = |label, addr, posts| SmtpTarget {
        label,
        addr,
        rcpt: "inbox@example.com".into(),
        posts,
    };
    let mut targets = vec![
        local("bare sink", bare_sink(&stop).await?, false),
        local(
            "droid smtp, discard raw",
            droid_smtp(discard(raw), None, &stop).await?,
            false,
        ),
        local(
            "droid smtp, discard json",
            droid_smtp(discard(json), None, &stop).await?,
            false,
        ),
        local(
            "standalone -> app",
            droid_smtp(standalone, Some(spool), &stop).await?,
            true,
        ),
        SmtpTarget {
            label: "tunnel -> app",
            addr: tunnel.smtp,
            rcpt: format!("inbox@{}", tunnel.host),
            posts: true,
        },
    ];
    if let Some(only) = &args.only {
        targets.retain(|t| t.label == "bare sink" || t.label.contains(only.as_str()));
    }

    println!();
    println!("SMTP: 10 KiB mails, accept to app POST (250 after DATA)");
    println!(
        "{:<26} {:>8} {:>8} {:>9} {:>6} {:>6} {:>9} {:>9} {:>7} {:>9}",
        "target",
        "mode",
        "sessions",
        "mails/s",
        "/bare",
        "/droid",
        "p50",
        "p99",
        "errors",
        "app conns"
    );
    for &mode in &args.modes {
        for sessions in [1, 32] {
            let mut rows = Vec::new();
            for target in &targets {
                let before = app.posts.load(Ordering::Relaxed);
                let conns_before = app.connections.load(Ordering::Relaxed);
                let (m, secs) = smtp_load(target.addr, &target.rcpt, sessions, mode, args).await?;
                let got = app.posts.load(Ordering::Relaxed) - before;
                let short = target.posts && got < m.done;
                let conns = if target.posts {
                    (app.connections.load(Ordering::Relaxed) - conns_before).to_string()
                } else {
                    "-".to_string()
                };
                rows.push((target.label, m.done as f64 / secs, m, short, got, conns));
            }
            let rate_of = |label: &str| rows.iter().find(|r| r.0 == label).map_or(0.0, |r| r.1);
            let (bare, droid) = (rate_of("bare sink"), rate_of("droid smtp, discard raw"));
            for (label, rate, m, short, got, conns) in &rows {
                println!(
                    "{:<26} {:>8} {:>8} {:>9.0} {:>6.2} {:>6.2} {:>9} {:>9} {:>7} {:>9}",
                    label,
                    mode.label(),
                    sessions,
                    rate,
                    ratio(*rate, bare),
                    ratio(*rate, droid),
                    ms(m.percentile(0.5)),
                    ms(m.percentile(0.99)),
                    m.errors,
                    conns
                );
                if let Some(e) = &m.first_error {
                    println!("    first error: {e}");
                }
                if *short {
                    println!("    only {got} POSTs reached the app for {} mails", m.done);
                }
            }
        }
    }
    stop.cancel();
    Ok(())
}

// ---------------------------------------------------------------- http

/// One keep-alive connection GETting `path` until the window closes;
/// reconnects after an error.
async fn http_conn(
    addr: SocketAddr,
    host: Arc<str>,
    path: &'static str,
    window: Window,
) -> Measured {
    let mut m = Measured::default();
    while Instant::now() < window.end {
        if let Err(e) = http_requests(addr, &host, path, window, &mut m).await {
            m.error(e);
        }
    }
    m
}

async fn http_requests(
    addr: SocketAddr,
    host: &str,
    path: &'static str,
    window: Window,
    m: &mut Measured,
) -> anyhow::Result<()> {
    let io = tokio::time::timeout(STALL, TcpStream::connect(addr))
        .await
        .context("no connection within 30 s")??;
    io.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    while Instant::now() < window.end {
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())?;
        let t0 = Instant::now();
        let exchange = async {
            sender.ready().await?;
            let response = sender.send_request(req).await?;
            if !response.status().is_success() {
                bail!("status {}", response.status());
            }
            let mut body = response.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    n += data.len() as u64;
                }
            }
            Ok::<u64, anyhow::Error>(n)
        };
        let n = tokio::time::timeout(STALL, exchange)
            .await
            .context("no response within 30 s")??;
        let t1 = Instant::now();
        if window.counts(t0, t1) {
            m.done += 1;
            m.bytes += n;
            m.latencies
                .push(u32::try_from((t1 - t0).as_micros()).unwrap_or(u32::MAX));
        }
    }
    Ok(())
}

async fn http_load(
    addr: SocketAddr,
    host: &str,
    path: &'static str,
    conns: usize,
    secs: f64,
) -> anyhow::Result<Measured> {
    let host = Arc::<str>::from(host);
    let window = Window::new(secs);
    let mut set = JoinSet::new();
    for _ in 0..conns {
        set.spawn(http_conn(addr, host.clone(), path, window));
    }
    let mut all = Measured::default();
    while let Some(m) = set.join_next().await {
        all.merge(m?);
    }
    all.latencies.sort_unstable();
    Ok(all)
}

async fn http_bench(
    args: &Args,
    app: &App,
    tunnel: &Tunnel,
    inspected: &Tunnel,
) -> anyhow::Result<()> {
    println!();
    println!(
        "HTTP: keep-alive GETs; tunnel = in-process droid server + client, one yamux session;"
    );
    println!("inspected = the same with the client's inspector capturing every exchange");
    println!(
        "{:<20} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7}   {:>21}",
        "target", "conns", "req/s", "MiB/s", "p50", "p99", "errors", "x direct: rps p50 p99"
    );
    let direct_host = app.addr.to_string();
    for (size, path, conns) in [("100 B", "/small", 64), ("1 MiB", "/big", 16)] {
        let direct = http_load(app.addr, &direct_host, path, conns, args.secs).await?;
        let through = http_load(tunnel.http, &tunnel.host, path, conns, args.secs).await?;
        let captured = http_load(inspected.http, &inspected.host, path, conns, args.secs).await?;
        let window = args.secs;
        for (label, m) in [
            ("direct", &direct),
            ("tunnel", &through),
            ("inspected", &captured),
        ] {
            let rate = m.done as f64 / window;
            let ratios = if label != "direct" {
                format!(
                    "{:.2} {:.2} {:.2}",
                    ratio(rate, direct.done as f64 / window),
                    ratio(
                        m.percentile(0.5).as_secs_f64(),
                        direct.percentile(0.5).as_secs_f64()
                    ),
                    ratio(
                        m.percentile(0.99).as_secs_f64(),
                        direct.percentile(0.99).as_secs_f64()
                    ),
                )
            } else {
                String::new()
            };
            println!(
                "{:<20} {:>5} {:>9.0} {:>9.1} {:>9} {:>9} {:>7}   {:>21}",
                format!("{label} {size}"),
                conns,
                rate,
                m.bytes as f64 / window / (1024.0 * 1024.0),
                ms(m.percentile(0.5)),
                ms(m.percentile(0.99)),
                m.errors,
                ratios
            );
            if let Some(e) = &m.first_error {
                println!("    first error: {e}");
            }
        }
        println!(
            "{:<20} inspected / tunnel: {:.2} req/s, {:.2} p50, {:.2} p99",
            format!("inspector {size}"),
            ratio(captured.done as f64, through.done as f64),
            ratio(
                captured.percentile(0.5).as_secs_f64(),
                through.percentile(0.5).as_secs_f64()
            ),
            ratio(
                captured.percentile(0.99).as_secs_f64(),
                through.percentile(0.99).as_secs_f64()
            ),
        );
    }
    Ok(())
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
