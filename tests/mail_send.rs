//! Mail an app sends with one HTTP call in Postmark's shape (`POST /email`
//! on its client), through the `droid` binary: caught or delivered to its
//! own tunnels by the server inside `droid http`; sent by a public server
//! through a real relay (Python's `aiosmtpd`, speaking STARTTLS and AUTH),
//! and refused with Postmark's error shape when it should be.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use base64::Engine as _;
use common::pki::Pki;
use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `POST http://INSPECT/email` (or `/email/batch`) with `body`: the status
/// and the JSON answer.
async fn post_email(inspect: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let out = within(
        "curl",
        Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
            .args(["-H", "Content-Type: application/json"])
            .args(["-H", "Accept: application/json"])
            .args(["-H", "X-Postmark-Server-Token: anything"])
            .args(["--data-binary", &body.to_string()])
            .arg(format!("http://{inspect}{path}"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl is not installed (Debian: curl); run `bash .ci/test`");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, status) = text.rsplit_once('\n').unwrap();
    (
        status.trim().parse().unwrap(),
        serde_json::from_str(json).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// A `droid http` client and what it printed: its inspector and the mail
/// domain of its tunnel.
struct Sender {
    droid: Droid,
    inspect: SocketAddr,
    domain: String,
    /// The embedded server's SMTP address, when it has one.
    smtp: Option<SocketAddr>,
    _state: tempfile::TempDir,
}

async fn sender(app: &Origin, extra: &[&str]) -> Sender {
    let state = tempfile::tempdir().unwrap();
    let target = app.addr.port().to_string();
    let mut args = vec![
        "http",
        &target,
        "--inspect",
        "127.0.0.1:0",
        "--mail-path",
        "/inbound/mail",
    ];
    args.extend_from_slice(extra);
    let mut droid = Droid::start(&args, state.path());
    let inspect = droid
        .line("the inspector", |l| addr_after(l, "inspect http://"))
        .await;
    let (domain, smtp) = droid
        .line("the mail line", |l| {
            Some((mail_domain(l)?, addr_after(l, "smtp ")))
        })
        .await;
    Sender {
        droid,
        inspect,
        domain,
        smtp,
        _state: state,
    }
}

#[tokio::test]
async fn an_app_mails_itself_and_other_mail_is_caught_on_this_machine() {
    let mut app = origin("app").await;
    let s = sender(
        &app,
        &[
            "--http",
            "127.0.0.1:0",
            "--smtp",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
        ],
    )
    .await;
    let me = format!("support@{}", s.domain);

    // A round trip: the app sends to its own address and gets it as a POST.
    let (status, answer) = post_email(
        s.inspect,
        "/email",
        &json!({
            "From": format!("App <noreply@{}>", s.domain), "To": me, "Subject": "Grüße",
            "TextBody": "round trip", "Headers": [{"Name": "In-Reply-To", "Value": "<q1@example.com>"}],
        }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["ErrorCode"].as_u64(), answer["Message"].as_str()),
        (Some(0), Some("OK"))
    );
    assert_eq!(answer["To"], me);
    let id = answer["MessageID"].as_str().unwrap().to_string();
    let post = app.next_mail().await;
    assert_eq!(post.path, "/inbound/mail");
    let mail = post.json();
    assert_eq!(mail["subject"], "Grüße");
    assert_eq!(mail["message_id"], id);
    assert_eq!(mail["in_reply_to"][0], "q1@example.com", "replies thread");
    assert!(mail["auth"].is_null(), "mail the app sent is not checked");
    assert_eq!(mail["from"][0]["address"], format!("noreply@{}", s.domain));

    // Mail that comes by SMTP is checked by the server inside droid http
    // too, and never refused: whatever its DNS says, it says something.
    let smtp = s.smtp.unwrap();
    let said = smtplib_send(smtp, "ann@example.com", &[me.as_str()], "by smtp", "hi").await;
    assert_eq!(said.trim(), "SENT", "{said}");
    let mail = app.next_mail().await.json();
    assert!(mail["auth"]["dmarc"]["result"].is_string(), "{mail}");

    // Mail for anywhere else is caught: nothing leaves the machine.
    let (status, answer) = post_email(
        s.inspect,
        "/email",
        &json!({"From": format!("noreply@{}", s.domain), "To": "someone@example.com", "TextBody": "x"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["Message"]
            .as_str()
            .unwrap()
            .starts_with("OK: caught"),
        "{answer}"
    );
    // The inspector lists it as a mail sent, and shows it as a mail.
    let list = curl_json(&format!("http://{}/api/requests?kind=mail", s.inspect)).await["requests"]
        .clone();
    let sent = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["direction"] == "out" && e["mail"]["to"][0] == "someone@example.com")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(sent["status"], 200);
    let detail = curl_json(&format!("http://{}/api/requests/{}", s.inspect, sent["id"])).await;
    assert_eq!(detail["mail"]["text"], "x", "{detail}");
    let said = detail["response"]["body"].as_str().unwrap_or_default();
    assert!(said.contains("caught"), "{detail}");
    let received = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["direction"] == "in")
        .count();
    assert_eq!(received, 2, "the round trip and the SMTP mail: {list}");

    // Postmark's batch: one answer each, in order.
    let (status, answers) = post_email(
        s.inspect,
        "/email/batch",
        &json!([
            {"From": format!("a@{}", s.domain), "To": me, "Subject": "one", "TextBody": "1"},
            {"From": "spoofed@example.com", "To": me, "Subject": "two", "TextBody": "2"},
        ]),
    )
    .await;
    assert_eq!(status, 200, "{answers}");
    assert_eq!(answers[0]["ErrorCode"], 0);
    assert_eq!(answers[1]["ErrorCode"], 400, "{answers}");
    assert_eq!(app.next_mail().await.json()["subject"], "one");
    assert!(
        app.inbox.try_recv().is_err(),
        "the spoofed one never arrived"
    );

    // Postmark's own Node SDK, with only its host changed.
    let (ok, out) = postmark_sdk(s.inspect, &format!("sdk@{}", s.domain), &me).await;
    assert!(ok, "{out}");
    let answer: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["ErrorCode"], 0, "{answer}");
    assert_eq!(app.next_mail().await.json()["subject"], "from the SDK");
    s.droid.interrupt().await;
}

/// Sends one message with the `postmark` npm package's `ServerClient`,
/// pointed at `inspect`; whether it worked, and what it printed.
async fn postmark_sdk(inspect: SocketAddr, from: &str, to: &str) -> (bool, String) {
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/target/npm/node_modules");
    assert!(
        std::path::Path::new(modules).join("postmark").exists(),
        "the postmark npm package is not installed in target/npm; run `bash .ci/test`"
    );
    let script = r#"
const postmark = require("postmark");
const [host, from, to] = process.argv.slice(1);
const client = new postmark.ServerClient("any-token", { useHttps: false, requestHost: host });
client.sendEmail({ From: from, To: to, Subject: "from the SDK", TextBody: "hi" })
  .then((r) => console.log(JSON.stringify(r)))
  .catch((e) => { console.log("FAILED " + e.message); process.exit(1); });
"#;
    let out = within(
        "node",
        Command::new("node")
            .args(["-e", script, &inspect.to_string(), from, to])
            .env("NODE_PATH", modules)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node is not installed (Debian: nodejs); run `bash .ci/test`");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// An `aiosmtpd` relay on `127.0.0.1:PORT` that wants STARTTLS and then
/// AUTH (`relayuser`/`s3cret`); it prints `READY`, then a JSON line per
/// message (the envelope, whether it came over TLS and logged in, and the
/// bytes in base64). A recipient starting `refuse` gets `550`.
const RELAY: &str = r#"
import base64, json, ssl, sys, warnings
warnings.simplefilter("ignore")
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class Handler:
    async def handle_RCPT(self, server, session, envelope, address, options):
        if address.startswith("refuse"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"
    async def handle_DATA(self, server, session, envelope):
        print(json.dumps({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                          "tls": session.ssl is not None, "login": session.authenticated,
                          "data": base64.b64encode(envelope.original_content).decode()}), flush=True)
        return "250 2.0.0 queued as 42"
def login(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"relayuser" \
        and auth_data.password == b"s3cret"
    return AuthResult(success=ok)
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
relay = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=context,
                   require_starttls=True, authenticator=login, auth_required=True,
                   auth_require_tls=True)
relay.start()
print("READY", flush=True)
sys.stdin.read()
relay.stop()
"#;

struct Relay {
    child: Child,
    /// Its lines, read as they come: a message's line is larger than a
    /// pipe holds, and the relay must not wait for the test to read it.
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    port: u16,
}

async fn relay(pki_dir: &std::path::Path) -> Relay {
    let port = dead_port().await;
    let (cert, key) = (pki_dir.join("cert.pem"), pki_dir.join("key.pem"));
    let mut child = Command::new("python3")
        .args(["-c", RELAY, &port.to_string()])
        .arg(&cert)
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let ready = within("the relay", lines.recv()).await;
    assert_eq!(ready.as_deref(), Some("READY"));
    Relay { child, lines, port }
}

impl Relay {
    async fn next(&mut self) -> Value {
        let line = within("a message at the relay", self.lines.recv())
            .await
            .expect("the relay ended");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a message: {line}"))
    }
}

/// A public `droid server` sending through `relay_url` (trusting the test
/// CA), and a client of it: the server, and the sender.
async fn public(app: &Origin, dir: &std::path::Path, extra: &[&str]) -> (Droid, Sender) {
    let mut args = server_args(&["--smtp", "127.0.0.1:0", "--no-spool"]);
    args.extend_from_slice(extra);
    let mut server = Droid::start(&args, dir);
    let (_, control) = server.line("the addresses", server_addrs).await;
    let control = control.to_string();
    let s = sender(app, &["--server", &control]).await;
    (server, s)
}

#[tokio::test]
async fn a_public_server_sends_through_its_relay_over_starttls_with_a_login() {
    let pki = Pki::new();
    let mut app = origin("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, ca) = pki.write(dir.path());
    let mut relay = relay(dir.path()).await;
    let url = format!("smtp://relayuser:s3cret@localhost:{}", relay.port);
    let (mut server, s) = public(
        &app,
        dir.path(),
        &[
            "--mail-relay",
            &url,
            "--mail-relay-ca",
            &ca,
            "--metrics",
            "127.0.0.1:0",
            "--mail-send-rate",
            "4",
        ],
    )
    .await;
    let from = format!("Ann <ann@{}>", s.domain);
    let attachment: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&attachment);
    let (status, answer) = post_email(
        s.inspect,
        "/email",
        &json!({
            "From": from, "To": "Bob <bob@example.com>", "Cc": "cy@example.org",
            "Bcc": "hidden@example.net", "Subject": "Grüße 🚀 über alles",
            "TextBody": "Hallo", "HtmlBody": "<p>Hallo</p>", "ReplyTo": "help@example.com",
            "Attachments": [{"Name": "data.bin", "Content": b64, "ContentType": "application/octet-stream"}],
            "Tag": "welcome", "Metadata": {"user": "42"},
        }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ErrorCode"], 0);
    let got = relay.next().await;
    assert_eq!(got["tls"], true, "STARTTLS before anything else");
    assert_eq!(got["login"], true, "AUTH with the URL's login");
    assert_eq!(got["from"], format!("ann@{}", s.domain));
    let mut to: Vec<String> = serde_json::from_value(got["to"].clone()).unwrap();
    to.sort();
    assert_eq!(
        to,
        ["bob@example.com", "cy@example.org", "hidden@example.net"]
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(got["data"].as_str().unwrap())
        .unwrap();
    let envelope = droid_adapters::Envelope {
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        client_ip: String::new(),
        helo: String::new(),
        tls: false,
        tls_session: None,
        auth: None,
        received_at: 0,
    };
    let mail = droid_adapters::mail::json::parse(&raw, &envelope, usize::MAX);
    assert_eq!(mail.subject.as_deref(), Some("Grüße 🚀 über alles"));
    assert_eq!(mail.message_id.as_deref(), answer["MessageID"].as_str());
    assert!(mail.bcc.is_empty() && !String::from_utf8_lossy(&raw).contains("hidden@"));
    let sent = &mail.attachments[0];
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sent.content.as_deref().unwrap())
        .unwrap();
    assert_eq!(bytes, attachment, "the attachment arrives byte-exact");

    // The relay's refusal reaches the app, with its words.
    let (status, answer) = post_email(
        s.inspect,
        "/email",
        &json!({"From": from, "To": "refuse@example.com", "TextBody": "x"}),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["Message"].as_str().unwrap().contains("550"),
        "{answer}"
    );
    assert_ne!(answer["ErrorCode"], 0);

    // From outside the tunnel's own domain: 403, never sent.
    let (status, answer) = post_email(
        s.inspect,
        "/email",
        &json!({"From": "ceo@bank.example", "To": "bob@example.com", "TextBody": "pay"}),
    )
    .await;
    assert_eq!(
        (status, answer["ErrorCode"].as_u64()),
        (403, Some(400)),
        "{answer}"
    );

    // Past the rate (4 a minute; the spoofed one never counted, so 2
    // used): 429 after two more.
    for _ in 0..2 {
        let body = json!({"From": from, "To": "bob@example.com", "TextBody": "again"});
        assert_eq!(post_email(s.inspect, "/email", &body).await.0, 200);
        relay.next().await;
    }
    let body = json!({"From": from, "To": "bob@example.com", "TextBody": "too many"});
    let (status, answer) = post_email(s.inspect, "/email", &body).await;
    assert_eq!(
        (status, answer["ErrorCode"].as_u64()),
        (429, Some(429)),
        "{answer}"
    );

    // Every send is counted: 3 through the relay; the 550, the spoofed
    // one and the one past the rate refused.
    let metrics = server
        .line("the metrics address", |l| {
            l.split("metrics on http://")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
        })
        .await;
    let text = get(metrics, "127.0.0.1", "/metrics").await.1;
    assert!(text.contains("droid_mail_sent_relayed_total 3"), "{text}");
    assert!(text.contains("droid_mail_send_refused_total 3"), "{text}");

    // The relay gone: 503, and the app knows nothing was sent.
    relay.child.kill().await.unwrap();
    let _ = relay.child.wait().await;
    let (_s2, s2) = {
        let (server, s2) = public(
            &app,
            dir.path(),
            &["--mail-relay", &url, "--mail-relay-ca", &ca],
        )
        .await;
        (server, s2)
    };
    let body =
        json!({"From": format!("ann@{}", s2.domain), "To": "bob@example.com", "TextBody": "x"});
    let (status, answer) = post_email(s2.inspect, "/email", &body).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["Message"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{answer}"
    );
    assert!(app.inbox.try_recv().is_err());
}

#[tokio::test]
async fn a_server_without_a_relay_refuses_mail_for_other_domains_and_delivers_its_own() {
    let mut app = origin("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (_server, s) = public(&app, dir.path(), &[]).await;
    let body = json!({"From": format!("a@{}", s.domain), "To": "bob@example.com", "TextBody": "x"});
    let (status, answer) = post_email(s.inspect, "/email", &body).await;
    assert_eq!(
        (status, answer["ErrorCode"].as_u64()),
        (422, Some(405)),
        "{answer}"
    );
    assert!(
        answer["Message"].as_str().unwrap().contains("--mail-relay"),
        "{answer}"
    );
    let me = format!("me@{}", s.domain);
    let body =
        json!({"From": format!("a@{}", s.domain), "To": me, "Subject": "local", "TextBody": "x"});
    let (status, answer) = post_email(s.inspect, "/email", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(app.next_mail().await.json()["subject"], "local");
}

/// Verifies the DKIM signature of the message in base64 (`argv[1]`) with
/// dkimpy, its DNS answered with `argv[2]` (the TXT record); prints PASS or
/// FAIL, then the same for the message with its body changed.
const DKIM_VERIFY: &str = r#"
import base64, sys
import dkim
raw, record = base64.b64decode(sys.argv[1]), sys.argv[2].encode()
dns = lambda name, timeout=5: record
print("PASS" if dkim.verify(raw, dnsfunc=dns) else "FAIL")
tampered = raw.replace(b"signed body", b"forged body")
print("PASS" if dkim.verify(tampered, dnsfunc=dns) else "FAIL")
"#;

#[tokio::test]
async fn mail_apps_send_is_signed_with_dkim_and_dkimpy_verifies_it() {
    let pki = Pki::new();
    let app = origin("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, ca) = pki.write(dir.path());
    let d = dir.path().display();
    // An RSA key (rsa-sha256) and an Ed25519 one (ed25519-sha256), with the
    // TXT records a domain would publish for them.
    let rsa = sh(&format!(
        "openssl genrsa -out {d}/rsa.pem 2048 2>/dev/null && openssl rsa -in {d}/rsa.pem -pubout -outform DER 2>/dev/null | base64 -w0"
    ))
    .await;
    let ed = sh(&format!(
        "openssl genpkey -algorithm ed25519 -out {d}/ed.pem && openssl pkey -in {d}/ed.pem -pubout -outform DER | tail -c 32 | base64 -w0"
    ))
    .await;
    for (key, selector, record) in [
        ("rsa.pem", "rsa1", format!("v=DKIM1; k=rsa; p={rsa}")),
        ("ed.pem", "ed1", format!("v=DKIM1; k=ed25519; p={ed}")),
    ] {
        let mut relay = relay(dir.path()).await;
        let url = format!("smtp://relayuser:s3cret@localhost:{}", relay.port);
        let key = dir.path().join(key).display().to_string();
        let (mut server, s) = public(
            &app,
            dir.path(),
            &[
                "--mail-relay",
                &url,
                "--mail-relay-ca",
                &ca,
                "--dkim-key",
                &key,
                "--dkim-selector",
                selector,
            ],
        )
        .await;
        let said = server
            .line("the DKIM line", |l| {
                l.contains("DKIM").then(|| l.to_string())
            })
            .await;
        assert!(
            said.ends_with(&format!("{selector}._domainkey.{DOMAIN}")),
            "{said}"
        );
        let body = json!({
            "From": format!("ann@{}", s.domain), "To": "bob@example.com",
            "Subject": "signed", "TextBody": "the signed body",
        });
        let (status, answer) = post_email(s.inspect, "/email", &body).await;
        assert_eq!(status, 200, "{answer}");
        let got = relay.next().await;
        let (ok, out, err) = python(DKIM_VERIFY, &[got["data"].as_str().unwrap(), &record]).await;
        assert!(ok, "{out}{err}");
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            ["PASS", "FAIL"],
            "{selector}: {err}"
        );
        relay.child.kill().await.unwrap();
    }
}

#[tokio::test]
async fn droid_http_sends_through_a_relay_when_asked_instead_of_catching() {
    let pki = Pki::new();
    let app = origin("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (_, _, ca) = pki.write(dir.path());
    let mut relay = relay(dir.path()).await;
    let url = format!("smtp://relayuser:s3cret@localhost:{}", relay.port);
    let s = sender(
        &app,
        &[
            "--http",
            "127.0.0.1:0",
            "--smtp",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
            "--mail-relay",
            &url,
            "--mail-relay-ca",
            &ca,
        ],
    )
    .await;
    let body =
        json!({"From": format!("me@{}", s.domain), "To": "bob@example.com", "TextBody": "out"});
    let (status, answer) = post_email(s.inspect, "/email", &body).await;
    assert_eq!(
        (status, answer["Message"].as_str()),
        (200, Some("OK")),
        "{answer}"
    );
    let got = relay.next().await;
    assert_eq!(got["to"][0], "bob@example.com");
    assert_eq!(got["tls"], true);
    relay.child.kill().await.unwrap();
    s.droid.interrupt().await;
}
