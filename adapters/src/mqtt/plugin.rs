//! MQTT's flags, config-file keys and printed lines, for the `droid`
//! command.
//!
//! - `droid server --mqtt ADDR` and `--mqtts ADDR` (or `[adapters.mqtt]`
//!   `listen` and `listen_tls`): devices connect there, and a publish to
//!   `NAME/...` goes through NAME's tunnel.
//! - Every HTTP tunnel asks for it (`--mqtt-path`, `--mqtt-auth`; a client
//!   file's `[tunnels.mqtt]`); the server inside `droid http` takes devices
//!   on `--mqtt` (`127.0.0.1:1883` or the next free port) unless
//!   `--no-mqtt` (`[embedded.mqtt]`).

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Arg, ArgAction, ArgMatches};
use serde::Deserialize;
use serde_json::Value;
use toml::de::ValueDeserializer;

use super::{MqttConfig, MqttRoute, MqttService, MqttSettings, NAME};
use crate::adapter::ConnLimits;
use crate::plugin::values::{self, Addr, Credentials, NonEmpty, SigningSecret, UrlPath};
use crate::plugin::{
    Part, Place, Plugin, Setup, SetupError, Started, bind, bind_next_free, read_table,
};
use crate::route::Answer;

/// MQTT, for the `droid` command.
pub struct MqttPlugin;

/// `[adapters.mqtt]` of a server file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTable {
    /// `false` turns it off.
    enabled: Option<bool>,
    /// Where devices connect (default `0.0.0.0:1883`).
    listen: Option<Addr>,
    /// Where devices connect over TLS; with it alone, no plain listener.
    listen_tls: Option<Addr>,
    /// The largest packet accepted, in bytes.
    max_packet_size: Option<usize>,
    /// Connections open at once, in total.
    max_connections: Option<usize>,
    /// Connections open at once from one address.
    max_connections_per_ip: Option<usize>,
}

/// `[embedded.mqtt]` of a client file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbeddedTable {
    /// `false`: no MQTT.
    enabled: Option<bool>,
    /// Where devices connect (or the next free port).
    listen: Option<Addr>,
}

/// `[tunnels.mqtt]` of a client file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TunnelTable {
    /// The path messages no route matches are POSTed to.
    path: Option<UrlPath>,
    /// The key of the `webhook-signature` HMAC (default: the mail secret).
    secret: Option<SigningSecret>,
    /// Devices must log in with this `user:password`.
    auth: Option<Credentials>,
    /// Topic filters (after `NAME/`) to paths, first match wins.
    #[serde(default)]
    routes: Vec<RouteTable>,
}

/// `{ topic = "sensors/+/temp", path = "/temp" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteTable {
    topic: NonEmpty,
    path: UrlPath,
}

/// Where devices connect, and how.
struct MqttSetup {
    plain: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    config: MqttConfig,
    limits: ConnLimits,
    /// Inside `droid http`: the next free port, and the address told to
    /// each tunnel's client.
    embedded: bool,
}

impl Setup for MqttSetup {
    fn start(self: Box<Self>, _place: Place) -> Answer<'static, Result<Started, SetupError>> {
        Box::pin(async move {
            let mut lines = Vec::new();
            let (mut plain, mut tls, mut announce) = (Vec::new(), Vec::new(), None);
            if let Some(addr) = self.plain {
                let listener = if self.embedded {
                    bind_next_free(addr, "MQTT", "mqtt").await?
                } else {
                    bind(addr, "MQTT").await?
                };
                let bound = listener.local_addr().unwrap_or(addr);
                if self.embedded {
                    announce = Some(bound.to_string());
                } else {
                    lines.push(format!(
                        "mqtt on {bound}, a publish to NAME/... goes to NAME's tunnel"
                    ));
                }
                plain.push(listener);
            }
            if let Some(addr) = self.tls {
                let listener = bind(addr, "MQTT over TLS").await?;
                lines.push(format!(
                    "mqtts on {}, MQTT over TLS with the server's certificate",
                    listener.local_addr().unwrap_or(addr)
                ));
                tls.push(listener);
            }
            let mut service = MqttService::new(self.config, plain, tls, self.limits);
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

fn listen_flag(flags: Option<&ArgMatches>, id: &str) -> Option<SocketAddr> {
    flags.and_then(|f| f.get_one::<SocketAddr>(id).copied())
}

impl Plugin for MqttPlugin {
    fn name(&self) -> &'static str {
        NAME
    }

    fn server_flags(&self) -> Vec<Arg> {
        vec![
            Arg::new("mqtt")
                .long("mqtt")
                .value_name("ADDR")
                .value_parser(clap::value_parser!(SocketAddr))
                .help_heading("MQTT")
                .help("Accept MQTT here: a publish to NAME/... goes through NAME's tunnel"),
            Arg::new("mqtts")
                .long("mqtts")
                .value_name("ADDR")
                .value_parser(clap::value_parser!(SocketAddr))
                .help_heading("MQTT")
                .help("Accept MQTT over TLS here (usually port 8883), with --tls-cert"),
        ]
    }

    fn http_flags(&self) -> Vec<Arg> {
        vec![
            Arg::new("mqtt")
                .long("mqtt")
                .value_name("ADDR")
                .value_parser(clap::value_parser!(SocketAddr))
                .default_value("127.0.0.1:1883")
                .help_heading("MQTT")
                .help("Without --server: where the embedded server accepts MQTT; when the port is taken, the next free one is used"),
            Arg::new("no_mqtt")
                .long("no-mqtt")
                .action(ArgAction::SetTrue)
                .help_heading("MQTT")
                .help("Without --server: do not accept MQTT"),
            Arg::new("mqtt_path")
                .long("mqtt-path")
                .value_name("PATH")
                .value_parser(values::url_path)
                .default_value("/mqtt")
                .help_heading("MQTT")
                .help("The path MQTT messages are POSTed to"),
            Arg::new("mqtt_auth")
                .long("mqtt-auth")
                .value_name("USER:PASSWORD")
                .env("DROID_MQTT_AUTH")
                .hide_env_values(true)
                .value_parser(values::credentials)
                .help_heading("MQTT")
                .help("Take MQTT messages only from devices that log in with this user name and password"),
        ]
    }

    fn server(
        &self,
        flags: Option<&ArgMatches>,
        file: Option<ValueDeserializer<'_>>,
        has_cert: bool,
    ) -> Result<Option<Box<dyn Setup>>, SetupError> {
        let given: Option<ServerTable> = file.map(read_table).transpose()?;
        let on = given.as_ref().is_some_and(|t| t.enabled != Some(false));
        let table = given.unwrap_or_default();
        let (flag_plain, flag_tls) = (listen_flag(flags, "mqtt"), listen_flag(flags, "mqtts"));
        // The file's listeners count only when the command line names neither.
        let (plain, tls) = if flag_plain.is_some() || flag_tls.is_some() {
            if let Some(addr) = flag_tls
                && !has_cert
            {
                return Err(SetupError::Flag(format!(
                    "MQTT over TLS on {addr} needs the server's certificate: add --tls-cert and --tls-key (tls_cert and tls_key in the file)"
                )));
            }
            (flag_plain, flag_tls)
        } else if !on {
            (None, None)
        } else if let Some(tls) = table.listen_tls {
            if !has_cert {
                return Err(SetupError::Key(
                    "listen_tls",
                    "MQTT over TLS needs a certificate: add `tls_cert` and `tls_key`".into(),
                ));
            }
            (table.listen.map(|a| a.0), Some(tls.0))
        } else {
            let default = SocketAddr::from(([0, 0, 0, 0], 1883));
            (Some(table.listen.map_or(default, |a| a.0)), None)
        };
        if plain.is_none() && tls.is_none() {
            return Ok(None);
        }
        let mut config = MqttConfig::default();
        let mut limits = ConnLimits::default();
        config.max_packet_size = table.max_packet_size.unwrap_or(config.max_packet_size);
        limits.max_connections = table.max_connections.unwrap_or(limits.max_connections);
        limits.max_per_ip = table.max_connections_per_ip.unwrap_or(limits.max_per_ip);
        Ok(Some(Box::new(MqttSetup {
            plain,
            tls,
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
        let table: EmbeddedTable = file.map(read_table).transpose()?.unwrap_or_default();
        let off = flags.is_some_and(|f| f.get_flag("no_mqtt")) || table.enabled == Some(false);
        if off {
            return Ok(None);
        }
        let default = SocketAddr::from(([127, 0, 0, 1], 1883));
        let listen = listen_flag(flags, "mqtt")
            .or(table.listen.map(|a| a.0))
            .unwrap_or(default);
        Ok(Some(Box::new(MqttSetup {
            plain: Some(listen),
            tls: None,
            config: MqttConfig::default(),
            limits: ConnLimits::default(),
            embedded: true,
        })))
    }

    fn tunnel_from_flags(&self, flags: &ArgMatches) -> Result<Option<Part>, SetupError> {
        Ok(Some(Part::of(&MqttSettings {
            path: flags.get_one::<String>("mqtt_path").cloned(),
            auth: flags.get_one::<String>("mqtt_auth").cloned(),
            routes: Vec::new(),
        })))
    }

    fn tunnel_from_file(
        &self,
        value: Option<ValueDeserializer<'_>>,
    ) -> Result<Option<Part>, SetupError> {
        let Some(value) = value else {
            return Ok(Some(Part::of(&MqttSettings::default())));
        };
        let table: TunnelTable = read_table(value)?;
        let settings = MqttSettings {
            path: Some(table.path.map_or_else(|| "/mqtt".into(), |p| p.0)),
            auth: table.auth.map(|a| a.0),
            routes: table
                .routes
                .into_iter()
                .map(|r| MqttRoute {
                    topic: r.topic.0,
                    path: r.path.0,
                })
                .collect(),
        };
        Ok(Some(Part {
            secret: table.secret.map(|s| s.0),
            ..Part::of(&settings)
        }))
    }

    fn describe(&self, asked: &Value, granted: Option<&Value>) -> Option<String> {
        let granted = granted?;
        let topics = granted.get("topics")?.as_str()?;
        let via = granted
            .get("address")
            .and_then(Value::as_str)
            .map_or_else(|| "mqtt ".to_string(), |a| format!("mqtt {a}, "));
        let asked: MqttSettings = serde_json::from_value(asked.clone()).unwrap_or_default();
        let mut line = format!(
            "{via}{topics} arrives as POST {} (json)",
            asked.path.as_deref().unwrap_or("/mqtt")
        );
        for route in &asked.routes {
            line.push_str(&format!(", {} to {}", route.topic, route.path));
        }
        if asked.auth.is_some() {
            line.push_str(", from devices that log in");
        }
        Some(line)
    }
}
