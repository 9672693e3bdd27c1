//! 100 MiB request and response bodies stream through the tunnel without
//! being held whole in memory. Alone in its own test binary so that the
//! process's memory reflects this test only.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use http::Request;

const SIZE: usize = 100 * 1024 * 1024;

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_bodies_stream_both_ways_in_bounded_memory() {
    let app = origin("app").await;
    let srv = server().await;
    let c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;

    let baseline = rss();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };

    // download: the origin generates 100 MiB as it is read
    let resp = send(srv.http, get_request(&c.host(), &format!("/bytes/{SIZE}"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        within("download", drain_checked(resp.into_body())).await,
        SIZE
    );

    // upload and echo: 100 MiB up and the same 100 MiB back, at the same time
    let req = Request::post("/echo")
        .header("host", c.host())
        .body(pattern_body(SIZE))
        .unwrap();
    let resp = send(srv.http, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(within("echo", drain_checked(resp.into_body())).await, SIZE);

    sampling.abort();
    eprintln!(
        "peak RSS growth while streaming: {} MiB",
        peak.load(Ordering::Relaxed).saturating_sub(baseline) / (1024 * 1024)
    );
    let grew = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    // Holding one body whole would take 100 MiB; streaming needs a few
    // windows' worth of buffers.
    assert!(
        grew < 64 * 1024 * 1024,
        "memory grew by {} MiB",
        grew / (1024 * 1024)
    );
}
