//! A Droid server with the built-in adapters plus one of its own, written
//! outside them with nothing but the crates' public API: Protocol Droid's
//! raw-socket adapter. Each line sent to its TCP port, `NAME text`,
//! reaches the tunnel NAME's app as a signed JSON POST; the sender reads
//! `OK` once the app took it or it is spooled, `ERR why` otherwise.
//!
//! ```text
//! cargo run --release --example line_adapter -- --domain tunnel.example.com \
//!     --http 0.0.0.0:80 --control 0.0.0.0:7835 --lines 0.0.0.0:7000
//! cargo run --release --example line_adapter -- --self-test
//! ```
//!
//! A tunnel asks for it with `"line": {"path": "/lines"}` among its
//! adapters (PROTOCOL.md); the grant tells it the port. `--self-test`
//! starts this server, a client and an app on 127.0.0.1, sends lines, and
//! exits 0 only when the app got each of them, signed.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use droid_adapters::delivery::{self, Attempt, Content, Delivery, PostOptions};
use droid_adapters::{
    Adapter, Conn, ConnLimits, Grantee, Host, ServerAdapter, bind_listener, run_adapter,
};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The adapter's name: its key in hellos, grants, and `Droid-Adapter`.
const NAME: &str = "line";

/// The longest line taken; a longer one ends its connection.
const MAX_LINE: usize = 64 * 1024;

/// The adapter as a server runs it: one listener for every tunnel.
struct LineAdapter {
    listener: Mutex<Option<TcpListener>>,
    port: u16,
}

impl ServerAdapter for LineAdapter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn run(self: Arc<Self>, host: Host) -> droid_adapters::Answer<'static, ()> {
        let listener = self.listener.lock().unwrap().take();
        Box::pin(async move {
            if let Some(listener) = listener {
                let lines = Arc::new(Lines { host: host.clone() });
                run_adapter(
                    [listener.into()],
                    lines,
                    ConnLimits::default(),
                    host.shutdown,
                )
                .await;
            }
        })
    }

    fn grant(&self, tunnel: &Grantee<'_>) -> Option<Value> {
        tunnel.settings.of(NAME)?;
        Some(json!({ "port": self.port, "send": format!("{} <text>", tunnel.name) }))
    }
}

/// One connection's lines, each `NAME text`.
struct Lines {
    host: Host,
}

impl Adapter for Lines {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serve(
        self: Arc<Self>,
        io: Conn,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> droid_adapters::adapter::ServeFuture {
        Box::pin(async move {
            let (read, mut write) = tokio::io::split(io);
            let mut read = BufReader::new(read);
            let mut line = String::new();
            loop {
                line.clear();
                let mut limited = (&mut read).take(MAX_LINE as u64 + 1);
                let got = tokio::select! {
                    () = shutdown.cancelled() => return,
                    got = limited.read_line(&mut line) => got,
                };
                match got {
                    Ok(0) | Err(_) => return,
                    Ok(n) if n > MAX_LINE => {
                        let _ = write.write_all(b"ERR line too long\n").await;
                        return;
                    }
                    Ok(_) => {}
                }
                let answer = self.deliver(line.trim_end(), peer).await;
                if write
                    .write_all(format!("{answer}\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    }
}

impl Lines {
    /// `OK`, or `ERR` and why.
    async fn deliver(&self, line: &str, peer: SocketAddr) -> String {
        let (name, text) = line.split_once(' ').unwrap_or((line, ""));
        let tunnel = match self.host.tunnels.find(name).await {
            Ok(Some(tunnel)) => tunnel,
            Ok(None) => return format!("ERR no tunnel named {name} is connected"),
            Err(e) => return format!("ERR {e}"),
        };
        let Some(settings) = tunnel.settings.of(NAME) else {
            return format!("ERR the tunnel {name} takes no lines");
        };
        let path = settings["path"].as_str().unwrap_or("/lines").to_string();
        let secret = tunnel.settings.secret.as_deref().unwrap_or_default();
        let delivery = Delivery {
            id: delivery::new_id(),
            owner: tunnel.owner.clone(),
            destination: tunnel.name.clone(),
            content: Content::Post {
                post: PostOptions {
                    adapter: NAME.into(),
                    path,
                    content_type: "application/json".into(),
                    secret: droid_adapters::Secret::key_of(secret),
                },
            },
            raw: Bytes::from(json!({ "line": text, "remote": peer.to_string() }).to_string()),
        };
        match delivery
            .attempt(&*tunnel.sink, Duration::from_secs(30))
            .await
        {
            Attempt::Accepted => "OK".into(),
            Attempt::Rejected { status, reason } => format!("ERR the app said {status}: {reason}"),
            Attempt::Retry { reason } => match &self.host.spool {
                Some(spool) => match spool.store(&delivery, &reason).await {
                    Ok(()) => "OK".into(),
                    Err(e) => format!("ERR {reason}; not kept: {e}"),
                },
                None => format!("ERR {reason}; try again later"),
            },
        }
    }
}

/// Where the server listens.
struct Listeners {
    http: TcpListener,
    control: TcpListener,
    smtp: TcpListener,
    mqtt: TcpListener,
    lines: TcpListener,
}

/// The server: Droid's built-in adapters (mail, MQTT, syslog) and ours.
fn server(domain: &str, listeners: Listeners, shutdown: CancellationToken) -> SocketAddr {
    let server = droid_server::Server::new(droid_server::ServerConfig::new(domain));
    let limits = ConnLimits::default();
    server.add_adapter(Arc::new(droid_adapters::SmtpService::new(
        droid_adapters::SmtpConfig::default(),
        vec![listeners.smtp.into()],
        limits,
    )));
    server.add_adapter(Arc::new(droid_adapters::MqttService::new(
        droid_adapters::MqttConfig::default(),
        vec![listeners.mqtt],
        Vec::new(),
        limits,
    )));
    server.add_adapter(Arc::new(droid_adapters::syslog::SyslogService::new(
        droid_adapters::syslog::SyslogConfig::default(),
    )));
    let port = listeners.lines.local_addr().unwrap().port();
    server.add_adapter(Arc::new(LineAdapter {
        listener: Mutex::new(Some(listeners.lines)),
        port,
    }));
    let control = listeners.control.local_addr().unwrap();
    let (s, token) = (server.clone(), shutdown.clone());
    tokio::spawn(s.serve_adapters(None, token));
    tokio::spawn(async move {
        server
            .run(listeners.http, listeners.control, shutdown)
            .await
    });
    control
}

async fn listen(addr: &str) -> TcpListener {
    bind_listener(addr.parse().unwrap()).await.unwrap()
}

/// An app that passes on every POST it gets: its headers and body.
async fn app(posts: mpsc::UnboundedSender<(http::HeaderMap, Bytes)>) -> SocketAddr {
    let listener = listen("127.0.0.1:0").await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let posts = posts.clone();
            let service = hyper::service::service_fn(move |req: http::Request<_>| {
                let posts = posts.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body: Bytes = BodyExt::collect(body).await?.to_bytes();
                    let _ = posts.send((parts.headers, body));
                    Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from("taken"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

async fn self_test() -> Result<(), String> {
    let shutdown = CancellationToken::new();
    let listeners = Listeners {
        http: listen("127.0.0.1:0").await,
        control: listen("127.0.0.1:0").await,
        smtp: listen("127.0.0.1:0").await,
        mqtt: listen("127.0.0.1:0").await,
        lines: listen("127.0.0.1:0").await,
    };
    let control = server("localhost", listeners, shutdown.clone());
    let (posts_tx, mut posts) = mpsc::unbounded_channel();
    let app = app(posts_tx).await;
    let secret = "whsec_bGluZS1hZGFwdGVyLXNlbGYtdGVzdC1zZWNyZXQ=";
    let mut spec =
        droid_client::TunnelSpec::http(droid_client::Target::new("127.0.0.1", app.port()));
    spec.name = Some("demo".into());
    spec.secret = Some(secret.into());
    spec.adapters
        .insert(NAME.into(), json!({ "path": "/lines" }));
    let mut config = droid_client::ClientConfig::new(control.to_string(), vec![spec]);
    config.state_dir = None;
    let (events_tx, mut events) = mpsc::channel(droid_client::EVENT_QUEUE);
    tokio::spawn(droid_client::run(config, Some(events_tx), shutdown.clone()));
    let port = loop {
        match events.recv().await {
            Some(droid_client::ClientEvent::Connected { tunnels, .. }) => {
                let grant = &tunnels[0].adapters[NAME];
                break grant["port"].as_u64().ok_or(format!("grant: {grant}"))? as u16;
            }
            Some(_) => continue,
            None => return Err("the client stopped".into()),
        }
    };
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (read, mut write) = stream.into_split();
    let mut answers = BufReader::new(read).lines();
    let sent = ["hello from a socket", "a second line", "ünïcode ✓"];
    for text in sent {
        write
            .write_all(format!("demo {text}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let answer = answers.next_line().await.map_err(|e| e.to_string())?;
        if answer.as_deref() != Some("OK") {
            return Err(format!("{text:?} was answered {answer:?}"));
        }
    }
    write
        .write_all(b"nobody x\n")
        .await
        .map_err(|e| e.to_string())?;
    let refused = answers.next_line().await.map_err(|e| e.to_string())?;
    if !refused
        .as_deref()
        .unwrap_or("")
        .starts_with("ERR no tunnel named nobody")
    {
        return Err(format!("a line for no tunnel was answered {refused:?}"));
    }
    let key = droid_adapters::Secret::key_of(secret);
    for text in sent {
        let (headers, body) = posts.recv().await.ok_or("the app stopped")?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let signed = droid_adapters::verify(
            &key,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &body,
            &header("webhook-signature"),
        );
        let got: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if !signed || header("droid-adapter") != NAME || got["line"] != text {
            return Err(format!("the app got {got} (signed: {signed})"));
        }
    }
    shutdown.cancel();
    println!(
        "line_adapter self-test: {} lines arrived at the app as signed POSTs, a line for no tunnel was refused",
        sent.len()
    );
    Ok(())
}

fn flag(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--self-test") {
        return match tokio::time::timeout(Duration::from_secs(30), self_test()).await {
            Ok(Ok(())) => std::process::ExitCode::SUCCESS,
            Ok(Err(why)) => {
                eprintln!("line_adapter self-test failed: {why}");
                std::process::ExitCode::FAILURE
            }
            Err(_) => {
                eprintln!("line_adapter self-test failed: no answer within 30 s");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let domain = flag(&args, "--domain", "localhost");
    let listeners = Listeners {
        http: listen(&flag(&args, "--http", "127.0.0.1:8080")).await,
        control: listen(&flag(&args, "--control", "127.0.0.1:7835")).await,
        smtp: listen(&flag(&args, "--smtp", "127.0.0.1:2525")).await,
        mqtt: listen(&flag(&args, "--mqtt", "127.0.0.1:1883")).await,
        lines: listen(&flag(&args, "--lines", "127.0.0.1:7000")).await,
    };
    let lines = listeners.lines.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let control = server(&domain, listeners, shutdown.clone());
    println!("line_adapter: control on {control}, lines on {lines} (NAME text)");
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
    std::process::ExitCode::SUCCESS
}
