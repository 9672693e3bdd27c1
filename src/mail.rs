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
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Options every SMTP listener shares.
#[derive(clap::Args, Clone)]
pub struct SmtpArgs {
    /// Where mail that cannot be delivered at once is kept and retried.
    /// Default: `spool` in the state directory.
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Refuse mail with 451 (the sender retries) instead of spooling it.
    #[arg(long)]
    pub no_spool: bool,
    /// The largest message accepted, in bytes (advertised as SIZE).
    #[arg(long, default_value_t = 25 * 1024 * 1024)]
    pub max_message_size: usize,
    /// Recipients per message; the next one gets 452.
    #[arg(long, default_value_t = 100)]
    pub max_recipients: usize,
    /// How long retries of a spooled mail go on before it is dead-lettered.
    #[arg(long, default_value = "3d", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
    /// The name the SMTP server gives itself in its greeting.
    #[arg(long, default_value = "localhost")]
    pub hostname: String,
}

impl SmtpArgs {
    pub fn config(&self) -> SmtpConfig {
        SmtpConfig {
            hostname: self.hostname.clone(),
            max_message_size: self.max_message_size,
            max_recipients: self.max_recipients,
            ..SmtpConfig::default()
        }
    }

    /// Opens the spool, unless disabled or there is no state directory.
    pub fn open_spool(&self) -> Result<Option<Arc<Spool>>> {
        if self.no_spool {
            return Ok(None);
        }
        let Some(dir) = self
            .spool
            .clone()
            .or_else(|| droid_client::state::default_state_dir().map(|d| d.join("spool")))
        else {
            tracing::warn!("no state directory: mail that cannot be delivered at once gets 451");
            return Ok(None);
        };
        let mut config = SpoolConfig::default();
        config.retry.max_age = self.retry_for;
        let spool = Spool::open(&dir, config)
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
    args: &SmtpArgs,
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
    let spool = args.open_spool()?;
    let retries = spool
        .clone()
        .map(|spool| tokio::spawn(spool.run(router.clone(), shutdown.clone())));
    let adapter = Arc::new(SmtpAdapter::new(args.config(), router, spool));
    run_adapter(listener, adapter, ConnLimits::default(), shutdown).await;
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
