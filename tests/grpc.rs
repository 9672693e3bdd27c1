//! HTTP/2 and gRPC through the `droid` binary: a gRPC server and client
//! from Python's grpcio (`tests/grpc_peer.py`), curl, nghttp2's h2load,
//! and the HTTPS front's ALPN.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;

use common::pki::Pki;
use common::*;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

/// The Python peer: `serve`, or `call TARGET AUTHORITY CASE...`.
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_peer.py");

/// A gRPC server from grpcio on a port of its own, until dropped.
struct GrpcApp {
    child: tokio::process::Child,
    port: u16,
    lines: StdoutLines,
}

impl GrpcApp {
    async fn start() -> GrpcApp {
        let mut child = Command::new("python3")
            .args([PEER, "serve"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = within("the gRPC app's port", lines.next_line())
            .await
            .unwrap()
            .and_then(|l| l.strip_prefix("port ")?.parse().ok())
            .expect("grpcio is not installed (pip install grpcio); run `bash .ci/test`");
        GrpcApp { child, port, lines }
    }

    /// Waits until the app says its handler for the call `name` ended.
    async fn ended(&mut self, name: &str) {
        let wanted = format!("ended {name}");
        next_line(&mut self.lines, &wanted, |l| (l == wanted).then_some(())).await;
    }
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Runs the Python client's `cases` against `target` for `authority`;
/// fails the test with what it printed unless every case passed.
async fn grpc_call(target: &str, authority: &str, cases: &[&str], ca: Option<&str>) {
    let mut args = vec![PEER, "call", target, authority];
    args.extend_from_slice(cases);
    if let Some(ca) = ca {
        args.extend_from_slice(&["--ca", ca]);
    }
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        Command::new("python3")
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the gRPC calls took over 2 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cases:?}: {stdout}{stderr}");
    for case in cases {
        assert!(stdout.contains(&format!("ok {case}\n")), "{case}: {stdout}");
    }
}

/// `droid http ARGS` with its embedded server: the process and its URL's
/// authority (`NAME.localhost:PORT`).
async fn droid_http(args: &[&str], state: &std::path::Path) -> (Droid, String) {
    let mut all = vec!["http"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--http", "127.0.0.1:0", "--no-inspect"]);
    let mut droid = Droid::start(&all, state);
    let url = droid
        .line("the URL", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    (droid, url.trim_start_matches("http://").to_string())
}

/// The port in `NAME.localhost:PORT`, as `127.0.0.1:PORT`.
fn loopback(authority: &str) -> String {
    format!("127.0.0.1:{}", authority.rsplit(':').next().unwrap())
}

#[tokio::test]
async fn grpc_calls_of_every_kind_reach_an_h2c_app_through_droid_http() {
    let mut app = GrpcApp::start().await;
    let state = tempfile::tempdir().unwrap();
    let port = app.port.to_string();
    let (mut droid, authority) = droid_http(&[&port, "--app-protocol", "h2c"], state.path()).await;
    let cases = [
        "unary",
        "server_stream",
        "client_stream",
        "bidi",
        "fail",
        "deadline",
        "cancel",
        "concurrent",
        "big",
    ];
    grpc_call(&loopback(&authority), &authority, &cases, None).await;
    // The app's handlers ended with the caller: its deadline, and its
    // cancel (which only a reset crossing the tunnel tells the app).
    app.ended("deadline").await;
    app.ended("cancel").await;
    let line = droid
        .line("a gRPC request line", |l| {
            l.contains("/droid.test.Echo/Unary").then(|| l.to_string())
        })
        .await;
    assert!(line.starts_with("POST") && line.contains("200"), "{line}");
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn a_grpc_call_to_an_http1_app_is_unavailable_and_says_to_use_h2c() {
    let app = GrpcApp::start().await;
    let state = tempfile::tempdir().unwrap();
    let port = app.port.to_string();
    let (droid, authority) = droid_http(&[&port], state.path()).await;
    grpc_call(&loopback(&authority), &authority, &["unavailable"], None).await;
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn grpc_and_curl_use_http2_by_alpn_on_the_https_front() {
    let pki = Pki::new();
    let app = GrpcApp::start().await;
    let web = origin("web").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = pki.write(dir.path());
    let mut server = Droid::start(
        &server_args(&[
            "--https",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]),
        dir.path(),
    );
    let (_, control) = server.line("the addresses", server_addrs).await;
    let https = server
        .line("the https address", |l| addr_after(l, "https on "))
        .await;
    let control = format!("localhost:{}", control.port());
    let mut tunnels = Vec::new();
    for (name, port, extra) in [
        ("grpc", app.port, Some("h2c")),
        ("web", web.addr.port(), None),
    ] {
        let state = dir.path().join(name);
        std::fs::create_dir(&state).unwrap();
        let port = port.to_string();
        let mut args = vec![
            "http", &port, "--server", &control, "--ca", &ca, "--name", name,
        ];
        if let Some(protocol) = extra {
            args.extend_from_slice(&["--app-protocol", protocol]);
        }
        let mut client = Droid::start(&args, &state);
        client
            .line("the URL", |l| l.starts_with("https://").then_some(()))
            .await;
        tunnels.push(client);
    }
    let authority = format!("grpc.{DOMAIN}:{}", https.port());
    let target = format!("127.0.0.1:{}", https.port());
    let cases = ["unary", "server_stream", "bidi", "fail", "concurrent"];
    grpc_call(&target, &authority, &cases, Some(&ca)).await;

    // curl asks for h2 by ALPN and gets it; an HTTP/1.1 app answers.
    let resolve = format!("web.{DOMAIN}:{}:127.0.0.1", https.port());
    let url = format!("https://web.{DOMAIN}:{}/x", https.port());
    let out = Command::new("curl")
        .args(["-s", "--http2", "--cacert", &ca, "--resolve", &resolve])
        .args(["-w", "\n%{http_version}", &url])
        .output()
        .await
        .expect("curl is not installed (Debian: curl); run `bash .ci/test`");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "origin web /x\n2");
    for client in tunnels {
        assert!(client.interrupt().await.success());
    }
    assert!(server.interrupt().await.success());
}

#[tokio::test]
async fn http2_visitors_reach_http1_apps_and_http1_visitors_reach_h2c_apps() {
    let web = origin("web").await;
    let app = GrpcApp::start().await;
    let state = tempfile::tempdir().unwrap();
    let (web_droid, web_authority) =
        droid_http(&[&web.addr.port().to_string()], &state.path().join("web")).await;
    let port = app.port.to_string();
    let (grpc_droid, grpc_authority) = droid_http(
        &[&port, "--app-protocol", "h2c"],
        &state.path().join("grpc"),
    )
    .await;

    // curl with prior knowledge, to an HTTP/1.1 app: a streamed body both ways.
    let url = format!("http://{web_authority}/echo");
    let out = Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "--data-binary", "ping"])
        .args(["-w", "\n%{http_version}", &url])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ping\n2");

    // curl in HTTP/1.1 calling the gRPC app by hand: a length-prefixed
    // message in, the echo and its status (a trailer) back.
    let url = format!("http://{grpc_authority}/droid.test.Echo/Unary");
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), b"\0\0\0\0\x05hello").unwrap();
    let data = format!("@{}", body.path().display());
    let out = Command::new("curl")
        .args([
            "-s",
            "--http1.1",
            "-D",
            "-",
            "-H",
            "content-type: application/grpc",
        ])
        .args(["-H", "te: trailers", "--data-binary", &data, &url])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");
    assert!(said.contains("\0\0\0\0\x05hello"), "{said}");
    assert!(said.contains("grpc-status: 0"), "{said}");
    assert!(web_droid.interrupt().await.success());
    assert!(grpc_droid.interrupt().await.success());
}

#[tokio::test]
async fn h2load_sends_a_thousand_requests_on_100_streams_of_one_connection() {
    let web = origin("web").await;
    let state = tempfile::tempdir().unwrap();
    let (droid, authority) = droid_http(&[&web.addr.port().to_string()], state.path()).await;
    let url = format!("http://{}/small", loopback(&authority));
    let out = Command::new("h2load")
        .args(["-n", "1000", "-c", "1", "-m", "100", "-H"])
        .arg(format!(":authority: {authority}"))
        .arg(&url)
        .output()
        .await
        .expect("h2load is not installed (Debian: nghttp2-client); run `bash .ci/test`");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("1000 succeeded, 0 failed, 0 errored"),
        "{said}"
    );
    assert!(said.contains("status codes: 1000 2xx"), "{said}");
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn a_second_name_on_one_http2_connection_gets_421() {
    let a = origin("a").await;
    let server = server().await;
    let client = client(client_config(server.control, vec![spec(None, &a.target)])).await;
    let stream = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, TestBody>(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let get = |host: &str| {
        http::Request::get(format!("http://{host}/x"))
            .body(empty())
            .unwrap()
    };
    let first = send.send_request(get(&client.host())).await.unwrap();
    assert_eq!(first.status(), 200);
    let other = format!("other.{DOMAIN}");
    let second = send.send_request(get(&other)).await.unwrap();
    assert_eq!(second.status(), 421);
    let body = http_body_util::BodyExt::collect(second.into_body())
        .await
        .unwrap()
        .to_bytes();
    let said = String::from_utf8_lossy(&body);
    assert!(said.contains("on a connection of their own"), "{said}");
    // The connection still serves its own name.
    let again = send.send_request(get(&client.host())).await.unwrap();
    assert_eq!(again.status(), 200);
}
