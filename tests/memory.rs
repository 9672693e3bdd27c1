//! What a stranger can make the server hold is bounded: streams a client
//! opens and never finishes, sessions and visitor connections from one
//! address. Each attack gets a clear refusal, and others are served.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use droid_core::conn_caps::ConnLimits;
use droid_core::protocol::{self, ErrorCode, StreamHeader};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The attack of issue 36: a client with a plain hello opens 2,000 streams,
/// each with a call header and 200 KiB of a body it never finishes.
/// Before the fix they queued unread behind the 16 publish slots, each
/// holding up to a yamux window: 103 MB grew to 627 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_client_opens_and_never_finishes_hold_little_of_the_servers_memory() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "server",
        "--domain",
        DOMAIN,
        "--http",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
    ];
    let mut server = Droid::start(&args, dir.path());
    let (http, control) = server.line("the server's addresses", server_addrs).await;
    let pid = server.child.id().unwrap();
    let app = origin("app").await;
    let victim = client(client_config(control, vec![spec(None, &app.target)])).await;
    assert_eq!(get(http, &victim.host(), "/before").await.0, 200);
    let before = rss_of(pid);

    let attacker = raw_session(control, &[Some("attacker")], None, 4096).await;
    assert!(attacker.answer.is_ok());
    let header = protocol::encode_line(&StreamHeader::Call {
        tunnel: "attacker".into(),
        adapter: "mqtt".into(),
        action: "publish".into(),
        size: 1_000_000,
    });
    let junk = vec![b'x'; 200 * 1024];
    let started = Instant::now();
    let streams: Vec<_> = (0..2000)
        .map(|_| {
            let opener = attacker.opener.clone();
            let (header, junk) = (header.clone(), junk.clone());
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(10), async move {
                    let mut stream = opener.open().await.ok()?;
                    stream.write_all(&header).await.ok()?;
                    stream.write_all(&junk).await.ok()?;
                    stream.flush().await.ok()?;
                    Some(stream)
                })
                .await
                .ok()
                .flatten()
            })
        })
        .collect();
    let mut held = Vec::new();
    for s in streams {
        if let Some(stream) = s.await.unwrap() {
            held.push(stream);
        }
    }
    let during = rss_of(pid);
    let grown = during.saturating_sub(before);
    eprintln!(
        "server RSS {} MiB before, {} MiB with 2,000 unfinished streams ({} written in {:?}): +{} MiB",
        before >> 20,
        during >> 20,
        held.len(),
        started.elapsed(),
        grown >> 20
    );
    assert!(grown < 40 << 20, "the server grew by {} MiB", grown >> 20);
    // Everyone else is served meanwhile.
    assert_eq!(get(http, &victim.host(), "/during").await.0, 200);
    drop(held);
    attacker.drop_without_goodbye();
}

#[tokio::test]
async fn sessions_from_one_address_are_capped_with_a_clear_refusal() {
    let srv = server_with(|c| {
        c.sessions = ConnLimits {
            max_connections: 100,
            max_per_ip: 3,
        };
        c.names.limits = droid_server::NameLimits::unbounded();
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let s = raw_hello(srv.control, &[None], None).await;
        assert!(s.answer.is_ok());
        open.push(s);
    }
    let refused = raw_hello(srv.control, &[None], None).await;
    let e = refused.answer.as_ref().unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert_eq!(
        e.message,
        "too many sessions from your address; close some or try again later"
    );
    // One leaves: a place is free again.
    open.pop().unwrap().goodbye().await;
    let again = within("a place for a new session", async {
        loop {
            let s = raw_hello(srv.control, &[None], None).await;
            if s.answer.is_ok() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(again.answer.is_ok());
}

#[tokio::test]
async fn visitor_connections_from_one_address_are_capped_and_others_served() {
    let app = origin("app").await;
    let srv = server_with(|c| {
        c.visitors = ConnLimits {
            max_connections: 1000,
            max_per_ip: 10,
        };
    })
    .await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    // Ten idle connections (the attack held 5,000 from one address).
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(srv.http).await.unwrap());
    }
    let refused = within("the refusal", async {
        loop {
            let answer = raw(
                srv.http,
                format!(
                    "GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    c.host()
                )
                .as_bytes(),
            )
            .await;
            if !answer.is_empty() {
                return answer;
            }
        }
    })
    .await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.contains("too many connections from your address"),
        "{refused}"
    );
    assert!(
        refused.to_lowercase().contains("retry-after: 10"),
        "{refused}"
    );
    // They go: visitors are served again.
    drop(idle);
    within("the server to be free again", async {
        loop {
            if get(srv.http, &c.host(), "/").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// An HTTP/2 visitor that asks for 400 MiB on 50 streams and reads none of
/// it: flow control holds from the app to the visitor, so the server
/// holds a few windows, not the 400 MiB; then it reads every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_visitor_that_does_not_read_makes_the_server_hold_little() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Droid::start(&server_args(&[]), dir.path());
    let (http, control) = server.line("the server's addresses", server_addrs).await;
    let pid = server.child.id().unwrap();
    let app = origin("app").await;
    let c = client(client_config(control, vec![spec(None, &app.target)])).await;
    let mut send = h2_connection(http).await;
    let before = rss_of(pid);
    const SIZE: usize = 8 << 20;
    let mut answers = Vec::new();
    for _ in 0..50 {
        let request = http::Request::get(format!("http://{}/bytes/{SIZE}", c.host()))
            .body(empty())
            .unwrap();
        let answer = within("an answer's head", send.send_request(request)).await;
        answers.push(answer.unwrap());
    }
    // For 1.5 s the answers are not read; the server's memory is sampled.
    let mut peak = before;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        peak = peak.max(rss_of(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grew = peak.saturating_sub(before) >> 20;
    eprintln!("the server grew by {grew} MiB with 400 MiB unread");
    assert!(grew < 64, "the server grew by {grew} MiB");
    let reads = answers.into_iter().map(|a| drain_checked(a.into_body()));
    for read in futures::future::join_all(reads).await {
        assert_eq!(read, SIZE);
    }
    assert!(server.interrupt().await.success());
}
