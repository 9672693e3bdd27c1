//! TLS options of the command line and config files: the client's trust
//! (`--tls`, `--ca`, `--insecure`) and the server's certificate and HTTPS
//! listener (`--tls-cert`, `--tls-key`, `--https`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use droid_client::ClientTls;
use droid_server::ServerTls;

/// How a client reaches its server over TLS.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ClientTlsArgs {
    /// Connect to the server over TLS, trusting the system's root
    /// certificates (implied by --ca and --insecure).
    #[arg(long)]
    pub tls: bool,
    /// Connect over TLS, trusting only the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca: Option<PathBuf>,
    /// Connect over TLS without checking the server's certificate: for
    /// development only, anyone in between can read and change the traffic.
    #[arg(long)]
    pub insecure: bool,
}

/// What the file says about TLS: `tls`, `ca`, `insecure`.
#[derive(Debug, Default, Clone)]
pub struct ClientTlsFile {
    /// `tls = true`.
    pub tls: Option<bool>,
    /// `ca = "FILE"`.
    pub ca: Option<PathBuf>,
    /// `insecure = true`.
    pub insecure: Option<bool>,
}

/// The client's TLS, the command line over the file; `None`: plain TCP.
/// Reading the CA file happens here, before anything starts.
pub fn client(
    args: &ClientTlsArgs,
    file: &ClientTlsFile,
    has_server: bool,
) -> Result<Option<ClientTls>> {
    // A trust given on the command line replaces the file's.
    let (ca, insecure) = if args.ca.is_some() || args.insecure {
        (args.ca.clone(), args.insecure)
    } else {
        (file.ca.clone(), file.insecure.unwrap_or(false))
    };
    if ca.is_some() && insecure {
        bail!("--ca and --insecure contradict each other: trust the CA, or nothing");
    }
    let wanted = args.tls || file.tls.unwrap_or(false) || ca.is_some() || insecure;
    if !wanted {
        return Ok(None);
    }
    if !has_server {
        bail!(
            "--tls, --ca and --insecure need --server: the local server droid starts without one speaks plain TCP on loopback"
        );
    }
    Ok(Some(if insecure {
        ClientTls::insecure()?
    } else if let Some(ca) = &ca {
        ClientTls::from_ca_file(ca).map_err(|e| anyhow::anyhow!("--ca: {e}"))?
    } else {
        ClientTls::system()?
    }))
}

/// What `--insecure` prints, once, before connecting.
pub const INSECURE_WARNING: &str = "droid: WARNING: --insecure: the server's certificate is not checked, so anyone between you and the server can read and change this tunnel's traffic. Use it for development only.";

/// A server's certificate and HTTPS listener.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServerTlsArgs {
    /// The certificate chain (PEM, the server's certificate first) for the
    /// control port, which then requires TLS, and for --https. It should
    /// cover DOMAIN and *.DOMAIN.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve visitors over HTTPS here too (needs --tls-cert and --tls-key);
    /// tunnel URLs then say https://.
    #[arg(long, value_name = "ADDR")]
    pub https: Option<SocketAddr>,
}

/// The server's TLS, loaded: the certificate, and where HTTPS listens.
pub struct ServerTlsSettings {
    /// The certificate and key, if any.
    pub tls: Option<ServerTls>,
    /// The HTTPS listener, if any.
    pub https: Option<SocketAddr>,
}

/// Loads the server's certificate, the command line over the file
/// (`tls_cert`, `tls_key`, `https`).
pub fn server(
    args: &ServerTlsArgs,
    cert: Option<&Path>,
    key: Option<&Path>,
    https: Option<SocketAddr>,
) -> Result<ServerTlsSettings> {
    // The pair comes from one place: the command line's, else the file's.
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => (Some(c.as_path()), Some(k.as_path())),
        _ => (cert, key),
    };
    let https = args.https.or(https);
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(ServerTls::from_pem_files(cert, key)?),
        (None, None) => None,
        _ => bail!("TLS needs both a certificate and its key: --tls-cert FILE --tls-key FILE"),
    };
    if let (Some(addr), None) = (https, &tls) {
        bail!(
            "--https {addr} needs a certificate: add --tls-cert FILE --tls-key FILE (for *.DOMAIN)"
        );
    }
    Ok(ServerTlsSettings { tls, https })
}
