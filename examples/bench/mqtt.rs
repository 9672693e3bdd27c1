//! `mqtt`: QoS 1 messages per second from PUBLISH to PUBACK, at 1 and 32
//! publishers, each on a connection of its own with one message in flight
//! (what a device does while it waits for its acknowledgement). Targets:
//! - `bare sink`: a minimal MQTT 3.1.1 server in this file that answers
//!   CONNACK and PUBACK at once (no delivery): the ceiling of the load
//!   client and TCP;
//! - `droid mqtt, discard`: Droid's MQTT adapter with a sink that answers
//!   200 at once: the limit of Droid's MQTT side, with the JSON and the
//!   signature;
//! - `droid mqtt -> app`: the same adapter POSTing straight to the app, as
//!   a broker's webhook bridge does (no tunnel);
//! - `tunnel -> app`: `droid server --mqtt` and a client whose tunnel POSTs
//!   every message to the app: a PUBACK here means the app answered.
//!
//! `/bare` is a row's rate over the bare sink's, `/bridge` over the
//! bridge's (`droid mqtt -> app`): what the tunnel costs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use droid_adapters::{
    Answer, MqttAdapter, MqttConfig, PostOptions, TopicRefusal, TopicRoute, TopicRouter,
    Unavailable, UrlSink,
};
use droid_core::deliver::Deliver;
use mqttbytes::{QoS, v4};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    App, Args, Discard, Measured, NAME, SECRET, STALL, Tunnel, Window, count, ms, next_connection,
    ratio, smtp_limits, take_one,
};

/// A small JSON reading, as a sensor sends.
const PAYLOAD: &[u8] = br#"{"sensor":"t-1","celsius":21.5,"battery":0.93,"seq":123456}"#;
/// The largest packet the load client reads.
const MAX_PACKET: usize = 64 * 1024;

/// Every topic to the same sink.
struct OneSink(Arc<dyn Deliver>);

impl TopicRouter for OneSink {
    fn resolve<'a>(
        &'a self,
        topic: &'a str,
        _login: Option<&'a str>,
    ) -> Answer<'a, Result<TopicRoute, TopicRefusal>> {
        Box::pin(std::future::ready(Ok(TopicRoute {
            owner: "bench".into(),
            destination: "bench".into(),
            sink: self.0.clone(),
            post: PostOptions {
                adapter: "mqtt".into(),
                path: "/inbound".into(),
                content_type: "application/json".into(),
                secret: SECRET.as_bytes().to_vec(),
            },
            subtopic: topic.split_once('/').map_or("", |(_, s)| s).to_string(),
        })))
    }

    fn login<'a>(&'a self, _credentials: &'a str) -> Answer<'a, Result<bool, Unavailable>> {
        Box::pin(std::future::ready(Ok(true)))
    }

    fn subscribe<'a>(
        &'a self,
        filter: &'a str,
        _login: Option<&'a str>,
    ) -> Answer<'a, Result<(String, droid_adapters::Tenancy), TopicRefusal>> {
        Box::pin(std::future::ready(Err(TopicRefusal::NoTunnel(
            filter.to_string(),
        ))))
    }
}

/// Droid's MQTT adapter delivering every message to `sink`.
async fn droid_mqtt(
    sink: Arc<dyn Deliver>,
    stop: &CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = droid_adapters::bind_listener("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    let adapter = Arc::new(MqttAdapter::new(
        MqttConfig::default(),
        Arc::new(OneSink(sink)),
        None,
    ));
    tokio::spawn(droid_adapters::run_adapter(
        [listener.into()],
        adapter,
        smtp_limits(),
        stop.clone(),
    ));
    Ok(addr)
}

/// A minimal MQTT 3.1.1 server: CONNACK for a CONNECT, PUBACK for a QoS 1
/// PUBLISH, PINGRESP for a PINGREQ, at once; nothing else.
async fn bare_sink(stop: &CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = droid_adapters::bind_listener("127.0.0.1:0".parse()?).await?;
    let addr = listener.local_addr()?;
    let stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let Some(mut io) = next_connection(&listener, &stop).await else {
                return;
            };
            tokio::spawn(async move {
                let _ = io.set_nodelay(true);
                let (mut buf, mut out) = (BytesMut::new(), BytesMut::new());
                loop {
                    match v4::read(&mut buf, MAX_PACKET) {
                        Ok(v4::Packet::Connect(_)) => {
                            let ack = v4::ConnAck::new(v4::ConnectReturnCode::Success, false);
                            if ack.write(&mut out).is_err() {
                                return;
                            }
                        }
                        Ok(v4::Packet::Publish(p)) if p.qos == QoS::AtLeastOnce => {
                            if v4::PubAck::new(p.pkid).write(&mut out).is_err() {
                                return;
                            }
                        }
                        Ok(v4::Packet::PingReq) => {
                            if v4::PingResp.write(&mut out).is_err() {
                                return;
                            }
                        }
                        Ok(v4::Packet::Disconnect) => return,
                        Ok(_) => {}
                        Err(mqttbytes::Error::InsufficientBytes(_)) => {
                            if !out.is_empty() {
                                if io.write_all(&out).await.is_err() {
                                    return;
                                }
                                out.clear();
                            }
                            if io.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Reads packets from `io` until a PUBACK for `pkid` (or a CONNACK when
/// `pkid` is 0).
async fn wait_for(io: &mut TcpStream, buf: &mut BytesMut, pkid: u16) -> anyhow::Result<()> {
    loop {
        match v4::read(buf, MAX_PACKET) {
            Ok(v4::Packet::ConnAck(ack)) if pkid == 0 => {
                if ack.code != v4::ConnectReturnCode::Success {
                    bail!("CONNECT refused: {:?}", ack.code);
                }
                return Ok(());
            }
            Ok(v4::Packet::PubAck(ack)) if ack.pkid == pkid => return Ok(()),
            Ok(other) => bail!("wanted the PUBACK of {pkid}, got {other:?}"),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                let n = tokio::time::timeout(STALL, io.read_buf(buf))
                    .await
                    .context("no answer within 30 s")??;
                if n == 0 {
                    bail!("the server closed the connection");
                }
            }
            Err(e) => bail!("not MQTT: {e:?}"),
        }
    }
}

/// One publisher: connects, then publishes at QoS 1 and waits for each
/// PUBACK, until the window closes or `budget` runs out.
async fn publisher(
    addr: SocketAddr,
    id: usize,
    window: Window,
    budget: Arc<AtomicU64>,
) -> Measured {
    let mut m = Measured::default();
    if let Err(e) = publish_loop(addr, id, window, &budget, &mut m).await {
        m.error(e);
    }
    m
}

async fn publish_loop(
    addr: SocketAddr,
    id: usize,
    window: Window,
    budget: &AtomicU64,
    m: &mut Measured,
) -> anyhow::Result<()> {
    let mut io = tokio::time::timeout(STALL, TcpStream::connect(addr))
        .await
        .context("no connection within 30 s")??;
    io.set_nodelay(true)?;
    let (mut out, mut buf) = (BytesMut::new(), BytesMut::new());
    let mut connect = v4::Connect::new(format!("bench-{id}"));
    connect.keep_alive = 60;
    connect
        .write(&mut out)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    io.write_all(&out).await?;
    wait_for(&mut io, &mut buf, 0).await?;
    let topic = format!("{NAME}/sensors/{id}/reading");
    let payload = Bytes::from_static(PAYLOAD);
    let mut pkid: u16 = 0;
    while Instant::now() < window.end && take_one(budget) {
        pkid = pkid % u16::MAX + 1;
        let mut publish = v4::Publish::from_bytes(&topic, QoS::AtLeastOnce, payload.clone());
        publish.pkid = pkid;
        out.clear();
        publish
            .write(&mut out)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let t0 = Instant::now();
        io.write_all(&out).await?;
        wait_for(&mut io, &mut buf, pkid).await?;
        count(m, &window, t0, Instant::now());
    }
    out.clear();
    v4::Disconnect
        .write(&mut out)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let _ = io.write_all(&out).await;
    Ok(())
}

async fn mqtt_load(
    addr: SocketAddr,
    publishers: usize,
    args: &Args,
) -> anyhow::Result<(Measured, f64)> {
    let budget = Arc::new(AtomicU64::new(args.max_mails));
    let window = Window::new(args.secs);
    let mut set = JoinSet::new();
    for id in 0..publishers {
        set.spawn(publisher(addr, id, window, budget.clone()));
    }
    let mut all = Measured::default();
    while let Some(m) = set.join_next().await {
        all.merge(m?);
    }
    all.latencies.sort_unstable();
    let secs = (Instant::now().min(window.end) - window.start).as_secs_f64();
    Ok((all, secs.max(1e-3)))
}

pub(crate) async fn mqtt_bench(args: &Args, app: &App, tunnel: &Tunnel) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let app_sink =
        Arc::new(UrlSink::new(&format!("http://{}/inbound", app.addr))?.with_timeout(STALL));
    let mut targets = vec![
        ("bare sink", bare_sink(&stop).await?, false),
        (
            "droid mqtt, discard",
            droid_mqtt(Arc::new(Discard), &stop).await?,
            false,
        ),
        (
            "droid mqtt -> app",
            droid_mqtt(app_sink, &stop).await?,
            true,
        ),
        ("tunnel -> app", tunnel.mqtt, true),
    ];
    if let Some(only) = &args.only {
        targets.retain(|t| t.0 == "bare sink" || t.0.contains(only.as_str()));
    }
    println!();
    println!(
        "MQTT: QoS 1 publishes of {} bytes, PUBLISH to PUBACK (after the app's POST through the tunnel)",
        PAYLOAD.len()
    );
    println!(
        "{:<26} {:>10} {:>9} {:>6} {:>7} {:>9} {:>9} {:>7}",
        "target", "publishers", "msgs/s", "/bare", "/bridge", "p50", "p99", "errors"
    );
    for publishers in [1, 32] {
        let mut rows = Vec::new();
        for &(label, addr, posts) in &targets {
            let before = app.posts.load(Ordering::Relaxed);
            let (m, secs) = mqtt_load(addr, publishers, args).await?;
            let got = app.posts.load(Ordering::Relaxed) - before;
            let short = posts && got < m.done;
            rows.push((label, m.done as f64 / secs, m, short, got));
        }
        let rate_of = |label: &str| rows.iter().find(|r| r.0 == label).map_or(0.0, |r| r.1);
        let (bare, bridge) = (rate_of("bare sink"), rate_of("droid mqtt -> app"));
        for (label, rate, m, short, got) in &rows {
            println!(
                "{:<26} {:>10} {:>9.0} {:>6.2} {:>7.2} {:>9} {:>9} {:>7}",
                label,
                publishers,
                rate,
                ratio(*rate, bare),
                ratio(*rate, bridge),
                ms(m.percentile(0.5)),
                ms(m.percentile(0.99)),
                m.errors
            );
            if let Some(e) = &m.first_error {
                println!("    first error: {e}");
            }
            if *short {
                println!(
                    "    only {got} POSTs reached the app for {} messages",
                    m.done
                );
            }
        }
    }
    stop.cancel();
    Ok(())
}
