//! Mail's flags, config-file keys and printed lines, for the `droid`
//! command.
//!
//! - `droid server --smtp ADDR` (or `[adapters.smtp]`): mail for
//!   `*@NAME.DOMAIN` goes through NAME's tunnel.
//! - Every HTTP tunnel asks for it (`--mail-path`, `--mail-format`; a
//!   client file's `[tunnels.mail]`); the server inside `droid http`
//!   accepts mail on `--smtp` (`127.0.0.1:2525` or the next free port)
//!   unless `--no-smtp` (`[embedded.smtp]`).
//! - [`SmtpOptions`] and [`SmtpTable`] are also `droid smtp`'s, the
//!   standalone mode that POSTs mail to a URL.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches};
use serde::Deserialize;
use serde_json::Value;
use toml::de::ValueDeserializer;

use super::auth::MailAuth;
use super::dkim::Dkim;
use super::outbound::Elsewhere;
use super::relay::Relay;
use super::{DEFAULT_SENDS_PER_MINUTE, MailRoute, MailSettings, NAME, SmtpConfig, SmtpService};
use crate::adapter::ConnLimits;
use crate::mail::Format;
use crate::plugin::values::{self, Addr, Dur, MailFormat, NonEmpty, SigningSecret, UrlPath};
use crate::plugin::{
    Part, Place, Plugin, Setup, SetupError, Started, bind, bind_next_free, read_table,
};
use crate::route::Answer;
use crate::spool::Spool;

/// Mail, for the `droid` command.
pub struct SmtpPlugin;

/// The SMTP listener's options on the command line; each is `None` when
/// not given, so a file's [`SmtpTable`] can fill it in.
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Mail")]
pub struct SmtpOptions {
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
    /// The name the SMTP server gives itself in its greeting [default: localhost].
    #[arg(long)]
    pub hostname: Option<String>,
}

/// `[adapters.smtp]` (a server's, or a standalone file's) and
/// `[embedded.smtp]` (a client file's).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpTable {
    /// `false` turns mail off.
    pub enabled: Option<bool>,
    /// Where mail is accepted (`--smtp`, or `--listen` standalone).
    pub listen: Option<Addr>,
    /// Where mail is accepted over implicit TLS, usually port 465
    /// (`--smtps`; a server with a certificate only).
    pub listen_tls: Option<Addr>,
    /// The name in the greeting (`--hostname`).
    pub hostname: Option<NonEmpty>,
    /// The largest message, in bytes (`--max-message-size`).
    pub max_message_size: Option<usize>,
    /// Recipients per message (`--max-recipients`).
    pub max_recipients: Option<usize>,
    /// The memory every message being received may take together.
    pub message_memory: Option<usize>,
    /// SMTP connections open at once, in total.
    pub max_connections: Option<usize>,
    /// SMTP connections open at once from one IP address.
    pub max_connections_per_ip: Option<usize>,
    /// How long a client may stay silent.
    pub idle_timeout: Option<Dur>,
    /// How long one SMTP session may last in all.
    pub session_timeout: Option<Dur>,
    /// How long the app has to answer before the message is spooled.
    pub deliver_timeout: Option<Dur>,
    /// The relay apps' mail to other domains goes through (`--mail-relay`):
    /// `smtp://USER:PASS@HOST:587` or `smtps://USER:PASS@HOST:465`.
    pub relay: Option<NonEmpty>,
    /// A PEM file of the CA the relay's certificate is checked against,
    /// instead of the system's roots (`--mail-relay-ca`).
    pub relay_ca: Option<NonEmpty>,
    /// Messages one tunnel's app may send a minute (`--mail-send-rate`).
    pub send_rate: Option<u32>,
    /// A PEM private key (RSA or Ed25519) that signs the mail apps send
    /// (`--dkim-key`).
    pub dkim_key: Option<NonEmpty>,
    /// The selector its public key is published under (`--dkim-selector`).
    pub dkim_selector: Option<NonEmpty>,
    /// `report` (the default), `enforce` or `off`: what SPF, DKIM, DMARC
    /// and ARC checks of received mail do (`--mail-auth`).
    pub mail_auth: Option<NonEmpty>,
    /// The DNS resolver the checks ask, `IP` or `IP:PORT` (`--dns`;
    /// default: the system's).
    pub dns: Option<NonEmpty>,
    /// Standalone only: the URL each mail is POSTed to (`--post`).
    pub post: Option<NonEmpty>,
    /// Standalone only: accept mail for `*@domain` only (`--domain`).
    pub domain: Option<NonEmpty>,
    /// Standalone only: the POST's body (`--format`).
    pub format: Option<MailFormat>,
    /// Standalone only: the signing key (`--secret`).
    pub secret: Option<SigningSecret>,
}

impl SmtpTable {
    /// The first standalone-only key set, where mail goes through tunnels
    /// instead; the error says so.
    fn refuse_standalone_keys(&self, instead: &str) -> Result<(), SetupError> {
        let set = [
            ("post", self.post.is_some()),
            ("domain", self.domain.is_some()),
            ("format", self.format.is_some()),
            ("secret", self.secret.is_some()),
        ];
        match set.iter().find(|(_, set)| *set) {
            Some((key, _)) => Err(SetupError::Key(
                key,
                format!(
                    "`{key}` belongs in a standalone smtp file (droid smtp --config); {instead}"
                ),
            )),
            None => Ok(()),
        }
    }

    /// The adapter's settings and connection caps: `flags` over the table
    /// over the defaults.
    pub fn resolve(&self, flags: &SmtpOptions) -> (SmtpConfig, ConnLimits) {
        let defaults = SmtpConfig::default();
        let config = SmtpConfig {
            hostname: flags
                .hostname
                .clone()
                .or_else(|| self.hostname.as_ref().map(|h| h.0.clone()))
                .unwrap_or(defaults.hostname),
            max_message_size: flags
                .max_message_size
                .or(self.max_message_size)
                .unwrap_or(defaults.max_message_size),
            max_recipients: flags
                .max_recipients
                .or(self.max_recipients)
                .unwrap_or(defaults.max_recipients),
            message_memory: flags
                .message_memory
                .or(self.message_memory)
                .unwrap_or(defaults.message_memory),
            idle_timeout: self.idle_timeout.map_or(defaults.idle_timeout, |d| d.0),
            session_timeout: self
                .session_timeout
                .map_or(defaults.session_timeout, |d| d.0),
            deliver_timeout: self
                .deliver_timeout
                .map_or(defaults.deliver_timeout, |d| d.0),
            ..defaults
        };
        let limit_defaults = ConnLimits::default();
        let limits = ConnLimits {
            max_connections: flags
                .max_connections
                .or(self.max_connections)
                .unwrap_or(limit_defaults.max_connections),
            max_per_ip: flags
                .max_connections_per_ip
                .or(self.max_connections_per_ip)
                .unwrap_or(limit_defaults.max_per_ip),
        };
        (config, limits)
    }
}

/// `[tunnels.mail]` of a client file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelTable {
    /// The path mail is POSTed to when no route matches.
    path: Option<UrlPath>,
    /// `json`, `multipart` or `raw`.
    format: Option<MailFormat>,
    /// The key of the `webhook-signature` HMAC (`whsec_...`).
    secret: Option<SigningSecret>,
    /// Recipient patterns to paths, first match wins.
    #[serde(default)]
    routes: Vec<RouteTable>,
}

/// `{ pattern = "support@*", path = "/support" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteTable {
    pattern: NonEmpty,
    path: UrlPath,
}

/// Where mail is accepted, and how; where apps' mail goes.
struct SmtpSetup {
    elsewhere: Elsewhere,
    per_minute: u32,
    /// The DKIM key's file and selector.
    dkim: Option<(String, String)>,
    /// Received mail's checks: the resolver, and whether to enforce.
    checks: Option<(Option<SocketAddr>, bool)>,
    listen: Option<SocketAddr>,
    /// Implicit TLS (`--smtps`).
    listen_tls: Option<SocketAddr>,
    /// The server has a certificate: STARTTLS is offered.
    starttls: bool,
    config: SmtpConfig,
    limits: ConnLimits,
    /// Inside `droid http`: the next free port, and the address told to
    /// each tunnel's client.
    embedded: bool,
}

/// What becomes of mail the app cannot take now, as printed.
pub fn describe_spool(spool: Option<&Arc<Spool>>) -> String {
    spool.map_or_else(
        || "no spool: mail the app cannot take now gets 451".to_string(),
        |s| format!("spool {}", s.dir().display()),
    )
}

impl Setup for SmtpSetup {
    fn start(self: Box<Self>, place: Place) -> Answer<'static, Result<Started, SetupError>> {
        Box::pin(async move {
            let spool = describe_spool(place.spool.as_ref());
            let (mut plain, mut lines, mut announce) = (Vec::new(), Vec::new(), None);
            if let Some(addr) = self.listen {
                let listener = if self.embedded {
                    bind_next_free(addr, "SMTP", "smtp").await?
                } else {
                    bind(addr, "SMTP").await?
                };
                let bound = listener.local_addr().unwrap_or(addr);
                if self.embedded {
                    announce = Some(bound.to_string());
                    lines.push(format!("mail {spool}"));
                } else {
                    let tls = if self.starttls {
                        ", STARTTLS with the server's certificate"
                    } else {
                        ""
                    };
                    lines.push(format!(
                        "smtp on {bound}, mail to *@NAME.{}{tls}, {spool}",
                        place.domain
                    ));
                }
                plain.push(listener.into());
            }
            let mut tls = Vec::new();
            if let Some(addr) = self.listen_tls {
                let listener = bind(addr, "SMTP over TLS").await?;
                let bound = listener.local_addr().unwrap_or(addr);
                lines.push(format!(
                    "smtps on {bound}, mail over TLS with the server's certificate"
                ));
                tls.push(listener);
            }
            if let Elsewhere::Relay(relay) = &self.elsewhere
                && !self.embedded
            {
                lines.push(format!(
                    "mail apps send goes through the relay {}, {} a minute per tunnel",
                    relay.name, self.per_minute
                ));
            }
            let dkim = match &self.dkim {
                Some((key, selector)) => {
                    let dkim = Dkim::load(Path::new(key), selector, &place.domain)
                        .map_err(SetupError::Flag)?;
                    lines.push(format!(
                        "mail apps send is signed with DKIM; publish its public key at {}",
                        dkim.record
                    ));
                    Some(dkim)
                }
                None => None,
            };
            let checks = match self.checks {
                Some((dns, enforce)) => Some(Arc::new(
                    MailAuth::new(dns, enforce, &self.config.hostname).map_err(SetupError::Flag)?,
                )),
                None => None,
            };
            let mut service = SmtpService::new(self.config, plain, self.limits)
                .with_implicit_tls(tls)
                .sending(self.elsewhere, self.per_minute)
                .signing(dkim)
                .checking(checks);
            if let Some(address) = announce {
                service = service.announcing(address);
            }
            Ok(Started {
                adapter: Arc::new(service),
                lines,
            })
        })
    }
}

fn options(flags: Option<&ArgMatches>) -> SmtpOptions {
    flags
        .and_then(|f| SmtpOptions::from_arg_matches(f).ok())
        .unwrap_or_default()
}

/// Where apps' mail goes: the relay and its CA, on `droid server` and
/// `droid http` alike; and, on a server, how much a tunnel may send.
fn relay_flags(server: bool) -> Vec<Arg> {
    let mut flags = vec![
        Arg::new("mail_relay")
            .long("mail-relay")
            .value_name("URL")
            .env("DROID_MAIL_RELAY")
            .hide_env_values(true)
            .help_heading("Mail")
            .help(if server {
                "Send the mail apps send (POST /email on their client) through this relay: smtp://USER:PASS@HOST:587 (STARTTLS) or smtps://USER:PASS@HOST:465"
            } else {
                "Without --server: send the mail your app sends through this relay (smtp://USER:PASS@HOST:587 or smtps://...:465) instead of catching it"
            }),
        Arg::new("mail_relay_ca")
            .long("mail-relay-ca")
            .value_name("FILE")
            .help_heading("Mail")
            .help("Check the relay's certificate against this PEM file's CA instead of the system's roots"),
    ];
    if server {
        flags.push(
            Arg::new("mail_auth")
                .long("mail-auth")
                .value_name("MODE")
                .value_parser(["report", "enforce", "off"])
                .help_heading("Mail")
                .help("Check SPF, DKIM, DMARC and ARC of received mail and tell the app (report), also refuse what DMARC says to reject (enforce), or not (off) [default: report]"),
        );
        flags.push(
            Arg::new("dns")
                .long("dns")
                .value_name("ADDR")
                .value_parser(dns_addr)
                .help_heading("Mail")
                .help("The DNS resolver mail checks ask, IP or IP:PORT [default: the system's]"),
        );
        flags.push(
            Arg::new("dkim_key")
                .long("dkim-key")
                .value_name("FILE")
                .requires("dkim_selector")
                .help_heading("Mail")
                .help("Sign the mail apps send with DKIM (d= the server's domain), with this PEM private key (RSA or Ed25519)"),
        );
        flags.push(
            Arg::new("dkim_selector")
                .long("dkim-selector")
                .value_name("SELECTOR")
                .requires("dkim_key")
                .help_heading("Mail")
                .help("The selector the DKIM public key is published under (SELECTOR._domainkey.DOMAIN)"),
        );
        flags.push(
            Arg::new("mail_send_rate")
                .long("mail-send-rate")
                .value_name("N")
                .value_parser(clap::value_parser!(u32).range(1..))
                .help_heading("Mail")
                .help("Messages one tunnel's app may send a minute; more get 429 [default: 60]"),
        );
    }
    flags
}

/// The relay the flags (over the table) name, if any.
fn relay(flags: Option<&ArgMatches>, table: &SmtpTable) -> Result<Option<Relay>, SetupError> {
    let flag = |id: &str| flags.and_then(|f| f.get_one::<String>(id).cloned());
    let url = flag("mail_relay").or_else(|| table.relay.as_ref().map(|r| r.0.clone()));
    let ca = flag("mail_relay_ca").or_else(|| table.relay_ca.as_ref().map(|c| c.0.clone()));
    let Some(url) = url else {
        return Ok(None);
    };
    let from_flag = flag("mail_relay").is_some();
    Relay::new(&url, ca.as_deref().map(std::path::Path::new))
        .map(Some)
        .map_err(|why| {
            if from_flag {
                SetupError::Flag(format!("--mail-relay: {why}"))
            } else {
                SetupError::Key("relay", why)
            }
        })
}

/// The DKIM key and selector the flags (over the table) name, checked:
/// the key reads, the selector is one.
fn dkim(
    flags: Option<&ArgMatches>,
    table: &SmtpTable,
) -> Result<Option<(String, String)>, SetupError> {
    let flag = |id: &str| flags.and_then(|f| f.get_one::<String>(id).cloned());
    let from_flag = flag("dkim_key").is_some();
    let key = flag("dkim_key").or_else(|| table.dkim_key.as_ref().map(|k| k.0.clone()));
    let selector =
        flag("dkim_selector").or_else(|| table.dkim_selector.as_ref().map(|s| s.0.clone()));
    let wrong = |why: String| {
        if from_flag {
            SetupError::Flag(format!("--dkim-key: {why}"))
        } else {
            SetupError::Key("dkim_key", why)
        }
    };
    match (key, selector) {
        (None, None) => Ok(None),
        (Some(key), Some(selector)) => {
            Dkim::load(Path::new(&key), &selector, "example.com").map_err(wrong)?;
            Ok(Some((key, selector)))
        }
        (Some(_), None) => Err(wrong(
            "a DKIM key needs its selector (dkim_selector)".into(),
        )),
        (None, Some(_)) => Err(SetupError::Key(
            "dkim_selector",
            "a DKIM selector needs its key (dkim_key)".into(),
        )),
    }
}

/// `IP` (port 53) or `IP:PORT`.
fn dns_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("`{s}` is not a resolver's address; write IP or IP:PORT"))
}

/// Received mail's checks, from the flags over the table: `None` when
/// off; the resolver, and whether to enforce.
fn checks(
    flags: Option<&ArgMatches>,
    table: &SmtpTable,
) -> Result<Option<(Option<SocketAddr>, bool)>, SetupError> {
    let mode = flags
        .and_then(|f| f.get_one::<String>("mail_auth").cloned())
        .or_else(|| table.mail_auth.as_ref().map(|m| m.0.clone()))
        .unwrap_or_else(|| "report".into());
    let dns = match flags.and_then(|f| f.get_one::<SocketAddr>("dns").copied()) {
        Some(addr) => Some(addr),
        None => match &table.dns {
            Some(text) => Some(dns_addr(&text.0).map_err(|why| SetupError::Key("dns", why))?),
            None => None,
        },
    };
    match mode.as_str() {
        "report" => Ok(Some((dns, false))),
        "enforce" => Ok(Some((dns, true))),
        "off" => Ok(None),
        other => Err(SetupError::Key(
            "mail_auth",
            format!("`{other}` is not a mode; write report, enforce or off"),
        )),
    }
}

/// [`SmtpOptions`] as flags, after the adapter's own in `--help`.
fn option_flags() -> Vec<Arg> {
    SmtpOptions::augment_args(clap::Command::new(NAME))
        .get_arguments()
        .map(|arg| arg.clone().display_order(1000))
        .collect()
}

impl Plugin for SmtpPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tunnel_key(&self) -> &'static str {
        "mail"
    }

    fn server_flags(&self) -> Vec<Arg> {
        let mut flags = vec![
            Arg::new("smtp")
                .long("smtp")
                .value_name("ADDR")
                .value_parser(clap::value_parser!(SocketAddr))
                .help_heading("Mail")
                .help("Accept mail for *@NAME.DOMAIN here and deliver it through NAME's tunnel; with --tls-cert it offers STARTTLS"),
            Arg::new("smtps")
                .long("smtps")
                .value_name("ADDR")
                .value_parser(clap::value_parser!(SocketAddr))
                .help_heading("Mail")
                .help("Accept mail over implicit TLS here (usually port 465), with --tls-cert"),
        ];
        flags.extend(relay_flags(true));
        flags.extend(option_flags());
        flags
    }

    fn http_flags(&self) -> Vec<Arg> {
        let mut flags = vec![
            Arg::new("smtp")
                .long("smtp")
                .value_name("ADDR")
                .value_parser(clap::value_parser!(SocketAddr))
                .default_value("127.0.0.1:2525")
                .help_heading("Mail")
                .help("Without --server: where the embedded server accepts mail; when the port is taken, the next free one is used"),
            Arg::new("no_smtp")
                .long("no-smtp")
                .action(ArgAction::SetTrue)
                .help_heading("Mail")
                .help("Without --server: do not accept mail"),
            Arg::new("mail_path")
                .long("mail-path")
                .value_name("PATH")
                .value_parser(values::url_path)
                .default_value("/")
                .help_heading("Mail")
                .help("The path mail is POSTed to"),
            Arg::new("mail_format")
                .long("mail-format")
                .value_name("FORMAT")
                .value_parser(|s: &str| s.parse::<Format>())
                .default_value("json")
                .help_heading("Mail")
                .help("The body of mail POSTs: json, multipart or raw"),
        ];
        flags.extend(relay_flags(false));
        flags.extend(option_flags());
        flags
    }

    fn server(
        &self,
        flags: Option<&ArgMatches>,
        file: Option<ValueDeserializer<'_>>,
        has_cert: bool,
    ) -> Result<Option<Box<dyn Setup>>, SetupError> {
        let given: Option<SmtpTable> = file.map(read_table).transpose()?;
        if let Some(table) = &given {
            table.refuse_standalone_keys(
                "on a server each client's tunnel says where its mail goes",
            )?;
        }
        let flag = |id: &str| flags.and_then(|f| f.get_one::<SocketAddr>(id).copied());
        let (plain, tls) = if flag("smtp").is_some() || flag("smtps").is_some() {
            if let Some(addr) = flag("smtps")
                && !has_cert
            {
                return Err(SetupError::Flag(format!(
                    "mail over TLS on {addr} needs the server's certificate: add --tls-cert and --tls-key (tls_cert and tls_key in the file)"
                )));
            }
            (flag("smtp"), flag("smtps"))
        } else {
            match given.as_ref().filter(|t| t.enabled != Some(false)) {
                None => (None, None),
                Some(t) => {
                    if t.listen_tls.is_some() && !has_cert {
                        return Err(SetupError::Key(
                            "listen_tls",
                            "mail over TLS needs a certificate: add `tls_cert` and `tls_key`"
                                .into(),
                        ));
                    }
                    let default = SocketAddr::from(([0, 0, 0, 0], 25));
                    let plain = t.listen.map_or(default, |a| a.0);
                    (Some(plain), t.listen_tls.map(|a| a.0))
                }
            }
        };
        let table = given.unwrap_or_default();
        let relay = relay(flags, &table)?;
        if plain.is_none() && tls.is_none() && relay.is_none() {
            return Ok(None);
        }
        let per_minute = flags
            .and_then(|f| f.get_one::<u32>("mail_send_rate").copied())
            .or(table.send_rate)
            .unwrap_or(DEFAULT_SENDS_PER_MINUTE);
        if per_minute == 0 {
            return Err(SetupError::Key("send_rate", "must be at least 1".into()));
        }
        let dkim = dkim(flags, &table)?;
        let checks = checks(flags, &table)?;
        let (config, limits) = table.resolve(&options(flags));
        Ok(Some(Box::new(SmtpSetup {
            elsewhere: relay.map_or(Elsewhere::Refuse, |r| Elsewhere::Relay(Box::new(r))),
            per_minute,
            dkim,
            checks,
            listen: plain,
            listen_tls: tls,
            starttls: has_cert,
            config,
            limits,
            embedded: false,
        })))
    }

    fn embedded(
        &self,
        flags: Option<&ArgMatches>,
        file: Option<ValueDeserializer<'_>>,
    ) -> Result<Option<Box<dyn Setup>>, SetupError> {
        let table: SmtpTable = file.map(read_table).transpose()?.unwrap_or_default();
        table
            .refuse_standalone_keys("here each tunnel's [tunnels.mail] says where its mail goes")?;
        let off = flags.is_some_and(|f| f.get_flag("no_smtp")) || table.enabled == Some(false);
        if off {
            return Ok(None);
        }
        let listen = flags
            .and_then(|f| f.get_one::<SocketAddr>("smtp").copied())
            .or(table.listen.map(|a| a.0))
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 2525)));
        let (config, limits) = table.resolve(&options(flags));
        // Nothing leaves this machine unless asked: without a relay, mail
        // for other domains is caught.
        let elsewhere =
            relay(flags, &table)?.map_or(Elsewhere::Catch, |r| Elsewhere::Relay(Box::new(r)));
        Ok(Some(Box::new(SmtpSetup {
            elsewhere,
            per_minute: table.send_rate.unwrap_or(DEFAULT_SENDS_PER_MINUTE),
            dkim: None,
            // Mail from this machine is checked and reported, never refused.
            checks: Some((None, false)),
            listen: Some(listen),
            listen_tls: None,
            starttls: false,
            config,
            limits,
            embedded: true,
        })))
    }

    fn tunnel_from_flags(&self, flags: &ArgMatches) -> Result<Option<Part>, SetupError> {
        let format = flags.get_one::<Format>("mail_format").copied();
        Ok(Some(Part::of(&MailSettings {
            path: flags.get_one::<String>("mail_path").cloned(),
            format: format.map(|f| f.to_string()),
            routes: Vec::new(),
        })))
    }

    fn tunnel_from_file(
        &self,
        value: Option<ValueDeserializer<'_>>,
    ) -> Result<Option<Part>, SetupError> {
        let table: Option<TunnelTable> = value.map(read_table).transpose()?;
        let (path, format, secret, routes) = match table {
            Some(t) => (t.path, t.format, t.secret, t.routes),
            None => (None, None, None, Vec::new()),
        };
        let settings = MailSettings {
            path: Some(path.map_or_else(|| "/".into(), |p| p.0)),
            format: Some(format.map_or(Format::Json, |f| f.0).to_string()),
            routes: routes
                .into_iter()
                .map(|r| MailRoute {
                    pattern: r.pattern.0,
                    path: r.path.0,
                })
                .collect(),
        };
        Ok(Some(Part {
            secret: secret.map(|s| s.0),
            ..Part::of(&settings)
        }))
    }

    fn describe(&self, asked: &Value, granted: Option<&Value>) -> Option<String> {
        let granted = granted?;
        let domain = granted.get("domain")?.as_str()?;
        let via = granted
            .get("address")
            .and_then(Value::as_str)
            .map(|a| format!("smtp {a}, "))
            .unwrap_or_default();
        let asked: MailSettings = serde_json::from_value(asked.clone()).unwrap_or_default();
        let mut line = format!(
            "{via}mail to anything@{domain} arrives as POST {} ({})",
            asked.path.as_deref().unwrap_or("/"),
            asked.format.as_deref().unwrap_or("json")
        );
        for route in &asked.routes {
            line.push_str(&format!(", {} to {}", route.pattern, route.path));
        }
        Some(line)
    }
}
