//! The inspector's page in a real browser: headless Chromium (Debian's
//! `chromium`), driven over the DevTools protocol. A request appears
//! without a reload, its JSON body is pretty-printed, replay reaches the
//! app again, and a mail shows as a mail with its attachment. The last
//! screen is kept as `inspector.png` in the test's target tmp dir.
#![allow(clippy::unwrap_used)]

mod common;

use common::browser::Browser;
use common::*;
use droid_client::{Inspector, InspectorOptions};
use http::Request;
use serde_json::json;
use tokio::net::TcpListener;

/// A row of the list whose text contains `text`, as a JS expression.
fn row(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#rows tr.row')].find(r => r.textContent.includes({}))",
        json!(text)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_requests_live_replays_them_and_shows_mail() {
    let mut app = origin("app").await;
    let srv = mail_server(None).await;
    let mut tunnel = spec(None, &app.target);
    set_mail(&mut tunnel, inbound_mail("/inbound/mail"));
    tunnel.secret = Some("s3cret".into());
    let inspector = Inspector::new(InspectorOptions::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page = listener.local_addr().unwrap();
    let mut config = client_config(srv.control, vec![tunnel]);
    config.inspector = Some(inspector.clone());
    let c = client(config).await;
    let shutdown = c.shutdown.clone();
    tokio::spawn(async move { inspector.serve(listener, None, shutdown).await });

    let mut browser = Browser::start().await;
    browser
        .call(
            "Page.navigate",
            json!({"url": format!("http://127.0.0.1:{}/", page.port())}),
        )
        .await;
    browser
        .until(
            "the live event stream",
            "document.querySelector('#status')?.textContent === 'live'",
        )
        .await;

    // A request through the tunnel appears without a reload.
    let request = Request::post("/inbound/orders")
        .header("host", c.host())
        .header("content-type", "application/json")
        .body(full(r#"{"order":{"id":7,"items":["tea","milk"]}}"#))
        .unwrap();
    assert_eq!(send(srv.http, request).await.status(), 200);
    assert_eq!(app.next_mail().await.path, "/inbound/orders");
    browser
        .until(
            "the request's row",
            &format!("!!{}", row("/inbound/orders")),
        )
        .await;

    // Opened, its JSON body is pretty-printed.
    browser
        .eval(&format!("{}.click()", row("/inbound/orders")))
        .await;
    let pretty = "{\n  \"order\": {\n    \"id\": 7,\n    \"items\": [\n      \"tea\",\n      \"milk\"\n    ]\n  }\n}";
    browser
        .until(
            "the pretty JSON body",
            &format!(
                "document.querySelector('#detail pre.json')?.textContent === {}",
                json!(pretty)
            ),
        )
        .await;

    // Replay: the app receives it a second time, and the replay is listed.
    browser
        .eval("document.querySelector('#replay').click()")
        .await;
    let again = app.next_mail().await;
    assert_eq!(again.path, "/inbound/orders");
    assert_eq!(again.body, r#"{"order":{"id":7,"items":["tea","milk"]}}"#);
    browser
        .until("the replay's row", &format!("!!{}", row("replay of #")))
        .await;

    // A form's fields are shown as fields.
    let form = Request::post("/inbound/form")
        .header("host", c.host())
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(full(
            "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nHello form\r\n--XyZ--\r\n",
        ))
        .unwrap();
    assert_eq!(send(srv.http, form).await.status(), 200);
    app.next_mail().await;
    browser
        .until("the form's row", &format!("!!{}", row("/inbound/form")))
        .await;
    browser
        .eval(&format!("{}.click()", row("/inbound/form")))
        .await;
    browser
        .until(
            "the form's fields",
            "[...document.querySelectorAll('#detail table.headers tr')].some(r => r.textContent === 'titleHello form')",
        )
        .await;

    // A mail with an attachment shows as a mail.
    let to = format!("billing@{}", c.host());
    let sent = smtplib_send(
        srv.smtp.unwrap(),
        "ann@example.com",
        &[&to],
        "Invoice 42",
        "Please find it attached.",
    )
    .await;
    assert_eq!(sent, "SENT");
    app.next_mail().await;
    browser
        .until("the mail's row", &format!("!!{}", row("Invoice 42")))
        .await;
    browser
        .eval(&format!("{}.click()", row("Invoice 42")))
        .await;
    browser
        .until(
            "the mail view",
            "document.querySelector('#detail .mail-subject')?.textContent === 'Invoice 42'",
        )
        .await;
    browser
        .until(
            "the attachment",
            "[...document.querySelectorAll('#detail .attachments a')].some(a => a.textContent === 'report.pdf' && a.getAttribute('href').includes('/attachments/0'))",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.querySelector('#detail .mail-text').textContent.includes('Please find it attached.')")
            .await,
        json!(true)
    );
    let shot = browser.screenshot("inspector.png").await;
    println!("screenshot: {}", shot.display());
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    c.stop().await;
}
