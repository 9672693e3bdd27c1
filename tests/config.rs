//! Config files: every example parses, each class of bad input gives one
//! clear error with its line, and a server, a client and a standalone SMTP
//! adapter started from files (the real binary, as a user runs it) carry
//! HTTP requests and mail end to end.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;

/// Runs droid to completion.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let state = tempfile::tempdir().unwrap();
    let mut command = droid_command(args, state.path());
    command.envs(env.iter().copied());
    within("droid", command.output()).await.unwrap()
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs")
}

const EXAMPLE_ENV: &[(&str, &str)] = &[("DROID_TOKEN", "t0ken"), ("DROID_MAIL_SECRET", WHSEC)];

#[tokio::test]
async fn every_example_config_passes_config_check_and_is_what_config_example_prints() {
    for (file, kind) in [
        ("server.toml", "server"),
        ("droid.toml", "client"),
        ("smtp.toml", "smtp"),
    ] {
        let path = examples_dir().join(file);
        let out = run(&["config", "check", path.to_str().unwrap()], EXAMPLE_ENV).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": ok: "), "{stdout}");

        let out = run(&["config", "example", kind], &[]).await;
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            std::fs::read_to_string(&path).unwrap(),
            "`droid config example {kind}` prints examples/configs/{file}"
        );
    }
    let out = run(
        &[
            "config",
            "check",
            examples_dir().join("droid.toml").to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    // Every variable it needs, in one run; and its first line says which.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("`token`: environment variable DROID_TOKEN is not set; and line ")
            && stderr.contains(
                "`tunnels[0].mail.secret`: environment variable DROID_MAIL_SECRET is not set"
            ),
        "{stderr}"
    );
    for file in ["droid.toml", "server.toml", "smtp.toml"] {
        let text = std::fs::read_to_string(examples_dir().join(file)).unwrap();
        let first = text.lines().next().unwrap();
        assert!(first.starts_with("# Set DROID_"), "{file}: {first}");
    }
    // The summaries name every adapter, from the registration.
    let check = |file: &str| {
        let path = examples_dir().join(file);
        async move {
            let out = run(&["config", "check", path.to_str().unwrap()], EXAMPLE_ENV).await;
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let server = check("server.toml").await;
    assert!(server.contains("adapters: smtp, mqtt, syslog"), "{server}");
    let client = check("droid.toml").await;
    assert!(
        client.contains("api -> 127.0.0.1:3000 (mail, mqtt, syslog)") && client.contains("(tcp)"),
        "{client}"
    );
}

/// `droid config check` on `text`: the one error line it printed.
async fn check_error(name: &str, text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let out = run(&["config", "check", path.to_str().unwrap()], &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{name} passed: {stderr}");
    assert!(out.stdout.is_empty());
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("droid: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error, not: {stderr}");
    let dir_prefix = format!("{}/", dir.path().display());
    errors[0]
        .trim_start_matches("droid: ")
        .replace(&dir_prefix, "")
}

#[tokio::test]
async fn each_kind_of_bad_input_gives_one_error_naming_file_line_column_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown key, with a hint",
            "server = \"127.0.0.1:7835\"\n\n[[tunnels]]\nname = \"api\"\nlocall = 3000\n",
            "droid.toml:5:1: unknown key `locall` in `tunnels[0]`; did you mean `local`?",
        ),
        (
            "unknown top-level key",
            "domain = \"t.example\"\nheartbeat_timeot = \"30s\"\n",
            "droid.toml:2:1: unknown key `heartbeat_timeot` at the top level; did you mean `heartbeat_timeout`?",
        ),
        (
            "wrong type",
            "domain = \"t.example\"\n[limits]\nmax_streams_per_tunnel = \"many\"\n",
            "droid.toml:3:26: `limits.max_streams_per_tunnel`: wrong type: found string \"many\", expected a whole number",
        ),
        (
            "bad address",
            "domain = \"t.example\"\nhttp = \"0.0.0.0:eighty\"\n",
            "droid.toml:2:8: `http`: `0.0.0.0:eighty` is not an address; expected IP:PORT",
        ),
        (
            "missing required key",
            "[[tunnels]]\nname = \"api\"\nlocal = 3000\n\n[[tunnels]]\nname = \"web\"\n",
            "droid.toml:5:1: missing required key `local` in `tunnels[1]`",
        ),
        (
            "mail on a tcp tunnel",
            "[[tunnels]]\nname = \"db\"\nlocal = 5432\nkind = \"tcp\"\n[tunnels.mail]\npath = \"/x\"\n",
            "droid.toml:2:8: `mail` is for HTTP tunnels, and the tunnel `db` is `kind = \"tcp\"` (raw bytes): remove it",
        ),
        (
            "a port on an http tunnel",
            "[[tunnels]]\nname = \"web\"\nlocal = 3000\nport = 8080\n",
            "droid.toml:2:8: `port` is for TCP tunnels: add `kind = \"tcp\"` to the tunnel `web`, or remove it",
        ),
        (
            "a bad range of ports",
            "domain = \"t.example\"\ntcp_ports = \"2000-1000\"\n",
            "droid.toml:2:13: `tcp_ports`: 2000-1000 is empty: the first port must not be above the last",
        ),
        (
            "two tunnels with one name",
            "[[tunnels]]\nname = \"api\"\nlocal = 3000\n\n[[tunnels]]\nname = \"api\"\nlocal = 3001\n",
            "droid.toml:6:8: `tunnels[1].name`: two tunnels are named `api` (the first on line 2)",
        ),
        (
            "a bad value, with a hint",
            "[[tunnels]]\nname = \"api\"\nlocal = 3000\nhost_header = \"rewrit\"\n",
            "droid.toml:4:15: `tunnels[0].host_header`: unknown value `rewrit`; expected one of `preserve`, `rewrite`; did you mean `rewrite`?",
        ),
        (
            "an app protocol HTTP cannot be, with a hint",
            "[[tunnels]]\nname = \"api\"\nlocal = 50051\napp_protocol = \"h2\"\n",
            "droid.toml:4:16: `tunnels[0].app_protocol`: unknown value `h2`; expected one of `http1`, `h2c`; did you mean `h2c`?",
        ),
        (
            "an https target on a TCP tunnel",
            "[[tunnels]]\nname = \"db\"\nkind = \"tcp\"\nlocal = \"https://localhost:5432\"\n",
            "droid.toml:2:8: a `kind = \"tcp\"` tunnel passes bytes as they are: give `local` as a port or \"HOST:PORT\", not an https:// URL",
        ),
        (
            "an unset environment variable",
            "server = \"127.0.0.1:7835\"\ntoken = \"${DROID_TEST_SURELY_UNSET}\"\n[[tunnels]]\nname = \"a\"\nlocal = 1\n",
            "droid.toml:2:9: `token`: environment variable DROID_TEST_SURELY_UNSET is not set",
        ),
        (
            "zero threads",
            "domain = \"t.example\"\nthreads = 0\n",
            "droid.toml:2:11: `threads`: must be at least 1",
        ),
        (
            "a zero request rate",
            "domain = \"t.example\"\n[limits]\nrequests_per_second = 0\n",
            "droid.toml:3:23: `limits.requests_per_second`: must be at least 1",
        ),
        (
            "a burst without a rate",
            "domain = \"t.example\"\n[limits]\nburst = 10\n",
            "droid.toml:3:9: `limits.burst`: needs `requests_per_second` too",
        ),
        (
            "a name reserved twice",
            "domain = \"t.example\"\n[[tokens]]\ntoken = \"a\"\nnames = [\"api\"]\n[[tokens]]\ntoken = \"b\"\nnames = [\"api\"]\n",
            "droid.toml:5:1: `tokens[1]`: the name `api` is reserved by two tokens",
        ),
        (
            "a bad allow-list entry",
            "[[tunnels]]\nname = \"api\"\nlocal = 3000\nallow_ip = [\"10.0.0.0/33\"]\n",
            "droid.toml:4:12: `tunnels[0].allow_ip[0]`: `10.0.0.0/33` is not an IP address or a CIDR block",
        ),
        (
            "basic auth without a password",
            "[[tunnels]]\nname = \"api\"\nlocal = 3000\nauth = \"ann\"\n",
            "droid.toml:4:8: `tunnels[0].auth`: expected user:password",
        ),
        (
            "a mail route path",
            "[[tunnels]]\nname = \"api\"\nlocal = 3000\n[tunnels.mail]\nroutes = [{ pattern = \"support@*\", path = \"support\" }]\n",
            "droid.toml:5:43: `tunnels[0].mail.routes[0].path`: `support` must start with /",
        ),
        (
            "a bad target",
            "[[tunnels]]\nname = \"api\"\nlocal = \"ftp://x\"\n",
            "droid.toml:3:9: `tunnels[0].local`: ftp://x: only http:// and https:// URLs can be targets",
        ),
        ("TOML syntax", "domain = \"t.example\n", "droid.toml:1:20: "),
        (
            "an adapter's key misspelt",
            "domain = \"t.example\"\n[adapters.syslog]\nprots = \"20000-20010\"\n",
            "droid.toml:3:1: unknown key `prots` in `adapters.syslog`; did you mean `ports`?",
        ),
        (
            "an adapter's bad value",
            "[[tunnels]]\nname = \"api\"\nlocal = 3000\nsyslog = { path = \"logs\" }\n",
            "droid.toml:4:10: `tunnels[0].syslog`: path must start with /",
        ),
        (
            "an adapter on a TCP tunnel",
            "[[tunnels]]\nname = \"db\"\nkind = \"tcp\"\nlocal = 5432\nsyslog = true\n",
            "droid.toml:2:8: `syslog` is for HTTP tunnels, and the tunnel `db` is `kind = \"tcp\"`",
        ),
        (
            "mail on a TCP tunnel",
            "[[tunnels]]\nname = \"db\"\nkind = \"tcp\"\nlocal = 5432\n[tunnels.mail]\npath = \"/in\"\n",
            "droid.toml:2:8: `mail` is for HTTP tunnels, and the tunnel `db` is `kind = \"tcp\"`",
        ),
        (
            "an adapter this droid does not have",
            "domain = \"t.example\"\n[adapters.smpt]\nlisten = \"0.0.0.0:25\"\n",
            "droid.toml:2:11: no adapter is named `smpt`; did you mean `smtp`? (this droid has smtp, mqtt, syslog)",
        ),
        (
            "a standalone mail key on the embedded server",
            "[[tunnels]]\nname = \"api\"\nlocal = 3000\n[embedded.smtp]\npost = \"http://x\"\n",
            "droid.toml:5:8: `post` belongs in a standalone smtp file (droid smtp --config); here each tunnel's [tunnels.mail] says where its mail goes",
        ),
        (
            "MQTT's bad login",
            "[[tunnels]]\nname = \"api\"\nlocal = 3000\n[tunnels.mqtt]\nauth = \"nobody\"\n",
            "droid.toml:5:8: `tunnels[0].mqtt.auth`: expected user:password",
        ),
        (
            "a mail key misspelt",
            "domain = \"t.example\"\n[adapters.smtp]\nlisten = \"0.0.0.0:25\"\nmax_recipient = 5\n",
            "droid.toml:4:1: unknown key `max_recipient` in `adapters.smtp`; did you mean `max_recipients`?",
        ),
    ];
    for (what, text, expected) in cases {
        let error = check_error("droid.toml", text).await;
        assert!(
            error.starts_with(expected),
            "{what}:\n  got      {error}\n  expected {expected}"
        );
    }
}

#[tokio::test]
async fn a_bad_file_stops_droid_server_before_anything_listens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.toml");
    std::fs::write(
        &path,
        "domain = \"t.example\"\nhttp = \"127.0.0.1:0\"\ncontroll = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = run(&["server", "--config", path.to_str().unwrap()], &[]).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "server.toml:3:1: unknown key `controll` at the top level; did you mean `control`?"
        ),
        "{stderr}"
    );
}

/// Writes `text` to `dir/name`.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn a_server_and_a_client_from_files_carry_requests_and_routed_mail() {
    let mut app = origin("app").await;
    let other = origin("other").await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let server_file = write(
        dir.path(),
        "server.toml",
        &format!(
            r#"domain = "tunnel.test"
http = "127.0.0.1:0"
control = "127.0.0.1:0"
heartbeat_timeout = "30s"
[names]
grace = "1m"
[limits]
max_streams_per_tunnel = 64
requests_per_second = 1
burst = 1
[adapters.smtp]
listen = "127.0.0.1:0"
max_recipients = 10
[spool]
dir = "{}"
"#,
            spool.display()
        ),
    );
    // The command line wins over the file's rate of 1 a second, which would
    // refuse the requests below.
    let mut server = Droid::start_with(
        &[
            "server",
            "--config",
            &server_file,
            "--requests-per-second",
            "1000",
            "--burst",
            "2000",
        ],
        dir.path(),
        &[],
    );
    let (http, control) = server.line("the server's addresses", server_addrs).await;
    let (http, control) = (http.to_string(), control.to_string());
    let smtp: std::net::SocketAddr = server
        .line("the smtp line", |l| addr_after(l, "smtp on "))
        .await;

    let client_file = write(
        dir.path(),
        "droid.toml",
        &format!(
            r#"server = "{control}"
[[tunnels]]
name = "billing"
local = {}
[tunnels.mail]
path = "/inbound/fallback"
secret = "${{TEST_MAIL_SECRET}}"
routes = [
  {{ pattern = "support@*", path = "/inbound/support" }},
  {{ pattern = "*+orders@*", path = "/inbound/orders" }},
]

[[tunnels]]
name = "web"
local = "http://127.0.0.1:{}"
host_header = "rewrite"
"#,
            app.addr.port(),
            other.addr.port()
        ),
    );
    let mut client = Droid::start_with(
        &["start", "--config", &client_file],
        dir.path(),
        &[("TEST_MAIL_SECRET", WHSEC)],
    );
    let port = http.rsplit(':').next().unwrap().to_string();
    let mut urls = Vec::new();
    for _ in 0..2 {
        urls.push(
            client
                .line("a URL", |l| l.starts_with("http://").then(|| l.to_string()))
                .await,
        );
    }
    urls.sort();
    assert_eq!(
        urls,
        [
            format!("http://billing.tunnel.test:{port}"),
            format!("http://web.tunnel.test:{port}")
        ]
    );
    let http: std::net::SocketAddr = http.parse().unwrap();
    for i in 0..3 {
        // three in a row: the file's rate (burst 1) would refuse two
        assert_eq!(
            get(http, "billing.tunnel.test", &format!("/x{i}")).await,
            (http::StatusCode::OK, format!("origin app /x{i}"))
        );
    }
    let (status, body) = get(http, "web.tunnel.test", "/headers").await;
    assert_eq!(status, http::StatusCode::OK);
    let headers: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        headers["headers"]["host"],
        format!("127.0.0.1:{}", other.addr.port()),
        "host_header = rewrite"
    );

    // one message, three recipients, three routes: three signed POSTs
    let out = smtplib_send(
        smtp,
        "ann@example.com",
        &[
            "support@billing.tunnel.test",
            "bob+orders@billing.tunnel.test",
            "hello@billing.tunnel.test",
        ],
        "routed",
        "text",
    )
    .await;
    assert_eq!(out, "SENT");
    let mut by_path = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let mail = app.next_mail().await;
        assert!(signed_with(&mail, WHSEC));
        let rcpts = mail.json()["envelope"]["rcpt_to"].clone();
        by_path.insert(mail.path.clone(), rcpts);
    }
    assert_eq!(
        by_path,
        [
            (
                "/inbound/fallback".to_string(),
                serde_json::json!(["hello@billing.tunnel.test"])
            ),
            (
                "/inbound/orders".to_string(),
                serde_json::json!(["bob+orders@billing.tunnel.test"])
            ),
            (
                "/inbound/support".to_string(),
                serde_json::json!(["support@billing.tunnel.test"])
            ),
        ]
        .into_iter()
        .collect()
    );

    assert!(client.interrupt().await.success());
    assert!(server.interrupt().await.success());
}

#[tokio::test]
async fn droid_start_names_a_subset_and_the_command_line_overrides_the_file() {
    let app = origin("app").await;
    let srv = server().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "droid.toml",
        &format!(
            "server = \"127.0.0.1:1\"\n[[tunnels]]\nname = \"api\"\nlocal = {0}\n[[tunnels]]\nname = \"web\"\nlocal = {0}\n",
            app.addr.port()
        ),
    );
    // --server wins over the file's unreachable one; only `web` starts
    let control = srv.control.to_string();
    let mut client = Droid::start_with(
        &["start", "--config", &file, "--server", &control, "web"],
        dir.path(),
        &[],
    );
    let url = client
        .line("the URL", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    assert_eq!(url, format!("http://web.{DOMAIN}:{}", srv.http.port()));
    assert_eq!(
        get(srv.http, &format!("web.{DOMAIN}"), "/y").await.1,
        "origin app /y"
    );
    assert!(srv.server.registry().holder("api").is_none());
    assert!(client.interrupt().await.success());

    let out = run(&["start", "--config", &file, "wbe"], &[]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no tunnel is named `wbe`; did you mean `web`?"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_standalone_smtp_adapter_from_a_file_posts_to_its_url() {
    let mut app = origin("app").await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "smtp.toml",
        &format!(
            r#"[adapters.smtp]
listen = "127.0.0.1:0"
post = "http://127.0.0.1:{}/inbound/standalone"
domain = "example.com"
format = "json"
secret = "${{TEST_MAIL_SECRET}}"
max_recipients = 5
[spool]
enabled = false
"#,
            app.addr.port()
        ),
    );
    // --format on the command line wins over the file's json
    let mut droid = Droid::start_with(
        &["smtp", "--config", &file, "--format", "raw"],
        dir.path(),
        &[("TEST_MAIL_SECRET", WHSEC)],
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
    assert_eq!(mail.header("content-type"), "message/rfc822");
    assert!(signed_with(&mail, WHSEC));
    assert!(droid.interrupt().await.success());
}
