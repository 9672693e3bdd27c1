//! The spool every adapter shares (its flags, and opening it), and the
//! standalone `droid smtp`, which POSTs mail to a URL with no tunnel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use droid_adapters::{
    ConnLimits, Format, MailOptions, SmtpAdapter, SmtpConfig, Spool, SpoolConfig, UrlRouter,
    UrlSink, run_adapter,
};

use crate::config::smtp::SpoolFile;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the adapters keep what an app cannot take now, on the command
/// line. Each is `None` when not given, so a config file's `[spool]` can
/// fill it in; the defaults apply last.
#[derive(clap::Args, Clone, Default)]
#[command(next_help_heading = "Spool")]
pub struct SpoolArgs {
    /// Where messages that cannot be delivered at once are kept and
    /// retried. Default: `spool` in the state directory.
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Refuse such messages instead of spooling them (mail gets 451, and
    /// the sender retries).
    #[arg(long)]
    pub no_spool: bool,
    /// How long retries of a spooled message go on before it is
    /// dead-lettered [default: 3d].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retry_for: Option<Duration>,
}

/// The spool a listener opens.
#[derive(Debug, Clone, Default)]
pub struct SpoolSetup {
    /// `false`: mail the app cannot take now gets 451.
    pub enabled: bool,
    /// The directory; `None` is `spool` in the state directory.
    pub dir: Option<PathBuf>,
    /// Limits and retries.
    pub config: SpoolConfig,
}

impl SpoolArgs {
    /// The command line over the file's `[spool]` over the defaults.
    pub fn resolve(&self, file: Option<&SpoolFile>) -> SpoolSetup {
        let empty = SpoolFile::default();
        let s = file.unwrap_or(&empty);
        let mut config = SpoolConfig::default();
        let retry = &mut config.retry;
        retry.max_age = self
            .retry_for
            .or(s.retry_for.map(|d| d.0))
            .unwrap_or(retry.max_age);
        retry.first_delay = s.first_retry.map_or(retry.first_delay, |d| d.0);
        retry.max_delay = s.max_retry_delay.map_or(retry.max_delay, |d| d.0);
        config.max_bytes = s.max_bytes.unwrap_or(config.max_bytes);
        config.max_messages = s.max_messages.unwrap_or(config.max_messages);
        config.max_messages_per_owner = s
            .max_messages_per_owner
            .unwrap_or(config.max_messages_per_owner);
        config.max_bytes_per_owner = s.max_bytes_per_owner.unwrap_or(config.max_bytes_per_owner);
        SpoolSetup {
            enabled: !self.no_spool && s.enabled != Some(false),
            dir: self
                .spool
                .clone()
                .or_else(|| s.dir.as_ref().map(|d| PathBuf::from(&d.0))),
            config,
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
            tracing::warn!(
                "no state directory: messages that cannot be delivered at once are refused (mail gets 451)"
            );
            return Ok(None);
        };
        let spool = Spool::open(&dir, self.config.clone())
            .with_context(|| format!("cannot open the spool in {}", dir.display()))?;
        Ok(Some(spool))
    }
}

/// The standalone adapter: mail to any accepted recipient is POSTed to `url`.
pub async fn standalone(
    listener: TcpListener,
    url: &str,
    domain: Option<String>,
    options: MailOptions,
    (config, limits): (SmtpConfig, ConnLimits),
    spool: &SpoolSetup,
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
    let spool = spool.open()?;
    let retries = spool
        .clone()
        .map(|spool| tokio::spawn(spool.run(router.clone(), shutdown.clone())));
    let adapter = Arc::new(SmtpAdapter::new(config, router, spool));
    run_adapter([listener.into()], adapter, limits, shutdown).await;
    if let Some(retries) = retries {
        let _ = retries.await;
    }
    Ok(())
}

/// Parses `--format`.
pub fn format(s: &str) -> Result<Format, String> {
    s.parse()
}
