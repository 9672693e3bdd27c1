//! Throughput from SMTP accept to app POST, 10 KiB mails. Ignored by default:
//! `cargo test --release -p droid-adapters --test bench -- --ignored --nocapture`
//!
//! - discard: the same SMTP loop with a sink that drops each mail in
//!   process (raw format, no HTTP): the limit of the SMTP side;
//! - standalone: UrlSink POSTing JSON to a hyper origin on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use droid_adapters::{ConnLimits, Format, MailOptions, MailRouter, SmtpConfig, UrlRouter};
use droid_core::deliver::{Deliver, DeliverFuture};

struct Discard;

impl Deliver for Discard {
    fn deliver(&self, _request: http::Request<Bytes>) -> DeliverFuture<'_> {
        Box::pin(async { Ok(http::Response::new(Bytes::new())) })
    }
}

const CLIENTS: usize = 8;
const RUN: Duration = Duration::from_secs(3);

async fn load(smtp: &Smtp) -> f64 {
    let body = format!(
        "From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n{}",
        "0123456789abcdef\r\n".repeat(569)
    );
    assert!((10_000..10_400).contains(&body.len()));
    let sent = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (addr, body, sent) = (smtp.addr, body.clone(), sent.clone());
        set.spawn(async move {
            let mut c = RawClient::connect(addr).await;
            assert!(c.reply().await.starts_with("220"));
            c.send(b"EHLO bench\r\n").await;
            c.reply().await;
            while start.elapsed() < RUN {
                c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
                    .await;
                for _ in 0..3 {
                    c.reply().await;
                }
                c.send(format!("{body}\r\n.\r\n").as_bytes()).await;
                let r = c.reply().await;
                assert!(r.starts_with("250"), "{r}");
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    sent.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn mails_per_second() {
    let discard: Arc<dyn MailRouter> = Arc::new(UrlRouter::new(
        Arc::new(Discard),
        "discard",
        MailOptions {
            format: Format::Raw,
            ..MailOptions::default()
        },
        None,
    ));
    let smtp = start_smtp(SmtpConfig::default(), discard, None, ConnLimits::default()).await;
    let limit = load(&smtp).await;

    let mut origin = Origin::start().await;
    let mut rx = std::mem::replace(&mut origin.rx, tokio::sync::mpsc::unbounded_channel().1);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let smtp = start_smtp(
        SmtpConfig::default(),
        url_router(
            &origin,
            "/",
            None,
            MailOptions {
                secret: b"k".to_vec(),
                ..MailOptions::default()
            },
        ),
        None,
        ConnLimits::default(),
    )
    .await;
    let standalone = load(&smtp).await;
    eprintln!(
        "10 KiB mails, {CLIENTS} sessions, {RUN:?}: discard sink {limit:.0}/s, standalone JSON POST {standalone:.0}/s ({:.0}% of the limit)",
        standalone / limit * 100.0
    );
}
