//! `syslog`: messages per second from the sender to the app's POST,
//! through the tunnel, beside MQTT QoS 0 in the same run (both are fire
//! and forget: the sender gets no acknowledgement of the app's answer).
//!
//! Every sender sends a batch (64 messages for one sender, 2 each for 32:
//! 64 in flight in all; TCP: in one write; UDP: one datagram each; MQTT:
//! QoS 0 PUBLISHes in one write), then waits until the app has counted
//! every message sent so far, and again, until the window closes: no queue
//! grows without bound, and nothing is lost to a full buffer. (With 256 in
//! flight, MQTT QoS 0 fell to a few hundred messages per second here, its
//! deliveries all started at once; syslog, 16 at once per port, did not.
//! BENCHMARKS.md has the figures.) The rate is
//! the app's POSTs in the window over its length. `/mqtt` is a row's rate
//! over MQTT QoS 0's at the same number of senders.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use mqttbytes::{QoS, v4};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::{App, Args, NAME, STALL, Tunnel, ratio};

/// Messages all senders send before they wait for the app.
const IN_FLIGHT: usize = 64;

/// Messages each of `senders` sends before it waits for the app.
fn batch(senders: usize) -> usize {
    (IN_FLIGHT / senders.max(1)).max(1)
}

/// One sender of one kind.
enum Sender {
    SyslogTcp(TcpStream),
    SyslogUdp(UdpSocket, SocketAddr),
    MqttQos0(TcpStream, String),
}

impl Sender {
    async fn open(kind: &str, tunnel: &Tunnel, id: usize) -> anyhow::Result<Sender> {
        Ok(match kind {
            "syslog tcp" => Sender::SyslogTcp(TcpStream::connect(tunnel.syslog).await?),
            "syslog udp" => Sender::SyslogUdp(UdpSocket::bind("127.0.0.1:0").await?, tunnel.syslog),
            _ => {
                let mut io = TcpStream::connect(tunnel.mqtt).await?;
                io.set_nodelay(true)?;
                let mut out = BytesMut::new();
                v4::Connect::new(format!("bench0-{id}"))
                    .write(&mut out)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                io.write_all(&out).await?;
                let mut buf = BytesMut::new();
                loop {
                    match v4::read(&mut buf, 1024) {
                        Ok(v4::Packet::ConnAck(ack))
                            if ack.code == v4::ConnectReturnCode::Success =>
                        {
                            break;
                        }
                        Ok(other) => bail!("wanted a CONNACK, got {other:?}"),
                        Err(_) => {
                            let n = tokio::time::timeout(STALL, io.read_buf(&mut buf))
                                .await
                                .context("no CONNACK within 30 s")??;
                            if n == 0 {
                                bail!("the server closed the connection");
                            }
                        }
                    }
                }
                Sender::MqttQos0(io, format!("{NAME}/sensors/{id}/reading"))
            }
        })
    }

    async fn send_batch(&mut self, n: usize, seq: &mut u64) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        match self {
            Sender::SyslogTcp(io) => {
                for _ in 0..n {
                    *seq += 1;
                    out.extend_from_slice(
                        format!("<13>1 - bench app - - - reading {seq} 21.5 C\n").as_bytes(),
                    );
                }
                io.write_all(&out).await?;
            }
            Sender::SyslogUdp(socket, to) => {
                for _ in 0..n {
                    *seq += 1;
                    let line = format!("<13>1 - bench app - - - reading {seq} 21.5 C");
                    socket.send_to(line.as_bytes(), *to).await?;
                }
            }
            Sender::MqttQos0(io, topic) => {
                for _ in 0..n {
                    *seq += 1;
                    let payload = Bytes::from(format!("reading {seq} 21.5 C"));
                    v4::Publish::from_bytes(topic.as_str(), QoS::AtMostOnce, payload)
                        .write(&mut out)
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                }
                io.write_all(&out).await?;
            }
        }
        Ok(())
    }
}

/// Waits until the app has counted `target` POSTs.
async fn app_reaches(app: &App, target: u64) -> anyhow::Result<()> {
    let give_up = Instant::now() + STALL;
    while app.posts.load(Ordering::Relaxed) < target {
        if Instant::now() > give_up {
            bail!(
                "the app got {} of {target} POSTs within 30 s",
                app.posts.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    Ok(())
}

/// Messages per second at the app with `senders` of `kind`.
async fn row(
    kind: &str,
    senders: usize,
    app: &App,
    tunnel: &Tunnel,
    args: &Args,
) -> anyhow::Result<f64> {
    let mut all = Vec::with_capacity(senders);
    for id in 0..senders {
        all.push(Sender::open(kind, tunnel, id).await?);
    }
    let mut seq = 0;
    let mut expected = app.posts.load(Ordering::Relaxed);
    let warm = Instant::now() + Duration::from_secs_f64((args.secs / 5.0).min(1.0));
    let mut counted_from: Option<(Instant, u64)> = None;
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if counted_from.is_none() && now >= warm {
            counted_from = Some((now, app.posts.load(Ordering::Relaxed)));
        }
        if let Some((start, _)) = counted_from
            && now.duration_since(start).as_secs_f64() >= args.secs
        {
            break;
        }
        if sent >= args.max_mails {
            break;
        }
        let each = batch(senders);
        for sender in &mut all {
            sender.send_batch(each, &mut seq).await?;
        }
        let batch = (senders * each) as u64;
        sent += batch;
        expected += batch;
        if let Err(e) = app_reaches(app, expected).await {
            bail!("{kind}, {senders} senders, after {sent} sent: {e}");
        }
    }
    let (start, from) = counted_from.context("the run ended before the warm-up")?;
    let got = app.posts.load(Ordering::Relaxed) - from;
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

pub(crate) async fn syslog_bench(args: &Args, app: &App, tunnel: &Tunnel) -> anyhow::Result<()> {
    println!();
    println!(
        "syslog beside MQTT QoS 0: messages per second from the sender to the app's POST through the tunnel, at most {IN_FLIGHT} in flight"
    );
    println!(
        "{:<14} {:>8} {:>10} {:>7}",
        "sent as", "senders", "msgs/s", "/mqtt"
    );
    for senders in [1, 32] {
        let mqtt = row("mqtt qos 0", senders, app, tunnel, args).await?;
        let mut rows = vec![("mqtt qos 0", mqtt)];
        for kind in ["syslog tcp", "syslog udp"] {
            rows.push((kind, row(kind, senders, app, tunnel, args).await?));
        }
        for (kind, rate) in rows {
            println!(
                "{:<14} {:>8} {:>10.0} {:>7.2}",
                kind,
                senders,
                rate,
                ratio(rate, mqtt)
            );
        }
    }
    Ok(())
}
