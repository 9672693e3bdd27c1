//! The inspector's options on the command line and in a client file, and
//! starting it beside the tunnels.

use std::net::SocketAddr;

use anyhow::{Result, bail};
use droid_client::{Inspector, InspectorOptions};
use tokio_util::sync::CancellationToken;

use crate::config::client::InspectFile;

/// The first address tried; the next free port is taken when it is busy.
const INSPECT: &str = "127.0.0.1:4040";

/// `--inspect`, `--no-inspect`, `--inspect-auth`, and what it keeps.
#[derive(clap::Args, Default)]
#[command(next_help_heading = "Inspector")]
pub struct InspectArgs {
    /// Where the inspector (the page, the JSON API and /metrics) listens;
    /// when the port is taken, the next free one is used [default:
    /// 127.0.0.1:4040].
    #[arg(long, value_name = "ADDR")]
    inspect: Option<SocketAddr>,
    /// Run no inspector: nothing is captured and nothing listens.
    #[arg(long, conflicts_with = "inspect")]
    no_inspect: bool,
    /// Ask every inspector request for this user name and password;
    /// required when --inspect is not a loopback address.
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "DROID_INSPECT_AUTH",
        hide_env_values = true
    )]
    inspect_auth: Option<String>,
    /// The most bytes the inspector keeps of each request or response body
    /// [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    inspect_body_cap: Option<usize>,
    /// The memory all captures may take together; the oldest go first
    /// [default: 10000000].
    #[arg(long, value_name = "BYTES")]
    inspect_budget: Option<usize>,
}

/// The inspector a command runs with.
pub struct InspectSettings {
    pub listen: SocketAddr,
    pub auth: Option<String>,
    pub options: InspectorOptions,
}

/// The error for a non-loopback address without a login.
pub fn needs_auth(addr: SocketAddr) -> String {
    format!(
        "{addr} is not a loopback address, and the inspector shows cookies, tokens and mail: add a login (--inspect-auth USER:PASSWORD, or `auth` in [inspect])"
    )
}

impl InspectArgs {
    /// The command line over the file; `None` when it is off.
    pub fn resolve(&self, file: Option<&InspectFile>) -> Result<Option<InspectSettings>> {
        if self.no_inspect
            || (self.inspect.is_none() && file.and_then(|f| f.enabled) == Some(false))
        {
            return Ok(None);
        }
        let listen = self
            .inspect
            .or_else(|| file.and_then(|f| f.listen.as_ref().map(|l| l.get_ref().0)))
            .unwrap_or_else(|| {
                INSPECT
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 4040)))
            });
        let auth = self
            .inspect_auth
            .clone()
            .or_else(|| file.and_then(|f| f.auth.as_ref().map(|a| a.0.clone())));
        if let Some(auth) = &auth {
            crate::config::values::check_credentials(auth)
                .map_err(|why| anyhow::anyhow!("--inspect-auth: {why}"))?;
        }
        if auth.is_none() && !listen.ip().is_loopback() {
            bail!("--inspect {}", needs_auth(listen));
        }
        let defaults = InspectorOptions::default();
        let options = InspectorOptions {
            body_cap: self
                .inspect_body_cap
                .or(file.and_then(|f| f.body_cap))
                .unwrap_or(defaults.body_cap),
            budget: self
                .inspect_budget
                .or(file.and_then(|f| f.budget))
                .unwrap_or(defaults.budget),
        };
        if options.budget < 1_000_000 {
            bail!("--inspect-budget must be at least 1000000 bytes");
        }
        Ok(Some(InspectSettings {
            listen,
            auth,
            options,
        }))
    }
}

/// Starts the inspector on its address (or the next free port) and
/// returns it with the address it got.
pub async fn start(
    settings: InspectSettings,
    shutdown: CancellationToken,
) -> Result<(Inspector, SocketAddr)> {
    let listener =
        droid_adapters::plugin::bind_next_free(settings.listen, "the inspector", "inspect").await?;
    let addr = listener.local_addr()?;
    let inspector = Inspector::new(settings.options);
    let serving = inspector.clone();
    tokio::spawn(async move { serving.serve(listener, settings.auth, shutdown).await });
    Ok((inspector, addr))
}
