//! `droid`: a public URL for a local web server.
//!
//! This binary only reads arguments, wires the crates together, sets up
//! tracing and prints what a user needs to see; the protocol lives in
//! `droid-core`, the server in `droid-server`, the client in `droid-client`.

mod embedded;
mod mail;
mod output;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use droid_adapters::{ConnLimits, Format, MailOptions, bind_listener};
use droid_client::{ClientConfig, HostHeader, MailSettings, Target, TunnelSpec};
use droid_server::{NamePolicy, Server, ServerConfig};
use tokio::net::TcpListener;
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

#[derive(Subcommand)]
enum Command {
    /// Expose a local web server at a public URL.
    ///
    /// Without --server, droid starts a server inside this process and prints
    /// a *.localhost URL that works on this machine.
    Http(HttpArgs),
    /// Run a public droid server that clients connect to.
    Server(ServerArgs),
    /// Receive mail and POST each message to a URL, with no tunnel.
    Smtp(SmtpStandaloneArgs),
}

#[derive(clap::Args)]
struct HttpArgs {
    /// The local app: a port (3000), HOST:PORT, or an http:// URL.
    target: Target,
    /// The droid server to use, HOST:PORT of its control port.
    #[arg(long, env = "DROID_SERVER")]
    server: Option<String>,
    /// The name wanted (NAME.domain); a random one by default.
    #[arg(long)]
    name: Option<String>,
    /// Keep the public Host header, or rewrite it to the target's host:port.
    #[arg(long, value_enum, default_value_t = HostHeaderArg::Preserve)]
    host_header: HostHeaderArg,
    /// An auth token, if the server requires one.
    #[arg(long, env = "DROID_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Without --server: where the embedded server listens for HTTP; when the
    /// port is taken, the next free one is used.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Without --server: where the embedded server accepts mail; when the
    /// port is taken, the next free one is used.
    #[arg(long, default_value = "127.0.0.1:2525")]
    smtp: SocketAddr,
    /// Without --server: do not accept mail.
    #[arg(long)]
    no_smtp: bool,
    /// The path mail is POSTed to.
    #[arg(long, default_value = "/")]
    mail_path: String,
    /// The body of mail POSTs: json, multipart or raw.
    #[arg(long, default_value = "json", value_parser = mail::format)]
    mail_format: Format,
    /// The key of the Droid-Signature HMAC on mail POSTs (default: one made
    /// for you, remembered, and printed).
    #[arg(long, env = "DROID_MAIL_SECRET", hide_env_values = true)]
    mail_secret: Option<String>,
    #[command(flatten)]
    smtp_options: mail::SmtpArgs,
}

#[derive(clap::Args)]
struct SmtpStandaloneArgs {
    /// Where to accept mail.
    #[arg(long, default_value = "127.0.0.1:2525")]
    listen: SocketAddr,
    /// The URL each mail is POSTed to, e.g. http://localhost:3000/inbound.
    #[arg(long)]
    post: String,
    /// Accept mail only for *@DOMAIN (default: any recipient).
    #[arg(long)]
    domain: Option<String>,
    /// The body of mail POSTs: json, multipart or raw.
    #[arg(long, default_value = "json", value_parser = mail::format)]
    format: Format,
    /// The key of the Droid-Signature HMAC.
    #[arg(long, env = "DROID_MAIL_SECRET", hide_env_values = true)]
    secret: Option<String>,
    #[command(flatten)]
    smtp_options: mail::SmtpArgs,
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
    /// Tunnels are served at NAME.DOMAIN.
    #[arg(long)]
    domain: String,
    /// The public HTTP listener.
    #[arg(long, default_value = "0.0.0.0:80")]
    http: SocketAddr,
    /// The listener clients connect to.
    #[arg(long, default_value = "0.0.0.0:7835")]
    control: SocketAddr,
    /// The port public URLs carry (default: the --http port; none for 80).
    #[arg(long)]
    public_port: Option<u16>,
    /// How long a dropped client's names are kept for it alone.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// How long a released name is kept from new users.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    quarantine: Duration,
    /// A client silent for this long is dead.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
    /// Accept mail for *@NAME.DOMAIN here and deliver it through NAME's tunnel.
    #[arg(long)]
    smtp: Option<SocketAddr>,
    #[command(flatten)]
    smtp_options: mail::SmtpArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Server(_) | Command::Smtp(_) => "info",
        Command::Http(_) => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let shutdown = shutdown_on_signal();
    let result = match cli.command {
        Command::Http(args) => http(args, shutdown).await,
        Command::Server(args) => server(args, shutdown).await,
        Command::Smtp(args) => smtp(args, shutdown).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("droid: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
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
        cancel.cancel();
    });
    token
}

async fn server(args: ServerArgs, shutdown: CancellationToken) -> Result<()> {
    let http = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", args.http))?;
    let control = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("cannot listen for clients on {}", args.control))?;
    let http_port = http.local_addr()?.port();
    let mut config = ServerConfig::new(&args.domain);
    config.public_port = args.public_port.or(Some(http_port)).filter(|&p| p != 80);
    config.names = NamePolicy {
        grace: args.grace,
        quarantine: args.quarantine,
        ..NamePolicy::default()
    };
    config.heartbeat_timeout = args.heartbeat_timeout;
    config.smtp = args.smtp.is_some();
    println!(
        "droid server: domain {}, http on {}, control on {}",
        config.domain,
        http.local_addr()?,
        control.local_addr()?
    );
    let server = Server::new(config);
    let smtp = match args.smtp {
        Some(addr) => {
            let listener = bind_listener(addr)
                .await
                .with_context(|| format!("cannot listen for SMTP on {addr}"))?;
            let spool = args.smtp_options.open_spool()?;
            println!(
                "droid server: smtp on {}, mail to *@NAME.{}, {}",
                listener.local_addr()?,
                server.config().domain,
                mail::describe_spool(spool.as_ref())
            );
            let (server, config, shutdown) =
                (server.clone(), args.smtp_options.config(), shutdown.clone());
            Some(tokio::spawn(async move {
                server
                    .serve_smtp(listener, config, spool, ConnLimits::default(), shutdown)
                    .await;
            }))
        }
        None => None,
    };
    server.run(http, control, shutdown).await;
    if let Some(smtp) = smtp {
        let _ = smtp.await;
    }
    Ok(())
}

async fn smtp(args: SmtpStandaloneArgs, shutdown: CancellationToken) -> Result<()> {
    let listener = bind_listener(args.listen)
        .await
        .with_context(|| format!("cannot listen for SMTP on {}", args.listen))?;
    let accepts = args
        .domain
        .as_deref()
        .map_or("any recipient".to_string(), |d| format!("*@{d}"));
    println!(
        "droid smtp: listening on {}, mail to {accepts} is POSTed to {} as {}",
        listener.local_addr()?,
        args.post,
        args.format
    );
    let options = MailOptions {
        format: args.format,
        secret: args.secret.unwrap_or_default().into_bytes(),
        ..MailOptions::default()
    };
    mail::standalone(
        listener,
        &args.post,
        args.domain,
        options,
        &args.smtp_options,
        shutdown,
    )
    .await
}

async fn http(args: HttpArgs, shutdown: CancellationToken) -> Result<()> {
    let spec = TunnelSpec {
        name: args.name,
        target: args.target.clone(),
        host_header: match args.host_header {
            HostHeaderArg::Preserve => HostHeader::Preserve,
            HostHeaderArg::Rewrite => HostHeader::Rewrite,
        },
        mail: MailSettings {
            path: Some(args.mail_path.clone()),
            format: Some(args.mail_format.to_string()),
            secret: args.mail_secret.clone(),
        },
    };
    if !args.mail_path.starts_with('/') {
        anyhow::bail!("--mail-path must start with /, e.g. /inbound");
    }
    let (server_addr, state_server, embedded) = match args.server {
        Some(server) => (server.clone(), server, None),
        None => {
            let smtp = (!args.no_smtp).then_some((args.smtp, &args.smtp_options));
            let embedded = embedded::start(args.http, smtp, shutdown.clone()).await?;
            // Not the port: the same command gets the same name even when
            // the embedded server had to take another port.
            (
                embedded.control.to_string(),
                "localhost".to_string(),
                Some(embedded),
            )
        }
    };
    let mut config = ClientConfig::new(server_addr, vec![spec]);
    config.token = args.token;
    config.state_key = ClientConfig::default_state_key(&state_server, &config.tunnels);
    output::banner(&args.target, embedded.as_ref());
    output::check_target(&args.target).await;
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let mail = output::MailDisplay {
        smtp: embedded
            .as_ref()
            .and_then(|e| e.smtp.as_ref().map(|(addr, _)| *addr)),
        path: args.mail_path.clone(),
        format: args.mail_format.to_string(),
    };
    let printer = tokio::spawn(output::print_events(events_rx, mail));
    let result = droid_client::run(config, Some(events_tx), shutdown.clone()).await;
    let _ = printer.await;
    if let Some(embedded) = embedded {
        shutdown.cancel();
        embedded.stopped().await;
    }
    result.map_err(anyhow::Error::from)
}
