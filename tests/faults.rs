//! Faults: each test breaks one thing, checks what the people involved see,
//! and ends with nothing lost and the server still serving.
//!
//! Covered elsewhere, and not repeated here:
//! - the connection dropped while the client lives (it reconnects by itself
//!   with the same names): `tests/names.rs`,
//!   `a_dropped_connection_reconnects_by_itself_with_the_same_names`;
//! - the network cut without a FIN (a proxy that stops forwarding; the
//!   heartbeat notices on both sides): `tests/names.rs`,
//!   `heartbeats_detect_a_silent_network_on_both_sides` and
//!   `the_server_removes_a_silent_client`;
//! - mail spooled before a server restart is delivered after it:
//!   `tests/mail.rs`, `mail_spooled_before_a_server_restart_is_delivered_after_it`,
//!   and mail for a client that died, once it is back:
//!   `mail_for_a_reconnecting_tunnel_is_spooled_and_delivered_once_when_it_is_back`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use droid_client::{ClientEvent, Target};
use http_body_util::BodyExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A bystander: another client's tunnel on the same server, which every
/// fault must leave alone.
async fn bystander(srv: &TestServer, app: &Origin) -> TestClient {
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    assert_eq!(
        get(srv.http, &c.host(), "/before").await.1,
        "origin bystander /before"
    );
    c
}

async fn still_serving(srv: &TestServer, bystander: &TestClient) {
    let (status, body) = get(srv.http, &bystander.host(), "/after").await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "origin bystander /after")
    );
}

#[tokio::test]
async fn a_killed_client_fails_its_requests_fast_and_gets_its_name_back() {
    let app = origin("app").await;
    let other = origin("bystander").await;
    let srv = server().await;
    let watcher = bystander(&srv, &other).await;
    let state = tempfile::tempdir().unwrap();
    let cutter = Cutter::start(srv.control).await;
    let mut config = client_config(cutter.addr, vec![spec(None, &app.target)]);
    config.state_dir = Some(state.path().to_path_buf());
    let killed = client(config.clone()).await;
    let (addr, host) = (srv.http, killed.host());
    // three visitors wait on the app when the client's process is killed
    let mut hanging = Vec::new();
    for _ in 0..3 {
        let host = host.clone();
        hanging.push(tokio::spawn(async move { get(addr, &host, "/hang").await }));
        within("request reaches the app", app.hang_started.notified()).await;
    }
    let started = Instant::now();
    killed.task.abort();
    cutter.cut();
    for h in hanging {
        let (status, body) = within("502 after the client died", h).await.unwrap();
        assert_eq!(status, 502);
        assert!(body.contains("went away"), "{body}");
    }
    // "quickly": the server does not wait for a heartbeat timeout (30 s)
    assert!(started.elapsed() < Duration::from_secs(10));
    still_serving(&srv, &watcher).await;
    // the user runs the same command again: same name, and it serves
    let again = client(config).await;
    assert_eq!(again.host(), host);
    assert_eq!(get(srv.http, &host, "/back").await.1, "origin app /back");
    still_serving(&srv, &watcher).await;
    assert_eq!(srv.server.registry().live_count(), 2);
}

#[tokio::test]
async fn a_restarted_server_is_found_again_with_backoff_and_jitter() {
    let app = origin("app").await;
    let srv = server().await;
    let mut c = client(client_config(
        srv.control,
        vec![spec(None, &app.target), spec(Some("fixed"), &app.target)],
    ))
    .await;
    let names: Vec<String> = c.grants.iter().map(|g| g.name.clone()).collect();
    let (http, control) = (srv.http, srv.control);
    srv.stop().await;
    // While the server is down the client keeps trying, waiting longer each
    // time: 20 ms doubling to 200 ms in this config, each delay scaled by a
    // random factor in [0.5, 1.5).
    let mut delays = Vec::new();
    while delays.len() < 6 {
        let delay = c
            .wait_for("a failed attempt", |e| match e {
                ClientEvent::Disconnected { retry_in, .. } => Some(*retry_in),
                ClientEvent::Connected { .. } => panic!("connected to a stopped server"),
                _ => None,
            })
            .await;
        delays.push(delay);
    }
    let mut ratios = Vec::new();
    for (i, delay) in delays.iter().enumerate() {
        let nominal = Duration::from_millis(20 * (1 << i)).min(Duration::from_millis(200));
        let ratio = delay.as_secs_f64() / nominal.as_secs_f64();
        assert!(
            (0.5..1.5).contains(&ratio),
            "attempt {i}: {delay:?} for {nominal:?}"
        );
        ratios.push(ratio);
    }
    assert!(
        ratios.windows(2).any(|w| w[0] != w[1]),
        "no jitter: {delays:?}"
    );
    // a new server process on the same ports, knowing nothing of the old one
    let srv = server_on(
        TcpListener::bind(http).await.unwrap(),
        TcpListener::bind(control).await.unwrap(),
        |_| {},
    )
    .await;
    let back = c
        .wait_for("reconnect to the new server", |e| match e {
            ClientEvent::Connected {
                tunnels,
                reconnected: true,
                ..
            } => Some(tunnels.iter().map(|g| g.name.clone()).collect::<Vec<_>>()),
            _ => None,
        })
        .await;
    assert_eq!(back, names, "the client asked for its names again");
    for name in &names {
        let host = format!("{name}.{DOMAIN}");
        assert_eq!(get(srv.http, &host, "/x").await.1, "origin app /x");
    }
}

// ---------------------------------------------------------------- a bad app

/// A local app that misbehaves on purpose, on raw TCP (GET only):
/// - `/slow`: notifies `slow_started`, answers once `release` is notified;
/// - `/crash`: reads the request and closes without a word;
/// - `/half-length`: promises 1000 bytes and closes after 300;
/// - `/half-chunked`: sends two chunks and closes before the last one;
/// - anything else: `ok PATH`, keeping the connection alive.
///
/// [`Flaky::crash`] kills it (listener and every connection, as when its
/// process dies); [`Flaky::restart`] starts it again on the same port.
struct Flaky {
    addr: SocketAddr,
    target: Target,
    slow_started: Arc<Notify>,
    release: Arc<Notify>,
    alive: CancellationToken,
}

impl Flaky {
    async fn start() -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut app = Flaky {
            addr,
            target: Target::new("127.0.0.1", addr.port()),
            slow_started: Arc::new(Notify::new()),
            release: Arc::new(Notify::new()),
            alive: CancellationToken::new(),
        };
        app.serve(listener);
        app
    }

    fn serve(&mut self, listener: TcpListener) {
        let alive = CancellationToken::new();
        self.alive = alive.clone();
        let (started, release) = (self.slow_started.clone(), self.release.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    a = listener.accept() => a.unwrap().0,
                    () = alive.cancelled() => return,
                };
                let (started, release, alive) = (started.clone(), release.clone(), alive.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = misbehave(stream, started, release) => {}
                        () = alive.cancelled() => {}
                    }
                });
            }
        });
    }

    fn crash(&self) {
        self.alive.cancel();
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.alive.cancel();
    }
}

async fn misbehave(stream: TcpStream, started: Arc<Notify>, release: Arc<Notify>) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
        }
        let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
        let out = stream.get_mut();
        match path.as_str() {
            "/crash" => return,
            "/half-length" => {
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n";
                let _ = out.write_all(head.as_bytes()).await;
                let _ = out.write_all(&[b'x'; 300]).await;
                return;
            }
            "/half-chunked" => {
                let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                let _ = out.write_all(head.as_bytes()).await;
                let _ = out.write_all(b"5\r\nfirst\r\n6\r\nsecond\r\n").await;
                return;
            }
            "/slow" => {
                started.notify_one();
                release.notified().await;
            }
            _ => {}
        }
        let body = format!("ok {path}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_slow_app_holds_only_its_own_request() {
    let app = Flaky::start().await;
    let other = origin("bystander").await;
    let srv = server().await;
    let watcher = bystander(&srv, &other).await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let (addr, host) = (srv.http, c.host());
    let slow = tokio::spawn(async move { get(addr, &host, "/slow").await });
    within(
        "the slow request reaches the app",
        app.slow_started.notified(),
    )
    .await;
    // meanwhile, the same tunnel serves everyone else
    for i in 0..20 {
        let (status, body) = get(srv.http, &c.host(), &format!("/fast/{i}")).await;
        assert_eq!((status.as_u16(), body), (200, format!("ok /fast/{i}")));
    }
    still_serving(&srv, &watcher).await;
    app.release.notify_one();
    let (status, body) = within("the slow answer", slow).await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, "ok /slow"));
}

#[tokio::test]
async fn an_app_that_closes_without_answering_gives_a_502() {
    let app = Flaky::start().await;
    let other = origin("bystander").await;
    let srv = server().await;
    let watcher = bystander(&srv, &other).await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let (status, body) = get(srv.http, &c.host(), "/crash").await;
    assert_eq!(status, 502);
    assert_eq!(
        body,
        format!(
            "the local app of the tunnel {} closed the connection without an answer\n",
            c.name()
        )
    );
    assert_eq!(get(srv.http, &c.host(), "/next").await.1, "ok /next");
    still_serving(&srv, &watcher).await;
}

#[tokio::test]
async fn a_response_cut_half_way_reaches_the_visitor_as_truncated() {
    let app = Flaky::start().await;
    let other = origin("bystander").await;
    let srv = server().await;
    let watcher = bystander(&srv, &other).await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    for path in ["/half-length", "/half-chunked"] {
        let response = send(srv.http, get_request(&c.host(), path)).await;
        assert_eq!(response.status(), 200, "{path}: the head had arrived");
        // The body must end in an error, never in a clean end that would
        // pass a short body off as the whole one.
        let mut body = response.into_body();
        let mut got = Vec::new();
        let ended = within("the cut body", async {
            loop {
                match body.frame().await {
                    Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap()),
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        })
        .await;
        // (hyper says "connection closed before message completed" or
        // "error reading a body from connection": either way, an error)
        ended.expect_err(&format!("{path}: a truncated body ended cleanly"));
        assert!(got.len() < 1000, "{path}: {} bytes", got.len());
        // the tunnel is unaffected
        assert_eq!(get(srv.http, &c.host(), "/next").await.1, "ok /next");
    }
    still_serving(&srv, &watcher).await;
    assert_eq!(srv.server.registry().live_count(), 2);
}

#[tokio::test]
async fn an_app_that_crashes_and_restarts_is_reached_again() {
    let mut app = Flaky::start().await;
    let other = origin("bystander").await;
    let srv = server().await;
    let watcher = bystander(&srv, &other).await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let (addr, host) = (srv.http, c.host());
    let in_flight = tokio::spawn(async move { get(addr, &host, "/slow").await });
    within("the request reaches the app", app.slow_started.notified()).await;
    app.crash();
    let (status, body) = within("502 for the request in flight", in_flight)
        .await
        .unwrap();
    assert_eq!(status, 502);
    assert!(
        body.contains("closed the connection without an answer"),
        "{body}"
    );
    // while it is down, visitors are told so
    let (status, body) = get(srv.http, &c.host(), "/down").await;
    assert_eq!(status, 502);
    assert!(body.contains("nothing answers"), "{body}");
    still_serving(&srv, &watcher).await;
    // back up on the same port: the same tunnel reaches it, no reconnect
    app.restart().await;
    assert_eq!(get(srv.http, &c.host(), "/up").await.1, "ok /up");
    still_serving(&srv, &watcher).await;
    assert_eq!(srv.server.registry().live_count(), 2);
}

/// SIGTERM on a lone `droid server`: it takes no new visitor, lets the
/// request in flight go on (an event stream gets its last event), tells
/// its client to move (it has nowhere else to go, so it tries again), and
/// exits cleanly as soon as that request is done, within
/// `--drain-timeout`.
#[tokio::test]
async fn sigterm_drains_a_lone_server_the_request_in_flight_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let args = server_args(&["--drain-timeout", "15s"]);
    let mut server = Droid::start(&args, dir.path());
    let (http, control) = server.line("the server's addresses", server_addrs).await;
    let app = origin("app").await;
    let mut c = client(client_config(control, vec![spec(None, &app.target)])).await;
    let stream = TcpStream::connect(http).await.unwrap();
    let (read, mut write) = stream.into_split();
    let request = format!("GET /sse HTTP/1.1\r\nHost: {}\r\n\r\n", c.host());
    write.write_all(request.as_bytes()).await.unwrap();
    let mut lines = BufReader::new(read).lines();
    let mut until = async |want: &str| {
        within(want, async {
            while !lines.next_line().await.unwrap().unwrap().contains(want) {}
        })
        .await;
    };
    until("data: one").await;
    let started = Instant::now();
    let stopped = tokio::spawn(server.terminate());
    // Told to move, the client looks for another server at once.
    c.wait_for("told to move", |e| match e {
        ClientEvent::Disconnected { retry_in, .. } => retry_in.is_zero().then_some(()),
        _ => None,
    })
    .await;
    // The listener is closed: a new visitor goes elsewhere.
    within("the listener closed", async {
        while TcpStream::connect(http).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    app.sse_next.notify_one();
    until("data: two").await;
    let status = within("the server stops", stopped).await.unwrap();
    assert!(status.success(), "{status}");
    // It stopped once that request was done, well before the drain time.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(12), "{took:?}");
}
