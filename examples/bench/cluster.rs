//! `cluster`: two in-process nodes sharing a `redis-server` this bench
//! starts on a free loopback port (and stops by its pid), one client on
//! node one, and keep-alive GETs of 100 B (64 connections) and 1 MiB (16)
//! through node one (the owner) and through node two (forwarded over the
//! peer link), beside the same origin reached directly, in one run.
//! `/owner` is the forwarded rate over the owner's: the target is
//! at least 0.6. Then 10 KiB mails on 32 kept SMTP sessions to node one's
//! SMTP and to node two's (which delivers through node one's peer port),
//! every mail a POST the app answered. Then claims per second against
//! Redis (the claim script, one name each), one at a time and 32 at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use droid_adapters::MailSettings;
use droid_adapters::{SmtpConfig, Spool, SpoolConfig};
use droid_client::{ClientConfig, ClientEvent, Target, TunnelSpec};
use droid_server::cluster::{Cluster, ClusterConfig, LiveClaim};
use droid_server::{Server, ServerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[path = "../../tests/common/redis_server.rs"]
mod redis_server;
use redis_server::Redis;

use crate::{App, Args, DOMAIN, SECRET, SmtpMode, http_load, ms, ratio, smtp_limits, smtp_load};

/// The nodes' cluster secret (32 characters or more).
const NODES_SECRET: &str = "the cluster bench's secret, 7c0b9a1e";

/// One node, with SMTP and a spool.
struct Node {
    http: SocketAddr,
    control: SocketAddr,
    smtp: SocketAddr,
    _spool: tempfile::TempDir,
}

async fn node(redis: &Redis, id: &str, stop: &CancellationToken) -> anyhow::Result<Node> {
    let http = TcpListener::bind("127.0.0.1:0").await?;
    let control = TcpListener::bind("127.0.0.1:0").await?;
    let peer = TcpListener::bind("127.0.0.1:0").await?;
    let smtp = droid_adapters::bind_listener("127.0.0.1:0".parse()?).await?;
    let spool_dir = tempfile::tempdir()?;
    let spool = Spool::open(spool_dir.path(), SpoolConfig::default())?;
    let node = Node {
        http: http.local_addr()?,
        control: control.local_addr()?,
        smtp: smtp.local_addr()?,
        _spool: spool_dir,
    };
    let mut config = ServerConfig::new(DOMAIN);
    config.public_port = Some(node.http.port());
    // The load comes from 127.0.0.1: as if from many addresses.
    config.visitors.max_per_ip = config.visitors.max_connections;
    let server = Server::new(config);
    let cluster = Arc::new(
        Cluster::join(
            ClusterConfig {
                redis: redis.url(),
                node_id: id.into(),
                lease: Duration::from_secs(10),
                peer: Some(peer.local_addr()?.to_string()),
                secret: NODES_SECRET.into(),
                ca: None,
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
    server.add_adapter(Arc::new(droid_adapters::SmtpService::new(
        SmtpConfig::default(),
        vec![smtp.into()],
        smtp_limits(),
    )));
    let (s, token) = (server.clone(), stop.clone());
    tokio::spawn(s.serve_adapters(Some(spool), token));
    let token = stop.clone();
    tokio::spawn(async move { server.run(http, control, token).await });
    Ok(node)
}

pub(crate) async fn cluster_bench(args: &Args, app: &App) -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let stop = CancellationToken::new();
    let one = node(&redis, "one", &stop).await?;
    let two = node(&redis, "two", &stop).await?;
    let (one_http, two_http) = (one.http, two.http);
    let mail = MailSettings {
        path: Some("/inbound".into()),
        ..MailSettings::default()
    };
    let spec = TunnelSpec {
        secret: Some(SECRET.into()),
        adapters: [(
            droid_adapters::smtp::NAME.to_string(),
            serde_json::to_value(mail)?,
        )]
        .into(),
        ..TunnelSpec::http(Target::new("127.0.0.1", app.addr.port()))
    };
    let mut config = ClientConfig::new(one.control.to_string(), vec![spec]);
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
    mail_rows(args, app, &host, &one, &two).await?;
    claims_bench(&redis).await?;
    stop.cancel();
    Ok(())
}

/// 10 KiB mails on 32 kept sessions, to the owner node's SMTP and to the
/// other node's.
async fn mail_rows(
    args: &Args,
    app: &App,
    host: &str,
    one: &Node,
    two: &Node,
) -> anyhow::Result<()> {
    println!();
    println!(
        "{:<24} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "10 KiB mails", "sessions", "mails/s", "p50", "p99", "errors", "/owner"
    );
    let rcpt = format!("orders@{host}");
    let mut owner_rate = 0.0;
    for (label, node) in [("owner node", one), ("forwarded", two)] {
        let before = app.posts.load(Ordering::Relaxed);
        let (m, secs) = smtp_load(node.smtp, &rcpt, 32, SmtpMode::Kept, args).await?;
        let posted = app.posts.load(Ordering::Relaxed) - before;
        let rate = m.done as f64 / secs;
        if label == "owner node" {
            owner_rate = rate;
        }
        println!(
            "{:<24} {:>8} {:>9.0} {:>9} {:>9} {:>7} {:>7.2}",
            label,
            32,
            rate,
            ms(m.percentile(0.5)),
            ms(m.percentile(0.99)),
            m.errors,
            ratio(rate, owner_rate)
        );
        if let Some(e) = &m.first_error {
            println!("    first error: {e}");
        }
        if posted < m.done {
            println!(
                "    only {posted} POSTs reached the app for {} mails",
                m.done
            );
        }
    }
    Ok(())
}

/// Claims per second against Redis: each a session's one name, claimed by
/// the Lua script, at 1 and 32 at once; 2,000 claims a row.
async fn claims_bench(redis: &Redis) -> anyhow::Result<()> {
    const CLAIMS: usize = 2_000;
    let cluster = Arc::new(
        Cluster::join(
            ClusterConfig {
                redis: redis.url(),
                node_id: "claims".into(),
                lease: Duration::from_secs(10),
                peer: None,
                secret: NODES_SECRET.into(),
                ca: None,
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
                        index: vec![String::new()],
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
