//! Mail wiring shared by `droid http` (embedded), `droid server` and the
//! standalone `droid smtp`: binding the SMTP listener and opening the spool.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use droid_adapters::{
    ConnLimits, Format, MailOptions, SmtpAdapter, SmtpConfig, Spool, SpoolConfig, UrlRouter,
    UrlSink, run_adapter,
};

use crate::config::smtp::{SmtpFile, SpoolFile};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Options every SMTP listener shares. Each is `None` when not given, so a
/// config file can fill it in; the defaults apply last.
#[derive(clap::Args, Clone, Default)]
pub struct SmtpArgs {
    /// Where mail that cannot be delivered at once is kept and retried.
    /// Default: `spool` in the state directory.
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Refuse mail with 451 (the sender retries) instead of spooling it.
    #[arg(long)]
    pub no_spool: bool,
    /// The largest message accepted, in bytes (advertised as SIZE)
    /// [default: 26214400].
    #[arg(long)]
    pub max_message_size: Option<usize>,
    /// Recipients per message; the next one gets 452 [default: 100].
    #[arg(long)]
    pub max_recipients: Option<usize>,
    /// The memory all messages being received may take together, in
    /// bytes; a message past it gets 452 and its sender retries later
    /// [default: 268435456].
    #[arg(long, value_name = "BYTES")]
    pub message_memory: Option<usize>,
    /// SMTP connections at once; more wait to be accepted [default: 1000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// SMTP connections at once from one IP address; more get 421
    /// [default: 100].
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// How long retries of a spooled mail go on before it is dead-lettered
    /// [default: 3d].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retry_for: Option<Duration>,
    /// The name the SMTP server gives itself in its greeting [default: localhost].
    #[arg(long)]
    pub hostname: Option<String>,
}

/// Everything an SMTP listener needs but its address.
#[derive(Debug, Clone)]
pub struct SmtpSetup {
    /// The adapter's settings.
    pub config: SmtpConfig,
    /// Connection caps.
    pub limits: ConnLimits,
    /// Whether to spool, where, and the retry policy.
    pub spool: SpoolSetup,
}

/// The spool a listener opens.
#[derive(Debug, Clone)]
pub struct SpoolSetup {
    /// `false`: mail the app cannot take now gets 451.
    pub enabled: bool,
    /// The directory; `None` is `spool` in the state directory.
    pub dir: Option<PathBuf>,
    /// Limits and retries.
    pub config: SpoolConfig,
}

impl SmtpArgs {
    /// The command line over the file over the defaults.
    pub fn resolve(&self, file: Option<&SmtpFile>, spool: Option<&SpoolFile>) -> SmtpSetup {
        let (empty_smtp, empty_spool) = (SmtpFile::default(), SpoolFile::default());
        let (f, s) = (file.unwrap_or(&empty_smtp), spool.unwrap_or(&empty_spool));
        let defaults = SmtpConfig::default();
        let config = SmtpConfig {
            hostname: self
                .hostname
                .clone()
                .or_else(|| f.hostname.as_ref().map(|h| h.0.clone()))
                .unwrap_or(defaults.hostname),
            max_message_size: self
                .max_message_size
                .or(f.max_message_size)
                .unwrap_or(defaults.max_message_size),
            max_recipients: self
                .max_recipients
                .or(f.max_recipients)
                .unwrap_or(defaults.max_recipients),
            message_memory: self
                .message_memory
                .or(f.message_memory)
                .unwrap_or(defaults.message_memory),
            idle_timeout: f.idle_timeout.map_or(defaults.idle_timeout, |d| d.0),
            session_timeout: f.session_timeout.map_or(defaults.session_timeout, |d| d.0),
            deliver_timeout: f.deliver_timeout.map_or(defaults.deliver_timeout, |d| d.0),
            ..defaults
        };
        let limit_defaults = ConnLimits::default();
        let limits = ConnLimits {
            max_connections: self
                .max_connections
                .or(f.max_connections)
                .unwrap_or(limit_defaults.max_connections),
            max_per_ip: self
                .max_connections_per_ip
                .or(f.max_connections_per_ip)
                .unwrap_or(limit_defaults.max_per_ip),
        };
        let mut spool_config = SpoolConfig {
            deliver_timeout: config.deliver_timeout,
            ..SpoolConfig::default()
        };
        let retry = &mut spool_config.retry;
        retry.max_age = self
            .retry_for
            .or(s.retry_for.map(|d| d.0))
            .unwrap_or(retry.max_age);
        retry.first_delay = s.first_retry.map_or(retry.first_delay, |d| d.0);
        retry.max_delay = s.max_retry_delay.map_or(retry.max_delay, |d| d.0);
        spool_config.max_bytes = s.max_bytes.unwrap_or(spool_config.max_bytes);
        spool_config.max_messages = s.max_messages.unwrap_or(spool_config.max_messages);
        spool_config.max_messages_per_owner = s
            .max_messages_per_owner
            .unwrap_or(spool_config.max_messages_per_owner);
        spool_config.max_bytes_per_owner = s
            .max_bytes_per_owner
            .unwrap_or(spool_config.max_bytes_per_owner);
        SmtpSetup {
            config,
            limits,
            spool: SpoolSetup {
                enabled: !self.no_spool && s.enabled != Some(false),
                dir: self
                    .spool
                    .clone()
                    .or_else(|| s.dir.as_ref().map(|d| PathBuf::from(&d.0))),
                config: spool_config,
            },
        }
    }
}

impl SpoolSetup {
    /// Opens the spool, unless disabled or there is no state directory.
    pub fn open(&self) -> Result<Option<Arc<Spool>>> {
        if !self.enabled {
            return Ok(None);
        }
        let Some(dir) = self
            .dir
            .clone()
            .or_else(|| droid_client::state::default_state_dir().map(|d| d.join("spool")))
        else {
            tracing::warn!("no state directory: mail that cannot be delivered at once gets 451");
            return Ok(None);
        };
        let spool = Spool::open(&dir, self.config.clone())
            .with_context(|| format!("cannot open the mail spool in {}", dir.display()))?;
        Ok(Some(spool))
    }
}

/// The standalone adapter: mail to any accepted recipient is POSTed to `url`.
pub async fn standalone(
    listener: TcpListener,
    url: &str,
    domain: Option<String>,
    options: MailOptions,
    setup: &SmtpSetup,
    shutdown: CancellationToken,
) -> Result<()> {
    let sink = UrlSink::new(url).with_context(|| format!("--post {url}"))?;
    let options = MailOptions {
        path: sink.path().to_string(),
        ..options
    };
    let router = Arc::new(UrlRouter::new(
        Arc::new(sink),
        url.to_string(),
        options,
        domain,
    ));
    let spool = setup.spool.open()?;
    let retries = spool
        .clone()
        .map(|spool| tokio::spawn(spool.run(router.clone(), shutdown.clone())));
    let adapter = Arc::new(SmtpAdapter::new(setup.config.clone(), router, spool));
    run_adapter([listener.into()], adapter, setup.limits, shutdown).await;
    if let Some(retries) = retries {
        let _ = retries.await;
    }
    Ok(())
}

/// Parses `--format`.
pub fn format(s: &str) -> Result<Format, String> {
    s.parse()
}

/// The spool directory shown to users.
pub fn describe_spool(spool: Option<&Arc<Spool>>) -> String {
    spool.map_or_else(
        || "no spool: mail the app cannot take now gets 451".to_string(),
        |s| format!("spool {}", display(s.dir())),
    )
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
