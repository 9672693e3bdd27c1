//! A 200 MB line without a newline: the adapter answers 500 and closes, and
//! memory does not grow with the line. Alone in its binary so the process's
//! peak memory (VmHWM) measures only this.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use droid_adapters::{ConnLimits, MailOptions, SmtpConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_line_is_refused_with_bounded_memory() {
    let origin = Origin::start().await;
    let smtp = start_smtp(
        SmtpConfig::default(),
        url_router(&origin, "/", None, MailOptions::default()),
        None,
        ConnLimits::default(),
    )
    .await;
    let before = vm_hwm_kib();
    let stream = tokio::net::TcpStream::connect(smtp.addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut greeting = String::new();
    read.read_line(&mut greeting).await.unwrap();
    assert!(greeting.starts_with("220"));

    let reader = tokio::spawn(async move {
        let mut reply = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), read.read_line(&mut reply)).await;
        reply
    });
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    let started = std::time::Instant::now();
    write.write_all(b"MAIL FROM:<").await.unwrap();
    while sent < 200 << 20 && started.elapsed() < Duration::from_secs(30) {
        match write.write_all(&chunk).await {
            Ok(()) => sent += chunk.len(),
            Err(_) => break,
        }
    }
    let reply = reader.await.unwrap();
    let growth_mib = (vm_hwm_kib().saturating_sub(before)) / 1024;
    eprintln!(
        "sent {} MiB before the server closed; peak memory grew {growth_mib} MiB",
        sent >> 20
    );
    assert!(reply.starts_with("500 5.5.2 Line too long"), "{reply:?}");
    assert!(sent < 200 << 20, "the server kept reading the whole line");
    assert!(growth_mib < 32, "memory grew by {growth_mib} MiB");
}
