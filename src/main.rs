//! `droid`: a public URL for a local web server.
//!
//! This binary only reads arguments, wires the crates together, sets up
//! tracing and prints what a user needs to see; the protocol lives in
//! `droid-core`, the server in `droid-server`, the client in `droid-client`.

mod adapters;
mod cluster_status;
mod config;
mod embedded;
mod inspect;
mod mail;
mod output;
mod settings;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use droid_adapters::{Format, MailOptions, bind_listener};
use droid_client::{ClientConfig, Target};
use droid_server::Server;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "droid",
    version,
    about = "A public URL for a local web server, with no sign-up"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Expose a local web server at a public URL.
    ///
    /// Without --server, droid starts a server inside this process and prints
    /// a *.localhost URL that works on this machine.
    Http(HttpArgs),
    /// Give a local TCP service (a database, SSH, anything) a public port.
    ///
    /// Without --server, droid starts a server inside this process and
    /// prints a tcp://127.0.0.1:PORT address that works on this machine.
    Tcp(TcpArgs),
    /// Start the tunnels of a config file, all over one connection.
    Start(StartArgs),
    /// Run a public droid server that clients connect to.
    Server(ServerArgs),
    /// Receive mail and POST each message to a URL, with no tunnel.
    Smtp(SmtpStandaloneArgs),
    /// Check a config file, or print a commented example of one.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Helpers for running several servers as one cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(clap::Subcommand)]
enum ClusterCommand {
    /// Print a fresh cluster secret (256 random bits), to give every node
    /// as --cluster-secret or DROID_CLUSTER_SECRET.
    Secret,
    /// Print the cluster's nodes (id, peer address, when each last renewed
    /// its lease, tunnels held, version) as Redis knows them; changes nothing.
    Status {
        /// The cluster's Redis, as the nodes were given it.
        #[arg(long, env = "DROID_CLUSTER", value_name = "URL")]
        cluster: String,
        /// Also list every name: its state, and the node that holds it.
        #[arg(long)]
        names: bool,
    },
}

#[derive(clap::Args)]
struct StartArgs {
    /// The client config file (see `droid config example client`).
    #[arg(long)]
    config: PathBuf,
    /// The tunnels to start, by name (default: all of them).
    names: Vec<String>,
    /// Start every tunnel in the file (the default).
    #[arg(long, conflicts_with = "names")]
    all: bool,
    /// The droid server to use, HOST:PORT; overrides the file's `server`.
    /// Several (repeated, or comma-separated) are tried in turn.
    #[arg(
        long,
        env = "DROID_SERVER",
        hide_env_values = true,
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// An auth token; overrides the file's `token`.
    #[arg(long, env = "DROID_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    tls: tls::ClientTlsArgs,
    #[command(flatten)]
    inspect: inspect::InspectArgs,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config file without starting anything.
    Check {
        /// The file.
        file: PathBuf,
        /// What the file configures (default: told by its keys).
        #[arg(long, value_enum)]
        kind: Option<config::Kind>,
    },
    /// Print a commented example file.
    Example {
        /// Which one.
        #[arg(value_enum)]
        kind: config::Kind,
    },
}

#[derive(clap::Args)]
struct HttpArgs {
    /// The local app: a port (3000), HOST:PORT, or an http:// URL.
    target: Target,
    /// The droid server to use, HOST:PORT of its control port. Several
    /// (repeated, or comma-separated) are tried in turn.
    #[arg(
        long,
        env = "DROID_SERVER",
        hide_env_values = true,
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// The name wanted (NAME.domain); a random one by default.
    #[arg(long)]
    name: Option<String>,
    /// Keep the public Host header, or rewrite it to the target's host:port.
    #[arg(long, value_enum, default_value_t = HostHeaderArg::Preserve)]
    host_header: HostHeaderArg,
    /// What the app speaks: http1, or h2c (HTTP/2 on a plain port, as gRPC
    /// servers do). Visitors may use either HTTP version with either.
    #[arg(long, value_enum, default_value_t = AppProtocolArg::Http1)]
    app_protocol: AppProtocolArg,
    /// An auth token, if the server requires one.
    #[arg(long, env = "DROID_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    tls: tls::ClientTlsArgs,
    /// Ask every visitor for this user name and password (HTTP basic auth,
    /// checked by the server before anything reaches your app).
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "DROID_AUTH",
        hide_env_values = true
    )]
    auth: Option<String>,
    /// Let only visitors from this IP or CIDR block through (repeatable);
    /// others get a 403.
    #[arg(long, value_name = "CIDR")]
    allow_ip: Vec<String>,
    /// Without --server: where the embedded server listens for HTTP; when the
    /// port is taken, the next free one is used.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The secret deliveries are signed with, the Standard Webhooks way:
    /// whsec_ and base64 (default: one made for you, remembered, and
    /// printed).
    #[arg(long, env = "DROID_MAIL_SECRET", hide_env_values = true, value_parser = signing_secret)]
    mail_secret: Option<String>,
    #[command(flatten)]
    spool: mail::SpoolArgs,
    #[command(flatten)]
    inspect: inspect::InspectArgs,
}

#[derive(clap::Args)]
struct TcpArgs {
    /// The local service: a port (5432) or HOST:PORT.
    target: Target,
    /// The droid server to use, HOST:PORT of its control port. Several
    /// (repeated, or comma-separated) are tried in turn.
    #[arg(
        long,
        env = "DROID_SERVER",
        hide_env_values = true,
        value_delimiter = ','
    )]
    server: Vec<String>,
    /// The public port wanted (default: the one this command got last
    /// time, else any free one the server offers).
    #[arg(long)]
    port: Option<u16>,
    /// The tunnel's name, for logs and the inspector; a random one by default.
    #[arg(long)]
    name: Option<String>,
    /// An auth token, if the server requires one.
    #[arg(long, env = "DROID_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    tls: tls::ClientTlsArgs,
    /// Let only visitors from this IP or CIDR block connect (repeatable);
    /// others are refused.
    #[arg(long, value_name = "CIDR")]
    allow_ip: Vec<String>,
    #[command(flatten)]
    inspect: inspect::InspectArgs,
}

#[derive(clap::Args)]
struct SmtpStandaloneArgs {
    /// A standalone smtp config file (see `droid config example smtp`);
    /// options given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where to accept mail [default: 127.0.0.1:2525].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The URL each mail is POSTed to, e.g. http://localhost:3000/inbound.
    #[arg(long)]
    post: Option<String>,
    /// Accept mail only for *@DOMAIN (default: any recipient).
    #[arg(long)]
    domain: Option<String>,
    /// The body of mail POSTs: json, multipart or raw [default: json].
    #[arg(long, value_parser = mail::format)]
    format: Option<Format>,
    /// The secret deliveries are signed with, the Standard Webhooks way:
    /// whsec_ and base64.
    #[arg(long, env = "DROID_MAIL_SECRET", hide_env_values = true, value_parser = signing_secret)]
    secret: Option<String>,
    #[command(flatten)]
    options: droid_adapters::SmtpOptions,
    #[command(flatten)]
    spool: mail::SpoolArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum AppProtocolArg {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge, no TLS (gRPC servers).
    H2c,
}

#[derive(Clone, Copy, ValueEnum)]
enum HostHeaderArg {
    /// The app sees Host: NAME.domain.
    Preserve,
    /// The app sees Host: its own host:port.
    Rewrite,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// A server config file (see `droid config example server`); options
    /// given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Tunnels are served at NAME.DOMAIN (required, here or in the file).
    #[arg(long)]
    domain: Option<String>,
    /// The public HTTP listener [default: 0.0.0.0:80].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// The listener clients connect to [default: 0.0.0.0:7835].
    #[arg(long)]
    control: Option<SocketAddr>,
    /// The port public URLs carry (default: the --https port, else the
    /// --http port; none for 443 and 80).
    #[arg(long)]
    public_port: Option<u16>,
    /// Serve the server's metrics for Prometheus here, at /metrics (keep
    /// it private: a loopback or internal address).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Keep the names (their owners, and until when they are kept) in this
    /// directory, so a restarted server still keeps them for their owners.
    #[arg(long, value_name = "DIR")]
    state: Option<std::path::PathBuf>,
    /// Be one node of several sharing their names in this Redis
    /// (redis://[USER:PASSWORD@]HOST:PORT, rediss:// for TLS, or the
    /// master Redis Sentinel names:
    /// redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER); needs --node-id.
    #[arg(long, value_name = "URL", requires = "node_id")]
    cluster: Option<String>,
    /// The CA certificates (PEM) a rediss:// Redis's certificate must
    /// chain to [default: the system's].
    #[arg(long, value_name = "FILE")]
    cluster_ca: Option<std::path::PathBuf>,
    /// This node's id in the cluster, unique among its nodes.
    #[arg(long, value_name = "ID")]
    node_id: Option<String>,
    /// How long this node's names stay live when it stops renewing its
    /// lease in the cluster (it renews every third of it) [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    cluster_lease: Option<Duration>,
    /// Where this node takes the other nodes' requests and deliveries for
    /// its tunnels (TLS keyed by --cluster-secret, which it needs).
    #[arg(long, value_name = "ADDR")]
    peer: Option<SocketAddr>,
    /// The address the other nodes reach --peer at [default: --peer's].
    #[arg(long, value_name = "HOST:PORT")]
    peer_advertise: Option<String>,
    /// The secret every node knows: the key of the TLS between the nodes.
    #[arg(long, env = "DROID_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// The public ports TCP tunnels get, LOW-HIGH (e.g. 20000-20999);
    /// without it TCP tunnels are refused.
    #[arg(long, value_name = "LOW-HIGH", value_parser = droid_adapters::plugin::port_range)]
    tcp_ports: Option<(u16, u16)>,
    /// The address TCP tunnels' ports listen on [default: 0.0.0.0].
    #[arg(long, value_name = "IP")]
    tcp_bind: Option<std::net::IpAddr>,
    #[command(flatten)]
    tls: tls::ServerTlsArgs,
    /// How long a dropped client's names are kept for it alone [default: 10m].
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// How long a released name is kept from new users [default: 7d].
    #[arg(long, value_parser = humantime::parse_duration)]
    quarantine: Option<Duration>,
    /// The most names the server remembers at once, live or kept for their
    /// owners; past it new names are refused, never an old one forgotten
    /// [default: 200000].
    #[arg(long, value_name = "N")]
    max_names: Option<usize>,
    /// The most names the clients of one address (an IPv6 /64) may have
    /// remembered at once; 0: no limit [default: 1000].
    #[arg(long, value_name = "N")]
    max_names_per_ip: Option<usize>,
    /// The most names one token may have remembered at once; 0: no limit
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    max_names_per_token: Option<usize>,
    /// New names one address, or one token, may claim per minute (and at
    /// once); 0: no limit [default: 60].
    #[arg(long, value_name = "N")]
    new_names_per_minute: Option<u32>,
    /// Let anybody claim common service names (www, mail, api, admin...)
    /// and punycode names; by default only a token that lists them may.
    #[arg(long)]
    free_service_names: bool,
    /// A client silent for this long is dead [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_timeout: Option<Duration>,
    /// Threads that serve tunnels [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
    /// A token clients may send (repeatable); with any, a token is required
    /// unless --require-token false.
    #[arg(long = "token", value_name = "TOKEN")]
    tokens: Vec<String>,
    /// Whether clients must send a token [default: true when tokens exist].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    require_token: Option<bool>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    spool: mail::SpoolArgs,
}

/// `droid server` limits; each is also a key of the file's `[limits]`.
#[derive(clap::Args)]
struct LimitArgs {
    /// Requests in flight per client; more wait, then get a 503 [default: 1024].
    #[arg(long)]
    max_streams_per_tunnel: Option<usize>,
    /// How long a request waits for a free stream before its 503 [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    stream_open_timeout: Option<Duration>,
    /// A visitor's request headers must arrive within this, and a kept-alive
    /// connection idle this long is closed [default: 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    header_read_timeout: Option<Duration>,
    /// On SIGTERM or Ctrl-C the server drains: it takes no new visitors,
    /// clients or mail, tells its clients to move to their next server, and
    /// waits for what is in flight at most this long [default: 20s].
    #[arg(long, value_parser = humantime::parse_duration)]
    drain_timeout: Option<Duration>,
    /// The longest pause while a visitor sends a request body; then 408
    /// [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration)]
    body_read_timeout: Option<Duration>,
    /// Bytes of a request line and headers; more gets a 431 [default: 65536].
    #[arg(long)]
    max_header_size: Option<usize>,
    /// Header fields per request; more gets a 431 [default: 100].
    #[arg(long)]
    max_headers: Option<usize>,
    /// Bytes of a request body; more gets a 413 [default: no limit].
    #[arg(long)]
    max_body_size: Option<u64>,
    /// Tunnels one client connection may ask for [default: 64].
    #[arg(long)]
    max_tunnels_per_session: Option<usize>,
    /// Live tunnels per token [default: no limit].
    #[arg(long)]
    max_tunnels_per_token: Option<usize>,
    /// Live tunnels the clients of one IP address may hold [default: no limit].
    #[arg(long)]
    max_tunnels_per_ip: Option<usize>,
    /// Client sessions (one per running `droid`) open at once
    /// [default: 20000].
    #[arg(long, value_name = "N")]
    max_sessions: Option<usize>,
    /// Client sessions open at once from one address (an IPv6 /64)
    /// [default: 50].
    #[arg(long, value_name = "N")]
    max_sessions_per_ip: Option<usize>,
    /// Visitor connections open at once, HTTP and HTTPS together; more
    /// get a 503 [default: 20000].
    #[arg(long, value_name = "N")]
    max_visitor_connections: Option<usize>,
    /// Visitor connections open at once from one address (an IPv6 /64)
    /// [default: 256].
    #[arg(long, value_name = "N")]
    max_visitor_connections_per_ip: Option<usize>,
    /// Requests per second each tunnel takes from visitors; more get a 429
    /// with Retry-After [default: no limit].
    #[arg(long, value_name = "N")]
    requests_per_second: Option<u32>,
    /// Requests a tunnel takes at once after a quiet spell
    /// [default: --requests-per-second].
    #[arg(long, value_name = "N")]
    burst: Option<u32>,
}

/// A command with its files read and checked, ready to run.
enum Ready {
    Tunnels(settings::TunnelSettings),
    Server(Box<settings::ServerSettings>),
    Smtp(settings::StandaloneSettings),
}

impl Ready {
    fn log_level(&self) -> &str {
        match self {
            Ready::Tunnels(s) => &s.log_level,
            Ready::Server(s) => &s.log_level,
            Ready::Smtp(s) => &s.log_level,
        }
    }
}

/// Reads the config file, if any, and merges the command line over it.
/// Nothing has started yet when this fails.
/// `flags` are the subcommand's, with the adapters' own among them.
fn prepare(command: Command, flags: &clap::ArgMatches) -> Result<Ready> {
    Ok(match command {
        Command::Http(args) => Ready::Tunnels(settings::http(&args, flags)?),
        Command::Tcp(args) => Ready::Tunnels(settings::tcp(&args)?),
        Command::Start(args) => {
            let (file, text) = config::load_with_text(&args.config)?;
            let source = adapters::Source {
                path: &args.config,
                text: &text,
            };
            Ready::Tunnels(settings::start(&args, file, source)?)
        }
        Command::Server(args) => {
            let loaded = match args.config.as_deref() {
                Some(path) => Some((config::load_with_text(path)?, path)),
                None => None,
            };
            let (file, source) = match &loaded {
                Some(((file, text), path)) => (Some(file), Some(adapters::Source { path, text })),
                None => (None, None),
            };
            Ready::Server(Box::new(settings::server(&args, file, flags, source)?))
        }
        Command::Smtp(args) => {
            let file = args.config.as_deref().map(config::load).transpose()?;
            Ready::Smtp(settings::standalone(&args, file)?)
        }
        Command::Config(_) | Command::Cluster(_) => {
            unreachable!("config and cluster commands start nothing")
        }
    })
}

/// `droid config check|example`.
fn config_command(command: ConfigCommand) -> Result<()> {
    match command {
        ConfigCommand::Check { file, kind } => {
            println!("{}", config::check(&file, kind)?);
        }
        ConfigCommand::Example { kind } => print!("{}", config::example(kind)),
    }
    Ok(())
}

/// A signing secret on the command line: `whsec_` and base64.
fn signing_secret(text: &str) -> Result<String, String> {
    droid_core::sign::Secret::parse(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

fn fail(e: &anyhow::Error) -> std::process::ExitCode {
    eprintln!("droid: {e:#}");
    std::process::ExitCode::FAILURE
}

fn main() -> std::process::ExitCode {
    let matches = adapters::command(Cli::command()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let flags = matches
        .subcommand()
        .map(|(_, flags)| flags.clone())
        .unwrap_or_default();
    let ready = match cli.command {
        Command::Config(command) => {
            return match config_command(command) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => fail(&e),
            };
        }
        Command::Cluster(ClusterCommand::Secret) => {
            println!("{}", settings::new_cluster_secret());
            return std::process::ExitCode::SUCCESS;
        }
        Command::Cluster(ClusterCommand::Status { cluster, names }) => {
            return match cluster_status::print(&cluster, names) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => fail(&e),
            };
        }
        command => match prepare(command, &flags) {
            Ok(ready) => ready,
            Err(e) => return fail(&e),
        },
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(ready.log_level())),
        )
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them: a log file or a
        // journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The client serves one user's tunnels: one thread does it with no
    // wakeups across threads and one allocator arena. A server spreads its
    // many tunnels over every core.
    let runtime = match ready {
        Ready::Tunnels(_) => tokio::runtime::Builder::new_current_thread(),
        Ready::Server(ref settings) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if let Some(n) = settings.threads {
                builder.worker_threads(n);
            }
            builder
        }
        Ready::Smtp(_) => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_on_signal();
        match ready {
            Ready::Tunnels(settings) => tunnels(settings, shutdown).await,
            Ready::Server(settings) => server(*settings, shutdown).await,
            Ready::Smtp(settings) => smtp(settings, shutdown).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signalled().await;
        cancel.cancel();
    });
    token
}

/// Returns on the next Ctrl-C or SIGTERM.
async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// On `signal`, drains `server`, then cancels `shutdown`; a second signal
/// cuts the drain short.
async fn drain_on(signal: CancellationToken, server: Server, shutdown: CancellationToken) {
    signal.cancelled().await;
    println!(
        "droid server: draining (at most {})",
        humantime::format_duration(server.config().drain_timeout)
    );
    tokio::select! {
        () = server.drain() => {}
        () = signalled() => println!("droid server: stopping now"),
    }
    shutdown.cancel();
}

async fn server(s: settings::ServerSettings, signal: CancellationToken) -> Result<()> {
    // A signal drains the server first (below); then everything stops.
    let shutdown = CancellationToken::new();
    // The name store first: a second server on the same directory stops
    // here, before it takes any port.
    let names = match &s.state {
        Some(dir) => Some(droid_server::RedbNames::open(dir)?),
        None => None,
    };
    // bind_listener queues 1024 connections, not std's 128: a burst of
    // visitors (or of clients reconnecting after a restart) is not dropped.
    let http = bind_listener(s.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", s.http))?;
    let control = bind_listener(s.control)
        .await
        .with_context(|| format!("cannot listen for clients on {}", s.control))?;
    let https = match s.https {
        Some(addr) => Some(
            bind_listener(addr)
                .await
                .with_context(|| format!("cannot listen for HTTPS on {addr}"))?,
        ),
        None => None,
    };
    let http_port = http.local_addr()?.port();
    let mut config = s.config;
    // URLs carry the port of the scheme they say: https when HTTPS runs.
    config.public_port = match &https {
        Some(https) => s
            .public_port
            .or(Some(https.local_addr()?.port()))
            .filter(|&p| p != 443),
        None => s.public_port.or(Some(http_port)).filter(|&p| p != 80),
    };
    println!(
        "droid server: domain {}, http on {}, control on {}{}",
        config.domain,
        http.local_addr()?,
        control.local_addr()?,
        if config.tls.is_some() { " (TLS)" } else { "" }
    );
    if let Some(https) = &https {
        println!(
            "droid server: https on {}, tunnel URLs say https://",
            https.local_addr()?
        );
    }
    let server = match names {
        Some(store) => {
            let path = store.path().display().to_string();
            let (server, restored) = Server::with_names(config, Arc::new(store))?;
            println!("droid server: names kept in {path}, {restored} read back");
            server
        }
        None => Server::new(config),
    };
    let peer = match s.peer {
        Some(addr) => Some(
            bind_listener(addr)
                .await
                .with_context(|| format!("cannot listen for the other nodes on {addr}"))?,
        ),
        None => None,
    };
    if let Some(mut cluster) = s.cluster {
        let node = cluster.node_id.clone();
        if let Some(listener) = &peer {
            let bound = listener.local_addr()?;
            cluster.peer.get_or_insert_with(|| bound.to_string());
            println!("droid server: peer on {bound}, for the other nodes");
        }
        let cluster = Arc::new(
            droid_server::cluster::Cluster::join(cluster, server.config().names.clone()).await?,
        );
        server.join_cluster(cluster.clone());
        println!("droid server: node {node} of the cluster, names agreed in Redis");
        let token = shutdown.clone();
        let lease = server.clone();
        tokio::spawn(async move { lease.keep_cluster_lease(token).await });
        if let Some(listener) = peer {
            let (server, token) = (server.clone(), shutdown.clone());
            tokio::spawn(async move { server.serve_peers(listener, token).await });
        }
    } else if peer.is_some() {
        anyhow::bail!(
            "--peer needs --cluster: it takes requests from the other nodes of a cluster"
        );
    }
    let metrics = match s.metrics {
        Some(addr) => {
            let listener = bind_listener(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            println!(
                "droid server: metrics on http://{}/metrics",
                listener.local_addr()?
            );
            let (server, shutdown) = (server.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                server.serve_metrics(listener, shutdown).await
            }))
        }
        None => None,
    };
    let https = https.map(|listener| {
        let (server, shutdown) = (server.clone(), shutdown.clone());
        tokio::spawn(async move { server.serve_https(listener, shutdown).await })
    });
    // The adapters keep what the app cannot take now in one spool.
    let spool = if s.adapters.is_empty() {
        None
    } else {
        s.spool.open()?
    };
    let place = droid_adapters::Place {
        domain: server.config().domain.clone(),
        spool: spool.clone(),
    };
    let setups = s.adapters.into_iter().map(|(_, setup)| setup).collect();
    for started in adapters::start(setups, place).await? {
        for line in &started.lines {
            println!("droid server: {line}");
        }
        server.add_adapter(started.adapter);
    }
    tokio::spawn(drain_on(signal, server.clone(), shutdown.clone()));
    // The adapters stop taking connections when the drain starts, and
    // finish those they have.
    let adapters = tokio::spawn(server.serve_adapters(spool, server.draining()));
    server.run(http, control, shutdown).await;
    // The adapters finish their sessions within the drain time, or a
    // second signal.
    let drain_timeout = server.config().drain_timeout;
    tokio::select! {
        _ = adapters => {}
        () = tokio::time::sleep(drain_timeout) => {}
        () = signalled() => {}
    }
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    if let Some(https) = https {
        let _ = https.await;
    }
    Ok(())
}

async fn smtp(s: settings::StandaloneSettings, shutdown: CancellationToken) -> Result<()> {
    let listener = bind_listener(s.listen)
        .await
        .with_context(|| format!("cannot listen for SMTP on {}", s.listen))?;
    let accepts = s
        .domain
        .as_deref()
        .map_or("any recipient".to_string(), |d| format!("*@{d}"));
    println!(
        "droid smtp: listening on {}, mail to {accepts} is POSTed to {} as {}",
        listener.local_addr()?,
        s.post,
        s.format
    );
    let options = MailOptions {
        format: s.format,
        secret: droid_adapters::Secret::key_of(&s.secret.unwrap_or_default()),
        ..MailOptions::default()
    };
    let smtp = (s.config, s.limits);
    mail::standalone(
        listener, &s.post, s.domain, options, smtp, &s.spool, shutdown,
    )
    .await
}

/// `droid http` and `droid start`: one or more tunnels over one connection,
/// through `--server` or an embedded server.
async fn tunnels(s: settings::TunnelSettings, shutdown: CancellationToken) -> Result<()> {
    let (server_addr, state_server, embedded) = match s.server {
        Some(server) => (server.clone(), server, None),
        None => {
            let embedded = embedded::start(
                s.embedded_http,
                s.embedded_adapters,
                &s.spool,
                shutdown.clone(),
            )
            .await?;
            // Not the port: the same command gets the same name even when
            // the embedded server had to take another port.
            (
                embedded.control.to_string(),
                "localhost".to_string(),
                Some(embedded),
            )
        }
    };
    let mut config = ClientConfig::new(server_addr, s.tunnels);
    config.token = s.token;
    if s.tls.as_ref().map(droid_client::ClientTls::trust) == Some(droid_client::Trust::Insecure) {
        eprintln!("{}", tls::INSECURE_WARNING);
    }
    config.tls = s.tls;
    if let Some(timeout) = s.heartbeat_timeout {
        config.heartbeat_timeout = timeout;
    }
    config.state_key = ClientConfig::default_state_key(&state_server, &config.tunnels);
    let inspect = match s.inspect {
        Some(settings) => {
            let (inspector, addr) = inspect::start(settings, shutdown.clone()).await?;
            config.inspector = Some(inspector);
            Some(addr)
        }
        None => None,
    };
    output::banner(&config.tunnels, embedded.as_ref());
    for spec in &config.tunnels {
        output::check_target(&spec.target).await;
    }
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(droid_client::EVENT_QUEUE);
    let announce = output::Announce {
        tunnels: config.tunnels.iter().map(|t| t.adapters.clone()).collect(),
        inspect,
    };
    let (printed, all_printed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        output::print_events(events_rx, announce);
        let _ = printed.send(());
    });
    let result = droid_client::run(config, Some(events_tx), shutdown.clone()).await;
    // The last lines (the names released) get printed; a stdout that
    // blocks does not hold the exit.
    let _ = tokio::time::timeout(Duration::from_secs(2), all_printed).await;
    if let Some(embedded) = embedded {
        shutdown.cancel();
        embedded.stopped().await;
    }
    result.map_err(anyhow::Error::from)
}
