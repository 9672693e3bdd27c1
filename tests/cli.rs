//! The `droid` binary as a user runs it: the README's first command with its
//! embedded server, and a public server with a client in another process.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use tokio::process::Command;

async fn curl(args: &[&str]) -> String {
    let out = within("curl", Command::new("curl").args(args).output())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn droid_http_with_no_server_prints_a_localhost_url_that_works() {
    let app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let port = app.addr.port().to_string();
    let mut droid = Droid::start(&["http", &port, "--http", "127.0.0.1:0"], state.path());
    let url = droid
        .line("the URL", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    assert!(url.contains(".localhost:"), "{url}");
    // curl resolves *.localhost to loopback by itself, as browsers do
    assert_eq!(
        curl(&["-s", &format!("{url}/hello")]).await,
        "origin app /hello"
    );
    let line = droid
        .line("the request line", |l| {
            l.starts_with("GET").then(|| l.to_string())
        })
        .await;
    assert!(line.contains("/hello") && line.contains("200"), "{line}");
    assert!(droid.interrupt().await.success());

    // the same command again gets the same name back
    let name = url
        .trim_start_matches("http://")
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let mut droid = Droid::start(&["http", &port, "--http", "127.0.0.1:0"], state.path());
    let again = droid
        .line("the URL again", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    assert!(
        again.starts_with(&format!("http://{name}.localhost:")),
        "{again} vs {name}"
    );
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn droid_http_says_when_visitors_must_log_in_or_come_from_allowed_addresses() {
    let app = origin("app").await;
    let port = app.addr.port().to_string();
    let state = tempfile::tempdir().unwrap();
    let mut droid = Droid::start(
        &[
            "http",
            &port,
            "--http",
            "127.0.0.1:0",
            "--auth",
            "ann:s3cret",
            "--allow-ip",
            "127.0.0.0/8",
        ],
        state.path(),
    );
    let auth = droid
        .line("the auth line", |l| {
            l.contains("--auth").then(|| l.to_string())
        })
        .await;
    assert_eq!(
        auth,
        "droid: visitors must log in (--auth): the server asks before anything reaches your app"
    );
    let allow = droid
        .line("the allow-ip line", |l| {
            l.contains("--allow-ip").then(|| l.to_string())
        })
        .await;
    assert_eq!(
        allow,
        "droid: only visitors from 127.0.0.0/8 get through (--allow-ip); others get a 403"
    );
    droid
        .line("the URL", |l| l.starts_with("http://").then_some(()))
        .await;
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn droid_http_says_plainly_when_the_app_is_not_running_yet() {
    let port = dead_port().await.to_string();
    let state = tempfile::tempdir().unwrap();
    let log = state.path().join("stderr.log");
    let mut droid = Droid::start_logging(
        &["http", &port, "--http", "127.0.0.1:0"],
        state.path(),
        &log,
    );
    let warning = droid
        .line("the warning", |l| {
            l.contains("nothing listens").then(|| l.to_string())
        })
        .await;
    assert!(warning.contains(&format!("127.0.0.1:{port}")), "{warning}");
    let url = droid
        .line("the URL", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    let out = curl(&["-s", "-w", " %{http_code}", &url]).await;
    assert_eq!(
        out,
        format!("the tunnel is up but nothing answers at 127.0.0.1:{port}\n 502")
    );
    let said = droid
        .line("the 502 line", |l| {
            l.contains("nothing answers at").then(|| l.to_string())
        })
        .await;
    assert!(said.starts_with("droid: the tunnel is up"), "{said}");
    assert!(droid.interrupt().await.success());
    // Said once, on stdout: the log (a file here) has no second copy, and
    // no colour codes.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("nothing answers"), "{logged}");
    assert!(!logged.contains('\x1b'), "{logged}");
}

#[tokio::test]
async fn a_public_server_and_a_named_client_in_separate_processes() {
    let app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let mut server = Droid::start(
        &[
            "server",
            "--domain",
            "tunnel.test",
            "--http",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
        ],
        state.path(),
    );
    let (http, control) = server.line("the server's addresses", server_addrs).await;
    let (http, control) = (http.to_string(), control.to_string());
    let target = format!("http://127.0.0.1:{}", app.addr.port());
    // Given two servers, the first of which nothing answers at, it uses
    // the second.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut client = Droid::start(
        &[
            "http", &target, "--server", &dead, "--server", &control, "--name", "myapp",
        ],
        state.path(),
    );
    let url = client
        .line("the URL", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    let port = http.rsplit(':').next().unwrap();
    assert_eq!(url, format!("http://myapp.tunnel.test:{port}"));
    let host = "Host: myapp.tunnel.test";
    assert_eq!(
        curl(&["-s", "-H", host, &format!("http://{http}/x")]).await,
        "origin app /x"
    );

    // a second client asking for the same name is refused with a clear error
    let out = within(
        "refused client",
        Command::new(env!("CARGO_BIN_EXE_droid"))
            .args(["http", "3000", "--server", &control, "--name", "myapp"])
            .env("DROID_STATE_DIR", state.path().join("other"))
            .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the name myapp is in use by another client"),
        "{stderr}"
    );

    assert!(client.interrupt().await.success());
    assert!(server.interrupt().await.success());
}

#[tokio::test]
async fn droid_http_prints_an_smtp_address_whose_mail_reaches_the_app_signed() {
    let mut app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let port = app.addr.port().to_string();
    let mut droid = Droid::start(
        &[
            "http",
            &port,
            "--http",
            "127.0.0.1:0",
            "--smtp",
            "127.0.0.1:0",
            "--mail-path",
            "/inbound/mail",
        ],
        state.path(),
    );
    let (smtp, domain) = droid
        .line("the mail line", |l| {
            let rest = l.strip_prefix("smtp ")?;
            let addr: std::net::SocketAddr = rest.split(',').next()?.parse().ok()?;
            let domain = rest
                .split("anything@")
                .nth(1)?
                .split(' ')
                .next()?
                .to_string();
            Some((addr, domain))
        })
        .await;
    assert!(domain.ends_with(".localhost"), "{domain}");
    let secret = droid
        .line("the secret", |l| {
            l.split("with the secret ").nth(1).map(str::to_string)
        })
        .await;
    let to = format!("me@{domain}");
    assert_eq!(
        smtplib_send(smtp, "a@example.com", &[&to], "hi", "text").await,
        "SENT"
    );
    let mail = app.next_mail().await;
    assert_eq!(mail.path, "/inbound/mail");
    assert_eq!(mail.json()["subject"], "hi");
    assert!(signed_with(&mail, &secret));
    assert!(secret.starts_with("whsec_"), "{secret}");
    // The official Standard Webhooks verifier agrees, and refuses a
    // tampered body.
    standard_webhooks_verify(&mail, &secret).await.unwrap();
    let mut tampered = mail;
    tampered.body = bytes::Bytes::from_static(b"{}");
    assert!(standard_webhooks_verify(&tampered, &secret).await.is_err());
    let line = droid
        .line("the delivery's request line", |l| {
            l.starts_with("POST").then(|| l.to_string())
        })
        .await;
    assert!(
        line.contains("/inbound/mail") && line.contains("200"),
        "{line}"
    );
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn droid_smtp_posts_mail_to_a_url_with_no_tunnel() {
    let mut app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/inbound/standalone", app.addr.port());
    let mut droid = Droid::start(
        &[
            "smtp",
            "--listen",
            "127.0.0.1:0",
            "--post",
            &url,
            "--domain",
            "example.com",
            "--format",
            "multipart",
            "--secret",
            WHSEC,
        ],
        state.path(),
    );
    let smtp: std::net::SocketAddr = droid
        .line("the listening line", |l| addr_after(l, "listening on "))
        .await;
    let out = smtplib_send(
        smtp,
        "a@other.org",
        &["support@example.com", "x@elsewhere.org"],
        "form",
        "body",
    )
    .await;
    assert_eq!(out, "REFUSED x@elsewhere.org 550");
    let mail = app.next_mail().await;
    assert_eq!(mail.path, "/inbound/standalone");
    assert!(
        mail.header("content-type")
            .starts_with("multipart/form-data"),
        "{}",
        mail.header("content-type")
    );
    assert!(String::from_utf8_lossy(&mail.body).contains("report.pdf"));
    assert!(signed_with(&mail, WHSEC));
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn with_mail_secret_the_printed_secret_is_the_one_in_use() {
    let mut app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let port = app.addr.port().to_string();
    let args = |secret: Option<&'static str>| {
        let mut a = vec![
            "http",
            port.as_str(),
            "--http",
            "127.0.0.1:0",
            "--smtp",
            "127.0.0.1:0",
            "--mail-path",
            "/inbound/m",
        ];
        if let Some(s) = secret {
            a.extend(["--mail-secret", s]);
        }
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    // A first run remembers a secret of its own...
    let first: Vec<String> = args(None);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let mut droid = Droid::start(&first, state.path());
    let remembered = droid
        .line("the secret", |l| {
            l.split("with the secret ").nth(1).map(str::to_string)
        })
        .await;
    assert!(droid.interrupt().await.success());
    // ...which a run given --mail-secret neither uses nor prints.
    let second: Vec<String> = args(Some(WHSEC));
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let mut droid = Droid::start(&second, state.path());
    let (smtp, domain) = droid
        .line("the mail line", |l| {
            let rest = l.strip_prefix("smtp ")?;
            let addr: std::net::SocketAddr = rest.split(',').next()?.parse().ok()?;
            Some((
                addr,
                rest.split("anything@")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .to_string(),
            ))
        })
        .await;
    let said = droid
        .line("the secret line", |l| {
            l.contains("are signed").then(|| l.to_string())
        })
        .await;
    assert!(
        said.ends_with("with the secret you set (--mail-secret)"),
        "{said}"
    );
    assert!(!said.contains(&remembered), "{said}");
    let to = format!("me@{domain}");
    assert_eq!(
        smtplib_send(smtp, "a@example.com", &[&to], "hi", "text").await,
        "SENT"
    );
    let mail = app.next_mail().await;
    assert!(signed_with(&mail, WHSEC));
    assert!(droid.interrupt().await.success());
}

#[tokio::test]
async fn a_cluster_needs_a_strong_secret_and_droid_makes_one() {
    let state = tempfile::tempdir().unwrap();
    let run = |args: Vec<String>| {
        let state = state.path().to_path_buf();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            within("droid", droid_command(&args, &state).output())
                .await
                .unwrap()
        }
    };
    let made = run(vec!["cluster".into(), "secret".into()]).await;
    assert!(made.status.success());
    let secret = String::from_utf8(made.stdout).unwrap().trim().to_string();
    assert_eq!(secret.len(), 64, "{secret}");
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    let again = run(vec!["cluster".into(), "secret".into()]).await;
    assert_ne!(
        String::from_utf8(again.stdout).unwrap().trim(),
        secret,
        "each is fresh"
    );
    // A node with a weak secret, or none, does not start, and says why;
    // nothing listens at this Redis, so a node that passed would fail later.
    let node = |secret: Option<&str>| {
        let mut args: Vec<String> = [
            "server",
            "--domain",
            "droid.test",
            "--http",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--cluster",
            "redis://127.0.0.1:1",
            "--node-id",
            "a",
        ]
        .map(str::to_string)
        .to_vec();
        if let Some(s) = secret {
            args.extend(["--cluster-secret".to_string(), s.to_string()]);
        }
        args
    };
    for (secret, said) in [
        (Some("hunter2"), "it has 7 characters, fewer than 32"),
        (
            Some("a".repeat(40).leak() as &str),
            "it repeats a few characters",
        ),
        (None, "--cluster needs --cluster-secret"),
    ] {
        let out = run(node(secret)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(said), "{stderr}");
        assert!(stderr.contains("droid cluster secret"), "{stderr}");
    }
    // The secret droid made passes the check (and the node goes on to Redis).
    let out = run(node(Some(&secret))).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("too weak"), "{stderr}");
}
