//! What each command runs with: the command line over the config file over
//! the defaults. The file is already checked ([`crate::config`]); what is
//! left to check here is what only the combination can say (a server with
//! no domain, a standalone adapter with no URL, an unknown tunnel name).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use droid_adapters::{ConnLimits, Format, Setup, SmtpConfig};
use droid_client::{AppProtocol, HostHeader, TunnelSpec};
use droid_server::{AuthPolicy, NamePolicy, ServerConfig, TokenRule};

use crate::config::client::{AppProtocolFile, HostHeaderFile};
use crate::config::{ClientFile, ServerFile, StandaloneFile};
use crate::mail::SpoolSetup;
use crate::{
    AppProtocolArg, HostHeaderArg, HttpArgs, ServerArgs, SmtpStandaloneArgs, StartArgs, TcpArgs,
};

/// The default HTTP address of the embedded server.
const EMBEDDED_HTTP: &str = "127.0.0.1:8080";
/// The default address of `droid smtp`.
const LOCAL_SMTP: &str = "127.0.0.1:2525";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// `droid server`.
pub struct ServerSettings {
    /// The public HTTP listener.
    pub http: SocketAddr,
    /// The control listener.
    pub control: SocketAddr,
    /// The port URLs carry; `None`: the HTTP listener's.
    pub public_port: Option<u16>,
    /// Everything else the server library takes.
    pub config: ServerConfig,
    /// The public HTTPS listener, when HTTPS is on.
    pub https: Option<SocketAddr>,
    /// Where `/metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Where names are written down, if anywhere.
    pub state: Option<std::path::PathBuf>,
    /// The cluster this server is one node of, if any.
    pub cluster: Option<droid_server::cluster::ClusterConfig>,
    /// Where it takes the other nodes' requests, in a cluster.
    pub peer: Option<SocketAddr>,
    /// The adapters the flags and file turned on, by name, their
    /// listeners not open yet.
    pub adapters: Vec<(&'static str, Box<dyn Setup>)>,
    /// The spool the adapters share.
    pub spool: SpoolSetup,
    /// The log level, when `RUST_LOG` is unset.
    pub log_level: String,
    /// Threads serving tunnels; `None`: one per core.
    pub threads: Option<usize>,
}

/// What strangers may make the registry remember: the command line over
/// the file's `[names]` over the defaults; 0 lifts a per-key bound.
fn name_limits(
    args: &ServerArgs,
    names: Option<&crate::config::server::NamesFile>,
) -> droid_server::NameLimits {
    let defaults = droid_server::NameLimits::default();
    let per_key =
        |flag: Option<usize>, key: Option<usize>, default: Option<usize>| match flag.or(key) {
            Some(0) => None,
            Some(n) => Some(n),
            None => default,
        };
    droid_server::NameLimits {
        max_names: args
            .max_names
            .or(names.and_then(|n| n.max_names))
            .unwrap_or(defaults.max_names),
        per_address: per_key(
            args.max_names_per_ip,
            names.and_then(|n| n.max_names_per_ip),
            defaults.per_address,
        ),
        per_token: per_key(
            args.max_names_per_token,
            names.and_then(|n| n.max_names_per_token),
            defaults.per_token,
        ),
        new_per_minute: match args
            .new_names_per_minute
            .or(names.and_then(|n| n.new_names_per_minute))
        {
            Some(0) => None,
            Some(n) => Some(n),
            None => defaults.new_per_minute,
        },
    }
}

/// `droid server [--config FILE]`.
pub fn server(
    args: &ServerArgs,
    file: Option<&ServerFile>,
    flags: &clap::ArgMatches,
    source: Option<crate::adapters::Source<'_>>,
) -> Result<ServerSettings> {
    let Some(domain) = args
        .domain
        .clone()
        .or_else(|| file.map(|f| f.domain.0.clone()))
    else {
        bail!(
            "a server needs a domain: --domain tunnel.example.com, or `domain` in a --config file"
        );
    };
    let f = file;
    let limits = f.and_then(|f| f.limits.as_ref());
    let names = f.and_then(|f| f.names.as_ref());
    let mut config = ServerConfig::new(domain);
    let defaults = NamePolicy::default();
    config.names = NamePolicy {
        grace: args
            .grace
            .or(names.and_then(|n| n.grace.map(|d| d.0)))
            .unwrap_or(defaults.grace),
        quarantine: args
            .quarantine
            .or(names.and_then(|n| n.quarantine.map(|d| d.0)))
            .unwrap_or(defaults.quarantine),
        limits: name_limits(args, names),
        keep_service_names: !args.free_service_names
            && names.and_then(|n| n.keep_service_names).unwrap_or(true),
    };
    if let Some(d) = f.and_then(|f| f.heartbeat_interval) {
        config.heartbeat_interval = d.0;
    }
    if let Some(d) = args
        .heartbeat_timeout
        .or(f.and_then(|f| f.heartbeat_timeout.map(|d| d.0)))
    {
        config.heartbeat_timeout = d;
    }
    let a = &args.limits;
    let spanned = |v: Option<&toml::Spanned<usize>>| v.map(|n| *n.get_ref());
    let at_least_one = |flag: &str, v: Option<usize>| match v {
        Some(0) => bail!("--{flag} must be at least 1"),
        v => Ok(v),
    };
    if let Some(n) = at_least_one("max-streams-per-tunnel", a.max_streams_per_tunnel)?.or(spanned(
        limits.and_then(|l| l.max_streams_per_tunnel.as_ref()),
    )) {
        config.max_streams_per_tunnel = n;
    }
    if let Some(d) = a
        .stream_open_timeout
        .or(limits.and_then(|l| l.stream_open_timeout.map(|d| d.0)))
    {
        config.stream_open_timeout = d;
    }
    if let Some(d) = a
        .header_read_timeout
        .or(limits.and_then(|l| l.header_read_timeout.map(|d| d.0)))
    {
        config.header_read_timeout = d;
    }
    if let Some(d) = a
        .drain_timeout
        .or(limits.and_then(|l| l.drain_timeout.map(|d| d.0)))
    {
        config.drain_timeout = d;
    }
    if let Some(d) = a
        .body_read_timeout
        .or(limits.and_then(|l| l.body_read_timeout.map(|d| d.0)))
    {
        config.body_read_timeout = d;
    }
    if let Some(n) = at_least_one("max-header-size", a.max_header_size)?
        .or(spanned(limits.and_then(|l| l.max_header_size.as_ref())))
    {
        config.max_header_size = n;
    }
    if let Some(n) = at_least_one("max-headers", a.max_headers)?
        .or(spanned(limits.and_then(|l| l.max_headers.as_ref())))
    {
        config.max_headers = n;
    }
    config.max_body_size = a.max_body_size.or(limits.and_then(|l| l.max_body_size));
    let spanned_u32 = |v: Option<&toml::Spanned<u32>>| v.map(|n| *n.get_ref());
    let per_second = a.requests_per_second.or(spanned_u32(
        limits.and_then(|l| l.requests_per_second.as_ref()),
    ));
    let burst = a
        .burst
        .or(spanned_u32(limits.and_then(|l| l.burst.as_ref())));
    config.request_rate = match (per_second, burst) {
        (None, None) => None,
        (None, Some(_)) => bail!("--burst shapes a request rate: add --requests-per-second N"),
        (Some(per_second), burst) => Some(
            droid_server::RequestRate::new(per_second, burst)
                .context("--requests-per-second and --burst must be at least 1")?,
        ),
    };
    let cap = |flag: &str, arg: Option<usize>, key: Option<&toml::Spanned<usize>>, default| {
        at_least_one(flag, arg).map(|v| v.or(spanned(key)).unwrap_or(default))
    };
    config.sessions = droid_adapters::ConnLimits {
        max_connections: cap(
            "max-sessions",
            a.max_sessions,
            limits.and_then(|l| l.max_sessions.as_ref()),
            config.sessions.max_connections,
        )?,
        max_per_ip: cap(
            "max-sessions-per-ip",
            a.max_sessions_per_ip,
            limits.and_then(|l| l.max_sessions_per_ip.as_ref()),
            config.sessions.max_per_ip,
        )?,
    };
    config.visitors = droid_adapters::ConnLimits {
        max_connections: cap(
            "max-visitor-connections",
            a.max_visitor_connections,
            limits.and_then(|l| l.max_visitor_connections.as_ref()),
            config.visitors.max_connections,
        )?,
        max_per_ip: cap(
            "max-visitor-connections-per-ip",
            a.max_visitor_connections_per_ip,
            limits.and_then(|l| l.max_visitor_connections_per_ip.as_ref()),
            config.visitors.max_per_ip,
        )?,
    };
    let mut tokens: Vec<TokenRule> = f
        .map(|f| {
            f.tokens
                .iter()
                .map(|t| {
                    let t = t.get_ref();
                    TokenRule {
                        token: t.token.0.clone(),
                        names: t.names.iter().map(|n| n.0.clone()).collect(),
                        ports: t.ports.clone(),
                        max_tunnels: t.max_tunnels,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    for token in &args.tokens {
        if token.is_empty() {
            bail!("--token must not be empty");
        }
        if !tokens.iter().any(|t| &t.token == token) {
            tokens.push(TokenRule {
                token: token.clone(),
                ..TokenRule::default()
            });
        }
    }
    let require_token = args
        .require_token
        .or(f.and_then(|f| f.require_token))
        .unwrap_or(!tokens.is_empty());
    if require_token && tokens.is_empty() {
        bail!("a token is required but none is configured: add --token TOKEN or [[tokens]]");
    }
    let defaults = AuthPolicy::default();
    config.auth = AuthPolicy {
        tokens,
        require_token,
        max_tunnels_per_session: at_least_one(
            "max-tunnels-per-session",
            a.max_tunnels_per_session,
        )?
        .or(spanned(
            limits.and_then(|l| l.max_tunnels_per_session.as_ref()),
        ))
        .unwrap_or(defaults.max_tunnels_per_session),
        max_tunnels_per_token: a
            .max_tunnels_per_token
            .or(limits.and_then(|l| l.max_tunnels_per_token)),
        max_tunnels_per_ip: a
            .max_tunnels_per_ip
            .or(limits.and_then(|l| l.max_tunnels_per_ip)),
    };
    let spool_file = f.and_then(|f| f.spool.as_ref().map(|s| s.get_ref()));
    let spool = args.spool.resolve(spool_file);
    let tls = crate::tls::server(
        &args.tls,
        f.and_then(|f| f.tls_cert.as_ref())
            .map(|c| std::path::Path::new(&c.get_ref().0)),
        f.and_then(|f| f.tls_key.as_ref())
            .map(|k| std::path::Path::new(&k.get_ref().0)),
        f.and_then(|f| f.https.as_ref()).map(|a| a.get_ref().0),
    )?;
    config.tls = tls.tls;
    config.https = tls.https.is_some();
    config.tcp_ports = args
        .tcp_ports
        .or(f.and_then(|f| f.tcp_ports.as_ref().map(|r| r.0)))
        .map(|(low, high)| droid_server::TcpPorts::Range(low, high));
    if let Some(ip) = args
        .tcp_bind
        .or(f.and_then(|f| f.tcp_bind.as_ref().map(|a| a.0)))
    {
        config.tcp_bind = ip;
    }
    Ok(ServerSettings {
        https: tls.https,
        metrics: args.metrics.or(f.and_then(|f| f.metrics.map(|a| a.0))),
        cluster: {
            let file = f.and_then(|f| f.cluster.as_ref());
            let redis = args
                .cluster
                .clone()
                .or_else(|| file.map(|c| c.redis.0.clone()));
            let node_id = args
                .node_id
                .clone()
                .or_else(|| file.map(|c| c.node_id.0.clone()));
            let advertise = args
                .peer_advertise
                .clone()
                .or_else(|| file.and_then(|c| c.peer_advertise.as_ref().map(|a| a.0.clone())));
            let secret = args
                .cluster_secret
                .clone()
                .or_else(|| file.and_then(|c| c.secret.as_ref().map(|s| s.0.clone())));
            if redis.is_some() {
                let Some(secret) = &secret else {
                    bail!(
                        "--cluster needs --cluster-secret (or DROID_CLUSTER_SECRET, or `secret` in \
                         [cluster]): the TLS between the nodes is keyed by it; make one with \
                         `droid cluster secret`"
                    );
                };
                droid_server::check_secret(secret).map_err(anyhow::Error::msg)?;
            }
            match (redis, node_id) {
                (Some(redis), Some(node_id)) => Some(droid_server::cluster::ClusterConfig {
                    redis,
                    node_id,
                    lease: args
                        .cluster_lease
                        .or(file.and_then(|c| c.lease.map(|d| d.0)))
                        .unwrap_or(Duration::from_secs(10)),
                    // Filled in once the peer port is bound (port 0).
                    peer: advertise,
                    secret: secret.unwrap_or_default(),
                    ca: cluster_ca(args, file)?,
                }),
                (None, Some(_)) => bail!("--node-id needs --cluster redis://HOST:PORT"),
                _ => None,
            }
        },
        peer: args.peer.or_else(|| {
            f.and_then(|f| f.cluster.as_ref())
                .and_then(|c| c.peer.map(|a| a.0))
        }),
        state: args.state.clone().or_else(|| {
            f.and_then(|f| f.state.as_ref())
                .map(|d| std::path::PathBuf::from(&d.0))
        }),
        http: args
            .http
            .or(f.and_then(|f| f.http.map(|a| a.0)))
            .unwrap_or(addr("0.0.0.0:80")),
        control: args
            .control
            .or(f.and_then(|f| f.control.map(|a| a.0)))
            .unwrap_or(addr("0.0.0.0:7835")),
        public_port: args.public_port.or(f.and_then(|f| f.public_port)),
        adapters: crate::adapters::server(Some(flags), source, config.tls.is_some())?,
        config,
        spool,
        log_level: f
            .and_then(|f| f.log_level.as_ref().map(|l| l.0.clone()))
            .unwrap_or_else(|| "info".into()),
        threads: match args.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(n) => Some(n),
            None => f.and_then(|f| f.threads.as_ref()).map(|n| *n.get_ref()),
        },
    })
}

/// `droid http` and `droid start`: tunnels, and where they connect.
pub struct TunnelSettings {
    /// The server's control address; `None` starts an embedded server.
    pub server: Option<String>,
    /// The auth token.
    pub token: Option<String>,
    /// A server silent this long is dead.
    pub heartbeat_timeout: Option<Duration>,
    /// The tunnels, in order.
    pub tunnels: Vec<TunnelSpec>,
    /// TLS to the server; `None`: plain TCP.
    pub tls: Option<droid_client::ClientTls>,
    /// The embedded server's HTTP address.
    pub embedded_http: SocketAddr,
    /// The adapters the embedded server runs.
    pub embedded_adapters: Vec<Box<dyn Setup>>,
    /// The embedded server's spool.
    pub spool: SpoolSetup,
    /// The log level, when `RUST_LOG` is unset.
    pub log_level: String,
    /// The inspector; `None`: off.
    pub inspect: Option<crate::inspect::InspectSettings>,
}

/// `droid http TARGET ...`: one tunnel from the command line.
pub fn http(args: &HttpArgs, flags: &clap::ArgMatches) -> Result<TunnelSettings> {
    let asked = crate::adapters::tunnel_from_flags(flags)?;
    let spec = TunnelSpec {
        name: args.name.clone(),
        target: args.target.clone(),
        host_header: match args.host_header {
            HostHeaderArg::Preserve => HostHeader::Preserve,
            HostHeaderArg::Rewrite => HostHeader::Rewrite,
        },
        secret: args.mail_secret.clone(),
        adapters: asked.parts,
        auth: args.auth.clone(),
        allow_ip: args.allow_ip.clone(),
        kind: droid_client::TunnelKind::Http,
        port: None,
        app_protocol: match args.app_protocol {
            AppProtocolArg::Http1 => AppProtocol::Http1,
            AppProtocolArg::H2c => AppProtocol::H2c,
        },
    };
    if args.target.tls && matches!(args.app_protocol, AppProtocolArg::H2c) {
        bail!(
            "an https:// target speaks HTTP/2 or HTTP/1.1 as its ALPN chooses: leave out --app-protocol"
        );
    }
    if let Some(auth) = &args.auth {
        crate::config::values::check_credentials(auth)
            .map_err(|why| anyhow::anyhow!("--auth: {why}"))?;
    }
    for block in &args.allow_ip {
        droid_server::access::IpBlock::parse(block)
            .map_err(|why| anyhow::anyhow!("--allow-ip: {why}"))?;
    }
    Ok(TunnelSettings {
        tls: crate::tls::client(
            &args.tls,
            &crate::tls::ClientTlsFile::default(),
            !args.server.is_empty(),
        )?,
        server: server_list(&args.server),
        token: args.token.clone(),
        heartbeat_timeout: None,
        tunnels: vec![spec],
        embedded_http: args.http,
        embedded_adapters: crate::adapters::embedded(Some(flags), None)?,
        spool: args.spool.resolve(None),
        log_level: "warn".into(),
        inspect: args.inspect.resolve(None)?,
    })
}

/// `droid tcp TARGET ...`: one TCP tunnel from the command line.
pub fn tcp(args: &TcpArgs) -> Result<TunnelSettings> {
    for block in &args.allow_ip {
        droid_server::access::IpBlock::parse(block)
            .map_err(|why| anyhow::anyhow!("--allow-ip: {why}"))?;
    }
    if args.port == Some(0) {
        bail!("--port must be a port (1-65535); leave it out for any free one");
    }
    if args.target.tls {
        bail!(
            "droid tcp passes bytes as they are: give a port or HOST:PORT, not an https:// URL (TLS between your client and the service still works)"
        );
    }
    let mut spec = TunnelSpec::tcp(args.target.clone(), args.port);
    spec.name = args.name.clone();
    spec.allow_ip = args.allow_ip.clone();
    Ok(TunnelSettings {
        tls: crate::tls::client(
            &args.tls,
            &crate::tls::ClientTlsFile::default(),
            !args.server.is_empty(),
        )?,
        server: server_list(&args.server),
        token: args.token.clone(),
        heartbeat_timeout: None,
        tunnels: vec![spec],
        embedded_http: addr("127.0.0.1:0"),
        embedded_adapters: Vec::new(),
        spool: SpoolSetup::default(),
        log_level: "warn".into(),
        inspect: args.inspect.resolve(None)?,
    })
}

/// `droid start --config FILE [NAMES...]`: the file's tunnels, or the
/// ones named.
pub fn start(
    args: &StartArgs,
    file: ClientFile,
    source: crate::adapters::Source<'_>,
) -> Result<TunnelSettings> {
    let all = file.names();
    for wanted in &args.names {
        if !all.contains(wanted) {
            let hint = crate::config::error::hint(wanted, &all)
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            bail!(
                "{}: no tunnel is named `{wanted}`{hint}",
                args.config.display()
            );
        }
    }
    let mut tunnels: Vec<TunnelSpec> = Vec::new();
    for (i, t) in file.tunnels.get_ref().iter().enumerate() {
        if !args.names.is_empty() && !args.names.contains(&t.name.get_ref().0) {
            continue;
        }
        let mut spec = tunnel_spec(t);
        // The file's check refused adapters on a TCP tunnel already.
        if spec.kind == droid_client::TunnelKind::Http {
            let asked = crate::adapters::tunnel_from_file(source, i)?;
            spec.adapters = asked.parts;
            spec.secret = asked.secret;
        }
        tunnels.push(spec);
    }
    let embedded = file.embedded.as_ref().map(|e| e.get_ref());
    Ok(TunnelSettings {
        tls: crate::tls::client(
            &args.tls,
            &file.tls_settings(),
            !args.server.is_empty() || file.server.is_some(),
        )?,
        server: server_list(&args.server).or_else(|| file.server.as_ref().map(|s| s.0.clone())),
        token: args
            .token
            .clone()
            .or_else(|| file.token.as_ref().map(|t| t.0.clone())),
        heartbeat_timeout: file.heartbeat_timeout.map(|d| d.0),
        tunnels,
        embedded_http: embedded
            .and_then(|e| e.http)
            .map_or(addr(EMBEDDED_HTTP), |a| a.0),
        embedded_adapters: crate::adapters::embedded(None, Some(source))?,
        spool: crate::mail::SpoolArgs::default().resolve(file.spool.as_ref().map(|s| s.get_ref())),
        log_level: file
            .log_level
            .as_ref()
            .map_or_else(|| "warn".into(), |l| l.0.clone()),
        inspect: args
            .inspect
            .resolve(file.inspect.as_ref().map(|i| i.get_ref()))?,
    })
}

/// What a client file's tunnel asks for with the keys of its own.
fn tunnel_spec(t: &crate::config::client::TunnelFile) -> TunnelSpec {
    TunnelSpec {
        name: Some(t.name.get_ref().0.clone()),
        target: t.local.0.clone(),
        host_header: match t.host_header {
            HostHeaderFile::Preserve => HostHeader::Preserve,
            HostHeaderFile::Rewrite => HostHeader::Rewrite,
        },
        secret: None,
        adapters: droid_client::AdapterParts::new(),
        auth: t.auth.as_ref().map(|a| a.0.clone()),
        allow_ip: t.allow_ip.iter().map(|b| b.0.clone()).collect(),
        kind: match t.kind {
            Some(crate::config::client::KindFile::Tcp) => droid_client::TunnelKind::Tcp,
            _ => droid_client::TunnelKind::Http,
        },
        port: t.port.as_ref().map(|p| *p.get_ref()),
        app_protocol: match t.app_protocol {
            AppProtocolFile::Http1 => AppProtocol::Http1,
            AppProtocolFile::H2c => AppProtocol::H2c,
        },
    }
}

/// `droid smtp`: mail to a URL.
pub struct StandaloneSettings {
    /// Where mail is accepted.
    pub listen: SocketAddr,
    /// Where it is POSTed.
    pub post: String,
    /// Accept `*@domain` only.
    pub domain: Option<String>,
    /// The POST's body.
    pub format: Format,
    /// The signing key.
    pub secret: Option<String>,
    /// The adapter's settings.
    pub config: SmtpConfig,
    /// Its connection caps.
    pub limits: ConnLimits,
    /// Its spool.
    pub spool: SpoolSetup,
    /// The log level, when `RUST_LOG` is unset.
    pub log_level: String,
}

/// `droid smtp [--config FILE]`.
pub fn standalone(
    args: &SmtpStandaloneArgs,
    file: Option<StandaloneFile>,
) -> Result<StandaloneSettings> {
    let f = file.as_ref().map(|f| f.adapters.smtp.get_ref());
    let Some(post) = args
        .post
        .clone()
        .or_else(|| f.and_then(|f| f.post.as_ref().map(|p| p.0.clone())))
    else {
        bail!(
            "where should mail go? --post http://localhost:3000/inbound, or `post` in a --config file's [adapters.smtp]"
        );
    };
    let spool = file.as_ref().and_then(|f| f.spool.as_ref());
    let (config, limits) = f.unwrap_or(&Default::default()).resolve(&args.options);
    Ok(StandaloneSettings {
        listen: args
            .listen
            .or(f.and_then(|f| f.listen.map(|a| a.0)))
            .unwrap_or(addr(LOCAL_SMTP)),
        post,
        domain: args
            .domain
            .clone()
            .or_else(|| f.and_then(|f| f.domain.as_ref().map(|d| d.0.clone()))),
        format: args
            .format
            .or(f.and_then(|f| f.format.as_ref().map(|x| x.0)))
            .unwrap_or(Format::Json),
        secret: args
            .secret
            .clone()
            .or_else(|| f.and_then(|f| f.secret.as_ref().map(|s| s.0.clone()))),
        config,
        limits,
        spool: args.spool.resolve(spool),
        log_level: file
            .as_ref()
            .and_then(|f| f.log_level.as_ref().map(|l| l.0.clone()))
            .unwrap_or_else(|| "info".into()),
    })
}

/// `--server` given once, several times or comma-separated: the client's
/// list, in order; `None` when not given.
fn server_list(given: &[String]) -> Option<String> {
    let servers: Vec<&str> = given
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    (!servers.is_empty()).then(|| servers.join(","))
}

/// A fresh cluster secret: 256 random bits as 64 hex digits.
pub fn new_cluster_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The CA certificates a `rediss://` cluster Redis's must chain to, from
/// `--cluster-ca` or `ca` in `[cluster]`, read now.
fn cluster_ca(
    args: &ServerArgs,
    file: Option<&crate::config::server::ClusterFile>,
) -> Result<Option<Vec<u8>>> {
    let path = args
        .cluster_ca
        .clone()
        .or_else(|| file.and_then(|c| c.ca.as_ref().map(|p| p.0.clone().into())));
    let Some(path) = path else {
        return Ok(None);
    };
    let pem = std::fs::read(&path)
        .with_context(|| format!("--cluster-ca: cannot read {}", path.display()))?;
    Ok(Some(pem))
}
