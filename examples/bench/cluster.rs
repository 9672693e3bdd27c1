//! `cluster`: two in-process nodes sharing a `redis-server` this bench
//! starts on a free loopback port (and stops by its pid), one client on
//! node one, and keep-alive GETs of 100 B (64 connections) and 1 MiB (16)
//! through node one (the owner) and through node two (forwarded over the
//! peer link), beside the same origin reached directly, in one run.
//! `/owner` is the forwarded rate over the owner's: the target is
//! at least 0.6. Then claims per second against Redis (the claim script,
//! one name each), one at a time and 32 at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use droid_client::{ClientConfig, ClientEvent, Target, TunnelSpec};
use droid_server::cluster::{Cluster, ClusterConfig, LiveClaim};
use droid_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{App, Args, DOMAIN, http_load, ms, ratio};

/// A `redis-server` of the bench's own; killed when dropped.
struct Redis {
    _child: tokio::process::Child,
    url: String,
}

async fn redis() -> anyhow::Result<Redis> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("redis-server is missing: install Debian's redis-server")?;
    let url = format!("redis://127.0.0.1:{port}");
    // Ready once it answers PING; bounded at 10 s.
    for _ in 0..200 {
        if let Ok(mut c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut reply = [0u8; 7];
            if c.write_all(b"PING\r\n").await.is_ok()
                && c.read_exact(&mut reply).await.is_ok()
                && &reply == b"+PONG\r\n"
            {
                return Ok(Redis { _child: child, url });
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("redis-server did not answer within 10 s")
}

/// One node: its HTTP and control addresses.
async fn node(
    redis: &Redis,
    id: &str,
    stop: &CancellationToken,
) -> anyhow::Result<(std::net::SocketAddr, std::net::SocketAddr)> {
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let control = TcpListener::bind("127.0.0.1:0").await?;
    let peer = TcpListener::bind("127.0.0.1:0").await?;
    let addrs = (http.local_addr()?, control.local_addr()?);
    let mut config = ServerConfig::new(DOMAIN);
    config.public_port = Some(addrs.0.port());
    let server = Server::new(config);
    let cluster = Arc::new(
        Cluster::join(
            ClusterConfig {
                redis: redis.url.clone(),
                node_id: id.into(),
                lease: Duration::from_secs(10),
                peer: Some(peer.local_addr()?.to_string()),
                secret: "bench".into(),
            },
            server.config().names.clone(),
        )
        .await?,
    );
    server.join_cluster(cluster);
    let (s, token) = (server.clone(), stop.clone());
    tokio::spawn(async move { s.keep_cluster_lease(token).await });
    let (s, token) = (server.clone(), stop.clone());
    tokio::spawn(async move { s.serve_peers(peer, token).await });
    let token = stop.clone();
    tokio::spawn(async move { server.run(http, control, token).await });
    Ok(addrs)
}

pub(crate) async fn cluster_bench(args: &Args, app: &App) -> anyhow::Result<()> {
    let redis = redis().await?;
    let stop = CancellationToken::new();
    let (one_http, one_control) = node(&redis, "one", &stop).await?;
    let (two_http, _) = node(&redis, "two", &stop).await?;
    let spec = TunnelSpec::http(Target {
        host: "127.0.0.1".into(),
        port: app.addr.port(),
    });
    let mut config = ClientConfig::new(one_control.to_string(), vec![spec]);
    config.state_dir = None;
    let (tx, mut events) = tokio::sync::mpsc::channel(droid_client::EVENT_QUEUE);
    tokio::spawn(droid_client::run(config, Some(tx), stop.clone()));
    let name = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.recv().await {
            if let ClientEvent::Connected { tunnels, .. } = event {
                return Ok(tunnels[0].name.clone());
            }
        }
        bail!("the client stopped")
    })
    .await
    .context("no tunnel within 20 s")??;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let host = format!("{name}.{DOMAIN}");

    println!();
    println!("Cluster: two nodes on one Redis; the tunnel's client is on node one");
    println!(
        "{:<24} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "target", "conns", "req/s", "MiB/s", "p50", "p99", "errors", "/owner"
    );
    let direct_host = app.addr.to_string();
    for (size, path, conns) in [("100 B", "/small", 64), ("1 MiB", "/big", 16)] {
        let direct = http_load(app.addr, &direct_host, path, conns, args.secs).await?;
        let owner = http_load(one_http, &host, path, conns, args.secs).await?;
        let forwarded = http_load(two_http, &host, path, conns, args.secs).await?;
        for (label, m) in [
            ("direct", &direct),
            ("owner node", &owner),
            ("forwarded", &forwarded),
        ] {
            let rate = m.done as f64 / args.secs;
            println!(
                "{:<24} {:>5} {:>9.0} {:>9.1} {:>9} {:>9} {:>7} {:>7.2}",
                format!("{label} {size}"),
                conns,
                rate,
                m.bytes as f64 / args.secs / (1024.0 * 1024.0),
                ms(m.percentile(0.5)),
                ms(m.percentile(0.99)),
                m.errors,
                ratio(m.done as f64, owner.done as f64)
            );
            if let Some(e) = &m.first_error {
                println!("    first error: {e}");
            }
        }
    }
    claims_bench(&redis).await?;
    stop.cancel();
    Ok(())
}

/// Claims per second against Redis: each a session's one name, claimed by
/// the Lua script, at 1 and 32 at once; 2,000 claims a row.
async fn claims_bench(redis: &Redis) -> anyhow::Result<()> {
    const CLAIMS: usize = 2_000;
    let cluster = Arc::new(
        Cluster::join(
            ClusterConfig {
                redis: redis.url.clone(),
                node_id: "claims".into(),
                lease: Duration::from_secs(10),
                peer: None,
                secret: "bench".into(),
            },
            droid_server::NamePolicy::default(),
        )
        .await?,
    );
    println!();
    println!(
        "{:<24} {:>9} {:>9}",
        "claims against Redis", "at once", "claims/s"
    );
    // What a tunnel with default adapter settings keeps in its record.
    let settings = serde_json::to_string(&droid_core::protocol::AdapterSettings::default())?;
    for (row, at_once) in [(0usize, 1usize), (1, 32)] {
        let started = std::time::Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for worker in 0..at_once {
            let cluster = cluster.clone();
            let settings = settings.clone();
            set.spawn(async move {
                for i in (worker..CLAIMS).step_by(at_once) {
                    let claim = LiveClaim {
                        keys: vec![format!("claim-{row}-{i}")],
                        settings: vec![settings.clone()],
                        logins: vec![String::new()],
                        owner: "owner".into(),
                        session: i as u64,
                    };
                    cluster.claim(&claim).await?;
                }
                Ok::<_, droid_core::protocol::ErrorMessage>(())
            });
        }
        while let Some(done) = set.join_next().await {
            done?.map_err(|e| anyhow::anyhow!(e.message))?;
        }
        let rate = CLAIMS as f64 / started.elapsed().as_secs_f64();
        println!("{:<24} {:>9} {:>9.0}", "one name per claim", at_once, rate);
    }
    Ok(())
}
