//! The public HTTP listener's limits: each holds, and the server keeps
//! serving everyone else while it does.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use droid_client::ClientEvent;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status line of a raw answer.
fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[tokio::test]
async fn oversized_headers_get_431_and_the_server_keeps_serving() {
    let app = origin("app").await;
    let srv = server_with(|c| {
        c.max_header_size = 4096;
        c.max_headers = 20;
    })
    .await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let host = c.host();

    let big = format!(
        "GET / HTTP/1.1\r\nhost: {host}\r\nx-big: {}\r\n\r\n",
        "a".repeat(8192)
    );
    let answer = raw(srv.http, big.as_bytes()).await;
    assert!(status_line(&answer).contains("431"), "{answer}");

    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(
        srv.http,
        format!("GET / HTTP/1.1\r\nhost: {host}\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(status_line(&answer).contains("431"), "{answer}");

    // a request line of 1 MiB, too
    let long = format!(
        "GET /{} HTTP/1.1\r\nhost: {host}\r\n\r\n",
        "b".repeat(1 << 20)
    );
    let mut stream = TcpStream::connect(srv.http).await.unwrap();
    // the server may answer and close before reading it all
    let _ = stream.write_all(long.as_bytes()).await;
    let mut out = Vec::new();
    let _ = within("answer to a 1 MiB line", stream.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert!(
        status_line(&answer).contains("431") || status_line(&answer).contains("414"),
        "{answer}"
    );

    // within the limits, all is well
    let fine: String = (0..10).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(
        srv.http,
        format!("GET /ok HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n{fine}\r\n").as_bytes(),
    )
    .await;
    assert!(status_line(&answer).contains("200"), "{answer}");
    assert!(answer.ends_with("origin app /ok"), "{answer}");
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_whether_declared_or_chunked() {
    let app = origin("app").await;
    let srv = server_with(|c| c.max_body_size = Some(1000)).await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let host = c.host();

    // declared: refused before a byte of the body is read
    let answer = raw(
        srv.http,
        format!("POST /echo HTTP/1.1\r\nhost: {host}\r\ncontent-length: 5000\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(status_line(&answer).contains("413"), "{answer}");
    assert!(
        answer.contains("larger than this server accepts (1000 bytes)"),
        "{answer}"
    );

    // chunked: refused once the count passes the limit
    let chunks = (0..10).map(|_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(vec![b'x'; 500])))
    });
    let body = BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)));
    let request = Request::post("/echo")
        .header("host", &host)
        .body(body)
        .unwrap();
    let response = send(srv.http, request).await;
    assert_eq!(response.status(), 413);

    // at the limit, chunked or not, the body goes through whole
    let chunks = (0..2).map(|_| {
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from(vec![b'y'; 500])))
    });
    let body = BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)));
    let request = Request::post("/echo")
        .header("host", &host)
        .body(body)
        .unwrap();
    let response = send(srv.http, request).await;
    assert_eq!(response.status(), 200);
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed.len(), 1000);
    let request = Request::post("/echo")
        .header("host", &host)
        .body(full(vec![b'z'; 1000]))
        .unwrap();
    assert_eq!(send(srv.http, request).await.status(), 200);
    assert_eq!(get(srv.http, &host, "/").await.1, "origin app /");
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408() {
    let app = origin("app").await;
    let srv = server_with(|c| c.body_read_timeout = Duration::from_millis(300)).await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let host = c.host();
    let mut stream = TcpStream::connect(srv.http).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /inbound HTTP/1.1\r\nhost: {host}\r\ncontent-length: 100\r\n\r\n0123456789"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // ...and nothing more: the server gives up on it (the app, which reads
    // the whole body before answering, never sees a request)
    let mut out = Vec::new();
    within("408", stream.read_to_end(&mut out)).await.unwrap();
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.contains("408"), "{answer}");
    assert_eq!(get(srv.http, &host, "/").await.1, "origin app /");
}

/// Slowloris: a thousand connections that each send a header byte every
/// second never finish a request. A normal visitor is served all along, and
/// the server closes every slow connection once its header time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_cut_off_and_do_not_stop_normal_visitors() {
    const SLOW: usize = 1000;
    let header_timeout = Duration::from_secs(8);
    let app = origin("app").await;
    let srv = server_with(|c| {
        c.header_read_timeout = header_timeout;
        // Every connection here comes from 127.0.0.1: as if each slow one
        // came from an address of its own (one address gets 256 at most,
        // tests/memory.rs).
        c.visitors.max_per_ip = c.visitors.max_connections;
    })
    .await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let host = c.host();

    let opened = Arc::new(AtomicUsize::new(0));
    let closed_by_server = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        let (opened, closed, host, addr) = (
            opened.clone(),
            closed_by_server.clone(),
            host.clone(),
            srv.http,
        );
        slow.push(tokio::spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return;
            };
            if stream
                .write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            opened.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 512];
            // a byte a second, never the blank line; bounded at 20 s
            for _ in 0..20 {
                tokio::select! {
                    read = stream.read(&mut buf) => {
                        // the server answered (408) or closed: it cut us off
                        if matches!(read, Ok(_) | Err(_)) {
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if stream.write_all(b"x").await.is_err() {
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            }
        }));
    }
    within("slow connections open", async {
        while opened.load(Ordering::SeqCst) < SLOW {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let held_after = started.elapsed();

    // a normal visitor, now, while all of them are held
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        let (status, body) = get(srv.http, &host, &format!("/n{i}")).await;
        worst = worst.max(t.elapsed());
        assert_eq!((status.as_u16(), body), (200, format!("origin app /n{i}")));
    }
    let still_held = SLOW - closed_by_server.load(Ordering::SeqCst);
    eprintln!(
        "slowloris: {SLOW} slow connections open after {held_after:?}; \
         20 normal requests served while {still_held} were held, worst latency {worst:?}"
    );
    assert_eq!(
        still_held, SLOW,
        "the normal requests were not made while every slow connection was held"
    );

    // the server cuts every slow one off once its header time is up
    for task in slow {
        within("slow connection cut off", task).await.unwrap();
    }
    let cut = closed_by_server.load(Ordering::SeqCst);
    eprintln!(
        "slowloris: {cut} of {SLOW} cut off by the server within {:?}",
        started.elapsed()
    );
    assert_eq!(cut, SLOW);
    assert_eq!(get(srv.http, &host, "/after").await.1, "origin app /after");
}

/// Requests beyond a tunnel's stream cap wait, then get a 503; the session
/// survives and serves again once streams free up.
#[tokio::test]
async fn requests_beyond_the_stream_cap_wait_then_get_503_and_the_session_survives() {
    let app = origin("app").await;
    let srv = server_with(|c| {
        c.max_streams_per_tunnel = 2;
        c.stream_open_timeout = Duration::from_secs(1);
    })
    .await;
    let mut c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let host = c.host();
    let hang = format!("GET /hang HTTP/1.1\r\nhost: {host}\r\n\r\n");
    let mut first = TcpStream::connect(srv.http).await.unwrap();
    first.write_all(hang.as_bytes()).await.unwrap();
    within("first hangs", app.hang_started.notified()).await;
    let mut second = TcpStream::connect(srv.http).await.unwrap();
    second.write_all(hang.as_bytes()).await.unwrap();
    within("second hangs", app.hang_started.notified()).await;

    let (status, body) = get(srv.http, &host, "/third").await;
    assert_eq!(status, 503);
    assert!(body.contains("too many requests in flight"), "{body}");

    // one that is waiting when a stream frees gets it
    let waiting = tokio::spawn({
        let (addr, host) = (srv.http, host.clone());
        async move { get(addr, &host, "/fourth").await }
    });
    drop(first);
    let (status, body) = within("the waiting request", waiting).await.unwrap();
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, "origin app /fourth")
    );
    drop(second);
    // the session never died: no disconnect, and requests flow again
    within("served again", async {
        loop {
            let (status, body) = get(srv.http, &host, "/again").await;
            if status == 200 {
                assert_eq!(body, "origin app /again");
                break;
            }
            assert_eq!(status, 503);
        }
    })
    .await;
    while let Ok(event) = c.events.try_recv() {
        assert!(
            !matches!(event, ClientEvent::Disconnected { .. }),
            "the session died: {event:?}"
        );
    }
    assert_eq!(srv.server.registry().live_count(), 1);
}

#[tokio::test]
async fn a_tunnel_over_its_request_rate_gets_429_and_other_tunnels_do_not() {
    let mut app = origin("app").await;
    let srv = server_with(|c| c.request_rate = droid_server::RequestRate::new(5, Some(5))).await;
    let c = client(client_config(
        srv.control,
        vec![
            spec(Some("busy"), &app.target),
            spec(Some("calm"), &app.target),
        ],
    ))
    .await;
    let busy = format!("busy.{DOMAIN}");
    let calm = format!("calm.{DOMAIN}");
    assert_eq!(c.grants.len(), 2);

    // 20 requests in a row on one kept-alive connection: the burst of 5
    // passes, then (faster than 5 a second) some are refused.
    let stream = TcpStream::connect(srv.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..20 {
        let response = within(
            "a request",
            sender.send_request(get_request(&busy, &format!("/inbound/{i}"))),
        )
        .await
        .unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        match status.as_u16() {
            200 => ok += 1,
            429 => {
                refused += 1;
                let secs: u64 = retry_after
                    .expect("a 429 says when to retry")
                    .parse()
                    .unwrap();
                assert!(secs >= 1);
                let body = String::from_utf8_lossy(&body);
                assert!(
                    body.contains("the tunnel busy gets more requests"),
                    "{body}"
                );
            }
            other => panic!("request {i}: unexpected {other}"),
        }
    }
    assert!(ok >= 5, "the burst passes: {ok} of 20");
    assert!(
        refused >= 1,
        "some requests are over the rate: {refused} of 20"
    );
    assert_eq!(ok + refused, 20);

    // A refused request never entered the tunnel: the app saw the others only.
    let mut seen = 0;
    while seen < ok {
        app.next_mail().await;
        seen += 1;
    }
    assert!(
        app.inbox.try_recv().is_err(),
        "the app saw only the {ok} passed"
    );

    // The other tunnel of the same client has its own bucket, still full.
    for i in 0..5 {
        let (status, body) = get(srv.http, &calm, &format!("/calm/{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("origin app /calm/{i}"));
    }
}
