//! Mail through the tunnel: Python's smtplib sends to the server's SMTP
//! listener, the app behind the client receives a signed POST. Nothing is
//! lost when the tunnel is down or the server restarts.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;

use common::*;
use droid_adapters::MailSettings;
use droid_client::ClientEvent;
use droid_server::registry::Lookup;

fn mail_spec(
    name: &str,
    target: &droid_client::Target,
    path: &str,
    secret: &str,
) -> droid_client::TunnelSpec {
    let mut s = spec(Some(name), target);
    set_mail(
        &mut s,
        MailSettings {
            path: Some(path.into()),
            format: None,
            routes: Vec::new(),
        },
    );
    s.secret = Some(secret.into());
    s
}

#[tokio::test]
async fn a_mail_reaches_the_app_as_a_signed_json_post_through_the_tunnel() {
    let mut app = origin("app").await;
    let srv = mail_server(None).await;
    let c = client(client_config(
        srv.control,
        vec![mail_spec("shop", &app.target, "/inbound", "k3y")],
    ))
    .await;
    assert_eq!(c.grants[0].adapters["smtp"]["domain"], "shop.droid.test");
    let smtp = srv.smtp.unwrap();
    let out = smtplib_send(
        smtp,
        "alice@example.com",
        &["orders+1234@shop.droid.test"],
        "Grüße ✓",
        "Hello, shop.",
    )
    .await;
    assert_eq!(out, "SENT");
    let mail = app.next_mail().await;
    assert_eq!(mail.path, "/inbound");
    assert_eq!(mail.header("host"), "shop.droid.test");
    assert!(
        mail.header("content-type").starts_with("application/json"),
        "{}",
        mail.header("content-type")
    );
    assert!(signed_with(&mail, "k3y"));
    assert!(!signed_with(&mail, "wrong"));
    assert!(!mail.header("webhook-id").is_empty());
    let json = mail.json();
    assert_eq!(json["subject"], "Grüße ✓");
    assert_eq!(json["envelope"]["mail_from"], "alice@example.com");
    assert_eq!(
        json["envelope"]["rcpt_to"][0],
        "orders+1234@shop.droid.test"
    );
    assert_eq!(json["from"][0]["address"], "alice@example.com");
    assert_eq!(json["text"].as_str().unwrap().trim(), "Hello, shop.");
    assert_eq!(json["attachments"][0]["filename"], "report.pdf");
    assert_eq!(json["attachments"][0]["content_type"], "application/pdf");
    let plus = serde_json::to_string(&json).unwrap();
    assert!(
        plus.contains("1234"),
        "the plus-address part is missing: {plus}"
    );
}

#[tokio::test]
async fn mail_for_names_that_are_not_live_or_domains_not_served_is_refused_with_550() {
    let app = origin("app").await;
    let srv = mail_server(None).await;
    let _c = client(client_config(
        srv.control,
        vec![mail_spec("shop", &app.target, "/inbound", "k")],
    ))
    .await;
    let smtp = srv.smtp.unwrap();
    let out = smtplib_send(smtp, "a@example.com", &["x@nobody.droid.test"], "s", "b").await;
    assert_eq!(out, "REFUSED x@nobody.droid.test 550");
    let out = smtplib_send(smtp, "a@example.com", &["victim@gmail.com"], "s", "b").await;
    assert_eq!(out, "REFUSED victim@gmail.com 550", "never an open relay");
    let out = smtplib_send(smtp, "a@example.com", &["x@droid.test"], "s", "b").await;
    assert_eq!(out, "REFUSED x@droid.test 550");
}

#[tokio::test]
async fn one_mail_for_two_tunnels_reaches_each_once_and_an_app_rejection_is_a_550() {
    let mut a = origin("a").await;
    let mut b = origin("b").await;
    let srv = mail_server(None).await;
    let _ca = client(client_config(
        srv.control,
        vec![mail_spec("one", &a.target, "/inbound", "ka")],
    ))
    .await;
    let _cb = client(client_config(
        srv.control,
        vec![mail_spec("two", &b.target, "/inbound/b", "kb")],
    ))
    .await;
    let smtp = srv.smtp.unwrap();
    let out = smtplib_send(
        smtp,
        "s@example.com",
        &["x@one.droid.test", "y@two.droid.test", "z@one.droid.test"],
        "both",
        "hi",
    )
    .await;
    assert_eq!(out, "SENT");
    let ma = a.next_mail().await;
    let mb = b.next_mail().await;
    assert_eq!(
        ma.json()["envelope"]["rcpt_to"].as_array().unwrap().len(),
        2
    );
    assert_eq!(mb.json()["envelope"]["rcpt_to"][0], "y@two.droid.test");
    assert_eq!(mb.path, "/inbound/b");
    assert!(signed_with(&mb, "kb"));
    assert!(a.inbox.try_recv().is_err(), "tunnel one got the mail twice");
    // the app says no: the sender hears it while still connected
    a.inbox_status.store(422, Ordering::SeqCst);
    let out = smtplib_send(smtp, "s@example.com", &["x@one.droid.test"], "no", "hi").await;
    assert!(out.starts_with("ERROR 550"), "{out}");
    assert!(out.contains("inbox says 422"), "{out}");
}

#[tokio::test]
async fn mail_for_a_reconnecting_tunnel_is_spooled_and_delivered_once_when_it_is_back() {
    let mut app = origin("app").await;
    let spool = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let srv = mail_server(Some(spool.path())).await;
    let cutter = Cutter::start(srv.control).await;
    let mut config = client_config(
        cutter.addr,
        vec![mail_spec("desk", &app.target, "/inbound", "k")],
    );
    config.state_dir = Some(state.path().to_path_buf());
    let first = client(config.clone()).await;
    // the client's process dies: no goodbye, the name waits for its owner
    first.task.abort();
    cutter.cut();
    within("server notices", async {
        while !matches!(srv.server.registry().lookup("desk"), Lookup::Resuming) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let out = smtplib_send(
        srv.smtp.unwrap(),
        "s@example.com",
        &["help@desk.droid.test"],
        "while away",
        "hi",
    )
    .await;
    assert_eq!(out, "SENT", "accepted into the spool");
    assert!(app.inbox.try_recv().is_err());
    // the same user starts the same command again: the mail arrives, once
    let again = client(config).await;
    assert_eq!(again.name(), "desk");
    let mail = app.next_mail().await;
    assert_eq!(mail.json()["subject"], "while away");
    let id = mail.header("webhook-id");
    within("spool drained", async {
        while spool
            .path()
            .join("queue")
            .read_dir()
            .unwrap()
            .next()
            .is_some()
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(app.inbox.try_recv().is_err(), "delivered twice (id {id})");
}

#[tokio::test]
async fn mail_spooled_before_a_server_restart_is_delivered_after_it() {
    let mut app = origin("app").await;
    let spool = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let srv = mail_server(Some(spool.path())).await;
    let mut config = client_config(
        srv.control,
        vec![mail_spec("ops", &app.target, "/inbound", "k")],
    );
    config.state_dir = Some(state.path().to_path_buf());
    let c = client(config.clone()).await;
    // the app is down: the mail is spooled, not lost
    app.inbox_status.store(503, Ordering::SeqCst);
    let out = smtplib_send(
        srv.smtp.unwrap(),
        "s@example.com",
        &["x@ops.droid.test"],
        "survives",
        "hi",
    )
    .await;
    assert_eq!(out, "SENT");
    c.stop().await;
    srv.stop().await;
    // a new server process on the same spool; the app is back
    app.inbox_status.store(200, Ordering::SeqCst);
    let srv = mail_server(Some(spool.path())).await;
    config.server = srv.control.to_string();
    let mut c = client(config).await;
    assert_eq!(c.name(), "ops");
    let mail = app.next_mail().await;
    assert_eq!(mail.json()["subject"], "survives");
    // the client logged the delivery like any request
    c.wait_for("request line", |e| match e {
        ClientEvent::Request {
            method,
            path,
            status: 200,
            ..
        } if method == "POST" && path == "/inbound" => Some(()),
        _ => None,
    })
    .await;
}

/// Sends `n` mails to `rcpt` one after another on one SMTP session from
/// this process (subjects `mail 0`, `mail 1`, ...); returns the reply to
/// each mail's DATA.
async fn mails_in_a_row(smtp: std::net::SocketAddr, rcpt: &str, n: usize) -> Vec<String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let io = within("smtp connect", tokio::net::TcpStream::connect(smtp))
        .await
        .unwrap();
    let (r, mut w) = io.into_split();
    let mut r = tokio::io::BufReader::new(r);
    let mut reply = async || {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            within("smtp reply", r.read_line(&mut line)).await.unwrap();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    assert!(reply().await.starts_with("220"));
    w.write_all(b"EHLO test\r\n").await.unwrap();
    reply().await;
    let mut replies = Vec::new();
    for i in 0..n {
        let envelope = format!("MAIL FROM:<s@example.com>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
        w.write_all(envelope.as_bytes()).await.unwrap();
        for want in ["250", "250", "354"] {
            let got = reply().await;
            assert!(got.starts_with(want), "{got}");
        }
        let mail = format!("Subject: mail {i}\r\n\r\nbody {i}\r\n.\r\n");
        w.write_all(mail.as_bytes()).await.unwrap();
        replies.push(reply().await);
    }
    w.write_all(b"QUIT\r\n").await.unwrap();
    replies
}

#[tokio::test]
async fn mails_in_a_row_reuse_one_stream_and_one_connection_to_the_app() {
    let mut app = origin("app").await;
    let srv = mail_server(None).await;
    let _c = client(client_config(
        srv.control,
        vec![mail_spec("batch", &app.target, "/inbound", "k")],
    ))
    .await;
    let replies = mails_in_a_row(srv.smtp.unwrap(), "x@batch.droid.test", 5).await;
    for reply in replies {
        assert!(reply.starts_with("250 2.0.0 Ok: delivered"), "{reply}");
    }
    for i in 0..5 {
        assert_eq!(app.next_mail().await.json()["subject"], format!("mail {i}"));
    }
    assert_eq!(app.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn after_the_tunnel_reconnects_mail_goes_through_the_new_session() {
    let mut app = origin("app").await;
    let srv = mail_server(None).await;
    let cutter = Cutter::start(srv.control).await;
    let mut c = client(client_config(
        cutter.addr,
        vec![mail_spec("desk", &app.target, "/inbound", "k")],
    ))
    .await;
    let smtp = srv.smtp.unwrap();
    let reply = mails_in_a_row(smtp, "x@desk.droid.test", 1).await;
    assert!(reply[0].starts_with("250 2.0.0 Ok: delivered"), "{reply:?}");
    app.next_mail().await;
    let Lookup::Live(before) = srv.server.registry().lookup("desk") else {
        panic!("the tunnel is not live");
    };
    // The connection drops; the client comes back on a new session. The
    // stream kept from the first session must not carry the next mail.
    cutter.cut();
    c.wait_for("reconnected", |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    within("the new session is live", async {
        loop {
            if let Lookup::Live(t) = srv.server.registry().lookup("desk")
                && t.session != before.session
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let reply = mails_in_a_row(smtp, "x@desk.droid.test", 1).await;
    assert!(reply[0].starts_with("250 2.0.0 Ok: delivered"), "{reply:?}");
    assert_eq!(app.next_mail().await.json()["subject"], "mail 0");
    assert_eq!(app.connections.load(Ordering::SeqCst), 2);
}

/// An app that answers the first request on each connection and closes
/// the connection when the next one arrives, without answering it (an app
/// closing an idle keep-alive connection just as a request comes). Sends
/// the subject of each mail it answered.
async fn app_that_drops_kept_connections() -> (
    droid_client::Target,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut io = tokio::io::BufReader::new(io);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                io.read_exact(&mut body).await.unwrap();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let _ = tx.send(json["subject"].as_str().unwrap_or_default().to_string());
                io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                let mut next = [0u8; 1];
                let _ = io.read(&mut next).await;
            });
        }
    });
    let target = droid_client::Target::new("127.0.0.1", port);
    (target, rx)
}

#[tokio::test]
async fn a_kept_stream_whose_app_connection_dies_loses_no_mail() {
    let (target, mut answered) = app_that_drops_kept_connections().await;
    let spool = tempfile::tempdir().unwrap();
    let srv = mail_server(Some(spool.path())).await;
    let _c = client(client_config(
        srv.control,
        vec![mail_spec("flaky", &target, "/inbound", "k")],
    ))
    .await;
    // A mail on a kept stream whose app connection closes is spooled and
    // delivered by a retry (or delivered at once, had the close been seen
    // first): every reply is a 250, and every mail arrives.
    for reply in mails_in_a_row(srv.smtp.unwrap(), "x@flaky.droid.test", 3).await {
        assert!(reply.starts_with("250 2.0.0 Ok: "), "{reply}");
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            within("a mail reaches the app", answered.recv())
                .await
                .unwrap(),
        );
    }
    got.sort();
    assert_eq!(got, ["mail 0", "mail 1", "mail 2"]);
}
