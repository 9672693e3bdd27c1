//! Durability: the spool under real SMTP sessions (Python smtplib) and a
//! real hyper origin that goes away and comes back.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use droid_adapters::{
    Answer, ConnLimits, MailOptions, MailRouter, RetryPolicy, Route, SmtpConfig, Spool,
    SpoolConfig, Unavailable, UrlRouter, UrlSink,
};
use droid_core::deliver::Deliver;
use tokio_util::sync::CancellationToken;

/// A port nobody listens on (yet).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn router_to(addr: SocketAddr) -> Arc<UrlRouter> {
    let sink = UrlSink::new(&format!("http://{addr}/hook"))
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let options = MailOptions {
        path: "/hook".into(),
        secret: b"s".to_vec(),
        ..MailOptions::default()
    };
    Arc::new(UrlRouter::new(Arc::new(sink), "test", options, None))
}

fn slow_retries() -> SpoolConfig {
    // Only wake-ups (or a restart) trigger a retry within a test's lifetime.
    SpoolConfig {
        retry: RetryPolicy {
            first_delay: Duration::from_secs(3600),
            ..RetryPolicy::default()
        },
        ..SpoolConfig::default()
    }
}

/// Sends one mail with smtplib and prints the final reply to DATA.
const SEND_ONE: &str = r#"
import smtplib, sys
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    s.ehlo()
    s.mail('ann@example.com')
    s.rcpt('bob@example.com')
    code, resp = s.data('Subject: spooled\r\nMessage-ID: <m1@example.com>\r\n\r\nkeep me\r\n')
    print(code, resp.decode())
"#;

async fn send_one(smtp: &Smtp) -> (u16, String) {
    let (ok, out, err) = python(SEND_ONE, &[&smtp.port()]).await;
    assert!(ok, "{err}");
    let (code, text) = out.trim().split_once(' ').unwrap();
    (code.parse().unwrap(), text.to_string())
}

fn queued_id(reply: &str) -> String {
    reply.rsplit(' ').next().unwrap().to_string()
}

#[tokio::test]
async fn app_offline_then_online_gets_the_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let router = router_to(addr);
    let spool = Spool::open(dir.path(), slow_retries()).unwrap();
    let stop = CancellationToken::new();
    let runner = tokio::spawn(spool.clone().run(router.clone(), stop.clone()));
    let smtp = start_smtp(
        SmtpConfig::default(),
        router,
        Some(spool.clone()),
        ConnLimits::default(),
    )
    .await;

    let (code, reply) = send_one(&smtp).await;
    assert_eq!(code, 250, "{reply}");
    assert!(reply.contains("queued as"), "{reply}");
    assert_eq!(spool.len(), 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("queue")).unwrap().count(),
        2
    );

    let mut origin = Origin::start_on(addr).await;
    spool.wake("url");
    let got = origin.next().await;
    assert_eq!(got.path, "/hook");
    assert_eq!(got.header("webhook-id"), queued_id(&reply));
    assert_eq!(got.json()["subject"], "spooled");
    wait_until("spool empty", || spool.is_empty()).await;
    assert_eq!(
        std::fs::read_dir(dir.path().join("queue")).unwrap().count(),
        0
    );
    // A second wake finds nothing: exactly once.
    spool.wake_all();
    assert_eq!(origin.count.load(Ordering::SeqCst), 1);
    stop.cancel();
    runner.await.unwrap();
}

#[tokio::test]
async fn restart_delivers_what_the_spool_holds() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let id;
    {
        // First life: the app is down, the message is spooled, the process "dies".
        let spool = Spool::open(dir.path(), slow_retries()).unwrap();
        let smtp = start_smtp(
            SmtpConfig::default(),
            router_to(addr),
            Some(spool.clone()),
            ConnLimits::default(),
        )
        .await;
        let (code, reply) = send_one(&smtp).await;
        assert_eq!(code, 250, "{reply}");
        id = queued_id(&reply);
        smtp.shutdown.cancel();
        smtp.task.await.unwrap();
    }
    assert!(dir.path().join("queue").join(format!("{id}.eml")).exists());
    assert!(dir.path().join("queue").join(format!("{id}.json")).exists());

    // Second life: a new Spool on the same directory, the app is up.
    let mut origin = Origin::start_on(addr).await;
    let spool = Spool::open(dir.path(), slow_retries()).unwrap();
    assert_eq!(spool.len(), 1);
    let stop = CancellationToken::new();
    let runner = tokio::spawn(spool.clone().run(router_to(addr), stop.clone()));
    let got = origin.next().await;
    assert_eq!(got.header("webhook-id"), id);
    assert_eq!(got.json()["message_id"], "m1@example.com");
    assert!(signed_with(&got, b"s"));
    wait_until("spool empty", || spool.is_empty()).await;
    assert_eq!(origin.count.load(Ordering::SeqCst), 1);
    stop.cancel();
    runner.await.unwrap();
}

#[tokio::test]
async fn app_4xx_during_retries_dead_letters_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut origin = Origin::start().await;
    origin.set_answer(503, "down for maintenance");
    let router = router_to(origin.addr);
    let spool = Spool::open(dir.path(), slow_retries()).unwrap();
    let stop = CancellationToken::new();
    let runner = tokio::spawn(spool.clone().run(router.clone(), stop.clone()));
    let smtp = start_smtp(
        SmtpConfig::default(),
        router,
        Some(spool.clone()),
        ConnLimits::default(),
    )
    .await;
    let (code, reply) = send_one(&smtp).await;
    assert_eq!(code, 250, "{reply}");
    let first = origin.next().await;
    origin.set_answer(410, "mailbox closed\nmore detail");
    spool.wake("url");
    let second = origin.next().await;
    assert_eq!(first.header("webhook-id"), second.header("webhook-id"));
    wait_until("spool empty", || spool.is_empty()).await;
    let id = queued_id(&reply);
    let reason =
        std::fs::read_to_string(dir.path().join("dead").join(format!("{id}.reason.txt"))).unwrap();
    assert!(
        reason.contains("410") && reason.contains("mailbox closed"),
        "{reason}"
    );
    assert!(dir.path().join("dead").join(format!("{id}.eml")).exists());
    assert!(dir.path().join("dead").join(format!("{id}.json")).exists());
    stop.cancel();
    runner.await.unwrap();
}

/// The destination "otter" changes hands: the spooled message belongs to
/// the old owner and must never reach the new one.
struct Handover {
    current_owner: Mutex<String>,
    sink: Arc<dyn Deliver>,
}

impl MailRouter for Handover {
    fn resolve<'a>(
        &'a self,
        _recipient: &'a str,
    ) -> Answer<'a, Result<Option<Route>, Unavailable>> {
        Box::pin(std::future::ready(Ok(Some(Route {
            owner: self.current_owner.lock().unwrap().clone(),
            destination: "otter".into(),
            sink: self.sink.clone(),
            options: MailOptions::default(),
        }))))
    }
}

impl droid_adapters::Owners for Handover {
    fn sink<'a>(&'a self, owner: &'a str) -> Answer<'a, Option<Arc<dyn Deliver>>> {
        let current = *self.current_owner.lock().unwrap() == owner;
        Box::pin(std::future::ready(current.then(|| self.sink.clone())))
    }
}

#[tokio::test]
async fn owner_that_never_returns_gets_dead_lettered_not_the_new_holder() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    origin.set_answer(502, "tunnel offline");
    let router = Arc::new(Handover {
        current_owner: Mutex::new("old-owner".into()),
        sink: Arc::new(UrlSink::new(&origin.url("/")).unwrap()),
    });
    let config = SpoolConfig {
        retry: RetryPolicy {
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(40),
            max_age: Duration::from_millis(400),
        },
        ..SpoolConfig::default()
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    let smtp = start_smtp(
        SmtpConfig::default(),
        router.clone(),
        Some(spool.clone()),
        ConnLimits::default(),
    )
    .await;
    let (code, reply) = send_one(&smtp).await;
    assert_eq!(code, 250, "{reply}");
    let during_data = origin.count.load(Ordering::SeqCst);
    // The name now belongs to someone else, whose app would say 200.
    *router.current_owner.lock().unwrap() = "new-owner".into();
    origin.set_answer(200, "ok");
    let stop = CancellationToken::new();
    let runner = tokio::spawn(spool.clone().run(router.clone(), stop.clone()));
    spool.wake("new-owner");
    spool.wake_all();
    let id = queued_id(&reply);
    let reason_path = dir.path().join("dead").join(format!("{id}.reason.txt"));
    wait_until("dead letter", || reason_path.exists()).await;
    let reason = std::fs::read_to_string(&reason_path).unwrap();
    assert!(reason.contains("owner offline"), "{reason}");
    assert_eq!(origin.count.load(Ordering::SeqCst), during_data);
    stop.cancel();
    runner.await.unwrap();
}

#[tokio::test]
async fn spool_full_or_disabled_answers_451() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let spool = Spool::open(
        dir.path(),
        SpoolConfig {
            max_messages: 0,
            ..SpoolConfig::default()
        },
    )
    .unwrap();
    let smtp = start_smtp(
        SmtpConfig::default(),
        router_to(addr),
        Some(spool),
        ConnLimits::default(),
    )
    .await;
    let (code, _) = send_one(&smtp).await;
    assert_eq!(code, 451);
    let smtp = start_smtp(
        SmtpConfig::default(),
        router_to(addr),
        None,
        ConnLimits::default(),
    )
    .await;
    let (code, _) = send_one(&smtp).await;
    assert_eq!(code, 451);
}

#[tokio::test]
async fn half_written_files_are_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queue")).unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    std::fs::write(dir.path().join("queue/01ORPHAN.eml"), b"Subject: x\r\n\r\n").unwrap();
    std::fs::write(dir.path().join("tmp/01X.eml.123"), b"partial").unwrap();
    std::fs::write(dir.path().join("queue/01BAD.json"), b"{not json").unwrap();
    let spool = Spool::open(dir.path(), SpoolConfig::default()).unwrap();
    assert_eq!(spool.len(), 0);
    assert!(!dir.path().join("queue/01ORPHAN.eml").exists());
    assert!(!dir.path().join("tmp/01X.eml.123").exists());
    assert!(dir.path().join("dead/01BAD.json").exists());
}

#[cfg(unix)]
#[tokio::test]
async fn only_the_owner_may_enter_the_spool() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    Spool::open(&spool_dir, SpoolConfig::default()).unwrap();
    let mode = std::fs::metadata(&spool_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "spool mode {:o}", mode & 0o777);
}

/// Each recipient's domain is its own owner (`x@abandoned.test` belongs to
/// `abandoned`), and every app is down.
struct ByDomain {
    sink: Arc<dyn Deliver>,
}

impl MailRouter for ByDomain {
    fn resolve<'a>(&'a self, recipient: &'a str) -> Answer<'a, Result<Option<Route>, Unavailable>> {
        let domain = recipient.rsplit('@').next().unwrap_or_default();
        let owner = domain.trim_end_matches(".test").to_string();
        Box::pin(std::future::ready(Ok(Some(Route {
            owner: owner.clone(),
            destination: owner,
            sink: self.sink.clone(),
            options: MailOptions::default(),
        }))))
    }
}

impl droid_adapters::Owners for ByDomain {
    fn sink<'a>(&'a self, _owner: &'a str) -> Answer<'a, Option<Arc<dyn Deliver>>> {
        Box::pin(std::future::ready(Some(self.sink.clone())))
    }
}

/// Sends `n` mails to `rcpt`, each on a connection of its own (a sender
/// that hears 451 comes back later); prints each DATA reply code.
const SEND_MANY: &str = r#"
import smtplib, sys
for i in range(int(sys.argv[3])):
    with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
        s.ehlo()
        s.mail('flood@example.com')
        s.rcpt(sys.argv[2])
        try:
            code, resp = s.data('Subject: %d\r\n\r\nflood\r\n' % i)
            print(code)
        except smtplib.SMTPDataError as e:
            print(e.smtp_code)
"#;

#[tokio::test]
async fn one_owner_flooded_with_mail_fills_its_share_of_the_spool_not_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let router = Arc::new(ByDomain {
        sink: Arc::new(UrlSink::new(&format!("http://{}/hook", free_port())).unwrap()),
    });
    let config = SpoolConfig {
        max_messages_per_owner: 20,
        ..slow_retries()
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    let smtp = start_smtp(
        SmtpConfig::default(),
        router,
        Some(spool.clone()),
        ConnLimits::default(),
    )
    .await;
    // The attack: mail to an abandoned name, as fast as a script sends it.
    let (ok, out, err) = python(SEND_MANY, &[&smtp.port(), "x@abandoned.test", "50"]).await;
    assert!(ok, "{err}");
    let codes: Vec<&str> = out.lines().collect();
    assert_eq!(codes[..20], ["250"; 20], "its share is kept");
    assert_eq!(
        codes[20..],
        ["451"; 30],
        "past its share, its own mail waits with the sender"
    );
    // Another tenant whose app is down still has its mail kept.
    let (ok, out, err) = python(SEND_MANY, &[&smtp.port(), "y@victim.test", "5"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["250"; 5]);
    assert_eq!(spool.len(), 25);
}
