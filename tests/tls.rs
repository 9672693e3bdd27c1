//! TLS: the tunnel connection over TLS (a trusted CA, a wrong one,
//! `--insecure`, TLS at one end only), and HTTPS on the public side (SNI
//! routing, 421 for a Host that is not the SNI, `X-Forwarded-Proto`, https
//! URLs), in process and through the real binary with its config files.
//! Every certificate is made here, with rcgen.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::pki::Pki;
use common::*;
use droid_client::{ClientError, ClientTls, ConnectError};
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

/// The control address by the name the certificate covers.
fn by_name(addr: SocketAddr) -> String {
    format!("localhost:{}", addr.port())
}

/// A TLS server whose control port needs TLS; HTTPS too when `https`.
async fn tls_server(pki: &Pki, https: bool) -> (TestServer, Option<SocketAddr>) {
    let tls = pki.server_tls();
    let srv = server_with(|c| {
        c.tls = Some(tls);
        c.https = https;
    })
    .await;
    if !https {
        return (srv, None);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (server, shutdown) = (srv.server.clone(), srv.shutdown.clone());
    tokio::spawn(async move { server.serve_https(listener, shutdown).await });
    (srv, Some(addr))
}

/// Waits for a client that must give up, and returns why.
async fn gave_up(c: TestClient) -> ClientError {
    let mut c = c;
    within("the client gives up", &mut c.task)
        .await
        .unwrap()
        .unwrap_err()
}

#[tokio::test]
async fn the_tunnel_runs_over_tls_with_requests_websockets_and_large_bodies() {
    use tokio_tungstenite::tungstenite::Message;
    let pki = Pki::new();
    let app = origin("app").await;
    let (srv, _) = tls_server(&pki, false).await;
    let mut config = client_config(srv.control, vec![spec(None, &app.target)]);
    config.server = by_name(srv.control);
    config.tls = Some(pki.client_tls());
    let c = client(config).await;

    let (status, body) = get(srv.http, &c.host(), "/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "origin app /hello")
    );

    // 8 MiB each way
    let size = 8 * 1024 * 1024;
    let response = send(srv.http, get_request(&c.host(), &format!("/bytes/{size}"))).await;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), size);
    assert!(body.iter().enumerate().all(|(i, b)| *b == pattern(i)));
    let upload: Vec<u8> = (0..size).map(pattern).collect();
    let request = Request::post("/echo")
        .header("host", c.host())
        .body(full(upload.clone()))
        .unwrap();
    let echoed = send(srv.http, request)
        .await
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert!(echoed == upload, "the echoed body differs");

    let tcp = TcpStream::connect(srv.http).await.unwrap();
    let url = format!("ws://{}/ws", c.host());
    let (mut ws, _) = within("ws handshake", tokio_tungstenite::client_async(url, tcp))
        .await
        .unwrap();
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = within("ws echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(back, Message::text(format!("hello {i}")));
    }
    ws.close(None).await.unwrap();
    c.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let (srv, _) = tls_server(&pki, false).await;
    let app = origin("app").await;
    let mut config = client_config(srv.control, vec![spec(None, &app.target)]);
    config.server = by_name(srv.control);
    config.tls = Some(stranger.client_tls());
    let e = gave_up(client_unchecked(config)).await;
    assert!(
        matches!(e, ClientError::Connect(ConnectError::Untrusted { .. })),
        "{e}"
    );
    let message = e.to_string();
    assert!(
        message.contains("unknown CA") && message.contains("--ca"),
        "{message}"
    );
    assert!(!message.contains('\n'));

    // the right CA, but an address the certificate does not name
    let mut config = client_config(srv.control, vec![spec(None, &app.target)]);
    config.tls = Some(pki.client_tls());
    let e = gave_up(client_unchecked(config)).await;
    assert!(
        e.to_string().contains("not valid for this host name"),
        "{e}"
    );
}

#[tokio::test]
async fn insecure_accepts_any_certificate() {
    let pki = Pki::new();
    let (srv, _) = tls_server(&pki, false).await;
    let app = origin("app").await;
    // by IP, which the certificate does not name either
    let mut config = client_config(srv.control, vec![spec(None, &app.target)]);
    config.tls = Some(ClientTls::insecure().unwrap());
    let c = client(config).await;
    let (status, _) = get(srv.http, &c.host(), "/").await;
    assert_eq!(status, StatusCode::OK);
    c.stop().await;
}

#[tokio::test]
async fn tls_at_one_end_only_fails_at_once_with_one_line_saying_so() {
    let app = origin("app").await;
    // a TLS client, a plain server
    let plain = server().await;
    let mut config = client_config(plain.control, vec![spec(None, &app.target)]);
    config.tls = Some(ClientTls::insecure().unwrap());
    let e = gave_up(client_unchecked(config)).await;
    assert!(
        matches!(e, ClientError::Connect(ConnectError::NotTls { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("without --tls"), "{e}");
    assert!(!e.to_string().contains('\n'));

    // a plain client, a TLS server
    let pki = Pki::new();
    let (srv, _) = tls_server(&pki, false).await;
    let config = client_config(srv.control, vec![spec(None, &app.target)]);
    let e = gave_up(client_unchecked(config)).await;
    assert!(matches!(e, ClientError::Refused(_)), "{e}");
    assert!(e.to_string().contains("requires TLS"), "{e}");
    assert!(e.to_string().contains("--tls"), "{e}");

    // and both still serve the clients that match them
    let mut config = client_config(srv.control, vec![spec(None, &app.target)]);
    config.server = by_name(srv.control);
    config.tls = Some(pki.client_tls());
    client(config).await.stop().await;
    client(client_config(plain.control, vec![spec(None, &app.target)]))
        .await
        .stop()
        .await;
}

/// Opens an HTTPS connection to `addr` naming `sni`.
async fn https_connect(
    pki: &Pki,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    within("TLS handshake", pki.visitor_connector().connect(name, tcp)).await
}

/// GETs `path` with `host` over an HTTPS connection that named `sni`.
async fn https_get(
    pki: &Pki,
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
) -> (StatusCode, String) {
    let tls = https_connect(pki, addr, sni).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = within(
        "https response",
        sender.send_request(get_request(host, path)),
    )
    .await
    .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn https_routes_by_sni_and_a_host_that_is_not_the_sni_gets_421() {
    let pki = Pki::new();
    let app = origin("app").await;
    let other = origin("other").await;
    let (srv, https) = tls_server(&pki, true).await;
    let https = https.unwrap();
    let mut config = client_config(
        srv.control,
        vec![
            spec(Some("alpha"), &app.target),
            spec(Some("beta"), &other.target),
        ],
    );
    config.server = by_name(srv.control);
    config.tls = Some(pki.client_tls());
    let c = client(config).await;
    let port = srv.server.config().public_port.unwrap();
    assert_eq!(c.grants[0].url, format!("https://alpha.{DOMAIN}:{port}"));

    let alpha = format!("alpha.{DOMAIN}");
    let beta = format!("beta.{DOMAIN}");
    let (status, body) = https_get(&pki, https, &alpha, &alpha, "/x").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "origin app /x"));
    let (status, body) = https_get(&pki, https, &beta, &beta, "/y").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "origin other /y"));

    let (_, body) = https_get(&pki, https, &alpha, &format!("{alpha}:443"), "/headers").await;
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");

    // a connection opened for alpha cannot reach beta
    let (status, body) = https_get(&pki, https, &alpha, &beta, "/").await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{body}");
    assert!(body.contains("opened for alpha"), "{body}");

    // a name this server does not serve gets no certificate at all
    let refused = https_connect(&pki, https, "alpha.elsewhere.test").await;
    assert!(refused.is_err());
    let refused = https_connect(&pki, https, &format!("a.b.{DOMAIN}")).await;
    assert!(refused.is_err());

    // plain http still serves, and says http
    let (_, body) = get(srv.http, &alpha, "/headers").await;
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    c.stop().await;
}

// ------------------------------------------------------------ the binary

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn config_files_set_up_tls_and_https_and_curl_gets_through() {
    let pki = Pki::new();
    let app = origin("app").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = pki.write(dir.path());
    let server_file = write(
        dir.path(),
        "server.toml",
        &format!(
            r#"domain = "{DOMAIN}"
http = "127.0.0.1:0"
https = "127.0.0.1:0"
control = "127.0.0.1:0"
tls_cert = "{cert}"
tls_key = "{key}"
"#
        ),
    );
    let check = droid_command(&["config", "check", &server_file], dir.path())
        .output()
        .await
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    let mut server = droid_command(&["server", "--config", &server_file], dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let control: SocketAddr = next_line(&mut lines, "the control address", |l| {
        addr_after(l, "control on ")
    })
    .await;
    let https: SocketAddr = next_line(&mut lines, "the https address", |l| {
        addr_after(l, "https on ")
    })
    .await;

    let client_file = write(
        dir.path(),
        "droid.toml",
        &format!(
            r#"server = "localhost:{}"
ca = "{ca}"
[[tunnels]]
name = "secure"
local = {}
"#,
            control.port(),
            app.addr.port()
        ),
    );
    let check = droid_command(&["config", "check", &client_file], dir.path())
        .output()
        .await
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let mut client = droid_command(&["start", "--config", &client_file], dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut client_lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let url = next_line(&mut client_lines, "the tunnel's URL", |l| {
        l.starts_with("https://").then(|| l.trim().to_string())
    })
    .await;
    assert_eq!(url, format!("https://secure.{DOMAIN}:{}", https.port()));

    let host = format!("secure.{DOMAIN}");
    let out = within(
        "curl",
        Command::new("curl")
            .args([
                "-sS",
                "--resolve",
                &format!("{host}:{}:127.0.0.1", https.port()),
                "--cacert",
                &ca,
                &format!("{url}/via-curl"),
            ])
            .output(),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "origin app /via-curl");

    // the same client on the command line, with a CA that did not sign it
    let stranger = Pki::new();
    let wrong_ca = write(dir.path(), "wrong-ca.pem", &stranger.ca);
    let out = within(
        "droid http with a wrong CA",
        droid_command(
            &[
                "http",
                &app.addr.port().to_string(),
                "--server",
                &format!("localhost:{}", control.port()),
                "--ca",
                &wrong_ca,
            ],
            dir.path(),
        )
        .output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not trust") && stderr.contains("unknown CA"),
        "{stderr}"
    );

    // --insecure connects, after a warning
    let mut insecure = droid_command(
        &[
            "http",
            &app.addr.port().to_string(),
            "--server",
            &control.to_string(),
            "--insecure",
        ],
        dir.path(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut insecure_out = BufReader::new(insecure.stdout.take().unwrap()).lines();
    next_line(&mut insecure_out, "the insecure client's URL", |l| {
        l.starts_with("https://").then_some(())
    })
    .await;
    let mut insecure_err = BufReader::new(insecure.stderr.take().unwrap()).lines();
    let warning = within("the warning", insecure_err.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(warning.contains("WARNING: --insecure"), "{warning}");

    let _ = insecure.kill().await;
    let _ = client.kill().await;
    let _ = server.kill().await;
}

#[tokio::test]
async fn bad_tls_settings_in_files_name_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "server-no-key.toml",
            format!("domain = \"{DOMAIN}\"\ntls_cert = \"/nonexistent/cert.pem\"\n"),
            "tls_cert",
            "needs `tls_key`",
        ),
        (
            "server-missing-file.toml",
            format!(
                "domain = \"{DOMAIN}\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n"
            ),
            "tls_cert",
            "/nonexistent/cert.pem",
        ),
        (
            "server-https-no-cert.toml",
            format!("domain = \"{DOMAIN}\"\nhttps = \"127.0.0.1:0\"\n"),
            "https",
            "needs a certificate",
        ),
        (
            "server-mqtts-no-cert.toml",
            format!("domain = \"{DOMAIN}\"\n[adapters.mqtt]\nlisten_tls = \"127.0.0.1:0\"\n"),
            "listen_tls",
            "needs a certificate",
        ),
        (
            "client-ca-insecure.toml",
            "server = \"localhost:7835\"\nca = \"/nonexistent/ca.pem\"\ninsecure = true\n[[tunnels]]\nname = \"a\"\nlocal = 3000\n".to_string(),
            "ca",
            "contradict",
        ),
        (
            "client-no-server.toml",
            "tls = true\n[[tunnels]]\nname = \"a\"\nlocal = 3000\n".to_string(),
            "tls",
            "need `server`",
        ),
    ];
    for (name, text, key, says) in cases {
        let file = write(dir.path(), name, &text);
        let out = droid_command(&["config", "check", &file], dir.path())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(key) && stderr.contains(says),
            "{name}: {stderr}"
        );
    }
}

/// Runs `mosquitto_pub` at `localhost:PORT` (the name the certificate
/// covers) with `args`; whether it succeeded, and what it said.
async fn mosquitto_pub_tls(port: u16, args: &[&str]) -> (bool, String) {
    mosquitto_pub_at("localhost", port, args).await
}

#[tokio::test]
async fn mqtt_over_tls_delivers_and_refuses_devices_that_do_not_trust_it() {
    let pki = Pki::new();
    let mut app = origin("app").await;
    let (srv, tls) = mqtt_server_with(
        None,
        Duration::from_millis(50),
        Some(pki.server_tls()),
        |_| {},
    )
    .await;
    let tls = tls.unwrap();
    let mut spec = spec(None, &app.target);
    set_mqtt(
        &mut spec,
        droid_adapters::MqttSettings {
            path: Some("/inbound/mqtt".into()),
            ..Default::default()
        },
    );
    let mut config = client_config(srv.control, vec![spec]);
    config.server = by_name(srv.control);
    config.tls = Some(pki.client_tls());
    let c = client(config).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca).unwrap();
    let ca = ca.to_str().unwrap();

    for version in ["mqttv311", "mqttv5"] {
        let topic = format!("{}/secure/{version}", c.name());
        let (ok, out) = mosquitto_pub_tls(
            tls.port(),
            &[
                "--cafile", ca, "-V", version, "-q", "1", "-t", &topic, "-m", "sealed",
            ],
        )
        .await;
        assert!(ok, "{out}");
        assert!(out.contains("received PUBACK"), "{out}");
        let json = app.next_mail().await.json();
        assert_eq!(
            (json["topic"].as_str(), json["payload"].as_str()),
            (Some(topic.as_str()), Some("sealed"))
        );
    }

    // A device that speaks plain MQTT to the TLS port, and one that trusts
    // another CA, get nowhere; the plain port still takes plain MQTT.
    let topic = format!("{}/secure/plain", c.name());
    let (ok, out) = mosquitto_pub_tls(tls.port(), &["-q", "1", "-t", &topic, "-m", "x"]).await;
    assert!(!ok, "plain MQTT on the TLS port: {out}");
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other.path(), Pki::new().ca).unwrap();
    let (ok, out) = mosquitto_pub_tls(
        tls.port(),
        &[
            "--cafile",
            other.path().to_str().unwrap(),
            "-q",
            "1",
            "-t",
            &topic,
            "-m",
            "x",
        ],
    )
    .await;
    assert!(!ok, "a device trusting another CA: {out}");
    let (ok, out) = mosquitto_pub_tls(
        srv.mqtt.unwrap().port(),
        &["-q", "1", "-t", &topic, "-m", "plain"],
    )
    .await;
    assert!(ok, "{out}");
    assert_eq!(app.next_mail().await.json()["payload"], "plain");
    assert!(app.inbox.try_recv().is_err(), "nothing else arrived");
    c.stop().await;
}

#[tokio::test]
async fn mqtts_without_a_certificate_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = droid_command(&server_args(&["--mqtts", "127.0.0.1:0"]), dir.path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
}

/// Sends `messages` to `127.0.0.1:PORT` with Python's `ssl` module,
/// octet-counted as RFC 5425 says, trusting the CA in `ca` for the name
/// `host`; prints `SENT`, or why not.
const SYSLOG_TLS: &str = r#"
import socket, ssl, sys
port, ca, host = int(sys.argv[1]), sys.argv[2], sys.argv[3]
context = ssl.create_default_context(cafile=ca)
try:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            for message in sys.argv[4:]:
                frame = message.encode()
                tls.sendall(str(len(frame)).encode() + b" " + frame)
            tls.unwrap()
    print("SENT")
except ssl.SSLError as e:
    print("TLS FAILED", e)
"#;

/// Sends `message` over plain TCP (LF-framed) and as a UDP datagram.
const SYSLOG_PLAIN: &str = r#"
import socket, sys
port, message = int(sys.argv[1]), sys.argv[2]
with socket.create_connection(("127.0.0.1", port), timeout=10) as tcp:
    tcp.sendall(message.encode() + b" over tcp\n")
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.sendto((message + " over udp").encode(), ("127.0.0.1", port))
print("SENT")
"#;

/// A public `droid server` with a certificate and syslog ports, and a
/// `droid http` tunnel to `app` that asked for syslog: the server, the
/// client, the folder of `cert.pem`, `key.pem` and `ca.pem`, and the
/// tunnel's syslog port.
async fn syslog_tls_tunnel(pki: &Pki, app: &Origin) -> (Droid, Droid, tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = pki.write(dir.path());
    let low = dead_port().await;
    let range = format!("{low}-{}", low.saturating_add(3));
    let mut server = Droid::start(
        &server_args(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--syslog-ports",
            &range,
            "--syslog-bind",
            "127.0.0.1",
        ]),
        dir.path(),
    );
    let (_, control) = server.line("the addresses", server_addrs).await;
    let said = server
        .line("the syslog line", |l| {
            l.contains("syslog on ports").then(|| l.to_string())
        })
        .await;
    assert!(said.contains("tls with the server's certificate"), "{said}");

    let mut client = tls_client(
        app,
        dir.path(),
        control,
        &ca,
        &["--syslog", "--syslog-path", "/inbound/syslog"],
    );
    let line = client
        .line("the syslog line", |l| {
            l.starts_with("syslog ").then(|| l.to_string())
        })
        .await;
    let suffix = "(udp, tcp and tls), arrives as POST /inbound/syslog (json)";
    assert!(line.ends_with(suffix), "{line}");
    let port = line
        .strip_prefix(&format!("syslog {DOMAIN}:"))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("{line}"));
    (client, server, dir, port)
}

#[tokio::test]
async fn syslog_over_tls_arrives_on_the_tunnels_port_beside_udp_and_tcp() {
    let pki = Pki::new();
    let mut app = origin("app").await;
    let (client, server, dir, port) = syslog_tls_tunnel(&pki, &app).await;
    let ca = dir.path().join("ca.pem").display().to_string();
    let port_arg = port.to_string();

    // Two messages over one TLS connection arrive in order, as tls.
    let first = "<34>1 2026-12-07T10:00:00Z gw app 7 ID47 - first over tls";
    let second = "<165>Dec  7 10:00:01 gw app[7]: second over tls";
    let (ok, out, err) = python(SYSLOG_TLS, &[&port_arg, &ca, DOMAIN, first, second]).await;
    assert!(ok && out.trim() == "SENT", "{out}{err}");
    for (message, format) in [
        ("first over tls", "rfc5424"),
        ("second over tls", "rfc3164"),
    ] {
        let post = app.next_mail().await;
        assert_eq!(post.path, "/inbound/syslog");
        let json = post.json();
        assert_eq!(json["transport"], "tls", "{json}");
        assert_eq!(json["message"], message, "{json}");
        assert_eq!(json["format"], format, "{json}");
    }

    // Plain TCP and UDP still work on the same port number.
    let (ok, out, err) = python(SYSLOG_PLAIN, &[&port_arg, "<14>plain"]).await;
    assert!(ok && out.trim() == "SENT", "{out}{err}");
    let mut transports: Vec<String> = Vec::new();
    for _ in 0..2 {
        let json = app.next_mail().await.json();
        transports.push(json["transport"].as_str().unwrap().to_string());
    }
    transports.sort();
    assert_eq!(transports, ["tcp", "udp"]);

    // A sender that trusts another CA stops at the handshake: nothing of
    // its message reaches the app.
    let other = write(dir.path(), "other-ca.pem", &Pki::new().ca);
    let (ok, out, err) = python(
        SYSLOG_TLS,
        &[&port_arg, &other, DOMAIN, "<14>1 - - - - - spoofed"],
    )
    .await;
    assert!(ok && out.starts_with("TLS FAILED"), "{out}{err}");
    let (ok, out, err) = python(SYSLOG_PLAIN, &[&port_arg, "<14>after"]).await;
    assert!(ok, "{out}{err}");
    for _ in 0..2 {
        let json = app.next_mail().await.json();
        assert!(
            json["message"].as_str().unwrap().starts_with("after"),
            "{json}"
        );
    }
    assert!(app.inbox.try_recv().is_err(), "nothing else arrived");
    drop((client, server));
}

#[tokio::test]
async fn rsyslog_forwards_over_tls_trusting_the_servers_certificate() {
    let gtls = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .any(|dir| Path::new(dir).join("rsyslog/lmnsd_gtls.so").exists());
    assert!(
        gtls,
        "rsyslog's TLS driver is not installed (Debian: rsyslog-gnutls); run `bash .ci/test`"
    );
    let pki = Pki::new();
    let mut app = origin("app").await;
    let (client, server, dir, port) = syslog_tls_tunnel(&pki, &app).await;
    let input = dead_port().await;
    let work = dir.path().join("rsyslog");
    std::fs::create_dir(&work).unwrap();
    let config = format!(
        r#"global(workDirectory="{work}" DefaultNetstreamDriverCAFile="{ca}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{input}")
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
       StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"
       StreamDriverPermittedPeers="{DOMAIN}"
       TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
"#,
        work = work.display(),
        ca = dir.path().join("ca.pem").display(),
    );
    let conf = dir.path().join("rsyslog.conf");
    std::fs::write(&conf, config).unwrap();
    let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("rsyslogd");
    let mut rsyslog = Command::new(rsyslogd)
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.path().join("rsyslog.pid"))
        .kill_on_drop(true)
        .spawn()
        .expect("rsyslogd is not installed (Debian: rsyslog, rsyslog-gnutls); run `bash .ci/test`");
    // Ready when its input takes a connection.
    within("rsyslog listens", async {
        while TcpStream::connect(("127.0.0.1", input)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut to_rsyslog = TcpStream::connect(("127.0.0.1", input)).await.unwrap();
    for i in 0..3 {
        let line = format!("<14>1 2026-12-07T10:00:0{i}Z gw fwd - - - sealed {i}\n");
        tokio::io::AsyncWriteExt::write_all(&mut to_rsyslog, line.as_bytes())
            .await
            .unwrap();
    }
    for i in 0..3 {
        let json = app.next_mail().await.json();
        assert_eq!(json["transport"], "tls", "{json}");
        assert_eq!(json["app_name"], "fwd", "{json}");
        assert_eq!(json["message"], format!("sealed {i}"), "in order: {json}");
    }
    rsyslog.kill().await.unwrap();
    drop((client, server));
}

/// A public `droid server` with a certificate taking mail on `--smtp`
/// (STARTTLS) and `--smtps`, and a tunnel to `app` whose mail goes to
/// `/inbound/mail`: the server, the client, the folder of the PEM files,
/// the two SMTP addresses and the tunnel's mail domain.
struct MailOverTls {
    _server: Droid,
    _client: Droid,
    dir: tempfile::TempDir,
    smtp: SocketAddr,
    smtps: SocketAddr,
    domain: String,
}

async fn mail_over_tls(pki: &Pki, app: &Origin) -> MailOverTls {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca) = pki.write(dir.path());
    let mut server = Droid::start(
        &server_args(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--smtp",
            "127.0.0.1:0",
            "--smtps",
            "127.0.0.1:0",
            "--no-spool",
        ]),
        dir.path(),
    );
    let (_, control) = server.line("the addresses", server_addrs).await;
    let line = server
        .line("the smtp line", |l| {
            l.contains("smtp on ").then(|| l.to_string())
        })
        .await;
    assert!(
        line.contains("STARTTLS with the server's certificate"),
        "{line}"
    );
    let smtp = addr_after(&line, "smtp on ").unwrap();
    let smtps = server
        .line("the smtps line", |l| addr_after(l, "smtps on "))
        .await;
    let mut client = tls_client(
        app,
        dir.path(),
        control,
        &ca,
        &["--mail-path", "/inbound/mail"],
    );
    let domain = client.line("the mail line", mail_domain).await;
    MailOverTls {
        _server: server,
        _client: client,
        dir,
        smtp,
        smtps,
        domain,
    }
}

/// Sends one mail with Python's smtplib to `localhost:PORT` (the name the
/// certificate covers): `starttls`, `plain` or `implicit` TLS, trusting
/// the CA in `ca`; prints the TLS version it agreed on, or `plain`.
const SMTPLIB_TLS: &str = r#"
import smtplib, ssl, sys
mode, port, ca, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.create_default_context(cafile=ca)
message = "From: ann@example.com\r\nTo: " + rcpt + "\r\nSubject: " + mode + "\r\n\r\nsealed\r\n"
if mode == "implicit":
    smtp = smtplib.SMTP_SSL("localhost", port, context=context, timeout=10)
else:
    smtp = smtplib.SMTP("localhost", port, timeout=10)
    smtp.ehlo()
    if mode == "starttls":
        assert smtp.has_extn("starttls"), smtp.esmtp_features
        smtp.starttls(context=context)
        smtp.ehlo()
        assert not smtp.has_extn("starttls"), "offered again inside TLS"
smtp.sendmail("ann@example.com", [rcpt], message)
print(smtp.sock.version() if hasattr(smtp.sock, "version") else "plain")
smtp.quit()
"#;

#[tokio::test]
async fn mail_comes_over_starttls_and_implicit_tls_and_says_so() {
    let pki = Pki::new();
    let mut app = origin("app").await;
    let m = mail_over_tls(&pki, &app).await;
    let ca = m.dir.path().join("ca.pem").display().to_string();
    let rcpt = format!("support@{}", m.domain);
    for (mode, port) in [
        ("starttls", m.smtp.port()),
        ("implicit", m.smtps.port()),
        ("plain", m.smtp.port()),
    ] {
        let (ok, out, err) = python(SMTPLIB_TLS, &[mode, &port.to_string(), &ca, &rcpt]).await;
        assert!(ok, "{mode}: {out}{err}");
        let post = app.next_mail().await;
        assert_eq!(post.path, "/inbound/mail");
        let json = post.json();
        assert_eq!(json["subject"], mode);
        if mode == "plain" {
            assert_eq!(json["tls"], serde_json::Value::Null, "{json}");
            assert_eq!(json["envelope"]["tls"], false);
        } else {
            assert_eq!(json["tls"]["version"], out.trim(), "{mode}: {json}");
            let cipher = json["tls"]["cipher"].as_str().unwrap();
            assert!(cipher.starts_with("TLS"), "{mode}: {json}");
            assert_eq!(json["envelope"]["tls"], true);
        }
    }

    // swaks, an independent SMTP client, checks the certificate too.
    let out = within(
        "swaks",
        Command::new("swaks")
            .args([
                "--server",
                "localhost",
                "--port",
                &m.smtp.port().to_string(),
            ])
            .args([
                "--to",
                &rcpt,
                "--from",
                "swaks@example.com",
                "--header",
                "Subject: swaks",
            ])
            .args(["--tls", "--tls-verify", "--tls-ca-path", &ca])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("swaks is not installed (Debian: swaks); run `bash .ci/test`");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    let json = app.next_mail().await.json();
    assert_eq!(json["subject"], "swaks");
    assert!(
        json["tls"]["version"]
            .as_str()
            .unwrap()
            .starts_with("TLSv1."),
        "{json}"
    );
}

/// Says EHLO and STARTTLS in plain text with a whole mail transaction
/// right behind it in the same packet (what a man in the middle would
/// add), then TLS, EHLO and QUIT: prints the first reply inside TLS.
const STARTTLS_INJECTION: &str = r#"
import socket, ssl, sys
port, ca, rcpt = int(sys.argv[1]), sys.argv[2], sys.argv[3]
raw = socket.create_connection(("127.0.0.1", port), timeout=10)
def reply(f):
    while True:
        line = f.readline().decode()
        if line[3:4] != "-":
            return line.strip()
f = raw.makefile("rb")
reply(f)
raw.sendall(b"EHLO attacker\r\n"); reply(f)
injected = ("STARTTLS\r\nEHLO x\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<" + rcpt +
            ">\r\nDATA\r\nSubject: injected\r\n\r\nforged\r\n.\r\n")
raw.sendall(injected.encode())
assert reply(f).startswith("220")
tls = ssl.create_default_context(cafile=ca).wrap_socket(raw, server_hostname="localhost")
g = tls.makefile("rb")
tls.sendall(b"EHLO client\r\n")
print(reply(g))
tls.sendall(b"QUIT\r\n"); reply(g)
"#;

#[tokio::test]
async fn commands_sent_in_plain_text_behind_starttls_are_dropped() {
    let pki = Pki::new();
    let mut app = origin("app").await;
    let m = mail_over_tls(&pki, &app).await;
    let ca = m.dir.path().join("ca.pem").display().to_string();
    let rcpt = format!("support@{}", m.domain);
    let (ok, out, err) = python(
        STARTTLS_INJECTION,
        &[&m.smtp.port().to_string(), &ca, &rcpt],
    )
    .await;
    assert!(ok, "{out}{err}");
    // The first answer inside TLS is to the client's own EHLO.
    assert!(out.trim().starts_with("250 "), "{out}");
    // A real mail after it is the first thing the app gets: the
    // injected one never was.
    let port = m.smtp.port().to_string();
    let (ok, out, err) = python(SMTPLIB_TLS, &["starttls", &port, &ca, &rcpt]).await;
    assert!(ok, "{out}{err}");
    assert_eq!(app.next_mail().await.json()["subject"], "starttls");
    assert!(app.inbox.try_recv().is_err(), "nothing else arrived");
}

/// `droid http APP --server localhost:PORT --ca CA EXTRA...` with an
/// inspector, its state in `dir/client`.
fn tls_client(app: &Origin, dir: &Path, control: SocketAddr, ca: &str, extra: &[&str]) -> Droid {
    let state = dir.join("client");
    std::fs::create_dir(&state).unwrap();
    let (control, target) = (
        format!("localhost:{}", control.port()),
        app.addr.port().to_string(),
    );
    let mut args = vec![
        "http",
        &target,
        "--server",
        &control,
        "--ca",
        ca,
        "--inspect",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Droid::start(&args, &state)
}

/// `postfix`, the binary Debian installs (outside a user's PATH).
fn postfix_binary(name: &str) -> String {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|dir| format!("{dir}/{name}"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("{name} is not installed (Debian: postfix); run `bash .ci/test`"))
}

#[tokio::test]
async fn postfix_delivers_to_droid_over_starttls_when_it_must_encrypt() {
    let pki = Pki::new();
    let mut app = origin("app").await;
    let m = mail_over_tls(&pki, &app).await;
    // A Postfix of its own: its queue, its log, and one way out: Droid's
    // SMTP port, where it must encrypt (smtp_tls_security_level = encrypt).
    let pf = m.dir.path().join("postfix");
    std::fs::create_dir_all(pf.join("queue")).unwrap();
    std::fs::create_dir_all(pf.join("data")).unwrap();
    std::fs::copy("/etc/postfix/master.cf", pf.join("master.cf"))
        .expect("postfix is not installed (Debian: postfix); run `bash .ci/test`");
    let d = pf.display();
    std::fs::write(
        pf.join("main.cf"),
        format!(
            "compatibility_level = 3.6\nqueue_directory = {d}/queue\ndata_directory = {d}/data\n\
             mail_owner = postfix\nsetgid_group = postdrop\ninet_interfaces = loopback-only\n\
             inet_protocols = ipv4\nmydestination =\nmyhostname = sender.example\n\
             relayhost = [127.0.0.1]:{port}\nsmtp_tls_security_level = encrypt\n\
             master_service_disable = inet\nmaillog_file_prefixes = {d}\n\
             maillog_file = {d}/maillog\nalias_maps =\nalias_database =\n",
            port = m.smtp.port()
        ),
    )
    .unwrap();
    let _ = std::process::Command::new("chown")
        .args(["postfix"])
        .arg(pf.join("data"))
        .status();
    let postfix = postfix_binary("postfix");
    let made = within(
        "postfix set-permissions",
        Command::new(&postfix)
            .arg("-c")
            .arg(&pf)
            .args(["set-permissions", "create-missing"])
            .output(),
    )
    .await
    .unwrap();
    assert!(made.status.success(), "{made:?}");
    // The master in the foreground (`postfix start-fg` leaves it detached):
    // stopped by its own pid, and its children go with it.
    let daemons = std::process::Command::new(postfix_binary("postconf"))
        .args(["-h", "daemon_directory"])
        .output()
        .unwrap();
    let daemons = String::from_utf8_lossy(&daemons.stdout).trim().to_string();
    let mut master = Command::new(format!("{daemons}/master"))
        .arg("-c")
        .arg(&pf)
        .arg("-d")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Mail dropped with sendmail waits in the queue until the master takes it.
    let rcpt = format!("support@{}", m.domain);
    let mut sendmail = Command::new(postfix_binary("sendmail"))
        .arg("-C")
        .arg(&pf)
        .args(["-f", "ops@sender.example", &rcpt])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let message = format!(
        "From: ops@sender.example\r\nTo: {rcpt}\r\nSubject: from postfix\r\n\r\nencrypted on the way\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(sendmail.stdin.as_mut().unwrap(), message.as_bytes())
        .await
        .unwrap();
    drop(sendmail.stdin.take());
    assert!(within("sendmail", sendmail.wait()).await.unwrap().success());
    let mail = app.next_mail().await.json();
    assert_eq!(mail["subject"], "from postfix");
    assert!(
        mail["tls"]["version"]
            .as_str()
            .unwrap()
            .starts_with("TLSv1."),
        "{mail}"
    );
    assert_eq!(mail["envelope"]["mail_from"], "ops@sender.example");
    let _ = std::process::Command::new("kill")
        .arg(master.id().unwrap().to_string())
        .status();
    within("postfix's master to stop", master.wait())
        .await
        .unwrap();
}
