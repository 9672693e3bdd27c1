//! The `droid` binary as a user runs it: the README's first command with its
//! embedded server, and a public server with a client in another process.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

struct Droid {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Droid {
    fn start(args: &[&str], state_dir: &std::path::Path) -> Droid {
        let mut child = Command::new(env!("CARGO_BIN_EXE_droid"))
            .args(args)
            .env("DROID_STATE_DIR", state_dir)
            .env_remove("DROID_SERVER")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Droid { child, lines }
    }

    /// The next stdout line that `pick` accepts.
    async fn line<T>(&mut self, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        within(what, async {
            loop {
                let line = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("droid exited before: {what}"));
                if let Some(t) = pick(&line) {
                    return t;
                }
            }
        })
        .await
    }

    /// Ctrl-C, and the exit status.
    async fn interrupt(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .unwrap();
        within("droid exits", self.child.wait()).await.unwrap()
    }
}

async fn curl(args: &[&str]) -> String {
    let out = within("curl", Command::new("curl").args(args).output())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn droid_http_with_no_server_prints_a_localhost_url_that_works() {
    let app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let port = app.addr.port().to_string();
    let mut droid = Droid::start(&["http", &port, "--http", "127.0.0.1:0"], state.path());
    let url = droid
        .line("the URL", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    assert!(url.contains(".localhost:"), "{url}");
    // curl resolves *.localhost to loopback by itself, as browsers do
    assert_eq!(
        curl(&["-s", &format!("{url}/hello")]).await,
        "origin app /hello"
    );
    let line = droid
        .line("the request line", |l| {
            l.starts_with("GET").then(|| l.to_string())
        })
        .await;
    assert!(line.contains("/hello") && line.contains("200"), "{line}");
    assert!(droid.interrupt().await.success());

    // the same command again gets the same name back
    let name = url
        .trim_start_matches("http://")
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let mut droid = Droid::start(&["http", &port, "--http", "127.0.0.1:0"], state.path());
    let again = droid
        .line("the URL again", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    assert!(
        again.starts_with(&format!("http://{name}.localhost:")),
        "{again} vs {name}"
    );
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn droid_http_says_plainly_when_the_app_is_not_running_yet() {
    let port = dead_port().await.to_string();
    let state = tempfile::tempdir().unwrap();
    let mut droid = Droid::start(&["http", &port, "--http", "127.0.0.1:0"], state.path());
    let warning = droid
        .line("the warning", |l| {
            l.contains("nothing listens").then(|| l.to_string())
        })
        .await;
    assert!(warning.contains(&format!("127.0.0.1:{port}")), "{warning}");
    let url = droid
        .line("the URL", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    let out = curl(&["-s", "-w", " %{http_code}", &url]).await;
    assert_eq!(
        out,
        format!("the tunnel is up but nothing answers at 127.0.0.1:{port}\n 502")
    );
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn a_public_server_and_a_named_client_in_separate_processes() {
    let app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let mut server = Droid::start(
        &[
            "server",
            "--domain",
            "tunnel.test",
            "--http",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
        ],
        state.path(),
    );
    let (http, control) = server
        .line("the server's addresses", |l| {
            let http = l.split("http on ").nth(1)?.split(',').next()?.to_string();
            let control = l.split("control on ").nth(1)?.trim().to_string();
            Some((http, control))
        })
        .await;
    let target = format!("http://127.0.0.1:{}", app.addr.port());
    let mut client = Droid::start(
        &["http", &target, "--server", &control, "--name", "myapp"],
        state.path(),
    );
    let url = client
        .line("the URL", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    let port = http.rsplit(':').next().unwrap();
    assert_eq!(url, format!("http://myapp.tunnel.test:{port}"));
    let host = "Host: myapp.tunnel.test";
    assert_eq!(
        curl(&["-s", "-H", host, &format!("http://{http}/x")]).await,
        "origin app /x"
    );

    // a second client asking for the same name is refused with a clear error
    let out = within(
        "refused client",
        Command::new(env!("CARGO_BIN_EXE_droid"))
            .args(["http", "3000", "--server", &control, "--name", "myapp"])
            .env("DROID_STATE_DIR", state.path().join("other"))
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the name myapp is in use by another client"),
        "{stderr}"
    );

    assert!(client.interrupt().await.success());
    assert!(server.interrupt().await.success());
}
