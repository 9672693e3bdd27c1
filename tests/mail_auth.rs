//! Whether received mail can be trusted: SPF, DKIM and DMARC checked by a
//! public `droid server` against a DNS server the test runs (Python's
//! `dnslib`, publishing the senders' records), with mail signed by
//! `dkimpy` and sent by `smtplib`. The app gets the verdicts; `--mail-auth
//! enforce` refuses what DMARC says to reject; a DNS that is gone gives
//! `temperror`, and the mail still arrives.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A DNS server on `127.0.0.1:PORT` (UDP and TCP) answering TXT queries
/// from the JSON map in `argv[2]` (name to a list of strings, each split
/// in 255-byte pieces), NXDOMAIN otherwise; prints READY.
const DNS: &str = r#"
import json, sys
from dnslib import RR, QTYPE, TXT
from dnslib.server import DNSServer, BaseResolver
port, records = int(sys.argv[1]), json.loads(sys.argv[2])
class Records(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if request.q.qtype == QTYPE.TXT and name in records:
            for text in records[name]:
                pieces = [text[i:i + 255] for i in range(0, len(text), 255)]
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(pieces), ttl=60))
        elif name not in records:
            reply.header.rcode = 3
        return reply
class Quiet:
    def __getattr__(self, name):
        return lambda *args: None
for tcp in (False, True):
    DNSServer(Records(), port=port, address="127.0.0.1", tcp=tcp, logger=Quiet()).start_thread()
print("READY", flush=True)
sys.stdin.read()
"#;

/// Signs a message from `sender@DOMAIN` with dkimpy (selector `sel`, the
/// key in `argv[3]`), changes its body after signing when `argv[4]` is
/// `tampered`, and sends it with smtplib to `127.0.0.1:PORT`; prints
/// `SENT`, or `REFUSED code message`.
const SEND_SIGNED: &str = r#"
import smtplib, sys
import dkim
port, domain, key, how, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
sender = "sender@" + domain
message = ("From: " + sender + "\r\nTo: " + rcpt + "\r\nSubject: " + how + " from " + domain +
           "\r\nMessage-ID: <" + how + "." + domain + "@example>\r\n\r\nthe real body\r\n").encode()
signature = dkim.sign(message, b"sel", domain.encode(), open(key, "rb").read(),
                      include_headers=[b"from", b"to", b"subject"])
signed = signature + message
if how == "tampered":
    signed = signed.replace(b"the real body", b"a forged body")
try:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.sendmail(sender, [rcpt], signed)
    print("SENT")
except smtplib.SMTPDataError as e:
    print("REFUSED", e.smtp_code, e.smtp_error.decode())
"#;

struct Dns {
    child: Child,
    port: u16,
}

async fn dns(records: &Value) -> Dns {
    let port = dead_port().await;
    let mut child = Command::new("python3")
        .args(["-c", DNS, &port.to_string(), &records.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = next_line(&mut lines, "the DNS server", |l| {
        (l == "READY").then_some(())
    })
    .await;
    let () = ready;
    Dns { child, port }
}

/// A public server checking mail against `dns` (`mode`: report or
/// enforce), and a client of it whose mail goes to `/inbound/mail`: the
/// server, the client, the SMTP address and the tunnel's mail domain.
async fn server_checking(
    app: &Origin,
    dir: &std::path::Path,
    dns: u16,
    mode: &str,
) -> (Droid, Droid, SocketAddr, String, SocketAddr) {
    let dns = format!("127.0.0.1:{dns}");
    let mut server = Droid::start(
        &server_args(&[
            "--smtp",
            "127.0.0.1:0",
            "--no-spool",
            "--dns",
            &dns,
            "--mail-auth",
            mode,
        ]),
        dir,
    );
    let (_, control) = server.line("the addresses", server_addrs).await;
    let smtp = server
        .line("the smtp line", |l| addr_after(l, "smtp on "))
        .await;
    let state = dir.join(format!("client-{mode}"));
    std::fs::create_dir(&state).unwrap();
    let control = control.to_string();
    let target = app.addr.port().to_string();
    let mut client = Droid::start(
        &[
            "http",
            &target,
            "--server",
            &control,
            "--mail-path",
            "/inbound/mail",
            "--inspect",
            "127.0.0.1:0",
        ],
        &state,
    );
    let inspect = client
        .line("the inspector", |l| addr_after(l, "inspect http://"))
        .await;
    let domain = client.line("the mail line", mail_domain).await;
    (server, client, smtp, domain, inspect)
}

#[tokio::test]
async fn received_mail_says_what_spf_dkim_and_dmarc_found_and_enforce_refuses_dmarc_rejects() {
    let mut app = origin("app").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let public = sh(&format!(
        "openssl genrsa -traditional -out {d}/dkim.pem 2048 2>/dev/null && openssl rsa -in {d}/dkim.pem -pubout -outform DER 2>/dev/null | base64 -w0"
    ))
    .await;
    let key = format!("{d}/dkim.pem");
    let dkim = format!("v=DKIM1; k=rsa; p={public}");
    // signed.test lets 127.0.0.1 send; strict.test does not. Both ask that
    // mail failing DMARC be rejected.
    let records = json!({
        "signed.test": ["v=spf1 ip4:127.0.0.1 -all"],
        "sel._domainkey.signed.test": [dkim],
        "_dmarc.signed.test": ["v=DMARC1; p=reject"],
        "strict.test": ["v=spf1 ip4:192.0.2.1 -all"],
        "sel._domainkey.strict.test": [dkim],
        "_dmarc.strict.test": ["v=DMARC1; p=reject"],
    });
    let mut dns = dns(&records).await;

    let (_server, _client, smtp, domain, inspect) =
        server_checking(&app, dir.path(), dns.port, "report").await;
    let rcpt = format!("inbox@{domain}");
    let port = smtp.port().to_string();
    let send = |domain: &'static str, how: &'static str| {
        let (port, key, rcpt) = (port.clone(), key.clone(), rcpt.clone());
        async move { python(SEND_SIGNED, &[&port, domain, &key, how, &rcpt]).await }
    };

    // Signed and sent from an address its domain allows: all pass.
    let (ok, out, err) = send("signed.test", "good").await;
    assert!(ok && out.trim() == "SENT", "{out}{err}");
    let auth = app.next_mail().await.json()["auth"].clone();
    assert_eq!(
        auth["spf"],
        json!({"result": "pass", "domain": "signed.test"}),
        "{auth}"
    );
    assert_eq!(
        auth["dkim"][0],
        json!({"result": "pass", "domain": "signed.test", "selector": "sel"}),
        "{auth}"
    );
    assert_eq!(
        auth["dmarc"],
        json!({"result": "pass", "policy": "reject"}),
        "{auth}"
    );
    let header = auth["authentication_results"].as_str().unwrap();
    assert!(
        header.contains("dkim=pass") && header.contains("spf=pass"),
        "{header}"
    );
    // The inspector shows the verdicts with the mail.
    let listed = curl_json(&format!("http://{inspect}/api/requests?kind=mail")).await;
    let id = &listed["requests"][0]["id"];
    let detail = curl_json(&format!("http://{inspect}/api/requests/{id}")).await;
    assert_eq!(
        detail["mail"]["auth"]["dmarc"]["result"], "pass",
        "{detail}"
    );

    // Its body changed after signing, from an address SPF does not allow:
    // reported, and delivered (report mode only tells).
    let (ok, out, err) = send("strict.test", "tampered").await;
    assert!(ok && out.trim() == "SENT", "{out}{err}");
    let auth = app.next_mail().await.json()["auth"].clone();
    assert_eq!(auth["spf"]["result"], "fail", "{auth}");
    assert_eq!(auth["dkim"][0]["result"], "fail", "{auth}");
    assert_eq!(
        auth["dmarc"],
        json!({"result": "fail", "policy": "reject"}),
        "{auth}"
    );

    // Enforced, the same mail is refused; the good one still arrives.
    let (_s2, _c2, smtp2, domain2, _) =
        server_checking(&app, dir.path(), dns.port, "enforce").await;
    let rcpt2 = format!("inbox@{domain2}");
    let port2 = smtp2.port().to_string();
    let (ok, out, err) = python(
        SEND_SIGNED,
        &[&port2, "strict.test", &key, "tampered", &rcpt2],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("REFUSED 550 5.7.1"), "{out}");
    // From addresses in two domains cannot be judged: refused too, so the
    // domain an app would show is never one nobody checked.
    let two_froms = r#"
import smtplib, sys
port, rcpt = int(sys.argv[1]), sys.argv[2]
message = "From: x@strict.test, ceo@signed.test\r\nTo: " + rcpt + "\r\nSubject: two\r\n\r\nhi\r\n"
try:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        smtp.sendmail("x@strict.test", [rcpt], message)
    print("SENT")
except smtplib.SMTPDataError as e:
    print("REFUSED", e.smtp_code, e.smtp_error.decode())
"#;
    let (ok, out, err) = python(two_froms, &[&port2, &rcpt2]).await;
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("REFUSED 550 5.7.1"), "{out}");
    let (ok, out, err) = python(SEND_SIGNED, &[&port2, "signed.test", &key, "good", &rcpt2]).await;
    assert!(ok && out.trim() == "SENT", "{out}{err}");
    assert_eq!(
        app.next_mail().await.json()["auth"]["dmarc"]["result"],
        "pass"
    );

    // The DNS gone (for a domain not asked before: nothing cached):
    // temperror, and the mail is delivered all the same.
    dns.child.kill().await.unwrap();
    let _ = dns.child.wait().await;
    let (ok, out, err) = send("fresh.test", "good").await;
    assert!(ok && out.trim() == "SENT", "{out}{err}");
    let auth = app.next_mail().await.json()["auth"].clone();
    assert_eq!(auth["spf"]["result"], "temperror", "{auth}");
    assert_eq!(auth["dkim"][0]["result"], "temperror", "{auth}");
    assert_eq!(auth["dmarc"]["result"], "temperror", "{auth}");
    assert!(app.inbox.try_recv().is_err(), "nothing else arrived");
}
