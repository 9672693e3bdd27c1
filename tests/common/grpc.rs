//! A gRPC server and client from Python's grpcio (`tests/grpc_peer.py`).

use std::process::Stdio;

use tokio::io::AsyncBufReadExt;
use tokio::process::Command;

use super::{StdoutLines, next_line, within};

/// The Python peer: `serve`, or `call TARGET AUTHORITY CASE...`.
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_peer.py");

/// A gRPC server from grpcio on a port of its own, until dropped.
pub struct GrpcApp {
    child: tokio::process::Child,
    pub port: u16,
    lines: StdoutLines,
}

impl GrpcApp {
    pub async fn start() -> GrpcApp {
        GrpcApp::start_with(&[]).await
    }

    /// The same with more arguments (`--tls CERT KEY`).
    pub async fn start_with(args: &[&str]) -> GrpcApp {
        let mut child = Command::new("python3")
            .args([PEER, "serve"])
            .args(args)
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
    pub async fn ended(&mut self, name: &str) {
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
pub async fn grpc_call(target: &str, authority: &str, cases: &[&str], ca: Option<&str>) {
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
