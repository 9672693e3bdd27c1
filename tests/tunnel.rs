//! What the tunnel carries: concurrency, keep-alive, chunked bodies, SSE,
//! websockets, forwarded headers, HTTP/1.0, 100-continue, and the error
//! pages a user sees.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use droid_client::{ClientEvent, HostHeader};
use futures::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn two_hundred_concurrent_requests_through_one_tunnel_all_answered() {
    const N: usize = 200;
    // The origin answers /gather only once all N requests are in flight at
    // once: the test passes only if the tunnel truly carries them together.
    let app = origin_with("app", Some(N)).await;
    let srv = server().await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let host = c.host();
    let mut tasks = Vec::new();
    for i in 0..N {
        let host = host.clone();
        let addr = srv.http;
        tasks.push(tokio::spawn(async move {
            get(addr, &host, &format!("/gather?{i}")).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = within("concurrent request", t).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, format!("gathered {i}"));
    }
    // and the echo of distinct bodies comes back to the right requester
    let mut tasks = Vec::new();
    for i in 0..N {
        let host = host.clone();
        let addr = srv.http;
        tasks.push(tokio::spawn(async move {
            let body = format!("request {i} ").repeat(50 + i);
            let req = Request::post("/echo")
                .header("host", host)
                .body(full(body.clone()))
                .unwrap();
            let resp = send(addr, req).await;
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(got, Bytes::from(body));
        }));
    }
    for t in tasks {
        within("echo", t).await.unwrap();
    }
}

#[tokio::test]
async fn a_keep_alive_connection_carries_many_requests() {
    let app = origin("app").await;
    let srv = server().await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let stream = TcpStream::connect(srv.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..300 {
        let resp = sender
            .send_request(get_request(&c.host(), &format!("/n/{i}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("origin app /n/{i}"));
        sender.ready().await.unwrap();
    }
}

/// Requests sent back to back before any answer (pipelining) are answered
/// in order; a HEAD's answer ends at its head; a request and an answer
/// framed by chunks or by the app closing reach the other side whole.
#[tokio::test]
async fn pipelined_requests_head_and_every_answer_framing_pass_in_order() {
    let app = origin("app").await;
    let srv = server().await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let host = c.host();
    let pipelined = format!(
        "GET /p/1 HTTP/1.1\r\nHost: {host}\r\n\r\n\
         HEAD /bytes/5000 HTTP/1.1\r\nHost: {host}\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n\
         3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n\
         GET /p/2 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(srv.http, pipelined.as_bytes()).await;
    let statuses: Vec<&str> = answer.matches("HTTP/1.1 200 OK").collect();
    assert_eq!(statuses.len(), 4, "{answer}");
    let first = answer.find("origin app /p/1").expect("first answer");
    let echoed = answer.find("abc\r\n").expect("echoed body");
    let last = answer.find("origin app /p/2").expect("last answer");
    assert!(first < echoed && echoed < last, "{answer}");
    // The HEAD's answer is a head alone: the next answer follows it.
    let head_answer = &answer[answer.find("HTTP/1.1 200 OK").unwrap() + 1..];
    let head_answer = &head_answer[head_answer.find("HTTP/1.1 200 OK").unwrap()..];
    let (_, after) = head_answer.split_once("\r\n\r\n").unwrap();
    assert!(after.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // An HTTP/1.0 visitor gets an answer it can read (no chunks), and the
    // connection closes after it.
    let mut stream = TcpStream::connect(srv.http).await.unwrap();
    let request = format!("GET /bytes/3000 HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within("the 1.0 answer", stream.read_to_end(&mut out))
        .await
        .unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(out[end..], (0..3000).map(pattern).collect::<Vec<u8>>()[..]);
}

#[tokio::test]
async fn chunked_bodies_pass_both_ways() {
    let app = origin("app").await;
    let srv = server().await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    // a request body of unknown length goes chunked
    let chunks: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> = (0..20)
        .map(|i| Ok(Frame::data(Bytes::from(format!("chunk-{i};")))))
        .collect();
    let body = BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)));
    let req = Request::post("/echo")
        .header("host", c.host())
        .body(body)
        .unwrap();
    let resp = send(srv.http, req).await;
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    let want: String = (0..20).map(|i| format!("chunk-{i};")).collect();
    assert_eq!(got, want.as_bytes());
    // the origin saw a chunked request
    let chunks: Vec<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>> =
        vec![Ok(Frame::data(Bytes::from("x")))];
    let body = BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)));
    let req = Request::post("/headers")
        .header("host", c.host())
        .body(body)
        .unwrap();
    let resp = send(srv.http, req).await;
    let seen: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(seen["headers"]["transfer-encoding"], "chunked", "{seen}");
    // a generated response of unknown length arrives whole
    let resp = send(srv.http, get_request(&c.host(), "/bytes/300000")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (0..300_000).map(pattern).collect::<Vec<u8>>());
}

#[tokio::test]
async fn server_sent_events_arrive_as_they_are_sent() {
    let app = origin("app").await;
    let srv = server().await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let resp = send(srv.http, get_request(&c.host(), "/sse")).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    // The origin sends the second event only after the first has arrived
    // here: a tunnel that buffered would never deliver the first.
    let first = within("first event", body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "data: one\n\n");
    app.sse_next.notify_one();
    let second = within("second event", body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(second, "data: two\n\n");
}

#[tokio::test]
async fn websockets_echo_both_ways() {
    use tokio_tungstenite::tungstenite::Message;
    let app = origin("app").await;
    let srv = server().await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let tcp = TcpStream::connect(srv.http).await.unwrap();
    let url = format!("ws://{}/ws", c.host());
    let (mut ws, resp) = within("ws handshake", tokio_tungstenite::client_async(url, tcp))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..50 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = within("ws echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(back, Message::text(format!("hello {i}")));
    }
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let back = within("ws binary echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(back.into_data(), big);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn forwarded_headers_are_added_and_host_is_kept_or_rewritten() {
    let app = origin("app").await;
    let srv = server().await;
    let mut rewrite = spec(Some("rewritten"), &app.target);
    rewrite.host_header = HostHeader::Rewrite;
    let c = client(client_config(
        srv.control,
        vec![spec(Some("kept"), &app.target), rewrite],
    ))
    .await;
    let req = Request::get("/headers")
        .header("host", format!("kept.{DOMAIN}"))
        .header("x-forwarded-for", "10.9.8.7")
        .header("connection", "keep-alive, x-secret-hop")
        .header("x-secret-hop", "dropped")
        .body(empty())
        .unwrap();
    let resp = send(srv.http, req).await;
    let seen: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let h = &seen["headers"];
    assert_eq!(h["host"], format!("kept.{DOMAIN}"));
    assert_eq!(h["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("kept.{DOMAIN}"));
    assert!(
        h.get("x-secret-hop").is_none(),
        "hop-by-hop header leaked: {h}"
    );
    let (_, body) = get(srv.http, &format!("rewritten.{DOMAIN}"), "/headers").await;
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["host"], app.target.to_string());
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        format!("rewritten.{DOMAIN}")
    );
    drop(c);
}

#[tokio::test]
async fn http_1_0_clients_and_expect_100_continue_work() {
    let app = origin("app").await;
    let srv = server().await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let url = format!("http://{}/bytes/5000", srv.http);
    let host = format!("Host: {}", c.host());
    let out = curl_bytes(&["--http1.0", "-s", "-i", "-H", &host, &url]).await;
    let head = String::from_utf8_lossy(&out[..out.len().min(200)]);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(
        out.ends_with(&(0..5000).map(pattern).collect::<Vec<u8>>()),
        "body differs"
    );
    // 100-continue: curl waits for the interim answer before sending the body
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body");
    let payload: Vec<u8> = (0..1_000_000).map(pattern).collect();
    std::fs::write(&file, &payload).unwrap();
    let data = format!("@{}", file.display());
    let url = format!("http://{}/echo", srv.http);
    let out = curl_bytes(&[
        "-s",
        "-i",
        "-H",
        &host,
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "30",
        "--data-binary",
        &data,
        &url,
    ])
    .await;
    let text = String::from_utf8_lossy(&out[..200]);
    assert!(text.starts_with("HTTP/1.1 100 Continue"), "{text}");
    assert!(out.ends_with(&payload), "echoed body differs");
}

async fn curl_bytes(args: &[&str]) -> Vec<u8> {
    let out = within(
        "curl",
        tokio::process::Command::new("curl").args(args).output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn clear_errors_for_unknown_names_foreign_hosts_and_missing_host() {
    let srv = server().await;
    let (status, body) = get(srv.http, &format!("nobody.{DOMAIN}"), "/").await;
    assert_eq!(status, 404);
    assert_eq!(body, "no tunnel named nobody is connected to this server\n");
    let (status, body) = get(srv.http, "example.com", "/").await;
    assert_eq!(status, 400);
    assert!(
        body.contains("example.com is not one of its names"),
        "{body}"
    );
    let answer = raw(srv.http, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(answer.contains("no Host header"), "{answer}");
    // browsers get a short HTML page
    let req = Request::get("/")
        .header("host", format!("nobody.{DOMAIN}"))
        .header("accept", "text/html")
        .body(empty())
        .unwrap();
    let resp = send(srv.http, req).await;
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("no tunnel named nobody"));
}

#[tokio::test]
async fn an_app_that_is_not_running_gives_a_502_that_names_it() {
    let port = dead_port().await;
    let srv = server().await;
    let target: droid_client::Target = port.to_string().parse().unwrap();
    let mut c = client(client_config(srv.control, vec![spec(None, &target)])).await;
    let (status, body) = get(srv.http, &c.host(), "/").await;
    assert_eq!(status, 502);
    assert_eq!(
        body,
        format!("the tunnel is up but nothing answers at 127.0.0.1:{port}\n")
    );
    let target = c
        .wait_for("target down event", |e| match e {
            ClientEvent::TargetDown { target, .. } => Some(target.clone()),
            _ => None,
        })
        .await;
    assert_eq!(target, format!("127.0.0.1:{port}"));
    // the client logs the request line too
    let status = c
        .wait_for("request line", |e| match e {
            ClientEvent::Request {
                status,
                method,
                path,
                ..
            } if method == "GET" && path == "/" => Some(*status),
            _ => None,
        })
        .await;
    assert_eq!(status, 502);
}

#[tokio::test]
async fn events_nobody_reads_are_bounded_and_the_tunnel_state_still_gets_through() {
    let app = origin("app").await;
    let srv = server().await;
    let cutter = Cutter::start(srv.control).await;
    let mut c = client(client_config(cutter.addr, vec![spec(None, &app.target)])).await;
    // More requests than the event queue holds, and nobody reads the events
    // (as when droid's stdout is a pipe nobody reads).
    let n = droid_client::EVENT_QUEUE + 200;
    let (addr, host) = (srv.http, c.host());
    within("requests while nobody reads the events", async {
        for _ in 0..n / 50 {
            let batch: Vec<_> = (0..50)
                .map(|_| {
                    let host = host.clone();
                    tokio::spawn(async move { get(addr, &host, "/x").await.0 })
                })
                .collect();
            for request in batch {
                assert_eq!(request.await.unwrap(), 200);
            }
        }
    })
    .await;
    // The request lines stop short of the queue's end: the last slots are
    // kept for the tunnel's state.
    let per_request_limit = droid_client::EVENT_QUEUE - droid_client::KEPT_FOR_STATE;
    within("the queue fills with request lines", async {
        while c.events.len() < per_request_limit {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(c.events.len(), per_request_limit);
    cutter.cut();
    c.wait_for("the disconnection, behind a full queue", |e| {
        matches!(e, ClientEvent::Disconnected { .. }).then_some(())
    })
    .await;
}

#[tokio::test]
async fn in_flight_requests_fail_fast_when_the_client_dies() {
    let app = origin("app").await;
    let srv = server().await;
    let cutter = Cutter::start(srv.control).await;
    let c = client(client_config(cutter.addr, vec![spec(None, &app.target)])).await;
    let (addr, host) = (srv.http, c.host());
    let hanging = tokio::spawn(async move { get(addr, &host, "/hang").await });
    within("request reaches the app", app.hang_started.notified()).await;
    let started = Instant::now();
    cutter.cut(); // the client's connection closes, as when its process is killed
    let (status, body) = within("502 after the client died", hanging).await.unwrap();
    assert_eq!(status, 502);
    assert!(body.contains("went away"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn many_clients_and_several_tunnels_per_connection_route_apart() {
    let a = origin("a").await;
    let b = origin("b").await;
    let srv = server().await;
    let both = client(client_config(
        srv.control,
        vec![
            spec(Some("alpha"), &a.target),
            spec(Some("beta"), &b.target),
        ],
    ))
    .await;
    assert_eq!(
        both.grants[0].url,
        format!("http://alpha.{DOMAIN}:{}", srv.http.port())
    );
    let mut others = Vec::new();
    for _ in 0..20 {
        others.push(client(client_config(srv.control, vec![spec(None, &b.target)])).await);
    }
    let mut names: Vec<&str> = others.iter().map(|c| c.name()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 20, "random names collided");
    assert_eq!(
        get(srv.http, &format!("alpha.{DOMAIN}"), "/x").await.1,
        "origin a /x"
    );
    assert_eq!(
        get(srv.http, &format!("beta.{DOMAIN}"), "/y").await.1,
        "origin b /y"
    );
    for c in &others {
        assert_eq!(get(srv.http, &c.host(), "/z").await.1, "origin b /z");
    }
    assert_eq!(srv.server.registry().live_count(), 22);
}
