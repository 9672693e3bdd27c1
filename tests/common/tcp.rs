//! TCP peers the tests drive: an echo service, a half-closing visitor,
//! and `redis-cli`.

use std::net::SocketAddr;

use droid_client::Target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use super::within;

/// An echo service: what comes in goes back as it comes; its FIN after
/// the peer's.
pub async fn echo() -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    Target::new("127.0.0.1", port)
}

/// Sends `data`, half-closes, and reads everything that comes back.
pub async fn round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(data).await.unwrap();
    socket.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("the echo", socket.read_to_end(&mut back))
        .await
        .unwrap();
    back
}

/// Runs `redis-cli -h HOST -p PORT ARGS...` with `stdin`; its stdout.
pub async fn redis_cli(host: &str, port: u16, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut command = Command::new("redis-cli");
    command
        .args(["-h", host, "-p", &port.to_string()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap_or_else(|e| {
        panic!("redis-cli is missing ({e}): install Debian's redis-tools (bash .ci/test does)")
    });
    let mut input = child.stdin.take().unwrap();
    if let Some(data) = stdin {
        input.write_all(data).await.unwrap();
    }
    drop(input);
    let out = within("redis-cli", child.wait_with_output()).await.unwrap();
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
