//! The inspector as a user meets it: the line `droid http` prints, the next
//! free port for a second copy, `--no-inspect`, and the guard on addresses
//! other than loopback; and its memory budget and streaming, measured on a
//! `droid http` process of its own.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use http::Request;
use http_body_util::BodyExt;

/// A port nothing listens on now, and the one after it too.
async fn two_free_ports() -> u16 {
    loop {
        let port = dead_port().await;
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// The TCP ports process `pid` listens on (from /proc).
fn listening_ports(pid: u32) -> HashSet<u16> {
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(link) = std::fs::read_link(fd.path())
            && let Some(inode) = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
        {
            inodes.insert(inode.to_string());
        }
    }
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local address, state 0A = LISTEN, inode
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// Whether an inspector answers on `port`. Other listeners may answer
/// something else, or nothing (the control port waits for its own
/// protocol), so the answer is awaited for a few seconds at most.
async fn is_inspector(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = b"GET /api/tunnels HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        stream.read_to_end(&mut answer),
    )
    .await;
    let answer = String::from_utf8_lossy(&answer);
    read.is_ok() && answer.starts_with("HTTP/1.1 200") && answer.contains("\"tunnels\"")
}

#[tokio::test]
async fn droid_http_prints_the_inspector_after_the_url_and_a_second_copy_takes_the_next_port() {
    let app = origin("app").await;
    let port = app.addr.port().to_string();
    let first = two_free_ports().await;
    let inspect = format!("127.0.0.1:{first}");
    let state = tempfile::tempdir().unwrap();
    let args = [
        "http",
        &port,
        "--http",
        "127.0.0.1:0",
        "--no-smtp",
        "--inspect",
        &inspect,
    ];
    let mut one = Droid::start(&args, state.path());
    one.line("the URL", |l| l.starts_with("http://").then_some(()))
        .await;
    let line = one.line("the next line", |l| Some(l.to_string())).await;
    assert!(
        line.starts_with(&format!("inspect http://127.0.0.1:{first}")),
        "{line}"
    );
    let other_state = tempfile::tempdir().unwrap();
    let mut two = Droid::start(&args, other_state.path());
    let line = two
        .line("the inspect line", |l| {
            l.starts_with("inspect ").then(|| l.to_string())
        })
        .await;
    assert!(
        line.starts_with(&format!("inspect http://127.0.0.1:{}", first + 1)),
        "{line}"
    );
    // The page is served from the binary, and one of each process's
    // listeners is its inspector.
    let page = raw(
        ([127, 0, 0, 1], first).into(),
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(page.contains("<title>droid inspector</title>"), "{page}");
    let mut inspectors = 0;
    for p in listening_ports(one.child.id().unwrap()) {
        inspectors += usize::from(is_inspector(p).await);
    }
    assert_eq!(inspectors, 1);
    assert!(one.interrupt().await.success());
    assert!(two.interrupt().await.success());
}

#[tokio::test]
async fn no_inspect_prints_no_line_and_opens_no_listener() {
    let app = origin("app").await;
    let port = app.addr.port().to_string();
    let state = tempfile::tempdir().unwrap();
    let mut droid = Droid::start(
        &[
            "http",
            &port,
            "--http",
            "127.0.0.1:0",
            "--smtp",
            "127.0.0.1:0",
            "--no-mqtt",
            "--no-inspect",
        ],
        state.path(),
    );
    // The banner ends with the line about signed deliveries.
    let mut lines = Vec::new();
    droid
        .line("the banner", |l| {
            lines.push(l.to_string());
            l.contains("deliveries are signed").then_some(())
        })
        .await;
    assert!(!lines.iter().any(|l| l.starts_with("inspect")), "{lines:?}");
    let ports = listening_ports(droid.child.id().unwrap());
    assert_eq!(ports.len(), 3, "http, smtp and control: {ports:?}");
    for p in ports {
        assert!(!is_inspector(p).await, "port {p} answers as an inspector");
    }
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn an_inspector_off_loopback_needs_a_login() {
    let state = tempfile::tempdir().unwrap();
    let out = droid_command(&["http", "3000", "--inspect", "0.0.0.0:4040"], state.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0.0.0.0:4040 is not a loopback address") && err.contains("--inspect-auth"),
        "{err}"
    );

    let file = state.path().join("droid.toml");
    std::fs::write(
        &file,
        "[[tunnels]]\nname = \"api\"\nlocal = 3000\n\n[inspect]\nlisten = \"0.0.0.0:4040\"\n",
    )
    .unwrap();
    let out = droid_command(&["config", "check", file.to_str().unwrap()], state.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("droid.toml:6:") && err.contains("inspect.listen") && err.contains("auth"),
        "{err}"
    );
}

/// Peak resident memory of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inspector_keeps_to_its_budget_and_streams_a_100_mib_download() {
    const BUDGET: u64 = 20_000_000;
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
    let (http, control) = server.line("the server's addresses", server_addrs).await;
    let budget = BUDGET.to_string();
    let mut client = Droid::start(
        &[
            "http",
            &app.addr.port().to_string(),
            "--server",
            &control.to_string(),
            "--name",
            "mem",
            "--inspect",
            "127.0.0.1:0",
            "--inspect-budget",
            &budget,
        ],
        state.path(),
    );
    client
        .line("the URL", |l| l.starts_with("http://").then_some(()))
        .await;
    let inspector = client
        .line("the inspector", |l| addr_after(l, "inspect http://"))
        .await;
    let pid = client.child.id().unwrap();
    let before = peak_rss(pid);

    // 10,000 exchanges of 100 KiB answers, 16 at a time.
    const EXCHANGES: usize = 10_000;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let next = next.clone();
        workers.spawn(async move {
            let stream = tokio::net::TcpStream::connect(http).await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            while next.fetch_add(1, Ordering::Relaxed) < EXCHANGES {
                let request = Request::get("/bytes/102400")
                    .header("host", "mem.tunnel.test")
                    .body(empty())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body.len(), 102_400);
            }
        });
    }
    within("10,000 exchanges", async {
        while let Some(done) = workers.join_next().await {
            done.unwrap();
        }
    })
    .await;
    let after_many = peak_rss(pid);
    assert!(
        after_many < before + BUDGET + 8 * 1024 * 1024,
        "peak RSS {after_many} from {before}: over the budget of {BUDGET} and 8 MiB"
    );
    let (_, text) = get(inspector, "localhost", "/metrics").await;
    let kept_bytes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("droid_inspector_kept_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        kept_bytes > 0.0 && kept_bytes <= BUDGET as f64,
        "{kept_bytes}"
    );

    // A 100 MiB download passes whole, never buffered: the peak stays
    // where it was.
    const SIZE: usize = 100 * 1024 * 1024;
    let response = send(
        http,
        get_request("mem.tunnel.test", &format!("/bytes/{SIZE}")),
    )
    .await;
    let mut body = response.into_body();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(
                data.iter()
                    .enumerate()
                    .all(|(i, b)| *b == pattern(seen + i))
            );
            seen += data.len();
        }
    }
    assert_eq!(seen, SIZE);
    let after_download = peak_rss(pid);
    assert!(
        after_download < before + BUDGET + 8 * 1024 * 1024,
        "peak RSS {after_download} from {before} after a 100 MiB download"
    );
    let (_, list) = get(
        inspector,
        "localhost",
        &format!("/api/requests?path=%2Fbytes%2F{SIZE}"),
    )
    .await;
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["requests"][0]["response_size"], SIZE);
    assert!(client.interrupt().await.success());
    assert!(server.interrupt().await.success());
}
