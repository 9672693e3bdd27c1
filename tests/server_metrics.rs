//! `droid server --metrics`: what a real server, client, origin and SMTP
//! sender do is counted exactly, and Prometheus's own parser reads it.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use tokio::net::TcpListener;

/// The value of the sample `name` (with its labels) in metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn scrape(addr: SocketAddr) -> String {
    let response = send(addr, get_request("127.0.0.1", "/metrics")).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Scrapes until `ready` holds, and returns that text.
async fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&str) -> bool) -> String {
    within(what, async {
        loop {
            let text = scrape(addr).await;
            if ready(&text) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_counts_requests_its_own_answers_tunnels_and_mail() {
    let mut app = origin("app").await;
    let spool = tempfile::tempdir().unwrap();
    let srv = mail_server_with(Some(spool.path()), |c| c.max_body_size = Some(1000)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = listener.local_addr().unwrap();
    let (server, shutdown) = (srv.server.clone(), srv.shutdown.clone());
    tokio::spawn(async move { server.serve_metrics(listener, shutdown).await });
    let mut tunnel = spec(None, &app.target);
    set_mail(&mut tunnel, inbound_mail("/inbound"));
    let c = client(client_config(srv.control, vec![tunnel])).await;

    // Four answers from the app, two 404s and a 413 from the server, and a
    // 431 from hyper.
    for i in 0..4 {
        assert_eq!(get(srv.http, &c.host(), &format!("/ok/{i}")).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(srv.http, &format!("nobody.{DOMAIN}"), "/").await.0, 404);
    }
    let big = Request::post("/upload")
        .header("host", c.host())
        .header("content-length", "5000")
        .body(full(vec![b'x'; 5000]))
        .unwrap();
    assert_eq!(send(srv.http, big).await.status(), 413);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nX-Big: {}\r\n\r\n",
        c.host(),
        "a".repeat(70 * 1024)
    );
    assert!(
        raw(srv.http, huge.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );

    // A mail delivered, one refused (no such name), one spooled while the
    // app says 503.
    let smtp = srv.smtp.unwrap();
    let to = format!("a@{}", c.host());
    assert_eq!(
        smtplib_send(smtp, "s@example.com", &[&to], "one", "x").await,
        "SENT"
    );
    app.next_mail().await;
    let stranger = format!("a@nobody.{DOMAIN}");
    let refused = smtplib_send(smtp, "s@example.com", &[&stranger], "two", "x").await;
    assert!(refused.starts_with("REFUSED"), "{refused}");
    app.inbox_status.store(503, Ordering::SeqCst);
    assert_eq!(
        smtplib_send(smtp, "s@example.com", &[&to], "three", "x").await,
        "SENT"
    );

    let text = scrape_until(metrics, "the counters", |t| {
        sample(
            t,
            "droid_server_own_answers_total{code=\"431\",reason=\"headers_too_large\"}",
        ) == Some(1.0)
            && sample(t, "droid_mail_spooled_total") == Some(1.0)
    })
    .await;
    let expect = [
        ("droid_server_requests_total{status_class=\"2xx\"}", 4.0),
        ("droid_server_requests_total{status_class=\"4xx\"}", 4.0),
        ("droid_server_requests_total{status_class=\"5xx\"}", 0.0),
        (
            "droid_server_own_answers_total{code=\"404\",reason=\"no_tunnel\"}",
            2.0,
        ),
        (
            "droid_server_own_answers_total{code=\"413\",reason=\"too_large\"}",
            1.0,
        ),
        ("droid_server_request_duration_seconds_count", 5.0),
        ("droid_server_tunnels{state=\"live\"}", 1.0),
        ("droid_server_tunnels{state=\"resuming\"}", 0.0),
        ("droid_server_sessions", 1.0),
        ("droid_mail_received_total", 2.0),
        ("droid_mail_refused_total", 1.0),
        ("droid_mail_delivered_total", 1.0),
        ("droid_mail_dead_lettered_total", 0.0),
        ("droid_mail_spool_messages", 1.0),
    ];
    for (name, value) in expect {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
    assert!(
        sample(&text, "droid_server_visitor_bytes_total{direction=\"in\"}").unwrap() > 70_000.0
    );
    assert!(sample(&text, "droid_server_visitor_bytes_total{direction=\"out\"}").unwrap() > 0.0);
    assert!(sample(&text, "droid_mail_spool_oldest_age_seconds").unwrap() >= 0.0);
    promtool_check(&text).await;

    // The app is back: the spooled mail goes out and the spool empties.
    app.inbox_status.store(200, Ordering::SeqCst);
    c.stop().await;
    let text = scrape_until(metrics, "the tunnel released", |t| {
        sample(t, "droid_server_tunnels{state=\"quarantined\"}") == Some(1.0)
    })
    .await;
    assert_eq!(
        sample(&text, "droid_server_tunnels{state=\"live\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "droid_server_sessions"), Some(0.0));
}
