//! Syslog's flags, config-file keys and printed line, for the `droid`
//! command.
//!
//! - `droid server --syslog-ports LOW-HIGH` (or `[adapters.syslog]
//!   ports = "LOW-HIGH"`) gives each tunnel that asks a port of the range.
//! - `droid http 3000 --syslog` (or `syslog = true` on a client file's
//!   tunnel) asks for one; the server inside `droid http` gives any free
//!   port.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use clap::{Arg, ArgAction, ArgMatches};
use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::Value;
use toml::de::ValueDeserializer;

use super::settings::{DEFAULT_PATH, SyslogConfig, SyslogGrant, SyslogSettings};
use super::{NAME, SyslogService};
use crate::adapter::ConnLimits;
use crate::host::{ServerAdapter, refusal};
use crate::plugin::values;
use crate::plugin::{Part, Place, Plugin, Setup, SetupError, Started, port_range, read_table};
use crate::route::Answer;

/// Syslog, for the `droid` command.
pub struct SyslogPlugin;

/// `[adapters.syslog]` of a server file; `[embedded.syslog]` of a client
/// file takes the same keys but `ports`, `bind` and `host`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTable {
    /// `false` turns syslog off.
    enabled: Option<bool>,
    /// `LOW-HIGH` (`--syslog-ports`).
    #[serde(default, deserialize_with = "range")]
    ports: Option<(u16, u16)>,
    /// The address the ports are opened on (`--syslog-bind`).
    bind: Option<IpAddr>,
    /// The host tunnels are told to send to (default: the domain).
    host: Option<String>,
    /// The largest message, in bytes (`--syslog-max-message`).
    max_message: Option<usize>,
    /// TCP connections per port.
    max_connections: Option<usize>,
    /// TCP connections per port from one address.
    max_connections_per_ip: Option<usize>,
    /// Ports for the clients of one address; 0: no limit
    /// (`--syslog-ports-per-ip`).
    max_ports_per_ip: Option<usize>,
}

fn range<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<(u16, u16)>, D::Error> {
    let text = String::deserialize(d)?;
    port_range(&text).map(Some).map_err(de::Error::custom)
}

impl ServerTable {
    fn read(file: Option<ValueDeserializer<'_>>) -> Result<ServerTable, SetupError> {
        Ok(file.map(read_table).transpose()?.unwrap_or_default())
    }

    fn config(self, defaults: SyslogConfig) -> SyslogConfig {
        SyslogConfig {
            ports: self.ports.or(defaults.ports),
            bind: self.bind.unwrap_or(defaults.bind),
            host: self.host.or(defaults.host),
            max_message: self.max_message.unwrap_or(defaults.max_message),
            limits: ConnLimits {
                max_connections: self
                    .max_connections
                    .unwrap_or(defaults.limits.max_connections),
                max_per_ip: self
                    .max_connections_per_ip
                    .unwrap_or(defaults.limits.max_per_ip),
            },
            max_ports_per_ip: self.max_ports_per_ip.unwrap_or(defaults.max_ports_per_ip),
            ..defaults
        }
    }
}

/// A tunnel's `syslog = true`, `false`, or `{ path = "/logs", port = N }`.
struct TunnelValue(Option<SyslogSettings>);

impl<'de> Deserialize<'de> for TunnelValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<TunnelValue, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = TunnelValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or a table { path = \"/syslog\", port = 20001 }")
            }
            fn visit_bool<E: de::Error>(self, on: bool) -> Result<TunnelValue, E> {
                Ok(TunnelValue(on.then(SyslogSettings::default)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TunnelValue, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Table {
                    path: Option<String>,
                    port: Option<u16>,
                }
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                if let Some(path) = &t.path
                    && !path.starts_with('/')
                {
                    return Err(de::Error::custom("path must start with /"));
                }
                Ok(TunnelValue(Some(SyslogSettings {
                    path: t.path,
                    port: t.port,
                })))
            }
        }
        d.deserialize_any(Either)
    }
}

impl Plugin for SyslogPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn server_flags(&self) -> Vec<Arg> {
        vec![
            Arg::new("syslog_ports")
                .long("syslog-ports")
                .value_name("LOW-HIGH")
                .value_parser(port_range)
                .help_heading("Syslog")
                .help("Give each tunnel that asks for syslog a port of these (UDP and TCP); without it syslog is refused"),
            Arg::new("syslog_bind")
                .long("syslog-bind")
                .value_name("IP")
                .value_parser(clap::value_parser!(IpAddr))
                .help_heading("Syslog")
                .help("The address syslog ports are opened on [default: 0.0.0.0]"),
            Arg::new("syslog_ports_per_ip")
                .long("syslog-ports-per-ip")
                .value_name("N")
                .value_parser(clap::value_parser!(usize))
                .help_heading("Syslog")
                .help("Syslog ports the clients of one address (an IPv6 /64) may hold at once; 0: no limit [default: 10]"),
            Arg::new("syslog_max_message")
                .long("syslog-max-message")
                .value_name("BYTES")
                .value_parser(clap::value_parser!(usize))
                .help_heading("Syslog")
                .help("The largest syslog message; a longer one is cut and flagged [default: 65536]"),
        ]
    }

    fn http_flags(&self) -> Vec<Arg> {
        vec![
            Arg::new("syslog")
                .long("syslog")
                .action(ArgAction::SetTrue)
                .help_heading("Syslog")
                .help("Give this tunnel a syslog port: what devices and servers log to it (UDP or TCP) arrives as a POST"),
            Arg::new("syslog_path")
                .long("syslog-path")
                .value_name("PATH")
                .value_parser(values::url_path)
                .help_heading("Syslog")
                .help("The path syslog messages are POSTed to (implies --syslog) [default: /syslog]"),
            Arg::new("syslog_port")
                .long("syslog-port")
                .value_name("PORT")
                .value_parser(clap::value_parser!(u16).range(1..))
                .help_heading("Syslog")
                .help("The syslog port wanted (implies --syslog) [default: the last one, else any free one]"),
        ]
    }

    fn server(
        &self,
        flags: Option<&ArgMatches>,
        file: Option<ValueDeserializer<'_>>,
        has_cert: bool,
    ) -> Result<Option<Box<dyn Setup>>, SetupError> {
        let table = ServerTable::read(file)?;
        if table.enabled == Some(false) {
            return Ok(None);
        }
        let mut config = table.config(SyslogConfig {
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            max_ports_per_ip: 10,
            ..SyslogConfig::default()
        });
        if let Some(flags) = flags {
            if let Some(&ports) = flags.get_one::<(u16, u16)>("syslog_ports") {
                config.ports = Some(ports);
            }
            if let Some(&bind) = flags.get_one::<IpAddr>("syslog_bind") {
                config.bind = bind;
            }
            if let Some(&most) = flags.get_one::<usize>("syslog_ports_per_ip") {
                config.max_ports_per_ip = most;
            }
            if let Some(&max) = flags.get_one::<usize>("syslog_max_message") {
                if max == 0 {
                    return Err(SetupError::Flag(
                        "--syslog-max-message must be at least 1 byte".into(),
                    ));
                }
                config.max_message = max;
            }
        }
        if config.max_message == 0 {
            return Err(SetupError::Key(
                "max_message",
                "the largest syslog message must be at least 1 byte".into(),
            ));
        }
        // A public server hands out ports it was given, never any.
        let Some((low, high)) = config.ports else {
            return Ok(None);
        };
        let line = format!(
            "syslog on ports {low}-{high} of {}, one per tunnel that asks ({})",
            config.bind,
            if has_cert {
                "udp, tcp, and tls with the server's certificate"
            } else {
                "udp and tcp"
            }
        );
        Ok(Some(Box::new(Ready {
            adapter: Arc::new(SyslogService::new(config)),
            line: Some(line),
        })))
    }

    fn embedded(
        &self,
        _flags: Option<&ArgMatches>,
        file: Option<ValueDeserializer<'_>>,
    ) -> Result<Option<Box<dyn Setup>>, SetupError> {
        let table = ServerTable::read(file)?;
        if table.enabled == Some(false) {
            return Ok(None);
        }
        let mut config = table.config(SyslogConfig::default());
        config.host.get_or_insert_with(|| config.bind.to_string());
        Ok(Some(Box::new(Ready {
            adapter: Arc::new(SyslogService::new(config)),
            line: None,
        })))
    }

    fn tunnel_from_flags(&self, flags: &ArgMatches) -> Result<Option<Part>, SetupError> {
        let path = flags.get_one::<String>("syslog_path").cloned();
        let port = flags.get_one::<u16>("syslog_port").copied();
        let asked = flags.get_flag("syslog") || path.is_some() || port.is_some();
        Ok(asked.then(|| Part::of(&SyslogSettings { path, port })))
    }

    fn tunnel_from_file(
        &self,
        value: Option<ValueDeserializer<'_>>,
    ) -> Result<Option<Part>, SetupError> {
        let Some(value) = value else {
            return Ok(None);
        };
        let TunnelValue(asked) = read_table(value)?;
        Ok(asked.map(|s| Part::of(&s)))
    }

    fn describe(&self, asked: &Value, granted: Option<&Value>) -> Option<String> {
        Some(describe(asked, granted))
    }
}

/// Syslog's ports open per tunnel, as tunnels ask: nothing to open at start.
struct Ready {
    adapter: Arc<dyn ServerAdapter>,
    line: Option<String>,
}

impl Setup for Ready {
    fn start(self: Box<Self>, _place: Place) -> Answer<'static, Result<Started, SetupError>> {
        let started = Started {
            adapter: self.adapter,
            lines: self.line.into_iter().collect(),
        };
        Box::pin(std::future::ready(Ok(started)))
    }
}

/// The line `droid http` prints for a tunnel that asked for syslog.
fn describe(asked: &Value, granted: Option<&Value>) -> String {
    let asked: SyslogSettings = serde_json::from_value(asked.clone()).unwrap_or_default();
    let path = asked.path.as_deref().unwrap_or(DEFAULT_PATH);
    let Some(granted) = granted else {
        return "syslog: the server said nothing of it (is it an older droid?)".into();
    };
    if let Some(why) = refusal(granted) {
        let hint = if why.contains("does not run") {
            " (a server gives syslog ports with --syslog-ports LOW-HIGH)"
        } else {
            ""
        };
        return format!("syslog refused: {why}{hint}");
    }
    match serde_json::from_value::<SyslogGrant>(granted.clone()) {
        Ok(g) => format!(
            "syslog {}:{} ({}), arrives as POST {path} (json)",
            g.host,
            g.port,
            if g.tls {
                "udp, tcp and tls"
            } else {
                "udp and tcp"
            }
        ),
        Err(_) => format!("syslog: granted as {granted}"),
    }
}
