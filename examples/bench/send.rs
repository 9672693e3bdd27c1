//! `send`: mail the app sends beside mail it receives, per second, in the
//! same run and on the same server.
//!
//! - **sent**: the app's `POST /email` (Postmark's shape, a 10 KiB text
//!   mail to `bob@example.com`) on its client's inspector port, through the
//!   tunnel to the server's mail adapter, which builds the MIME and hands
//!   it to its relay: Python's `aiosmtpd`, requiring STARTTLS and AUTH as a
//!   provider's submission port does. A mail counts when the app has its
//!   `200` (the relay answered `250`). Each sender keeps one HTTP
//!   connection; the relay gets a connection per mail (as lettre sends).
//! - **received**: the same 10 KiB mail by SMTP to the server's port (one
//!   kept session per sender), delivered through the tunnel as a POST to
//!   the app, counted at the `250`.
//!
//! `/recv` is a row's rate over received mail's at the same senders.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncBufReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::{App, Args, Measured, SmtpMode, Tunnel, Window, count, ratio, smtp_session};

/// A STARTTLS + AUTH relay that takes every mail and keeps nothing.
const SINK: &str = r#"
import ssl, sys, warnings
warnings.simplefilter("ignore")
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 taken"
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
relay = Controller(Sink(), hostname="127.0.0.1", port=port, tls_context=context,
                   require_starttls=True, authenticator=lambda *a: AuthResult(success=True),
                   auth_required=True, auth_require_tls=True)
relay.start()
print("READY", flush=True)
sys.stdin.read()
relay.stop()
"#;

/// The relay, a certificate for `localhost` its CA signed, and the CA.
async fn sink(dir: &Path) -> anyhow::Result<(Child, String)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("cert.pem"), cert.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let mut child = Command::new("python3")
        .args(["-c", SINK, &port.to_string()])
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("python3 is needed for the relay")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let ready = tokio::time::timeout(crate::STALL, lines.next_line()).await;
    if !matches!(ready, Ok(Ok(Some(ref l))) if l == "READY") {
        bail!("the relay did not start: pip install aiosmtpd (bash .ci/test does)");
    }
    Ok((child, format!("smtp://bench:bench@localhost:{port}")))
}

pub async fn send_bench(args: &Args, app: &App) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut relay_process, url) = sink(dir.path()).await?;
    let relay = droid_adapters::smtp::relay::Relay::new(&url, Some(&dir.path().join("ca.pem")))
        .map_err(anyhow::Error::msg)?;
    let inspector = droid_client::Inspector::new(droid_client::InspectorOptions::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let inspect = listener.local_addr()?;
    let tunnel = Tunnel::start(app, Some(inspector.clone()), Some(relay)).await?;
    let serving = tunnel.stop.clone();
    tokio::spawn(async move { inspector.serve(listener, None, serving).await });
    let text = "x".repeat(10 * 1024);
    let email = serde_json::json!({
        "From": format!("app@{}", tunnel.host), "To": "bob@example.com",
        "Subject": "bench", "TextBody": text,
    });
    let email = Bytes::from(email.to_string());
    let mail = Bytes::from(format!(
        "From: ann@example.com\r\nTo: inbox@{}\r\nSubject: bench\r\n\r\n{text}\r\n.\r\n",
        tunnel.host
    ));

    println!();
    println!(
        "Mail sent (POST /email -> tunnel -> relay with STARTTLS and AUTH) beside mail received (SMTP -> tunnel -> app), 10 KiB"
    );
    println!(
        "{:<10} {:>8} {:>9} {:>6} {:>9} {:>9} {:>7}",
        "direction", "senders", "mails/s", "/recv", "p50", "p99", "errors"
    );
    for senders in [1, 8] {
        let window = Window::new(args.secs);
        let received = receive_load(&tunnel, &mail, senders, window, args.max_mails).await;
        let window = Window::new(args.secs);
        let sent = send_load(inspect, &email, senders, window).await;
        let base = received.done as f64 / args.secs;
        for (direction, m) in [("received", &received), ("sent", &sent)] {
            let rate = m.done as f64 / args.secs;
            println!(
                "{:<10} {:>8} {:>9.0} {:>6.2} {:>9.1?} {:>9.1?} {:>7}",
                direction,
                senders,
                rate,
                ratio(rate, base),
                m.percentile(0.5),
                m.percentile(0.99),
                m.errors
            );
            if let Some(e) = &m.first_error {
                println!("  first error: {e}");
            }
        }
    }
    tunnel.stop.cancel();
    let _ = relay_process.kill().await;
    Ok(())
}

async fn receive_load(
    tunnel: &Tunnel,
    mail: &Bytes,
    senders: usize,
    window: Window,
    max: u64,
) -> Measured {
    let budget = Arc::new(AtomicU64::new(max));
    let rcpt: Arc<str> = Arc::from(format!("inbox@{}", tunnel.host));
    let sessions = (0..senders).map(|_| {
        let (rcpt, mail, budget) = (rcpt.clone(), mail.clone(), budget.clone());
        smtp_session(tunnel.smtp, rcpt, mail, window, budget, SmtpMode::Kept)
    });
    let mut total = Measured::default();
    for m in futures::future::join_all(sessions).await {
        total.merge(m);
    }
    total.latencies.sort_unstable();
    total
}

async fn send_load(
    inspect: std::net::SocketAddr,
    email: &Bytes,
    senders: usize,
    window: Window,
) -> Measured {
    let runs = (0..senders).map(|_| async move {
        let mut m = Measured::default();
        if let Err(e) = sender(inspect, email, window, &mut m).await {
            m.error(e);
        }
        m
    });
    let mut total = Measured::default();
    for m in futures::future::join_all(runs).await {
        total.merge(m);
    }
    total.latencies.sort_unstable();
    total
}

/// One app sending mail after mail on one HTTP connection.
async fn sender(
    inspect: std::net::SocketAddr,
    email: &Bytes,
    window: Window,
    m: &mut Measured,
) -> anyhow::Result<()> {
    let io = TcpStream::connect(inspect).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    while Instant::now() < window.end {
        let request = Request::post("/email")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(email.clone()))?;
        send.ready().await?;
        let t0 = Instant::now();
        let response = send.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != 200 {
            bail!("{status}: {}", String::from_utf8_lossy(&body));
        }
        count(m, &window, t0, Instant::now());
    }
    Ok(())
}
