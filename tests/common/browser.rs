//! A headless Chromium (Debian's `chromium`), driven over the DevTools
//! protocol.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{get, within};

/// One page of a headless Chromium, spoken to over the DevTools protocol.
pub struct Browser {
    child: tokio::process::Child,
    page: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        Browser::start_with(&[]).await
    }

    /// The same with more of Chromium's flags.
    pub async fn start_with(flags: &[&str]) -> Browser {
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
            .args(flags)
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
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
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
    pub async fn eval(&mut self, expression: &str) -> Value {
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
    pub async fn until(&mut self, what: &str, expression: &str) {
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

    pub async fn screenshot(&mut self, name: &str) -> std::path::PathBuf {
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
