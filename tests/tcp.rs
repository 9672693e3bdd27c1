//! TCP tunnels through a real server and client on 127.0.0.1: Debian's
//! `redis-server` as the local service driven by `redis-cli` through the
//! public port, half-close, 100 MiB each way, 200 connections, ports held
//! like names, refusals, the allow-list, a client killed mid-transfer, and
//! `droid tcp` as a user runs it.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::tcp::{echo, redis_cli, round_trip};
use common::*;
use droid_client::{ClientError, Target, TunnelSpec};
use droid_server::TcpPorts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::Command;

/// A server whose TCP tunnels get ports from `ports` on 127.0.0.1.
async fn tcp_server(ports: TcpPorts) -> TestServer {
    server_with(|c| {
        c.tcp_ports = Some(ports);
        c.tcp_bind = [127, 0, 0, 1].into();
        c.tcp_host = Some("127.0.0.1".into());
    })
    .await
}

/// The public address a TCP tunnel got.
fn public(c: &TestClient) -> SocketAddr {
    let port = c.grants[0].tcp.expect("a TCP port in the grant");
    assert_eq!(c.grants[0].url, format!("tcp://127.0.0.1:{port}"));
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A `redis-server` of its own on a free loopback port, stopped with the
/// returned child (by its pid) when dropped.
async fn redis_server() -> (tokio::process::Child, u16) {
    let port = dead_port().await;
    let dir = std::env::temp_dir();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "redis-server is missing ({e}): install Debian's redis-server (bash .ci/test does)"
            )
        });
    within("redis-server to listen", async {
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_works_through_a_tcp_tunnel() {
    let (_redis, redis_port) = redis_server().await;
    let srv = tcp_server(TcpPorts::Any).await;
    let target = Target::new("127.0.0.1", redis_port);
    let c = client(client_config(
        srv.control,
        vec![TunnelSpec::tcp(target, None)],
    ))
    .await;
    let port = public(&c).port();

    assert_eq!(
        redis_cli("127.0.0.1", port, &["PING"], None).await.trim(),
        "PONG"
    );
    let big: Vec<u8> = (0..1024 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(
        redis_cli("127.0.0.1", port, &["-x", "SET", "big"], Some(&big))
            .await
            .trim(),
        "OK"
    );
    let got = redis_cli("127.0.0.1", port, &["GET", "big"], None).await;
    assert_eq!(
        got.trim_end().as_bytes(),
        &big[..],
        "1 MiB back through the tunnel"
    );

    // MONITOR on one connection sees what another writes.
    let mut monitor = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "MONITOR"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        monitor.stdout.take().unwrap(),
    ));
    let ok = within("MONITOR", async {
        lines.next_line().await.unwrap().unwrap()
    })
    .await;
    assert_eq!(ok.trim(), "OK");
    assert_eq!(
        redis_cli("127.0.0.1", port, &["SET", "seen", "by-monitor"], None)
            .await
            .trim(),
        "OK"
    );
    let seen = within("the monitored command", async {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.contains("by-monitor") {
                return line;
            }
        }
    })
    .await;
    assert!(seen.contains("\"SET\" \"seen\" \"by-monitor\""), "{seen}");
    monitor.kill().await.unwrap();
    c.stop().await;
}

#[tokio::test]
async fn an_echo_passes_both_ways_with_half_close() {
    let target = echo().await;
    let srv = tcp_server(TcpPorts::Any).await;
    let c = client(client_config(
        srv.control,
        vec![TunnelSpec::tcp(target, None)],
    ))
    .await;
    let addr = public(&c);
    // The visitor's FIN reaches the service, which still answers after it.
    assert_eq!(
        round_trip(addr, b"hello, half-closed").await,
        b"hello, half-closed"
    );
    let text = srv.server.metrics_text();
    assert!(
        text.contains("droid_server_tcp_connections_total 1"),
        "{text}"
    );
    // Its name takes no HTTP requests.
    let (status, body) = get(srv.http, &format!("{}.{DOMAIN}", c.name()), "/").await;
    assert_eq!(status, 404);
    assert!(body.contains("is a TCP tunnel"), "{body}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_mib_each_way_at_once_arrive_exact() {
    const SIZE: usize = 100 * 1024 * 1024;
    let target = echo().await;
    let srv = tcp_server(TcpPorts::Any).await;
    let c = client(client_config(
        srv.control,
        vec![TunnelSpec::tcp(target, None)],
    ))
    .await;
    let socket = TcpStream::connect(public(&c)).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    let sender = tokio::spawn(async move {
        let chunk: Vec<u8> = (0..64 * 1024).map(pattern).collect();
        let mut sent = 0;
        while sent < SIZE {
            // The pattern repeats every 251 bytes; 64 KiB chunks keep it going.
            let start = sent % 251;
            let n = (SIZE - sent).min(chunk.len() - 251);
            write.write_all(&chunk[start..start + n]).await.unwrap();
            sent += n;
        }
        write.shutdown().await.unwrap();
    });
    let mut seen = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    within("100 MiB back", async {
        loop {
            let n = read.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for (i, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(seen + i), "byte {} differs", seen + i);
            }
            seen += n;
        }
    })
    .await;
    sender.await.unwrap();
    assert_eq!(seen, SIZE);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_at_once() {
    let target = echo().await;
    let srv = tcp_server(TcpPorts::Any).await;
    let c = client(client_config(
        srv.control,
        vec![TunnelSpec::tcp(target, None)],
    ))
    .await;
    let addr = public(&c);
    // All open before any finishes: each waits for the others to connect.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let barrier = barrier.clone();
        tasks.spawn(async move {
            let mut socket = TcpStream::connect(addr).await.unwrap();
            barrier.wait().await;
            let message = format!("connection {i}");
            socket.write_all(message.as_bytes()).await.unwrap();
            socket.shutdown().await.unwrap();
            let mut back = String::new();
            socket.read_to_string(&mut back).await.unwrap();
            assert_eq!(back, message);
        });
    }
    within("200 connections", async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    })
    .await;
    c.stop().await;
}

/// What a client asking for `spec` is refused with.
async fn refusal(srv: &TestServer, spec: TunnelSpec) -> String {
    let mut c = client_unchecked(client_config(srv.control, vec![spec]));
    match within("the refusal", &mut c.task).await.unwrap() {
        Err(ClientError::Refused(e)) => e.message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_port_comes_back_to_its_owner_and_never_to_a_stranger() {
    let target = echo().await;
    let srv = tcp_server(TcpPorts::Any).await;
    let cutter = Cutter::start(srv.control).await;
    let mut config = client_config(cutter.addr, vec![TunnelSpec::tcp(target.clone(), None)]);
    let state = tempfile::tempdir().unwrap();
    config.state_dir = Some(state.path().to_path_buf());
    let mut c = client(config).await;
    let addr = public(&c);
    assert_eq!(round_trip(addr, b"before").await, b"before");

    // The connection drops; the client comes back and gets its port again.
    cutter.cut();
    let grants = c
        .wait_for("the reconnection", |e| match e {
            droid_client::ClientEvent::Connected {
                tunnels,
                reconnected: true,
                ..
            } => Some(tunnels.clone()),
            _ => None,
        })
        .await;
    assert_eq!(grants[0].tcp, Some(addr.port()));
    assert_eq!(round_trip(addr, b"after").await, b"after");

    // A stranger asking for it is refused.
    let why = refusal(&srv, TunnelSpec::tcp(target, Some(addr.port()))).await;
    assert!(
        why.contains(&format!("port {} is in use by another client", addr.port())),
        "{why}"
    );
    c.stop().await;
}

#[tokio::test]
async fn ports_outside_the_range_taken_or_on_a_server_without_tcp_are_refused() {
    let target = echo().await;
    let low = dead_port().await;
    let srv = tcp_server(TcpPorts::Range(low, low)).await;
    let c = client(client_config(
        srv.control,
        vec![TunnelSpec::tcp(target.clone(), None)],
    ))
    .await;
    assert_eq!(public(&c).port(), low, "the only port in the range");

    let outside = low.checked_add(1).unwrap_or(low - 1);
    let why = refusal(&srv, TunnelSpec::tcp(target.clone(), Some(outside))).await;
    assert!(
        why.contains(&format!(
            "port {outside} is outside this server's TCP ports ({low}-{low})"
        )),
        "{why}"
    );
    let why = refusal(&srv, TunnelSpec::tcp(target.clone(), Some(low))).await;
    assert!(
        why.contains(&format!("port {low} is in use by another client")),
        "{why}"
    );
    // No port left is worth waiting for: the client keeps trying.
    let mut waiting = client_unchecked(client_config(
        srv.control,
        vec![TunnelSpec::tcp(target.clone(), None)],
    ));
    let why = waiting
        .wait_for("a retry", |e| match e {
            droid_client::ClientEvent::Disconnected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert!(
        why.contains("no free port is left in this server's TCP ports"),
        "{why}"
    );
    drop(waiting);

    let plain = server().await;
    let why = refusal(&plain, TunnelSpec::tcp(target, None)).await;
    assert!(why.contains("offers no TCP tunnels"), "{why}");
    c.stop().await;
}

#[tokio::test]
async fn the_allow_list_refuses_other_addresses() {
    let target = echo().await;
    let srv = tcp_server(TcpPorts::Any).await;
    let mut spec = TunnelSpec::tcp(target, None);
    spec.allow_ip = vec!["127.0.0.1/32".into()];
    let c = client(client_config(srv.control, vec![spec])).await;
    let addr = public(&c);
    assert_eq!(round_trip(addr, b"allowed").await, b"allowed");

    // From 127.0.0.2 the connection is reset before any byte comes back.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stranger = socket.connect(addr).await.unwrap();
    let _ = stranger.write_all(b"let me in").await;
    let mut back = Vec::new();
    let read = within("the refusal", stranger.read_to_end(&mut back)).await;
    assert!(read.is_err() || back.is_empty(), "{read:?} {back:?}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_transfer_ends_the_visitors_connection() {
    // A service that sends forever.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = Target::new("127.0.0.1", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; 64 * 1024];
                while socket.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let srv = tcp_server(TcpPorts::Any).await;
    let state = tempfile::tempdir().unwrap();
    let control = srv.control.to_string();
    let port = target.port.to_string();
    let mut droid = Droid::start(
        &["tcp", &port, "--server", &control, "--no-inspect"],
        state.path(),
    );
    let public = droid
        .line("the tcp:// line", |l| {
            l.strip_prefix("tcp://")
                .and_then(|a| a.parse::<SocketAddr>().ok())
        })
        .await;
    let mut visitor = TcpStream::connect(public).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 1024 * 1024 {
        got += visitor.read(&mut buf).await.unwrap();
    }
    // The client process dies (SIGKILL): its connection to the server
    // goes with it.
    droid.child.kill().await.unwrap();
    let ended = within("the visitor's connection to end", async {
        loop {
            match visitor.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    let () = ended;
}

#[tokio::test]
async fn droid_tcp_prints_its_address_and_forwards() {
    let target = echo().await;
    let state = tempfile::tempdir().unwrap();
    let mut droid = Droid::start(
        &["tcp", &target.port.to_string(), "--no-inspect"],
        state.path(),
    );
    let addr = droid
        .line("the tcp:// line", |l| {
            l.strip_prefix("tcp://")
                .and_then(|a| a.parse::<SocketAddr>().ok())
        })
        .await;
    assert_eq!(
        round_trip(addr, b"through droid tcp").await,
        b"through droid tcp"
    );
    assert!(droid.interrupt().await.success());

    // The same command gets the same port back.
    let mut again = Droid::start(
        &["tcp", &target.port.to_string(), "--no-inspect"],
        state.path(),
    );
    let second = again
        .line("the tcp:// line again", |l| {
            l.strip_prefix("tcp://")
                .and_then(|a| a.parse::<SocketAddr>().ok())
        })
        .await;
    assert_eq!(second, addr);
    assert!(again.interrupt().await.success());
}
