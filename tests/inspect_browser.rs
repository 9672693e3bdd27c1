//! The inspector's page in a real browser: headless Chromium (Debian's
//! `chromium`), driven over the DevTools protocol. A request appears
//! without a reload, its JSON body is pretty-printed, replay reaches the
//! app again, and a mail shows as a mail with its attachment. The last
//! screen is kept as `inspector.png` in the test's target tmp dir.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use droid_client::{Inspector, InspectorOptions};
use futures::{SinkExt, StreamExt};
use http::Request;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One page of a headless Chromium, spoken to over the DevTools protocol.
struct Browser {
    child: tokio::process::Child,
    page: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromium is missing ({e}): install Debian's chromium package (bash .ci/test does)")
            });
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        // Drain its stderr so it never blocks on a full pipe; show it when
        // it exits early.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("DROID_TEST_BROWSER_LOG").is_some() {
                    eprintln!("chromium: {line}");
                }
            }
        });
        // Chromium writes the port it chose into the profile once it listens.
        let active = profile.path().join("DevToolsActivePort");
        let port: u16 = within("chromium's DevTools port", async {
            loop {
                if let Some(port) = std::fs::read_to_string(&active)
                    .ok()
                    .and_then(|text| text.lines().next()?.trim().parse().ok())
                {
                    return port;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "chromium exited with {status} (DROID_TEST_BROWSER_LOG=1 shows its log)"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        // Chromium names its sockets after the Host it is asked with.
        let devtools = SocketAddr::from(([127, 0, 0, 1], port));
        let (_, list) = get(devtools, &devtools.to_string(), "/json/list").await;
        let targets: Value = serde_json::from_str(&list).unwrap();
        let page_url = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap()
            .to_string();
        let (page, _) = tokio_tungstenite::connect_async(page_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot reach {page_url}: {e}"));
        Browser {
            child,
            page,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends a command and waits for its result (events are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let message = json!({"id": id, "method": method, "params": params});
        self.page
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
        within(method, async {
            loop {
                let message = self.page.next().await.unwrap().unwrap();
                let Ok(text) = message.into_text() else {
                    continue;
                };
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["id"] == id {
                    assert!(value.get("error").is_none(), "{method}: {value}");
                    return value["result"].clone();
                }
            }
        })
        .await
    }

    /// Evaluates JavaScript in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    async fn until(&mut self, what: &str, expression: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self.eval(expression).await == json!(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed {what}: {}",
                self.eval("document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn screenshot(&mut self, name: &str) -> std::path::PathBuf {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            shot["data"].as_str().unwrap(),
        )
        .unwrap();
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

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
