//! Run with:
//!
//! ```text
//! cargo build --release
//! cargo run --release --example scale -- idle [--tunnels 10000] [--concurrency 100]
//!     [--idle-secs 15] [--sample 100] [--droid PATH] [--nodes N]
//! cargo run --release --example scale -- streams [--streams 500] [--limit 100]
//!     [--hold-ms 1000] [--open-timeout-ms 1500]
//! ```
//!
//! How Droid holds up at scale, everything on 127.0.0.1. It is a report
//! that checks itself: it exits with an error when a target is missed.
//!
//! - `idle`: one `droid server` process (the release binary, found next to
//!   this example as `target/release/droid`, so build it first, or given
//!   with `--droid`) held by `--tunnels` idle tunnels, each its own client
//!   session (its own TCP connection and yamux session, as `droid http`
//!   makes), all run by this process through `droid_client`, connected
//!   `--concurrency` at a time. From `/proc/PID/status` and `/proc/PID/stat`
//!   of the server: its RSS before any tunnel and with all of them, the bytes
//!   each idle tunnel costs, and the CPU it uses over `--idle-secs` of
//!   quiet, when the only work is the clients' heartbeats (one ping every
//!   10 s per tunnel). Then `--sample` random tunnels are asked for a page
//!   of a local app, through the server's HTTP port. Targets: 10,000 idle
//!   tunnels in under 1 GiB of server RSS, every sampled tunnel answers, no
//!   session drops. With `--nodes N` (N > 1) it starts a `redis-server` on
//!   a free port and N `droid server --cluster` nodes, spreads the tunnels
//!   over them, reports the RSS of every node and Redis's memory per
//!   tunnel, and samples every tunnel through the first node (forwarded to
//!   the node that holds it).
//! - `streams`: one tunnel (an in-process server and client) in front of a
//!   local app that holds every request until `--streams` are in flight at
//!   once, then answers them all: they pass only if the tunnel multiplexes
//!   them for real. Then a tunnel whose server allows `--limit` streams at
//!   once gets three times that many requests at once, each held by the app
//!   for `--hold-ms`: the first `--limit` take a stream at once, the next
//!   wait for one and are answered, and those still waiting after
//!   `--open-timeout-ms` get the server's 503 (with the defaults, a third
//!   each). The session must survive it: a normal request passes afterwards
//!   and the client never reconnects.
//!
//! Each client session costs a file descriptor here and one in the server:
//! the example raises its own soft limit (the server inherits it) and says
//! so when the hard limit is too low.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use droid_client::{ClientConfig, ClientEvent, Target, TunnelSpec};
use droid_server::{Server, ServerConfig};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[path = "../tests/common/redis_server.rs"]
mod redis_server;
use redis_server::Redis;

const DOMAIN: &str = "scale.test";
/// The longest wait for one client to connect or one request to finish.
const STALL: Duration = Duration::from_secs(30);
/// The heartbeat the server asks of clients (`droid server`'s default).
const HEARTBEAT: Duration = droid_core::protocol::DEFAULT_HEARTBEAT_INTERVAL;
/// The issue's memory target for 10,000 idle tunnels.
const RSS_TARGET: u64 = 1 << 30;

const USAGE: &str = "usage: scale idle [--tunnels N] [--concurrency N] [--idle-secs N] \
                     [--sample N] [--droid PATH] | scale streams [--streams N] [--limit N] \
                     [--hold-ms N] [--open-timeout-ms N]";

struct IdleArgs {
    tunnels: usize,
    concurrency: usize,
    idle_secs: u64,
    sample: usize,
    droid: Option<PathBuf>,
    nodes: usize,
}

struct StreamArgs {
    streams: usize,
    limit: usize,
    hold: Duration,
    open_timeout: Duration,
}

enum Args {
    Idle(IdleArgs),
    Streams(StreamArgs),
}

fn args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().context(USAGE)?;
    let mut idle = IdleArgs {
        tunnels: 10_000,
        // Below the 128 connections `droid server`'s listeners queue: more
        // at once overflow it and wait a second for the SYN to be retried.
        concurrency: 100,
        idle_secs: 15,
        sample: 100,
        droid: None,
        nodes: 1,
    };
    let mut streams = StreamArgs {
        streams: 500,
        limit: 100,
        hold: Duration::from_millis(1000),
        open_timeout: Duration::from_millis(1500),
    };
    while let Some(arg) = it.next() {
        match (mode.as_str(), arg.as_str()) {
            ("idle", "--tunnels") => idle.tunnels = number(&mut it, &arg)?,
            ("idle", "--concurrency") => idle.concurrency = number(&mut it, &arg)?,
            ("idle", "--idle-secs") => idle.idle_secs = number(&mut it, &arg)? as u64,
            ("idle", "--sample") => idle.sample = number(&mut it, &arg)?,
            ("idle", "--droid") => idle.droid = Some(it.next().context("--droid PATH")?.into()),
            ("idle", "--nodes") => idle.nodes = number(&mut it, &arg)?.max(1),
            ("streams", "--streams") => streams.streams = number(&mut it, &arg)?,
            ("streams", "--limit") => streams.limit = number(&mut it, &arg)?,
            ("streams", "--hold-ms") => {
                streams.hold = Duration::from_millis(number(&mut it, &arg)? as u64);
            }
            ("streams", "--open-timeout-ms") => {
                streams.open_timeout = Duration::from_millis(number(&mut it, &arg)? as u64);
            }
            _ => bail!("unknown argument {arg:?} for {mode:?}; {USAGE}"),
        }
    }
    match mode.as_str() {
        "idle" => Ok(Args::Idle(idle)),
        "streams" => Ok(Args::Streams(streams)),
        _ => bail!("{USAGE}"),
    }
}

/// The whole number after `flag`.
fn number(it: &mut impl Iterator<Item = String>, flag: &str) -> anyhow::Result<usize> {
    let n: usize = it
        .next()
        .with_context(|| format!("{flag} N"))?
        .parse()
        .with_context(|| format!("{flag} takes a whole number"))?;
    if n == 0 || n > 1_000_000 {
        bail!("{flag} must be between 1 and 1000000");
    }
    Ok(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match args()? {
        Args::Idle(args) => idle(args).await,
        Args::Streams(args) => streams(args).await,
    }
}

/// Raises this process's soft limit on open files to `needed` (children
/// inherit it), or says how to.
fn raise_fd_limit(needed: u64) -> anyhow::Result<()> {
    let soft = rlimit::increase_nofile_limit(needed).context("cannot read the open-file limit")?;
    if soft < needed {
        bail!(
            "this run needs about {needed} open files and the limit is {soft}; \
             raise it (ulimit -n {needed}, as root if the hard limit is lower) \
             or ask for fewer"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- the app

/// The local app. `/` answers with the request's Host (so a visitor knows
/// which tunnel carried it); `/gather` answers once `gather` requests are
/// in flight at once; `/hold` holds a request for `hold`, counting how many
/// are in flight, and answers with its arrival number.
struct App {
    addr: SocketAddr,
    /// Requests that reached `/hold`.
    arrived: Arc<AtomicUsize>,
    /// The most `/hold` requests in flight at once.
    most: Arc<AtomicUsize>,
    stop: CancellationToken,
}

struct AppState {
    gather: Option<Barrier>,
    hold: Duration,
    arrived: Arc<AtomicUsize>,
    in_flight: AtomicUsize,
    most: Arc<AtomicUsize>,
}

impl App {
    async fn start(gather: Option<usize>, hold: Duration) -> anyhow::Result<App> {
        let listener = listen()?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let state = Arc::new(AppState {
            gather: gather.map(Barrier::new),
            hold,
            arrived: Arc::new(AtomicUsize::new(0)),
            in_flight: AtomicUsize::new(0),
            most: Arc::new(AtomicUsize::new(0)),
        });
        let app = App {
            addr,
            arrived: state.arrived.clone(),
            most: state.most.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            loop {
                let io = tokio::select! {
                    a = listener.accept() => match a { Ok((io, _)) => io, Err(_) => continue },
                    () = stop.cancelled() => return,
                };
                let state = state.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(state.answer(req).await))) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), service)
                        .await;
                });
            }
        });
        Ok(app)
    }

    fn target(&self) -> Target {
        Target::new("127.0.0.1", self.addr.port())
    }
}

impl AppState {
    async fn answer(&self, req: Request<Incoming>) -> Bytes {
        match req.uri().path() {
            "/gather" => {
                if let Some(barrier) = &self.gather {
                    barrier.wait().await;
                }
                Bytes::from_static(b"gathered")
            }
            "/hold" => {
                let number = self.arrived.fetch_add(1, Ordering::SeqCst);
                let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                self.most.fetch_max(now, Ordering::SeqCst);
                // The app's work: the request holds its stream meanwhile.
                tokio::time::sleep(self.hold).await;
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                Bytes::from(number.to_string())
            }
            _ => req
                .headers()
                .get("host")
                .map(|h| Bytes::copy_from_slice(h.as_bytes()))
                .unwrap_or_default(),
        }
    }
}

// ---------------------------------------------------------------- helpers

fn spec(name: Option<&str>, target: Target) -> TunnelSpec {
    TunnelSpec {
        name: name.map(str::to_string),
        ..TunnelSpec::http(target)
    }
}

/// A client of one tunnel with no state directory: each client would
/// otherwise lock a record there, and thousands run in this one process.
/// A reconnect is counted as a failure (see [`connect_client`]).
fn client_config(control: SocketAddr, spec: TunnelSpec) -> ClientConfig {
    let mut config = ClientConfig::new(control.to_string(), vec![spec]);
    config.state_dir = None;
    config
}

/// A listener on 127.0.0.1 that queues up to 4096 connections (what the
/// kernel allows by default). `TcpListener::bind` queues 128, like the
/// standard library: a burst of a few hundred connections then overflows
/// it and the overflow waits for the client to retry its SYN, a second
/// later, which would be measured here as waiting for a stream.
fn listen() -> anyhow::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(socket.listen(4096)?)
}

/// One GET on a new connection; the status and the body.
async fn get(addr: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(STALL, async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(req).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .with_context(|| format!("GET {path} took over {STALL:?}"))?
}

/// Starts a client and waits for its tunnel; then counts its reconnects
/// in `drops` until it stops. The tunnel's name, or why it did not connect.
async fn connect_client(
    config: ClientConfig,
    shutdown: CancellationToken,
    drops: Arc<AtomicUsize>,
) -> anyhow::Result<String> {
    let (tx, mut events) = mpsc::channel(droid_client::EVENT_QUEUE);
    let run = tokio::spawn(droid_client::run(config, Some(tx), shutdown));
    let connected = tokio::time::timeout(STALL, async {
        loop {
            match events.recv().await {
                Some(ClientEvent::Connected { tunnels, .. }) => {
                    return tunnels.first().map(|t| t.name.clone());
                }
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    let name = match connected {
        Ok(Some(name)) => name,
        Ok(None) => match run.await {
            Ok(Err(e)) => bail!("a client gave up: {e}"),
            _ => bail!("a client stopped before connecting"),
        },
        Err(_) => bail!("a client did not connect within {STALL:?}"),
    };
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if matches!(event, ClientEvent::Disconnected { .. }) {
                drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Ok(name)
}

/// The address after `label` in a line `droid server` prints.
fn addr_after(line: &str, label: &str) -> Option<SocketAddr> {
    line.split(label)
        .nth(1)?
        .split([',', ' '])
        .next()?
        .trim()
        .parse()
        .ok()
}

/// How many, and how long they took from first to last.
fn spread(took: &[Duration]) -> String {
    match (took.iter().min(), took.iter().max()) {
        (Some(min), Some(max)) => format!(
            "{:<4} in {:.2} to {:.2} s",
            took.len(),
            min.as_secs_f64(),
            max.as_secs_f64()
        ),
        _ => "0".into(),
    }
}

/// One line of a report table.
fn row(label: &str, value: impl std::fmt::Display) {
    println!("  {label:<32} {value}");
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

// ---------------------------------------------------------------- /proc

/// A process's resident memory, from `/proc/PID/status`.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (Linux only)"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}

/// CPU time a process used so far, user and system, from `/proc/PID/stat`
/// (in clock ticks of 1/100 s, Linux's USER_HZ for /proc).
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (Linux only)"))?;
    // The name in parentheses may hold spaces: count fields after it.
    // utime and stime are fields 14 and 15, the 12th and 13th after it.
    let after = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<u64>()?)
    };
    Ok(Duration::from_millis((tick(11)? + tick(12)?) * 10))
}

// ---------------------------------------------------------------- idle

/// The `droid` binary: `--droid`, or `target/release/droid` beside this
/// example (`target/release/examples/scale`).
fn droid_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .context("cannot locate the target directory")?
            .join("droid"),
    };
    if !path.is_file() {
        bail!(
            "no droid binary at {}: build it first with `cargo build --release`, \
             or pass --droid PATH",
            path.display()
        );
    }
    Ok(path)
}

/// A `droid server` process and the addresses it printed.
struct ServerProcess {
    child: tokio::process::Child,
    pid: u32,
    http: SocketAddr,
    control: SocketAddr,
}

async fn start_server(
    droid: &std::path::Path,
    tunnels: usize,
    extra: &[String],
) -> anyhow::Result<ServerProcess> {
    let mut child = tokio::process::Command::new(droid)
        .args([
            "server",
            "--domain",
            DOMAIN,
            "--http",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            // every tunnel comes from 127.0.0.1, each its own session, as
            // if each came from an address of its own
            "--max-tunnels-per-ip",
            &(tunnels + 100).to_string(),
            "--max-sessions-per-ip",
            &(tunnels + 100).to_string(),
            "--max-sessions",
            &(tunnels + 100).to_string(),
            "--max-visitor-connections-per-ip",
            &(tunnels + 100).to_string(),
            "--max-names-per-ip",
            "0",
            "--new-names-per-minute",
            "0",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", droid.display()))?;
    let pid = child.id().context("the server exited at once")?;
    let stdout = child.stdout.take().context("no server stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (http, control) = tokio::time::timeout(STALL, async {
        let mut addrs = None;
        while let Some(line) = lines.next_line().await? {
            if let (Some(http), Some(control)) = (
                addr_after(&line, "http on "),
                addr_after(&line, "control on "),
            ) {
                addrs = Some((http, control));
            }
            // A cluster node is ready once it joined.
            if let Some(addrs) = addrs
                && (extra.is_empty() || line.contains("of the cluster"))
            {
                return Ok(addrs);
            }
        }
        bail!("the server exited before printing its addresses")
    })
    .await
    .context("the server did not start in time")??;
    // Keep reading what it prints so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(ServerProcess {
        child,
        pid,
        http,
        control,
    })
}

/// Redis's `used_memory`, in bytes.
async fn redis_memory(redis: &Redis) -> anyhow::Result<u64> {
    let info = redis.command("INFO memory").await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no used_memory in INFO")
}

async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let droid = droid_binary(args.droid)?;
    // One socket per tunnel here and in the server, and some to spare.
    raise_fd_limit(args.tunnels as u64 + 1024)?;
    let redis = match args.nodes {
        1 => None,
        _ => Some(Redis::start().await?),
    };
    let mut servers = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let extra: Vec<String> = match &redis {
            None => Vec::new(),
            Some(redis) => [
                "--cluster",
                &redis.url(),
                "--node-id",
                &format!("node-{i}"),
                "--peer",
                "127.0.0.1:0",
                "--cluster-secret",
                "the scale bench's cluster secret, 7c0b9a1e",
            ]
            .map(String::from)
            .to_vec(),
        };
        servers.push(start_server(&droid, args.tunnels, &extra).await?);
    }
    let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
    let controls: Vec<SocketAddr> = servers.iter().map(|s| s.control).collect();
    let http = servers[0].http;
    let total_rss = |pids: &[u32]| -> anyhow::Result<u64> { pids.iter().map(|p| rss(*p)).sum() };
    let total_cpu =
        |pids: &[u32]| -> anyhow::Result<Duration> { pids.iter().map(|p| cpu_time(*p)).sum() };
    println!(
        "droid scale idle: {} tunnels, each its own client session, {} at a time, \
         into {} node(s) of {} (pids {pids:?})",
        args.tunnels,
        args.concurrency,
        args.nodes,
        droid.display()
    );

    let app = App::start(None, Duration::ZERO).await?;
    let rss_before = total_rss(&pids)?;
    let redis_before = match &redis {
        Some(redis) => redis_memory(redis).await?,
        None => 0,
    };

    // Connect every client, `concurrency` handshakes at a time.
    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let drops = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let (up_tx, mut up_rx) = mpsc::unbounded_channel();
    let target = app.target();
    let (token, all_drops) = (shutdown.clone(), drops.clone());
    tokio::spawn(async move {
        for i in 0..args.tunnels {
            let Ok(permit) = gate.clone().acquire_owned().await else {
                return;
            };
            let control = controls[i % controls.len()];
            let config = client_config(control, spec(None, target.clone()));
            let (up_tx, token, drops) = (up_tx.clone(), token.clone(), all_drops.clone());
            tokio::spawn(async move {
                let result = connect_client(config, token, drops).await;
                drop(permit);
                let _ = up_tx.send(result);
            });
        }
    });
    let mut names = Vec::with_capacity(args.tunnels);
    while names.len() < args.tunnels {
        let result = up_rx.recv().await.context("the clients stopped")?;
        names.push(result?);
        if names.len() % 2000 == 0 && names.len() < args.tunnels {
            println!(
                "  {:>6} connected after {:.1} s, server RSS {}",
                names.len(),
                started.elapsed().as_secs_f64(),
                mib(total_rss(&pids)?)
            );
        }
    }
    let connect_time = started.elapsed();
    let rss_up = total_rss(&pids)?;

    // The quiet window: only heartbeats.
    let cpu_before = total_cpu(&pids)?;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let cpu = total_cpu(&pids)?.saturating_sub(cpu_before);
    let window = window.elapsed();
    let rss_idle = total_rss(&pids)?;
    let per_node: Vec<String> = pids
        .iter()
        .map(|p| rss(*p).map(mib))
        .collect::<anyhow::Result<_>>()?;
    let redis_after = match &redis {
        Some(redis) => redis_memory(redis).await?,
        None => 0,
    };

    // Random tunnels still answer, each with its own Host.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let sample = args.sample.min(names.len());
    let mut answered = 0;
    let mut failures = Vec::new();
    for _ in 0..sample {
        // xorshift: random enough to pick tunnels
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name = &names[(seed % names.len() as u64) as usize];
        let host = format!("{name}.{DOMAIN}");
        match get(http, &host, "/").await {
            Ok((200, body)) if body == host => answered += 1,
            Ok((status, body)) => failures.push(format!("{host}: {status} {body:?}")),
            Err(e) => failures.push(format!("{host}: {e:#}")),
        }
    }
    let drops = drops.load(Ordering::Relaxed);

    let n = args.tunnels as u64;
    let per_tunnel = rss_idle.saturating_sub(rss_before) / n;
    let heartbeats = (n as f64 * window.as_secs_f64() / HEARTBEAT.as_secs_f64()).max(1.0);
    let cpu_ms = cpu.as_secs_f64() * 1000.0;
    let idle = format!("{:.0} s idle", window.as_secs_f64());
    row(
        "connected in",
        format!("{:.1} s", connect_time.as_secs_f64()),
    );
    row("server RSS, no tunnel", mib(rss_before));
    row(&format!("server RSS, {n} tunnels"), mib(rss_up));
    row(&format!("server RSS, after {idle}"), mib(rss_idle));
    row(
        "per idle tunnel",
        format!("{:.1} KiB ({per_tunnel} bytes)", per_tunnel as f64 / 1024.0),
    );
    row(
        &format!("server CPU, {idle}"),
        format!(
            "{cpu_ms:.0} ms: {:.1} ms/s, {:.2} us/s per tunnel",
            cpu_ms / window.as_secs_f64(),
            cpu_ms * 1000.0 / window.as_secs_f64() / n as f64,
        ),
    );
    row(
        "  per heartbeat",
        format!(
            "{:.0} us (~{heartbeats:.0} heartbeats expected)",
            cpu_ms * 1000.0 / heartbeats
        ),
    );
    row("sampled tunnels answering", format!("{answered}/{sample}"));
    row("client reconnects", drops);
    for f in failures.iter().take(5) {
        println!("  failed: {f}");
    }

    if let Some(redis) = redis {
        let per_tunnel = redis_after.saturating_sub(redis_before) / n;
        row("redis memory, before", mib(redis_before));
        row(&format!("redis memory, {n} tunnels"), mib(redis_after));
        row("  per tunnel in redis", format!("{per_tunnel} bytes"));
        row("each node's RSS", per_node.join(", "));
        redis.kill().await;
    }
    for mut server in servers {
        let _ = server.child.start_kill();
        let _ = server.child.wait().await;
    }
    shutdown.cancel();
    app.stop.cancel();
    if answered < sample || drops > 0 {
        bail!("some tunnels did not answer or reconnected");
    }
    if args.tunnels >= 10_000 && rss_up.max(rss_idle) >= RSS_TARGET {
        bail!("the server used 1 GiB or more for {n} idle tunnels");
    }
    Ok(())
}

// ---------------------------------------------------------------- streams

/// An in-process server and one client of one tunnel.
struct Tunnel {
    server: Server,
    http: SocketAddr,
    host: String,
    /// Reconnects of the client.
    drops: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Tunnel {
    async fn start(app: &App, tweak: impl FnOnce(&mut ServerConfig)) -> anyhow::Result<Tunnel> {
        let (http, control) = (listen()?, listen()?);
        let (http_addr, control_addr) = (http.local_addr()?, control.local_addr()?);
        let mut config = ServerConfig::new(DOMAIN);
        tweak(&mut config);
        let server = Server::new(config);
        let stop = CancellationToken::new();
        let (s, token) = (server.clone(), stop.clone());
        tokio::spawn(async move { s.run(http, control, token).await });
        let drops = Arc::new(AtomicUsize::new(0));
        let name = connect_client(
            client_config(control_addr, spec(Some("scale"), app.target())),
            stop.clone(),
            drops.clone(),
        )
        .await?;
        Ok(Tunnel {
            server,
            http: http_addr,
            host: format!("{name}.{DOMAIN}"),
            drops,
            stop,
        })
    }

    /// `n` GETs of `path` at once, each on its own connection; each
    /// answer comes with the time it took.
    fn burst(&self, n: usize, path: &str) -> JoinSet<(anyhow::Result<(u16, String)>, Duration)> {
        let mut set = JoinSet::new();
        for _ in 0..n {
            let (http, host, path) = (self.http, self.host.clone(), path.to_string());
            set.spawn(async move {
                let started = Instant::now();
                (get(http, &host, &path).await, started.elapsed())
            });
        }
        set
    }
}

async fn streams(args: StreamArgs) -> anyhow::Result<()> {
    // Per request: the visitor's socket and the server's, the client's
    // socket to the app and the app's.
    raise_fd_limit(4 * (args.streams.max(3 * args.limit) as u64) + 1024)?;
    let max = droid_core::session::DEFAULT_CONCURRENT_STREAMS;
    if args.streams > max {
        bail!("--streams must be at most {max}, the server's streams per tunnel");
    }
    println!(
        "droid scale streams: in-process server and client, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // All at once: the app answers none until every one is in flight.
    let app = App::start(Some(args.streams), Duration::ZERO).await?;
    let tunnel = Tunnel::start(&app, |_| {}).await?;
    let started = Instant::now();
    let mut set = tunnel.burst(args.streams, "/gather");
    let mut ok = 0;
    while let Some(done) = set.join_next().await {
        match done?.0 {
            Ok((200, body)) if body == "gathered" => ok += 1,
            Ok((status, body)) => bail!("a gathered request got {status}: {body:?}"),
            Err(e) => return Err(e.context("a gathered request failed")),
        }
    }
    println!(
        "  {ok}/{} requests in flight at once through one tunnel, answered in {:.2} s",
        args.streams,
        started.elapsed().as_secs_f64()
    );
    tunnel.stop.cancel();
    app.stop.cancel();

    // Three times the server's limit at once.
    let limit = args.limit;
    let app = App::start(None, args.hold).await?;
    let tunnel = Tunnel::start(&app, |c| {
        c.max_streams_per_tunnel = limit;
        c.stream_open_timeout = args.open_timeout;
    })
    .await?;
    let started = Instant::now();
    let mut set = tunnel.burst(3 * limit, "/hold");
    let (mut at_once, mut waited, mut refused, mut other) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while let Some(done) = set.join_next().await {
        let (result, took) = done?;
        match result {
            // The first `limit` to reach the app took a free stream; any
            // later one found them all busy and waited for one to close.
            Ok((200, body)) => match body.parse::<usize>() {
                Ok(n) if n < limit => at_once.push(took),
                Ok(_) => waited.push(took),
                Err(_) => other.push(format!("200 {body:?}")),
            },
            Ok((503, _)) => refused.push(took),
            Ok((status, body)) => other.push(format!("{status} {body:?}")),
            Err(e) => other.push(format!("{e:#}")),
        }
    }
    let elapsed = started.elapsed();
    let (status, body) = get(tunnel.http, &tunnel.host, "/").await?;
    let alive = status == 200 && body == tunnel.host;
    let live = tunnel.server.registry().live_count();
    let drops = tunnel.drops.load(Ordering::Relaxed);
    println!(
        "  {} requests at once, {limit} streams allowed, the app holds each {} ms, \
         a request waits {} ms for a stream before its 503:",
        3 * limit,
        args.hold.as_millis(),
        args.open_timeout.as_millis()
    );
    row("took a stream at once", spread(&at_once));
    row("waited for one, then answered", spread(&waited));
    row("503 (waited too long)", spread(&refused));
    row("anything else", other.len());
    row(
        "most in flight at the app",
        format!("{} (of {limit} allowed)", app.most.load(Ordering::SeqCst)),
    );
    row("reached the app", app.arrived.load(Ordering::SeqCst));
    row("all done in", format!("{:.2} s", elapsed.as_secs_f64()));
    row(
        "afterwards, a normal request",
        if alive { "passes" } else { "FAILS" },
    );
    row(
        "live tunnels, client reconnects",
        format!("{live}, {drops}"),
    );
    for o in other.iter().take(5) {
        println!("  other: {o}");
    }
    tunnel.stop.cancel();
    app.stop.cancel();
    if !alive || live != 1 || drops > 0 || !other.is_empty() {
        bail!("the session did not survive going past its stream limit");
    }
    if app.most.load(Ordering::SeqCst) > limit {
        bail!("more than {limit} requests reached the app at once");
    }
    Ok(())
}
