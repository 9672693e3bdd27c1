//! 500 SMTP sessions open at the same time, each delivering one mail: no
//! thread pool caps them. Bounded in count and time.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use droid_adapters::{ConnLimits, MailOptions, SmtpConfig};
use tokio::sync::Barrier;

const SESSIONS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_sessions() {
    let origin = Origin::start().await;
    let smtp = start_smtp(
        SmtpConfig::default(),
        url_router(&origin, "/", None, MailOptions::default()),
        None,
        ConnLimits {
            max_connections: 1000,
            max_per_ip: 1000,
        },
    )
    .await;
    let started = Instant::now();
    // Everyone waits at the barrier after the greeting: all 500 sessions are
    // open and greeted at once before any mail is sent.
    let barrier = Arc::new(Barrier::new(SESSIONS));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..SESSIONS {
        let (addr, barrier) = (smtp.addr, barrier.clone());
        clients.spawn(async move {
            let mut c = RawClient::connect(addr).await;
            assert!(c.reply().await.starts_with("220"));
            barrier.wait().await;
            c.send(
                b"EHLO load\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
            )
            .await;
            for expected in ["250", "250", "250", "354"] {
                let r = c.reply().await;
                assert!(r.starts_with(expected), "{r}");
            }
            let msg = format!(
                "Subject: load {i}\r\n\r\n{}\r\n.\r\nQUIT\r\n",
                "z".repeat(1000)
            );
            c.send(msg.as_bytes()).await;
            assert!(c.reply().await.starts_with("250"));
            assert!(c.reply().await.starts_with("221"));
        });
    }
    let all = async {
        while let Some(r) = clients.join_next().await {
            r.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("500 sessions took over 60 s");
    let elapsed = started.elapsed();
    eprintln!("{SESSIONS} concurrent sessions delivered in {elapsed:?}");
    assert_eq!(origin.count.load(Ordering::SeqCst), SESSIONS);
}
