//! Mail through the tunnel: Python's smtplib sends to the server's SMTP
//! listener, the app behind the client receives a signed POST. Nothing is
//! lost when the tunnel is down or the server restarts.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;

use common::*;
use droid_adapters::verify_signature;
use droid_client::{ClientEvent, MailSettings};
use droid_server::registry::Lookup;

fn mail_spec(
    name: &str,
    target: &droid_client::Target,
    path: &str,
    secret: &str,
) -> droid_client::TunnelSpec {
    let mut s = spec(Some(name), target);
    s.mail = MailSettings {
        path: Some(path.into()),
        format: None,
        secret: Some(secret.into()),
        routes: Vec::new(),
    };
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
    assert_eq!(c.grants[0].smtp.as_deref(), Some("shop.droid.test"));
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
    assert!(verify_signature(
        b"k3y",
        &mail.header("droid-timestamp"),
        &mail.body,
        &mail.header("droid-signature")
    ));
    assert!(!verify_signature(
        b"wrong",
        &mail.header("droid-timestamp"),
        &mail.body,
        &mail.header("droid-signature")
    ));
    assert!(!mail.header("droid-delivery-id").is_empty());
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
    assert!(verify_signature(
        b"kb",
        &mb.header("droid-timestamp"),
        &mb.body,
        &mb.header("droid-signature")
    ));
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
    let id = mail.header("droid-delivery-id");
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
