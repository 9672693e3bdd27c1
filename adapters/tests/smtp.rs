//! The SMTP adapter end to end: real clients (Python smtplib, raw tokio
//! sockets) on 127.0.0.1, a real hyper origin behind a UrlSink.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use common::*;
use droid_adapters::{
    Answer, ConnLimits, Format, MailOptions, MailRouter, Route, SmtpConfig, Unavailable, UrlSink,
    verify,
};
use droid_core::deliver::Deliver;

fn options(secret: &[u8]) -> MailOptions {
    MailOptions {
        secret: secret.to_vec(),
        ..MailOptions::default()
    }
}

async fn simple(origin: &Origin, config: SmtpConfig, domain: Option<&str>) -> Smtp {
    start_smtp(
        config,
        url_router(origin, "/inbound", domain, options(b"k")),
        None,
        ConnLimits::default(),
    )
    .await
}

const SEND_BASIC: &str = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m['From'] = 'Ann Example <ann@example.com>'
m['To'] = 'bob@example.com, Carl <carl@example.com>'
m['Subject'] = 'hello'
m.set_content('Hi all\n\nOn Mon, Bob wrote:\n> old stuff\n')
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    print(s.send_message(m, to_addrs=sys.argv[2].split(',')))
"#;

#[tokio::test]
async fn multi_recipient_mail_with_bcc_and_plus_address() {
    let mut origin = Origin::start().await;
    let smtp = simple(&origin, SmtpConfig::default(), None).await;
    let (ok, out, err) = python(
        SEND_BASIC,
        &[
            &smtp.port(),
            "bob@example.com,carl@example.com,dave+x1@example.com",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "{}");
    let got = origin.next().await;
    assert_eq!(got.path, "/inbound");
    assert_eq!(got.header("content-type"), "application/json");
    let j = got.json();
    assert_eq!(j["subject"], "hello");
    assert_eq!(j["from"][0]["name"], "Ann Example");
    assert_eq!(j["envelope"]["mail_from"], "ann@example.com");
    assert_eq!(j["envelope"]["rcpt_to"].as_array().unwrap().len(), 3);
    assert_eq!(j["envelope"]["client_ip"], "127.0.0.1");
    assert_eq!(j["to"].as_array().unwrap().len(), 2);
    assert_eq!(j["bcc"][0]["address"], "dave+x1@example.com");
    assert_eq!(j["recipients"][2]["plus"], "x1");
    assert_eq!(j["reply_text"], "Hi all");
    assert!(j["html"].is_null());
    assert_eq!(origin.count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn signature_verifies() {
    let mut origin = Origin::start().await;
    let smtp = start_smtp(
        SmtpConfig::default(),
        url_router(&origin, "/", None, options(b"topsecret")),
        None,
        ConnLimits::default(),
    )
    .await;
    let (ok, _, err) = python(SEND_BASIC, &[&smtp.port(), "bob@example.com"]).await;
    assert!(ok, "{err}");
    let got = origin.next().await;
    let ts = got.header("webhook-timestamp");
    let sig = got.header("webhook-signature");
    let id = got.header("webhook-id");
    assert_eq!(got.header("webhook-id").len(), 26);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts.parse::<u64>().unwrap().abs_diff(now) < 60);
    assert!(verify(b"topsecret", &id, &ts, &got.body, &sig));
    assert!(!verify(b"wrong", &id, &ts, &got.body, &sig));
    assert!(!verify(b"topsecret", "another-id", &ts, &got.body, &sig));
    let mut tampered = got.body.to_vec();
    tampered[0] = b' ';
    assert!(!verify(b"topsecret", &id, &ts, &tampered, &sig));
}

#[tokio::test]
async fn utf8_subject_and_attachments() {
    let mut origin = Origin::start().await;
    let smtp = simple(&origin, SmtpConfig::default(), None).await;
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m['From'] = 'Jürgen Müller <jm@example.com>'
m['To'] = 'Zoë <zoe@example.com>'
m['Subject'] = 'Grüße aus Köln 😀 — ünïcödé'
m.set_content('Hallo Zoë,\nschöne Grüße.\n')
m.add_alternative('<p>Hallo <b>Zoë</b></p>', subtype='html')
m.add_attachment(bytes(range(256)), maintype='application', subtype='octet-stream', filename='binär.bin')
m.add_attachment('text file ✓\n', filename='notes.txt')
m.add_attachment(b'%PDF-1.4 fake', maintype='application', subtype='pdf', filename='résumé.pdf')
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    s.send_message(m)
"#;
    let (ok, _, err) = python(script, &[&smtp.port()]).await;
    assert!(ok, "{err}");
    let j = origin.next().await.json();
    assert_eq!(j["subject"], "Grüße aus Köln 😀 — ünïcödé");
    assert_eq!(j["from"][0]["name"], "Jürgen Müller");
    assert_eq!(j["to"][0]["name"], "Zoë");
    assert_eq!(
        j["text"].as_str().unwrap().trim_end(),
        "Hallo Zoë,\r\nschöne Grüße."
    );
    assert!(j["html"].as_str().unwrap().contains("<b>Zoë</b>"));
    let atts = j["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 3);
    assert_eq!(atts[0]["filename"], "binär.bin");
    let bin = base64::engine::general_purpose::STANDARD
        .decode(atts[0]["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(bin, (0u8..=255).collect::<Vec<u8>>());
    assert_eq!(atts[0]["size"], 256);
    assert_eq!(atts[1]["content_type"], "text/plain");
    let txt = base64::engine::general_purpose::STANDARD
        .decode(atts[1]["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(txt).unwrap(), "text file ✓\r\n"); // canonical CRLF on the wire
    assert_eq!(atts[2]["filename"], "résumé.pdf");
    assert_eq!(atts[2]["content_type"], "application/pdf");
    assert_eq!(atts[2]["inline"], false);
}

#[tokio::test]
async fn over_the_size_limit_is_552() {
    let mut origin = Origin::start().await;
    let config = SmtpConfig {
        max_message_size: 10_000,
        ..SmtpConfig::default()
    };
    let smtp = simple(&origin, config, None).await;
    // smtplib sends SIZE= because EHLO advertises it: refused at MAIL FROM.
    let script = r#"
import smtplib, sys
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    s.ehlo()
    print('SIZE', s.esmtp_features.get('size'))
    try:
        s.sendmail('a@example.com', ['b@example.com'], 'Subject: big\r\n\r\n' + 'x' * 20000)
        print('accepted')
    except smtplib.SMTPSenderRefused as e:
        print('refused', e.smtp_code)
"#;
    let (ok, out, err) = python(script, &[&smtp.port()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("SIZE 10000"), "{out}");
    assert!(out.contains("refused 552"), "{out}");

    // Without SIZE=, the message is read, dropped, and refused after DATA;
    // the session goes on.
    let mut c = RawClient::connect(smtp.addr).await;
    assert!(c.reply().await.starts_with("220"));
    c.send(b"EHLO raw\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        .await;
    assert!(c.reply().await.contains("SIZE 10000"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("354"));
    let big = format!(
        "Subject: big\r\n\r\n{}\r\n.\r\n",
        "y".repeat(100).repeat(300)
    );
    c.send(big.as_bytes()).await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        .await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("354"));
    c.send(b"Subject: small\r\n\r\nok\r\n.\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("221"));
    assert_eq!(origin.next().await.json()["subject"], "small");
}

#[tokio::test]
async fn malformed_message_is_delivered_anyway() {
    let mut origin = Origin::start().await;
    let smtp = simple(&origin, SmtpConfig::default(), None).await;
    let script = r#"
import smtplib, sys
bad = [
  b'no header line at all\r\njust text\r\n',
  b'Subject: =?utf-8?q?broken=ZZ?=\r\nContent-Type: multipart/mixed; boundary="never"\r\nContent-Transfer-Encoding: base64\r\n\r\n--nope\r\n\xff\xfe binary \x00 junk\r\n',
  b'From: <<<@@@>>>\r\nTo: ,,,,\r\nDate: yesterday-ish\r\nContent-Type: text/plain; charset=no-such-charset\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\na == b =XX =\r\n',
]
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    for m in bad:
        s.sendmail('a@example.com', ['b@example.com'], m)
print('ok')
"#;
    let (ok, out, err) = python(script, &[&smtp.port()]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "ok");
    let first = origin.next().await.json();
    assert!(first["parse_error"].is_string());
    assert!(first["text"].as_str().unwrap().contains("just text"));
    let second = origin.next().await.json();
    assert!(second["raw_size"].as_u64().unwrap() > 0);
    let third = origin.next().await.json();
    assert!(third["text"].as_str().unwrap().contains("a == b"));
}

#[tokio::test]
async fn null_sender_bounce_is_accepted() {
    let mut origin = Origin::start().await;
    let smtp = simple(&origin, SmtpConfig::default(), None).await;
    let script = r#"
import smtplib, sys
msg = 'From: MAILER-DAEMON@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; example.com\r\n\r\nFinal-Recipient: rfc822; x@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n'
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    s.sendmail('', ['bounces+abc123@example.com'], msg)
print('ok')
"#;
    let (ok, _, err) = python(script, &[&smtp.port()]).await;
    assert!(ok, "{err}");
    let j = origin.next().await.json();
    assert_eq!(j["envelope"]["mail_from"], "");
    assert_eq!(j["recipients"][0]["plus"], "abc123");
    assert_eq!(j["subject"], "Undelivered Mail Returned to Sender");
}

#[tokio::test]
async fn pipelined_commands_and_bad_sequences() {
    let mut origin = Origin::start().await;
    let smtp = simple(&origin, SmtpConfig::default(), Some("example.com")).await;
    let mut c = RawClient::connect(smtp.addr).await;
    assert!(c.reply().await.starts_with("220"));
    // Bad sequences first, each with a clear reply.
    c.send(b"MAIL FROM:<a@example.com>\r\n").await;
    assert!(c.reply().await.starts_with("503"));
    c.send(b"EHLO pipeliner\r\n").await;
    let ehlo = c.reply().await;
    for ext in ["PIPELINING", "SIZE 26214400", "8BITMIME", "SMTPUTF8"] {
        assert!(ehlo.contains(ext), "{ehlo}");
    }
    c.send(b"RCPT TO:<b@example.com>\r\nDATA\r\nBOGUS\r\nMAIL FROM:<broken\r\n")
        .await;
    assert!(c.reply().await.starts_with("503"));
    assert!(c.reply().await.starts_with("503"));
    assert!(c.reply().await.starts_with("500"));
    assert!(c.reply().await.starts_with("501"));
    // One write: the whole transaction, SMTPUTF8 and SIZE parameters, bare LF.
    c.send(
        "MAIL FROM:<josé@example.com> SMTPUTF8 SIZE=100 BODY=8BITMIME\nRCPT TO:<b@example.com>\r\nRCPT TO:<x@elsewhere.org>\r\nRCPT TO:<c@EXAMPLE.com>\r\nDATA\r\n"
            .as_bytes(),
    )
    .await;
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("550"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("354"));
    c.send(
        "Subject: pipelined\r\n\r\n..dot-stuffed line\r\nbody ü\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n"
            .as_bytes(),
    )
    .await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("250"));
    assert!(c.reply().await.starts_with("221"));
    let j = origin.next().await.json();
    assert_eq!(j["envelope"]["mail_from"], "josé@example.com");
    assert_eq!(
        j["envelope"]["rcpt_to"],
        serde_json::json!(["b@example.com", "c@EXAMPLE.com"])
    );
    assert_eq!(j["text"], ".dot-stuffed line\r\nbody ü\r\n");
}

#[tokio::test]
async fn foreign_domain_is_550() {
    let origin = Origin::start().await;
    let smtp = simple(&origin, SmtpConfig::default(), Some("example.com")).await;
    let script = r#"
import smtplib, sys
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    try:
        s.sendmail('a@spammer.test', ['victim@other.org'], 'Subject: relay?\r\n\r\nx\r\n')
        print('relayed')
    except smtplib.SMTPRecipientsRefused as e:
        print('refused', e.recipients['victim@other.org'][0])
"#;
    let (ok, out, err) = python(script, &[&smtp.port()]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "refused 550");
    assert_eq!(origin.count.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn recipient_over_the_limit_is_452() {
    let mut origin = Origin::start().await;
    let config = SmtpConfig {
        max_recipients: 2,
        ..SmtpConfig::default()
    };
    let smtp = simple(&origin, config, None).await;
    let script = r#"
import smtplib, sys
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    refused = s.sendmail('a@example.com', ['r1@example.com', 'r2@example.com', 'r3@example.com'], 'Subject: many\r\n\r\nx\r\n')
    print(refused['r3@example.com'][0], len(refused))
"#;
    let (ok, out, err) = python(script, &[&smtp.port()]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "452 1");
    let j = origin.next().await.json();
    assert_eq!(
        j["envelope"]["rcpt_to"],
        serde_json::json!(["r1@example.com", "r2@example.com"])
    );
}

#[tokio::test]
async fn app_4xx_during_data_is_550() {
    let origin = Origin::start().await;
    origin.set_answer(422, "unknown mailbox: nobody\nstack trace...");
    let smtp = simple(&origin, SmtpConfig::default(), None).await;
    let script = r#"
import smtplib, sys
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    try:
        s.sendmail('a@example.com', ['nobody@example.com'], 'Subject: x\r\n\r\nx\r\n')
        print('accepted')
    except smtplib.SMTPDataError as e:
        print(e.smtp_code, e.smtp_error.decode())
"#;
    let (ok, out, err) = python(script, &[&smtp.port()]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "550 5.7.1 unknown mailbox: nobody");
}

#[tokio::test]
async fn app_5xx_without_spool_is_451() {
    let origin = Origin::start().await;
    origin.set_answer(503, "busy");
    let smtp = simple(&origin, SmtpConfig::default(), None).await;
    let script = r#"
import smtplib, sys
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    try:
        s.sendmail('a@example.com', ['x@example.com'], 'Subject: x\r\n\r\nx\r\n')
        print('accepted')
    except smtplib.SMTPDataError as e:
        print(e.smtp_code)
"#;
    let (ok, out, err) = python(script, &[&smtp.port()]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "451");
}

/// Routes by domain: `a.test` and `b.test` are two destinations.
struct TwoDestinations {
    a: Route,
    b: Route,
}

impl MailRouter for TwoDestinations {
    fn resolve<'a>(&'a self, recipient: &'a str) -> Answer<'a, Result<Option<Route>, Unavailable>> {
        let route = match recipient.rsplit_once('@').map(|(_, domain)| domain) {
            Some("a.test") => Some(self.a.clone()),
            Some("b.test") => Some(self.b.clone()),
            _ => None,
        };
        Box::pin(std::future::ready(Ok(route)))
    }
}

impl droid_adapters::Owners for TwoDestinations {
    fn sink<'a>(&'a self, owner: &'a str) -> Answer<'a, Option<Arc<dyn Deliver>>> {
        let sink = match owner {
            "owner-a" => Some(self.a.sink.clone()),
            "owner-b" => Some(self.b.sink.clone()),
            _ => None,
        };
        Box::pin(std::future::ready(sink))
    }
}

fn route(origin: &Origin, owner: &str, format: Format) -> Route {
    Route {
        owner: owner.into(),
        destination: format!("dest-{owner}"),
        sink: Arc::new(UrlSink::new(&origin.url("/")).unwrap()),
        options: MailOptions {
            format,
            secret: owner.as_bytes().to_vec(),
            ..MailOptions::default()
        },
    }
}

#[tokio::test]
async fn each_destination_gets_the_message_once_with_its_own_recipients() {
    let mut a = Origin::start().await;
    let mut b = Origin::start().await;
    let router = Arc::new(TwoDestinations {
        a: route(&a, "owner-a", Format::Multipart),
        b: route(&b, "owner-b", Format::Raw),
    });
    let smtp = start_smtp(SmtpConfig::default(), router, None, ConnLimits::default()).await;
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m['From'] = 'ann@example.com'
m['To'] = 'x@a.test, y@a.test, z@b.test'
m['Subject'] = 'fan out'
m.set_content('hello')
m.add_attachment(b'\x00\x01data', maintype='application', subtype='octet-stream', filename='d.bin')
with smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=30) as s:
    s.send_message(m)
"#;
    let (ok, _, err) = python(script, &[&smtp.port()]).await;
    assert!(ok, "{err}");
    let got_a = a.next().await;
    let got_b = b.next().await;
    // Multipart for a: SendGrid/Mailgun-like fields and a file part.
    let ct = got_a.header("content-type");
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    let body = String::from_utf8_lossy(&got_a.body);
    assert!(body.contains("name=\"subject\"\r\n\r\nfan out\r\n"));
    assert!(body.contains(
        "name=\"envelope\"\r\n\r\n{\"from\":\"ann@example.com\",\"to\":[\"x@a.test\",\"y@a.test\"]}"
    ));
    assert!(body.contains("name=\"attachment1\"; filename=\"d.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n\u{0}\u{1}data\r\n"));
    assert!(signed_with(&got_a, b"owner-a"));
    // Raw for b: the message itself, envelope in headers, only b's recipient.
    assert_eq!(got_b.header("content-type"), "message/rfc822");
    assert_eq!(got_b.header("droid-rcpt-to"), "z@b.test");
    assert_eq!(got_b.header("droid-mail-from"), "ann@example.com");
    assert!(String::from_utf8_lossy(&got_b.body).contains("Subject: fan out"));
    assert_ne!(got_a.header("webhook-id"), got_b.header("webhook-id"));
    assert_eq!(a.count.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(b.count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn per_ip_limit_answers_421() {
    let origin = Origin::start().await;
    let smtp = start_smtp(
        SmtpConfig::default(),
        url_router(&origin, "/", None, options(b"k")),
        None,
        ConnLimits {
            max_connections: 10,
            max_per_ip: 2,
        },
    )
    .await;
    let mut c1 = RawClient::connect(smtp.addr).await;
    let mut c2 = RawClient::connect(smtp.addr).await;
    assert!(c1.reply().await.starts_with("220"));
    assert!(c2.reply().await.starts_with("220"));
    let mut c3 = RawClient::connect(smtp.addr).await;
    assert!(c3.reply().await.starts_with("421"));
    c1.send(b"QUIT\r\n").await;
    assert!(c1.reply().await.starts_with("221"));
    assert_eq!(c1.reply().await, ""); // closed
    // The slot is free again once the session ended.
    let mut ok = false;
    for _ in 0..100 {
        let mut c = RawClient::connect(smtp.addr).await;
        if c.reply().await.starts_with("220") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ok);
}

#[tokio::test]
async fn shutdown_says_421_and_drains() {
    let origin = Origin::start().await;
    let smtp = simple(&origin, SmtpConfig::default(), None).await;
    let mut c = RawClient::connect(smtp.addr).await;
    assert!(c.reply().await.starts_with("220"));
    smtp.shutdown.cancel();
    assert!(c.reply().await.starts_with("421"));
    tokio::time::timeout(Duration::from_secs(10), smtp.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn idle_client_is_dropped() {
    let origin = Origin::start().await;
    let config = SmtpConfig {
        idle_timeout: Duration::from_millis(200),
        ..SmtpConfig::default()
    };
    let smtp = simple(&origin, config, None).await;
    let mut c = RawClient::connect(smtp.addr).await;
    assert!(c.reply().await.starts_with("220"));
    assert!(c.reply().await.starts_with("421 4.4.2"));
}

/// Sends `n` mails one after another on one session; returns the replies.
async fn mails_in_a_row(smtp: &Smtp, n: usize) -> Vec<String> {
    let mut c = RawClient::connect(smtp.addr).await;
    assert!(c.reply().await.starts_with("220"));
    c.send(b"EHLO test\r\n").await;
    c.reply().await;
    let mut replies = Vec::new();
    for i in 0..n {
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
            .await;
        for _ in 0..3 {
            c.reply().await;
        }
        c.send(format!("Subject: mail {i}\r\n\r\nbody {i}\r\n.\r\n").as_bytes())
            .await;
        replies.push(c.reply().await);
    }
    c.send(b"QUIT\r\n").await;
    replies
}

#[tokio::test]
async fn mails_in_a_row_share_one_connection_to_the_app() {
    let mut origin = Origin::start().await;
    let smtp = simple(&origin, SmtpConfig::default(), None).await;
    for reply in mails_in_a_row(&smtp, 10).await {
        assert!(reply.starts_with("250 2.0.0 Ok: delivered"), "{reply}");
    }
    for i in 0..10 {
        assert_eq!(origin.next().await.json()["subject"], format!("mail {i}"));
    }
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
}

/// An app that answers the first request on each connection and closes
/// the connection when the next one arrives, without answering it: what an
/// app that closes idle keep-alive connections does when a request comes
/// just as it closes. Sends each answered request's `Subject` (the JSON
/// body's) on the channel.
async fn app_that_drops_kept_connections() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut io = tokio::io::BufReader::new(io);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                io.read_exact(&mut body).await.unwrap();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let _ = tx.send(json["subject"].as_str().unwrap_or_default().to_string());
                io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                // The next request gets no answer: the connection closes.
                let mut next = [0u8; 1];
                let _ = io.read(&mut next).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn a_kept_connection_the_app_drops_loses_no_mail() {
    let (addr, mut answered) = app_that_drops_kept_connections().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = droid_adapters::SpoolConfig::default();
    config.retry.first_delay = Duration::from_millis(20);
    config.retry.max_delay = Duration::from_millis(100);
    let spool = droid_adapters::Spool::open(dir.path(), config).unwrap();
    let sink = UrlSink::new(&format!("http://{addr}/inbound"))
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let router = Arc::new(droid_adapters::UrlRouter::new(
        Arc::new(sink),
        "app",
        options(b"k"),
        None,
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let retries = tokio::spawn(spool.clone().run(router.clone(), stop.clone()));
    let smtp = start_smtp(
        SmtpConfig::default(),
        router,
        Some(spool.clone()),
        ConnLimits::default(),
    )
    .await;
    // The second mail goes out on the kept connection, which the app
    // closes: it is spooled (or, had the connection been dropped first,
    // delivered on a new one), never lost, and never answered 250 before
    // one of the two.
    for reply in mails_in_a_row(&smtp, 3).await {
        assert!(reply.starts_with("250 2.0.0 Ok: "), "{reply}");
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let subject = tokio::time::timeout(Duration::from_secs(20), answered.recv())
            .await
            .expect("a mail never reached the app")
            .unwrap();
        got.push(subject);
    }
    got.sort();
    assert_eq!(got, ["mail 0", "mail 1", "mail 2"]);
    stop.cancel();
    retries.await.unwrap();
}

/// Opens a transaction on a raw client up to `354`.
async fn in_data(addr: std::net::SocketAddr, rcpt: &str) -> RawClient {
    let mut c = RawClient::connect(addr).await;
    assert!(c.reply().await.starts_with("220"));
    c.send(format!("EHLO x\r\nMAIL FROM:<a@x.org>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes())
        .await;
    for _ in 0..3 {
        let r = c.reply().await;
        assert!(r.starts_with("250"), "{r}");
    }
    assert!(c.reply().await.starts_with("354"));
    c
}

#[tokio::test]
async fn messages_being_received_share_a_memory_budget_and_past_it_get_452() {
    let mut origin = Origin::start().await;
    let config = SmtpConfig {
        // The slow one's 400 KiB take 512 KiB (its buffer doubles as it grows).
        message_memory: 768 * 1024,
        ..SmtpConfig::default()
    };
    let smtp = simple(&origin, config, None).await;
    // One sender holds 400 KiB of a message it has not finished.
    let mut slow = in_data(smtp.addr, "slow@example.com").await;
    let line = format!("{}\r\n", "a".repeat(998));
    let held = line.repeat(400 * 1024 / line.len());
    slow.send(format!("Subject: slow\r\n\r\n{held}").as_bytes())
        .await;
    // Another's 300 KiB does not fit beside it: 452, and it keeps its mail.
    let mut other = in_data(smtp.addr, "other@example.com").await;
    let body = line.repeat(300 * 1024 / line.len());
    other
        .send(format!("Subject: other\r\n\r\n{body}.\r\n").as_bytes())
        .await;
    let reply = other.reply().await;
    assert!(reply.starts_with("452 4.3.1"), "{reply}");
    // The session goes on, and a small mail fits.
    other
        .send(b"MAIL FROM:<a@x.org>\r\nRCPT TO:<other@example.com>\r\nDATA\r\n")
        .await;
    for _ in 0..2 {
        assert!(other.reply().await.starts_with("250"));
    }
    assert!(other.reply().await.starts_with("354"));
    other.send(b"Subject: small\r\n\r\nhi\r\n.\r\n").await;
    assert!(other.reply().await.starts_with("250"));
    assert_eq!(origin.next().await.json()["subject"], "small");
    // The slow one finishes: delivered whole.
    slow.send(b".\r\n").await;
    let reply = slow.reply().await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(origin.next().await.json()["subject"], "slow");
}
