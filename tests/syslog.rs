//! Syslog through the `droid` binary, sent by real, independent senders:
//! util-linux `logger`, rsyslog forwarding, Python's `SysLogHandler`.
//! Every message arrives at the app as a signed JSON POST.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `droid http` with a syslog port, and what it printed.
struct Logs {
    droid: Droid,
    port: u16,
    secret: String,
    inspector: SocketAddr,
    _state: tempfile::TempDir,
}

/// `droid http APP --syslog --syslog-path /inbound/syslog EXTRA...`.
async fn droid_http_syslog(app: &Origin, extra: &[&str]) -> Logs {
    let state = tempfile::tempdir().unwrap();
    let target = app.addr.port().to_string();
    let mut args = vec![
        "http",
        &target,
        "--http",
        "127.0.0.1:0",
        "--smtp",
        "127.0.0.1:0",
        "--mqtt",
        "127.0.0.1:0",
        "--inspect",
        "127.0.0.1:0",
        "--syslog",
        "--syslog-path",
        "/inbound/syslog",
    ];
    args.extend_from_slice(extra);
    let mut droid = Droid::start(&args, state.path());
    let inspector = droid
        .line("the inspector", |l| addr_after(l, "inspect http://"))
        .await;
    let line = droid
        .line("the syslog line", |l| {
            l.starts_with("syslog ").then(|| l.to_string())
        })
        .await;
    let port = syslog_port(&line);
    assert!(
        line.ends_with("(udp and tcp), arrives as POST /inbound/syslog (json)"),
        "{line}"
    );
    let secret = droid
        .line("the secret", |l| {
            l.split("with the secret ").nth(1).map(str::to_string)
        })
        .await;
    Logs {
        droid,
        port,
        secret,
        inspector,
        _state: state,
    }
}

/// The port of `syslog 127.0.0.1:PORT (udp and tcp), ...`.
fn syslog_port(line: &str) -> u16 {
    let addr = line
        .strip_prefix("syslog ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("not a syslog line: {line}"));
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| panic!("{line}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
    addr.port()
}

/// Runs util-linux `logger` against 127.0.0.1:`port`.
async fn logger(port: u16, args: &[&str]) {
    logger_at("127.0.0.1", port, args).await;
}

/// `logger --server HOST --port PORT ARGS...`.
async fn logger_at(host: &str, port: u16, args: &[&str]) {
    let out = within(
        "logger",
        tokio::process::Command::new("logger")
            .args(["--server", host, "--port", &port.to_string()])
            .args(args)
            .output(),
    )
    .await
    .expect("logger (util-linux; Debian: bsdutils) is not installed; run `bash .ci/test`");
    assert!(
        out.status.success(),
        "logger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The next syslog message the app got, checked for its signature.
async fn next_message(app: &mut Origin, secret: &str) -> serde_json::Value {
    let post = app.next_mail().await;
    assert_eq!(post.path, "/inbound/syslog");
    assert_eq!(post.header("droid-adapter"), "syslog");
    assert_eq!(post.header("content-type"), "application/json");
    assert!(signed_with(&post, secret), "the signature does not verify");
    post.json()
}

#[tokio::test]
async fn logger_over_udp_and_tcp_in_both_formats_arrives_signed() {
    let mut app = origin("app").await;
    let logs = droid_http_syslog(&app, &[]).await;
    let port = logs.port;

    logger(
        port,
        &[
            "--udp",
            "--rfc5424",
            "--sd-id",
            "zoo@32473",
            "--sd-param",
            "tiger=\"hungry\"",
            "--sd-param",
            "lion=\"asleep\"",
            "-t",
            "myapp",
            "-p",
            "local3.err",
            "hello over udp",
        ],
    )
    .await;
    let post = app.next_mail().await;
    standard_webhooks_verify(&post, &logs.secret)
        .await
        .expect("the official Standard Webhooks verifier accepts it");
    let m = post.json();
    assert_eq!(m["format"], "rfc5424");
    assert_eq!(m["transport"], "udp");
    assert_eq!(
        (m["facility"].as_u64(), m["severity"].as_u64()),
        (Some(19), Some(3))
    );
    assert_eq!(m["facility_name"], "local3");
    assert_eq!(m["severity_name"], "err");
    assert_eq!(m["app_name"], "myapp");
    assert_eq!(m["message"], "hello over udp");
    assert_eq!(m["structured_data"]["zoo@32473"]["tiger"], "hungry");
    assert_eq!(m["structured_data"]["zoo@32473"]["lion"], "asleep");
    assert!(m["timestamp"].as_str().unwrap().starts_with("20"), "{m}");
    assert!(m["hostname"].is_string(), "{m}");
    assert!(
        m["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{m}"
    );
    assert!(m["received_at"].as_str().unwrap().ends_with('Z'), "{m}");
    assert_eq!(m["truncated"], false);

    logger(
        port,
        &[
            "--tcp",
            "--rfc3164",
            "-t",
            "cron",
            "--id=4242",
            "hello over tcp",
        ],
    )
    .await;
    let m = next_message(&mut app, &logs.secret).await;
    assert_eq!(m["format"], "rfc3164");
    assert_eq!(m["transport"], "tcp");
    assert_eq!(m["app_name"], "cron");
    assert_eq!(m["procid"], "4242");
    assert_eq!(m["message"], "hello over tcp");
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'), "{m}");

    logger(
        port,
        &["--tcp", "--octet-count", "--rfc5424", "-t", "oc", "counted"],
    )
    .await;
    let m = next_message(&mut app, &logs.secret).await;
    assert_eq!(
        (m["format"].as_str(), m["message"].as_str()),
        (Some("rfc5424"), Some("counted"))
    );

    // The inspector lists them as kind `syslog`.
    let (status, body) = get(logs.inspector, "localhost", "/api/requests?kind=syslog").await;
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed = listed["requests"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{body}");
    assert!(
        listed
            .iter()
            .all(|r| r["kind"] == "syslog" && r["path"] == "/inbound/syslog")
    );
    logs.droid.interrupt().await;
}

#[tokio::test]
async fn python_sysloghandler_over_udp_and_tcp() {
    let mut app = origin("app").await;
    let logs = droid_http_syslog(&app, &[]).await;
    let script = r#"
import logging, logging.handlers, socket, sys
port = int(sys.argv[1])
for kind, name in ((socket.SOCK_DGRAM, "udp"), (socket.SOCK_STREAM, "tcp")):
    handler = logging.handlers.SysLogHandler(address=("127.0.0.1", port), socktype=kind)
    handler.setFormatter(logging.Formatter("pyapp: %(message)s"))
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.warning("warned over %s", name)
    handler.close()
"#;
    let (ok, out, err) = python(script, &[&logs.port.to_string()]).await;
    assert!(ok, "{out}{err}");
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(next_message(&mut app, &logs.secret).await);
    }
    got.sort_by_key(|m| m["transport"].as_str().unwrap().to_string());
    for (m, transport) in got.iter().zip(["tcp", "udp"]) {
        assert_eq!(m["transport"], transport);
        assert_eq!(m["format"], "rfc3164");
        assert_eq!(m["severity_name"], "warning");
        assert_eq!(m["app_name"], "pyapp");
        assert_eq!(m["message"], format!("warned over {transport}"));
    }
    logs.droid.interrupt().await;
}

#[tokio::test]
async fn ten_thousand_udp_datagrams_at_once_all_arrive() {
    const COUNT: usize = 10_000;
    let mut app = origin("app").await;
    let logs = droid_http_syslog(&app, &[]).await;
    let script = r#"
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    s.sendto(b"<14>burst: message %d" % i, ("127.0.0.1", port))
"#;
    let (ok, out, err) = python(script, &[&logs.port.to_string(), &COUNT.to_string()]).await;
    assert!(ok, "{out}{err}");
    let mut seen = HashSet::new();
    within("10,000 messages at the app", async {
        while seen.len() < COUNT {
            let post = app.inbox.recv().await.unwrap();
            let m = post.json();
            let text = m["message"].as_str().unwrap().to_string();
            assert!(seen.insert(text.clone()), "{text} arrived twice");
        }
    })
    .await;
    logs.droid.interrupt().await;
}

#[tokio::test]
async fn garbage_arrives_as_raw_and_long_messages_are_cut_and_flagged() {
    let mut app = origin("app").await;
    let logs = droid_http_syslog(&app, &[]).await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(b"\xff\xfenot syslog at all", ("127.0.0.1", logs.port))
        .await
        .unwrap();
    let m = next_message(&mut app, &logs.secret).await;
    assert_eq!(m["format"], "raw");
    assert_eq!(m["message"], "\u{fffd}\u{fffd}not syslog at all");
    assert_eq!(
        (m["facility_name"].as_str(), m["severity_name"].as_str()),
        (Some("user"), Some("notice"))
    );

    // A line-framed message over 64 KiB: cut at 64 KiB and flagged; the
    // connection goes on.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", logs.port))
        .await
        .unwrap();
    let mut long = b"<13>big: ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 100_000));
    long.extend_from_slice(b"\n<13>after: still here\n");
    tcp.write_all(&long).await.unwrap();
    let m = next_message(&mut app, &logs.secret).await;
    assert_eq!(m["truncated"], true);
    assert_eq!(
        m["message"].as_str().unwrap().len(),
        65_536 - "<13>big: ".len()
    );
    let m = next_message(&mut app, &logs.secret).await;
    assert_eq!(
        (m["message"].as_str(), m["truncated"].as_bool()),
        (Some("still here"), Some(false))
    );
    logs.droid.interrupt().await;
}

#[tokio::test]
async fn a_frame_declaring_too_much_closes_only_its_connection() {
    let mut app = origin("app").await;
    let logs = droid_http_syslog(&app, &[]).await;
    let mut good = tokio::net::TcpStream::connect(("127.0.0.1", logs.port))
        .await
        .unwrap();
    let mut bad = tokio::net::TcpStream::connect(("127.0.0.1", logs.port))
        .await
        .unwrap();
    bad.write_all(b"70000 <13>huge: ").await.unwrap();
    let mut rest = Vec::new();
    let closed = within("the bad connection closes", bad.read_to_end(&mut rest)).await;
    let reset = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionReset;
    assert!(
        matches!(closed, Ok(0)) || closed.as_ref().is_err_and(reset),
        "{closed:?}"
    );
    good.write_all(b"18 <13>ok: still open").await.unwrap();
    let m = next_message(&mut app, &logs.secret).await;
    assert_eq!(m["message"], "still open");
    logs.droid.interrupt().await;
}

#[tokio::test]
async fn rsyslog_forwards_with_octet_counting() {
    let mut app = origin("app").await;
    let logs = droid_http_syslog(&app, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dead_port().await;
    let config = format!(
        r#"global(workDirectory="{dir}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{input}")
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
"#,
        dir = dir.path().display(),
        port = logs.port,
    );
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(&conf, config).unwrap();
    let pid = dir.path().join("rsyslog.pid");
    // In /usr/sbin, which a user's PATH may leave out.
    let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("rsyslogd");
    let mut rsyslog = tokio::process::Command::new(rsyslogd)
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(&pid)
        .kill_on_drop(true)
        .spawn()
        .expect("rsyslogd is not installed (Debian: rsyslog); run `bash .ci/test`");
    // Ready when its input takes a connection.
    within("rsyslog listens", async {
        while tokio::net::TcpStream::connect(("127.0.0.1", input))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for i in 0..3 {
        logger(
            input,
            &["--tcp", "--rfc5424", "-t", "fwd", &format!("forwarded {i}")],
        )
        .await;
    }
    for i in 0..3 {
        let m = next_message(&mut app, &logs.secret).await;
        assert_eq!(m["format"], "rfc5424", "{m}");
        assert_eq!(m["app_name"], "fwd");
        assert_eq!(m["message"], format!("forwarded {i}"), "in order");
    }
    rsyslog.kill().await.unwrap();
    logs.droid.interrupt().await;
}

#[tokio::test]
async fn messages_sent_while_the_app_is_down_arrive_once_when_it_is_back() {
    let mut app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("droid.toml");
    std::fs::write(
        &file,
        format!(
            r#"[[tunnels]]
name = "logs-down"
local = {port}
syslog = {{ path = "/inbound/syslog" }}

[embedded]
http = "127.0.0.1:0"
[embedded.smtp]
listen = "127.0.0.1:0"
[embedded.mqtt]
listen = "127.0.0.1:0"
[spool]
dir = "{spool}"
first_retry = "200ms"
max_retry_delay = "400ms"

[inspect]
enabled = false
"#,
            port = app.addr.port(),
            spool = state.path().join("spool").display(),
        ),
    )
    .unwrap();
    let mut droid = Droid::start(&["start", "--config", file.to_str().unwrap()], state.path());
    let port = syslog_port(
        &droid
            .line("the syslog line", |l| {
                l.starts_with("syslog ").then(|| l.to_string())
            })
            .await,
    );
    let secret = droid
        .line("the secret", |l| {
            l.split("with the secret ").nth(1).map(str::to_string)
        })
        .await;
    app.inbox_status.store(503, Ordering::SeqCst);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    for i in 0..20 {
        tcp.write_all(format!("<13>down: tcp {i}\n").as_bytes())
            .await
            .unwrap();
    }
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..5 {
        udp.send_to(format!("<13>down: udp {i}").as_bytes(), ("127.0.0.1", port))
            .await
            .unwrap();
    }
    // Every one was tried, refused by the app, and spooled.
    let spooled = state.path().join("spool").join("queue");
    within("25 messages spooled", async {
        loop {
            let n = std::fs::read_dir(&spooled)
                .map(|d| {
                    d.filter(|e| {
                        e.as_ref()
                            .unwrap()
                            .path()
                            .extension()
                            .is_some_and(|x| x == "eml")
                    })
                    .count()
                })
                .unwrap_or(0);
            if n == 25 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    app.inbox_status.store(200, Ordering::SeqCst);
    let mut seen = HashSet::new();
    while seen.len() < 25 {
        let m = next_message(&mut app, &secret).await;
        let text = m["message"].as_str().unwrap().to_string();
        assert!(seen.insert(text.clone()), "{text} arrived twice");
    }
    // Once: nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(1000), app.inbox.recv())
            .await
            .is_err()
    );
    droid.interrupt().await;
}

/// A public server with `--syslog-ports`, or without.
async fn public_server(
    state: &std::path::Path,
    ports: Option<&str>,
    extra: &[&str],
) -> (Droid, SocketAddr) {
    let mut args = vec![
        "server",
        "--domain",
        "tunnel.test",
        "--http",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
    ];
    if let Some(ports) = ports {
        args.extend(["--syslog-ports", ports, "--syslog-bind", "127.0.0.1"]);
    }
    args.extend_from_slice(extra);
    let mut server = Droid::start(&args, state);
    let (_, control) = server.line("the addresses", server_addrs).await;
    if let Some(ports) = ports {
        let line = server
            .line("the syslog line", |l| {
                l.contains("syslog on ports").then(|| l.to_string())
            })
            .await;
        assert!(line.contains(ports), "{line}");
    }
    (server, control)
}

/// `droid http TARGET --server CONTROL --name NAME WISH...`, and the line
/// it printed for syslog.
async fn client_of(
    control: &str,
    target: &str,
    name: &str,
    wish: &[&str],
    state: &std::path::Path,
) -> (Droid, String) {
    let mut args = vec!["http", target, "--server", control, "--name", name];
    args.extend_from_slice(wish);
    args.extend(["--inspect", "127.0.0.1:0"]);
    let mut client = Droid::start(&args, state);
    let line = client
        .line("the syslog line", |l| {
            l.starts_with("syslog").then(|| l.to_string())
        })
        .await;
    (client, line)
}

#[tokio::test]
async fn a_tunnel_keeps_its_port_and_another_client_is_refused_it() {
    let app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let low = dead_port().await;
    let range = format!("{low}-{}", low.saturating_add(5));
    let (server, control) = public_server(state.path(), Some(&range), &[]).await;
    let control = control.to_string();
    let target = app.addr.port().to_string();
    let alpha_state = tempfile::tempdir().unwrap();
    let alpha_dir = alpha_state.path();
    let (alpha, line) = client_of(&control, &target, "alpha", &["--syslog"], alpha_dir).await;
    let held: u16 = line
        .strip_prefix("syslog tunnel.test:")
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((low..=low + 5).contains(&held), "{line}");
    let beta_state = tempfile::tempdir().unwrap();
    let wanted = held.to_string();
    let (beta, refused) = client_of(
        &control,
        &target,
        "beta",
        &["--syslog-port", &wanted],
        beta_state.path(),
    )
    .await;
    assert_eq!(
        refused,
        format!(
            "syslog refused: syslog port {held} is another tunnel's; ask for another, or for none to get a free one"
        )
    );
    beta.interrupt().await;
    // alpha, back with the same name, gets the same port.
    alpha.interrupt().await;
    let (alpha, again) = client_of(&control, &target, "alpha", &["--syslog"], alpha_dir).await;
    assert_eq!(again, line);
    alpha.interrupt().await;
    server.interrupt().await;
}

#[tokio::test]
async fn a_server_without_syslog_ports_refuses_clearly() {
    let app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let (server, control) = public_server(state.path(), None, &[]).await;
    let control = control.to_string();
    let target = app.addr.port().to_string();
    let mut client = Droid::start(
        &[
            "http",
            &target,
            "--server",
            &control,
            "--syslog",
            "--inspect",
            "127.0.0.1:0",
        ],
        state.path(),
    );
    let url = client
        .line("the URL", |l| {
            l.starts_with("http://").then(|| l.to_string())
        })
        .await;
    assert!(
        url.contains(".tunnel.test"),
        "the tunnel itself is up: {url}"
    );
    let line = client
        .line("the syslog line", |l| {
            l.starts_with("syslog").then(|| l.to_string())
        })
        .await;
    assert_eq!(
        line,
        "syslog refused: this server does not run the syslog adapter (a server gives syslog ports with --syslog-ports LOW-HIGH)"
    );
    client.interrupt().await;
    server.interrupt().await;
}

#[tokio::test]
async fn the_clients_of_one_address_get_only_so_many_syslog_ports() {
    let app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let low = dead_port().await;
    let range = format!("{low}-{}", low.saturating_add(20));
    let (server, control) =
        public_server(state.path(), Some(&range), &["--syslog-ports-per-ip", "2"]).await;
    let (control, target) = (control.to_string(), app.addr.port().to_string());
    let mut clients = Vec::new();
    for name in ["one", "two", "three"] {
        let dir = tempfile::tempdir().unwrap();
        let (client, line) = client_of(&control, &target, name, &["--syslog"], dir.path()).await;
        clients.push((client, line, dir));
    }
    assert!(
        clients[0].1.starts_with("syslog tunnel.test:"),
        "{}",
        clients[0].1
    );
    assert!(
        clients[1].1.starts_with("syslog tunnel.test:"),
        "{}",
        clients[1].1
    );
    assert_eq!(
        clients[2].1,
        "syslog refused: the clients of 127.0.0.1 have 2 syslog ports open, the most this server gives one address"
    );
    for (client, _, _) in clients {
        client.interrupt().await;
    }
    server.interrupt().await;
}

/// In a cluster, a tunnel's syslog port answers on every node: node two
/// opens, on its own address, the port node one gave the tunnel, and
/// what `logger` sends there over UDP and TCP reaches the app, signed.
#[tokio::test]
async fn in_a_cluster_a_tunnels_syslog_port_answers_on_every_node() {
    use common::redis_server::Redis;
    let redis = Redis::start().await.unwrap();
    let mut app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let ips = [
        std::net::Ipv4Addr::new(127, 0, 0, 1),
        std::net::Ipv4Addr::new(127, 0, 0, 2),
    ];
    // A port free on both nodes' addresses, TCP and UDP.
    let free = |port: u16| {
        ips.iter().all(|ip| {
            std::net::TcpListener::bind((*ip, port)).is_ok()
                && std::net::UdpSocket::bind((*ip, port)).is_ok()
        })
    };
    let mut port = dead_port().await;
    while !free(port) {
        port = dead_port().await;
    }
    let range = format!("{port}-{port}");
    let url = redis.url();
    let mut nodes = Vec::new();
    for (id, ip) in ["one", "two"].into_iter().zip(ips) {
        let ip = ip.to_string();
        let args = [
            "--syslog-ports",
            &range,
            "--syslog-bind",
            &ip,
            "--cluster",
            &url,
            "--node-id",
            id,
            "--peer",
            "127.0.0.1:0",
            "--cluster-secret",
            "the nodes' secret, long enough 7c0b9a1e",
        ];
        let mut node = Droid::start(&server_args(&args), &state.path().join(id));
        let (_, control) = node.line("the addresses", server_addrs).await;
        node.line("the syslog line", |l| {
            l.contains("syslog on ports").then_some(())
        })
        .await;
        nodes.push((node, control));
    }
    let control = nodes[0].1.to_string();
    let target = app.addr.port().to_string();
    let wish = ["--syslog", "--syslog-path", "/inbound/syslog"];
    let (mut client, line) = client_of(&control, &target, "logs", &wish, state.path()).await;
    assert!(line.contains(&format!(":{port} ")), "{line}");
    let secret = client
        .line("the secret", |l| {
            l.split("with the secret ").nth(1).map(str::to_string)
        })
        .await;
    within("node two opened the port", async {
        while tokio::net::TcpStream::connect((ips[1], port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let two = ips[1].to_string();
    for transport in ["udp", "tcp"] {
        let message = format!("through node two over {transport}");
        let flag = format!("--{transport}");
        let args = [flag.as_str(), "-t", "app", message.as_str()];
        logger_at(&two, port, &args).await;
        let json = next_message(&mut app, &secret).await;
        assert_eq!(json["message"], message.as_str(), "{json}");
    }
    client.interrupt().await;
    for (node, _) in nodes {
        node.interrupt().await;
    }
    redis.kill().await;
}
