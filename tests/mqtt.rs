//! MQTT through a real server, tunnel, client and app on 127.0.0.1, driven
//! by Debian's `mosquitto_pub` and `mosquitto_sub` (3.1.1 and 5), by
//! rumqttc (3.1.1 and 5), and by a device loop written on the `mqttbytes`
//! codec for the 500 devices at once.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use droid_adapters::MqttSettings;
use mqttbytes::{QoS, v4};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const SECRET: &str = WHSEC;

/// A tunnel whose MQTT messages go to the origin's `/inbound/mqtt`.
async fn tunnel(srv: &TestServer, app: &Origin, auth: Option<&str>) -> TestClient {
    let mut spec = spec(None, &app.target);
    spec.secret = Some(SECRET.into());
    set_mqtt(
        &mut spec,
        MqttSettings {
            path: Some("/inbound/mqtt".into()),
            auth: auth.map(str::to_string),
            ..MqttSettings::default()
        },
    );
    client(client_config(srv.control, vec![spec])).await
}

/// Runs `mosquitto_pub -d ARGS` against `addr`; its exit status and output.
async fn mosquitto_pub(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    mosquitto_pub_at("127.0.0.1", addr.port(), args).await
}

/// The JSON of a delivery, after checking its signature and headers.
fn checked(post: &Received) -> Value {
    assert_eq!(post.header("droid-adapter"), "mqtt");
    assert_eq!(post.header("content-type"), "application/json");
    assert!(signed_with(post, SECRET));
    post.json()
}

#[tokio::test]
async fn publishes_at_qos_0_and_1_arrive_as_signed_posts_in_both_versions() {
    let mut app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, None).await;
    let mqtt = srv.mqtt.unwrap();
    for (version, qos) in [
        ("mqttv311", "0"),
        ("mqttv311", "1"),
        ("mqttv5", "0"),
        ("mqttv5", "1"),
    ] {
        let topic = format!("{}/sensors/{version}/{qos}", c.name());
        let (ok, out) = mosquitto_pub(
            mqtt,
            &[
                "-V", version, "-q", qos, "-t", &topic, "-m", "21.5", "-i", "dev-1",
            ],
        )
        .await;
        assert!(ok, "{out}");
        let post = app.next_mail().await;
        assert_eq!(post.path, "/inbound/mqtt");
        let json = checked(&post);
        assert_eq!(json["topic"], topic);
        assert_eq!(json["subtopic"], format!("sensors/{version}/{qos}"));
        assert_eq!(json["payload"], "21.5");
        assert_eq!(json["qos"], qos.parse::<u64>().unwrap());
        assert_eq!(json["client_id"], "dev-1");
        if qos == "1" {
            assert!(out.contains("received PUBACK"), "{out}");
        }
    }
    // MQTT 5 properties reach the app.
    let topic = format!("{}/props", c.name());
    let (ok, out) = mosquitto_pub(
        mqtt,
        &[
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            &topic,
            "-m",
            "{}",
            "-D",
            "publish",
            "user-property",
            "unit",
            "C",
            "-D",
            "publish",
            "content-type",
            "application/json",
            "-D",
            "publish",
            "response-topic",
            "replies/1",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let post = app.next_mail().await;
    // The official Standard Webhooks verifier takes it as it is.
    standard_webhooks_verify(&post, SECRET).await.unwrap();
    let json = checked(&post);
    assert_eq!(
        json["properties"]["user_properties"],
        serde_json::json!([["unit", "C"]])
    );
    assert_eq!(json["properties"]["content_type"], "application/json");
    assert_eq!(json["properties"]["response_topic"], "replies/1");
    c.stop().await;
}

#[tokio::test]
async fn binary_and_1_mib_payloads_arrive_exact() {
    let mut app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, None).await;
    let dir = tempfile::tempdir().unwrap();
    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    for (name, payload) in [("binary", &binary), ("big", &big)] {
        let file = dir.path().join(name);
        std::fs::write(&file, payload).unwrap();
        let topic = format!("{}/{name}", c.name());
        let (ok, out) = mosquitto_pub(
            srv.mqtt.unwrap(),
            &["-q", "1", "-t", &topic, "-f", file.to_str().unwrap()],
        )
        .await;
        assert!(ok, "{out}");
        let json = checked(&app.next_mail().await);
        let got = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            json["payload_base64"].as_str().unwrap(),
        )
        .unwrap();
        assert!(got == *payload, "{name} arrived changed");
    }
    c.stop().await;
}

#[tokio::test]
async fn a_qos_1_message_is_spooled_while_the_app_is_down_and_delivered_once_after() {
    let mut app = origin("app").await;
    let spool = tempfile::tempdir().unwrap();
    let srv = mqtt_server(Some(spool.path())).await;
    let c = tunnel(&srv, &app, None).await;
    app.inbox_status.store(503, Ordering::SeqCst);
    let topic = format!("{}/while-down", c.name());
    let (ok, out) =
        mosquitto_pub(srv.mqtt.unwrap(), &["-q", "1", "-t", &topic, "-m", "kept"]).await;
    assert!(
        ok && out.contains("received PUBACK"),
        "acknowledged once spooled: {out}"
    );
    app.inbox_status.store(200, Ordering::SeqCst);
    let post = app.next_mail().await;
    let json = checked(&post);
    assert_eq!(json["payload"], "kept");
    // Once: nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(800), app.inbox.recv())
            .await
            .is_err()
    );
    c.stop().await;
}

#[tokio::test]
async fn refusals_reach_the_publisher_in_its_protocols_terms() {
    let app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, None).await;
    let mqtt = srv.mqtt.unwrap();
    // No tunnel by that name: MQTT 5 gets 0x90, 3.1.1 is disconnected.
    let (ok, out) = mosquitto_pub(
        mqtt,
        &["-V", "mqttv5", "-q", "1", "-t", "nobody/x", "-m", "x"],
    )
    .await;
    assert!(out.contains("RC:144"), "{ok} {out}");
    let (ok, out) = mosquitto_pub(
        mqtt,
        &["-V", "mqttv311", "-q", "1", "-t", "nobody/x", "-m", "x"],
    )
    .await;
    assert!(!ok && !out.contains("received PUBACK"), "{out}");
    // The app's 4xx reaches an MQTT 5 publisher as a reason code.
    app.inbox_status.store(422, Ordering::SeqCst);
    let topic = format!("{}/refused", c.name());
    let (ok, out) =
        mosquitto_pub(mqtt, &["-V", "mqttv5", "-q", "1", "-t", &topic, "-m", "x"]).await;
    assert!(out.contains("RC:128"), "{ok} {out}");
    // QoS 2 is refused: the connection ends without PUBREC.
    let (ok, out) =
        mosquitto_pub(mqtt, &["-V", "mqttv5", "-q", "2", "-t", &topic, "-m", "x"]).await;
    assert!(!out.contains("received PUBREC"), "{ok} {out}");
    c.stop().await;
}

#[tokio::test]
async fn a_tunnel_with_a_login_takes_only_its_devices() {
    let mut app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, Some("dev:pw")).await;
    let mqtt = srv.mqtt.unwrap();
    let topic = format!("{}/secure", c.name());
    let (ok, out) = mosquitto_pub(
        mqtt,
        &[
            "-u", "dev", "-P", "wrong", "-q", "1", "-t", &topic, "-m", "x",
        ],
    )
    .await;
    assert!(
        !ok && out.to_lowercase().contains("bad user name or password"),
        "{out}"
    );
    let (ok, out) =
        mosquitto_pub(mqtt, &["-V", "mqttv5", "-q", "1", "-t", &topic, "-m", "x"]).await;
    assert!(out.contains("RC:135"), "no login: {ok} {out}");
    let (ok, out) = mosquitto_pub(
        mqtt,
        &["-u", "dev", "-P", "pw", "-q", "1", "-t", &topic, "-m", "in"],
    )
    .await;
    assert!(ok, "{out}");
    let json = checked(&app.next_mail().await);
    assert_eq!(json["username"], "dev");
    assert_eq!(json["payload"], "in");
    c.stop().await;
}

#[tokio::test]
async fn a_will_is_posted_when_a_device_drops() {
    let mut app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, None).await;
    let will = format!("{}/status/dev-9", c.name());
    let hello = format!("{}/hello", c.name());
    // mosquitto_pub -l keeps the connection open, publishing stdin's lines.
    let mut device = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &srv.mqtt.unwrap().port().to_string(),
        ])
        .args(["-i", "dev-9", "-q", "1", "-t", &hello, "-l"])
        .args([
            "--will-topic",
            &will,
            "--will-payload",
            "gone",
            "--will-qos",
            "1",
        ])
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = device.stdin.take().unwrap();
    stdin.write_all(b"up\n").await.unwrap();
    assert_eq!(checked(&app.next_mail().await)["payload"], "up");
    // Killed without DISCONNECT.
    device.kill().await.unwrap();
    let json = checked(&app.next_mail().await);
    assert_eq!(json["topic"], will);
    assert_eq!(json["payload"], "gone");
    assert_eq!(json["will"], true);
    c.stop().await;
}

/// One device on the `mqttbytes` codec: connects and publishes `message`
/// at QoS 1; true once acknowledged.
async fn device(addr: SocketAddr, id: &str, topic: &str, message: &str) -> bool {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    v4::Connect::new(id).write(&mut out).unwrap();
    let mut publish = v4::Publish::new(topic, QoS::AtLeastOnce, message.as_bytes().to_vec());
    publish.pkid = 1;
    publish.write(&mut out).unwrap();
    socket.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        match v4::read(&mut buf, 1 << 20) {
            Ok(v4::Packet::PubAck(ack)) => return ack.pkid == 1,
            Ok(_) => {}
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                if socket.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_devices_at_once_and_bad_ones_close_only_themselves() {
    let mut app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, None).await;
    let mqtt = srv.mqtt.unwrap();

    // A device sending garbage, one over the size limit, and one sending
    // its CONNECT a byte a second: each is closed alone.
    let mut garbage = TcpStream::connect(mqtt).await.unwrap();
    garbage
        .write_all(b"\x10\xff\xff\xff\xff\x7f garbage")
        .await
        .unwrap();
    let mut huge = TcpStream::connect(mqtt).await.unwrap();
    let mut out = BytesMut::new();
    v4::Connect::new("huge").write(&mut out).unwrap();
    out.extend_from_slice(b"\x30\xff\xff\xff\x7f"); // a PUBLISH of 256 MiB
    huge.write_all(&out).await.unwrap();
    let mut slow = TcpStream::connect(mqtt).await.unwrap();
    slow.write_all(b"\x10").await.unwrap();

    let name = c.name().to_string();
    let mut devices = tokio::task::JoinSet::new();
    for i in 0..500 {
        let topic = format!("{name}/devices/{i}");
        devices.spawn(async move { device(mqtt, &format!("dev-{i}"), &topic, "ok").await });
    }
    let mut acked = 0;
    within("500 devices", async {
        while let Some(done) = devices.join_next().await {
            acked += usize::from(done.unwrap());
        }
    })
    .await;
    assert_eq!(acked, 500);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..500 {
        let json = checked(&app.next_mail().await);
        seen.insert(json["topic"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 500, "each device's message once");
    for (what, socket) in [("garbage", &mut garbage), ("too large", &mut huge)] {
        // Closed by the server (end of stream, or a reset): `within` fails
        // the test if the connection were left open instead.
        let mut rest = Vec::new();
        if within(what, socket.read_to_end(&mut rest)).await.is_ok() {
            assert!(rest.len() < 64, "{what}: {} bytes came back", rest.len());
        }
    }
    // The slow one is still waiting; the others kept working meanwhile.
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), slow.read(&mut byte))
            .await
            .is_err()
    );
    app.inbox_status.store(200, Ordering::SeqCst);
    c.stop().await;
}

#[tokio::test]
async fn droid_http_prints_its_mqtt_line_and_takes_publishes() {
    let mut app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let port = app.addr.port().to_string();
    let mut droid = Droid::start(
        &[
            "http",
            &port,
            "--http",
            "127.0.0.1:0",
            "--no-smtp",
            "--mqtt",
            "127.0.0.1:0",
            "--mqtt-path",
            "/inbound/mqtt",
            "--mail-secret",
            SECRET,
            "--no-inspect",
        ],
        state.path(),
    );
    let line = droid
        .line("the mqtt line", |l| {
            l.starts_with("mqtt ").then(|| l.to_string())
        })
        .await;
    let addr = addr_after(&line, "mqtt ").unwrap();
    let topics = line.split(", ").nth(1).unwrap().split(' ').next().unwrap();
    let name = topics.trim_end_matches("/#");
    assert!(
        line.ends_with("arrives as POST /inbound/mqtt (json)"),
        "{line}"
    );
    let (ok, out) = mosquitto_pub(addr, &["-q", "1", "-t", &format!("{name}/x"), "-m", "hi"]).await;
    assert!(ok, "{out}");
    assert_eq!(checked(&app.next_mail().await)["payload"], "hi");
    assert!(droid.interrupt().await.success());
}

/// Serves one HTTP request on `listener` with a 200; its body.
/// Connections that close without a byte (the client's probes) are skipped.
async fn one_post(listener: tokio::net::TcpListener) -> Vec<u8> {
    loop {
        let (socket, _) = listener.accept().await.unwrap();
        if let Some(body) = post_on(socket).await {
            return body;
        }
    }
}

async fn post_on(mut socket: TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            assert!(buf.is_empty(), "a request ended early");
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await
                    .unwrap();
                return Some(buf[end + 4..end + 4 + length].to_vec());
            }
        }
    }
}

#[tokio::test]
async fn a_message_spooled_while_the_app_is_stopped_arrives_within_3_s_of_its_start() {
    // The spool's own first retry is a minute away: only the client's
    // word that the app is back can make it quicker.
    let spool = tempfile::tempdir().unwrap();
    let srv = mqtt_server_retrying(Some(spool.path()), Duration::from_secs(60)).await;
    let port = dead_port().await;
    let target = droid_client::Target::new("127.0.0.1", port);
    let mut spec = spec(None, &target);
    spec.secret = Some(SECRET.into());
    let c = client(client_config(srv.control, vec![spec])).await;
    let topic = format!("{}/restart", c.name());
    let (ok, out) = mosquitto_pub(
        srv.mqtt.unwrap(),
        &["-q", "1", "-t", &topic, "-m", "waited"],
    )
    .await;
    assert!(
        ok && out.contains("received PUBACK"),
        "spooled and acknowledged: {out}"
    );

    let app = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(3), one_post(app))
        .await
        .expect("delivered within 3 s of the app listening again");
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["payload"], "waited");
    println!(
        "delivered {:?} after the app started listening",
        started.elapsed()
    );
    c.stop().await;
}

#[tokio::test]
async fn the_app_publishes_to_subscribed_devices_and_retained_messages_wait_for_late_ones() {
    let app = origin("app").await;
    let srv = mqtt_server(None).await;
    let inspector = droid_client::Inspector::new(droid_client::InspectorOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let mut config = client_config(srv.control, vec![spec(None, &app.target)]);
    config.inspector = Some(inspector.clone());
    let c = client(config).await;
    let shutdown = c.shutdown.clone();
    tokio::spawn(async move { inspector.serve(listener, None, shutdown).await });
    let mqtt = srv.mqtt.unwrap();
    let name = c.name().to_string();

    let mut plus =
        Subscriber::start(mqtt, "mqttv311", &[&format!("{name}/sensors/+/cmd")], None).await;
    let mut hash = Subscriber::start(mqtt, "mqttv5", &[&format!("{name}/#")], None).await;
    let (status, answer) = app_publish(
        api,
        serde_json::json!({"topic": "sensors/1/cmd", "payload": "on", "qos": 1}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered_to"], 2);
    assert_eq!(answer["topic"], format!("{name}/sensors/1/cmd"));
    for s in [&mut plus, &mut hash] {
        let line = s
            .line("the command", |l| {
                l.starts_with(&format!("{name}/sensors/1/cmd"))
            })
            .await;
        assert!(line.ends_with(" on"), "{line}");
    }
    // Only the # subscriber matches this one.
    let (status, answer) = app_publish(api, serde_json::json!({"topic": format!("{name}/lights/2"), "payload_base64": "AAE=", "qos": 0})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered_to"], 1);

    // A retained message reaches a device that subscribes later.
    let (status, answer) = app_publish(
        api,
        serde_json::json!({"topic": "config/rate", "payload": "5s", "retain": true}),
    )
    .await;
    assert_eq!((status, answer["delivered_to"].as_u64()), (200, Some(1)));
    let mut late = Subscriber::start(mqtt, "mqttv311", &[&format!("{name}/config/#")], None).await;
    let line = late
        .line("the retained message", |l| {
            l.starts_with(&format!("{name}/config/rate"))
        })
        .await;
    assert!(line.ends_with(" 5s"), "{line}");

    // Another tunnel's namespace is refused; so is a filter with no tunnel.
    let (status, answer) = app_publish(
        api,
        serde_json::json!({"tunnel": "someone-else", "topic": "x", "payload": "no"}),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    let (ok, out) = mosquitto_pub(
        mqtt,
        &["-V", "mqttv5", "-q", "1", "-t", "nobody/x", "-m", "x"],
    )
    .await;
    assert!(out.contains("RC:144"), "{ok} {out}");
    c.stop().await;
}

/// A device on rumqttc's MQTT 5 client: its handle, and the packets it
/// receives (its event loop runs in a task of its own until dropped).
struct RustDevice {
    client: rumqttc::v5::AsyncClient,
    incoming: tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::Incoming>,
    task: tokio::task::JoinHandle<()>,
}

impl RustDevice {
    async fn connect(addr: SocketAddr, id: &str) -> RustDevice {
        let mut options = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(Some(4 << 20));
        let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 16);
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let rumqttc::v5::Event::Incoming(packet) = event
                    && tx.send(packet).is_err()
                {
                    return;
                }
            }
        });
        let mut device = RustDevice {
            client,
            incoming,
            task,
        };
        device
            .next("CONNACK", |p| {
                matches!(p, rumqttc::v5::Incoming::ConnAck(_))
            })
            .await;
        device
    }

    /// The next packet `pick` accepts; the ones before it are skipped.
    async fn next(
        &mut self,
        what: &str,
        pick: impl Fn(&rumqttc::v5::Incoming) -> bool,
    ) -> rumqttc::v5::Incoming {
        within(what, async {
            loop {
                let packet = self
                    .incoming
                    .recv()
                    .await
                    .expect("the device's connection ended");
                if pick(&packet) {
                    return packet;
                }
            }
        })
        .await
    }

    /// Publishes at QoS 1 and returns the PUBACK.
    async fn publish(&mut self, topic: &str, payload: &[u8]) -> rumqttc::v5::mqttbytes::v5::PubAck {
        self.client
            .publish(
                topic,
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await
            .unwrap();
        match self
            .next("PUBACK", |p| matches!(p, rumqttc::v5::Incoming::PubAck(_)))
            .await
        {
            rumqttc::v5::Incoming::PubAck(ack) => ack,
            _ => unreachable!(),
        }
    }
}

impl Drop for RustDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_rust_client_publishes_subscribes_and_reads_reason_codes() {
    use rumqttc::v5::Incoming;
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let mut app = origin("app").await;
    let srv = mqtt_server(None).await;
    let inspector = droid_client::Inspector::new(droid_client::InspectorOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let mut spec = spec(None, &app.target);
    spec.secret = Some(SECRET.into());
    set_mqtt(&mut spec, inbound_mqtt());
    let mut config = client_config(srv.control, vec![spec]);
    config.inspector = Some(inspector.clone());
    let c = client(config).await;
    let shutdown = c.shutdown.clone();
    tokio::spawn(async move { inspector.serve(listener, None, shutdown).await });
    let name = c.name().to_string();
    let mut device = RustDevice::connect(srv.mqtt.unwrap(), "rust-dev").await;

    // A binary payload arrives exact, and the PUBACK says success.
    let ack = device
        .publish(&format!("{name}/telemetry"), &[0, 1, 2, 255])
        .await;
    assert_eq!(ack.reason, PubAckReason::Success);
    let json = checked(&app.next_mail().await);
    assert_eq!(json["payload_base64"], "AAEC/w==");
    assert_eq!(json["client_id"], "rust-dev");

    // The app's publish reaches the device's subscription.
    device
        .client
        .subscribe(
            format!("{name}/cmd/+"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    device
        .next("SUBACK", |p| matches!(p, Incoming::SubAck(_)))
        .await;
    let (status, answer) = app_publish(
        api,
        serde_json::json!({"topic": "cmd/reboot", "payload": "now", "qos": 1}),
    )
    .await;
    assert_eq!(
        (status, answer["delivered_to"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    let Incoming::Publish(publish) = device
        .next("the app's publish", |p| matches!(p, Incoming::Publish(_)))
        .await
    else {
        unreachable!()
    };
    assert_eq!(publish.topic, format!("{name}/cmd/reboot").as_bytes());
    assert_eq!(publish.payload, "now".as_bytes());

    // The app's 4xx, and a name with no tunnel, come back as reason codes
    // on the same connection, which goes on.
    app.inbox_status.store(422, Ordering::SeqCst);
    let ack = device.publish(&format!("{name}/refused"), b"x").await;
    assert_eq!(ack.reason, PubAckReason::UnspecifiedError);
    let reason = ack
        .properties
        .and_then(|p| p.reason_string)
        .unwrap_or_default();
    assert!(reason.contains("422"), "{reason}");
    let ack = device.publish("nobody/x", b"x").await;
    assert_eq!(ack.reason, PubAckReason::TopicNameInvalid);
    app.inbox_status.store(200, Ordering::SeqCst);
    let ack = device.publish(&format!("{name}/again"), b"ok").await;
    assert_eq!(ack.reason, PubAckReason::Success);
    assert_eq!(checked(&app.next_mail().await)["payload"], "ok");
    c.stop().await;
}

#[tokio::test]
async fn a_rust_client_on_mqtt_3_1_1_publishes_at_qos_1() {
    let mut app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, None).await;
    let options = rumqttc::MqttOptions::new("rust-311", "127.0.0.1", srv.mqtt.unwrap().port());
    let (client, mut events) = rumqttc::AsyncClient::new(options, 16);
    let topic = format!("{}/sensors/1/temp", c.name());
    client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    let mut posted = false;
    within("the PUBACK", async {
        loop {
            match events.poll().await.unwrap() {
                rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) => return,
                rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(_)) => {
                    let json = checked(&app.next_mail().await);
                    assert_eq!(json["topic"], topic);
                    posted = true;
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(posted);
    c.stop().await;
}

/// Connects with `connect` and reads the CONNACK.
async fn connected(addr: SocketAddr, connect: v4::Connect) -> TcpStream {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let mut out = BytesMut::new();
    connect.write(&mut out).unwrap();
    socket.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        match v4::read(&mut buf, 1 << 20) {
            Ok(v4::Packet::ConnAck(ack)) => {
                assert_eq!(ack.code, v4::ConnectReturnCode::Success);
                return socket;
            }
            Ok(other) => panic!("wanted a CONNACK, got {other:?}"),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                let n = within("the CONNACK", socket.read_buf(&mut buf))
                    .await
                    .unwrap();
                assert!(n > 0, "closed before the CONNACK");
            }
            Err(e) => panic!("not MQTT: {e:?}"),
        }
    }
}

/// Reads until the server closes the connection.
async fn closed(socket: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 256];
    within(what, async {
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn keep_alive_drops_a_silent_device_and_a_second_connection_takes_its_id_over() {
    let mut app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, None).await;
    let mqtt = srv.mqtt.unwrap();

    // A keep-alive of 1 s: silent for 1.5 s, the device is dropped, and
    // its Will is posted as for any device that vanished.
    let mut connect = v4::Connect::new("silent");
    connect.keep_alive = 1;
    connect.last_will = Some(v4::LastWill::new(
        format!("{}/status", c.name()),
        "silent-gone",
        QoS::AtLeastOnce,
        false,
    ));
    let started = std::time::Instant::now();
    let mut silent = connected(mqtt, connect).await;
    closed(&mut silent, "the silent device dropped").await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "dropped after {waited:?}"
    );
    let json = checked(&app.next_mail().await);
    assert_eq!(
        (json["payload"].as_str(), json["will"].as_bool()),
        (Some("silent-gone"), Some(true))
    );

    // The same client id again: the first connection ends, the second works.
    let mut first = connected(mqtt, v4::Connect::new("twin")).await;
    let second = connected(mqtt, v4::Connect::new("twin")).await;
    closed(&mut first, "the first twin taken over").await;
    drop(second);
    assert!(device(mqtt, "twin", &format!("{}/twin", c.name()), "still me").await);
    assert_eq!(checked(&app.next_mail().await)["payload"], "still me");
    c.stop().await;
}

/// Publishes `message` at QoS 1 on a connected 3.1.1 device's socket; true
/// once acknowledged.
async fn publish_on(socket: &mut TcpStream, topic: &str, message: &str) -> bool {
    let mut out = BytesMut::new();
    let mut publish = v4::Publish::new(topic, QoS::AtLeastOnce, message.as_bytes().to_vec());
    publish.pkid = 7;
    publish.write(&mut out).unwrap();
    if socket.write_all(&out).await.is_err() {
        return false;
    }
    let mut buf = BytesMut::new();
    loop {
        match v4::read(&mut buf, 1 << 20) {
            Ok(v4::Packet::PubAck(ack)) => return ack.pkid == 7,
            Ok(_) => {}
            Err(mqttbytes::Error::InsufficientBytes(_)) => {
                match within("a PUBACK", socket.read_buf(&mut buf)).await {
                    Ok(n) if n > 0 => {}
                    _ => return false,
                }
            }
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn a_stranger_with_the_same_client_id_takes_no_device_over() {
    let mut app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, Some("dev:pw")).await;
    let mqtt = srv.mqtt.unwrap();
    let topic = format!("{}/t", c.name());
    let mut login = v4::Connect::new("sensor-1");
    login.login = Some(v4::Login::new("dev", "pw"));
    let mut victim = connected(mqtt, login.clone()).await;
    // The attack: an anonymous device (another tunnel's, or nobody's) with
    // the victim's client id. Before, it ended the victim's connection.
    let _stranger = connected(mqtt, v4::Connect::new("sensor-1")).await;
    assert!(publish_on(&mut victim, &topic, "still here").await);
    assert_eq!(checked(&app.next_mail().await)["payload"], "still here");
    // The tunnel's own device with the same id and login does take over.
    let _again = connected(mqtt, login).await;
    closed(&mut victim, "the victim's own second connection takes over").await;
    c.stop().await;
}

#[tokio::test]
async fn published_topics_with_wildcards_or_nul_are_refused() {
    use rumqttc::v5::mqttbytes::{QoS as QoS5, v5};
    let app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, None).await;
    let mqtt = srv.mqtt.unwrap();
    let mut socket = TcpStream::connect(mqtt).await.unwrap();
    let mut out = BytesMut::new();
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: "bad-topics".into(),
        clean_start: true,
        properties: None,
    };
    connect.write(&None, &None, &mut out).unwrap();
    for (pkid, topic) in [
        (1, format!("{}/+", c.name())),
        (2, format!("{}/#", c.name())),
        (3, format!("{}/a\0b", c.name())),
    ] {
        let mut p = v5::Publish::new(topic, QoS5::AtLeastOnce, "x", None);
        p.pkid = pkid;
        p.write(&mut out).unwrap();
    }
    socket.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut refused = Vec::new();
    while refused.len() < 3 {
        match v5::Packet::read(&mut buf, None) {
            Ok(v5::Packet::PubAck(ack)) => refused.push((ack.pkid, ack.reason)),
            Ok(_) => {}
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                let n = within("the PUBACKs", socket.read_buf(&mut buf))
                    .await
                    .unwrap();
                assert!(n > 0, "closed; refused so far: {refused:?}");
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(
        refused,
        [1, 2, 3].map(|pkid| (pkid, v5::PubAckReason::TopicNameInvalid))
    );
    c.stop().await;
}

/// A client of `srv` for `name`, remembering its secret in `state`, with
/// its MQTT login `auth` and an inspector; the inspector's address.
async fn owner_of(
    srv: &TestServer,
    app: &Origin,
    name: &str,
    state: &std::path::Path,
    auth: Option<&str>,
) -> (TestClient, SocketAddr) {
    let mut spec = spec(Some(name), &app.target);
    set_mqtt(
        &mut spec,
        MqttSettings {
            auth: auth.map(str::to_string),
            ..MqttSettings::default()
        },
    );
    let mut config = client_config(srv.control, vec![spec]);
    config.state_dir = Some(state.to_path_buf());
    config.state_key = "firmware".into();
    let inspector = droid_client::Inspector::new(droid_client::InspectorOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    config.inspector = Some(inspector.clone());
    let c = client(config).await;
    let shutdown = c.shutdown.clone();
    tokio::spawn(async move { inspector.serve(listener, None, shutdown).await });
    (c, api)
}

#[tokio::test]
async fn a_new_login_or_a_new_owner_ends_what_the_old_ones_were_given() {
    let app = origin("app").await;
    let (srv, _) = mqtt_server_with(None, Duration::from_millis(50), None, |c| {
        c.names.grace = Duration::from_millis(100);
        c.names.quarantine = Duration::from_millis(100);
    })
    .await;
    let mqtt = srv.mqtt.unwrap();
    let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (c, api) = owner_of(&srv, &app, "firm", first.path(), None).await;
    let mut device = Subscriber::start(mqtt, "mqttv311", &["firm/#"], None).await;
    let publish = |api, topic: &str, payload: &str, retain: bool| {
        app_publish(
            api,
            serde_json::json!({"topic": topic, "payload": payload, "retain": retain}),
        )
    };
    assert_eq!(
        publish(api, "firmware_url", "https://a.example/fw", true)
            .await
            .1["delivered_to"],
        1
    );
    device
        .line("the owner's message", |l| {
            l.starts_with("firm/firmware_url")
        })
        .await;

    // The owner sets a login: the device subscribed without it hears no more.
    c.stop().await;
    let (c, api) = owner_of(&srv, &app, "firm", first.path(), Some("dev:pw")).await;
    assert_eq!(
        publish(api, "cmd", "reboot", false).await.1["delivered_to"],
        0
    );
    // Its devices with the login still get its retained message.
    let mut own = Subscriber::start(mqtt, "mqttv5", &["firm/#"], Some(("dev", "pw"))).await;
    own.line("the retained message", |l| {
        l.contains("https://a.example/fw")
    })
    .await;

    // The name passes to a new owner (after its quarantine): none of the
    // previous owner's retained messages reach the new owner's devices.
    c.stop().await;
    within("the name is free again", async {
        loop {
            srv.server.registry().prune();
            if srv.server.registry().released_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let (c2, api2) = owner_of(&srv, &app, "firm", second.path(), None).await;
    let mut theirs = Subscriber::start(mqtt, "mqttv311", &["firm/#"], None).await;
    assert_eq!(
        publish(api2, "hello", "new owner", false).await.1["delivered_to"],
        1
    );
    let first_line = theirs
        .line("the new owner's message", |l| l.starts_with("firm/"))
        .await;
    assert!(
        first_line.starts_with("firm/hello"),
        "the old owner's retained message leaked: {first_line}"
    );
    drop(device);
    c2.stop().await;
}

#[tokio::test]
async fn nothing_a_device_sends_reaches_the_servers_log_except_through_tracing() {
    use rumqttc::v5::mqttbytes::v5;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = droid_command(
        &[
            "server",
            "--domain",
            DOMAIN,
            "--http",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--mqtt",
            "127.0.0.1:0",
        ],
        dir.path(),
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(child.stdout.take().unwrap()));
    let mqtt = next_line(&mut lines, "the MQTT address", |l| {
        addr_after(l, "mqtt on ")
    })
    .await;
    // The attack: UNSUBSCRIBEs from an MQTT 5 device. mqttbytes 0.6
    // printed each one's packet id on stderr with the build's cargo path.
    let mut socket = TcpStream::connect(mqtt).await.unwrap();
    let mut out = BytesMut::new();
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: "quiet".into(),
        clean_start: true,
        properties: None,
    };
    connect.write(&None, &None, &mut out).unwrap();
    for pkid in 1..=5 {
        let mut u = v5::Unsubscribe::new("nobody/#", None);
        u.pkid = pkid;
        u.write(&mut out).unwrap();
    }
    socket.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut acks = 0;
    while acks < 5 {
        match v5::Packet::read(&mut buf, None) {
            Ok(v5::Packet::UnsubAck(_)) => acks += 1,
            Ok(_) => {}
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {
                let n = within("the UNSUBACKs", socket.read_buf(&mut buf))
                    .await
                    .unwrap();
                assert!(n > 0, "closed after {acks} UNSUBACKs");
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    drop(socket);
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    within("the server exits", child.wait()).await.unwrap();
    let written = std::fs::read_to_string(&log).unwrap();
    assert!(
        !written.contains("pkid"),
        "a device's packet reached stderr: {written}"
    );
    assert!(!written.contains(".cargo"), "{written}");
    assert!(
        !written.contains('\x1b'),
        "colour codes in a log that is no terminal: {written:?}"
    );
}

#[tokio::test]
async fn a_burst_of_qos_0_from_one_device_arrives_whole_a_few_at_a_time() {
    const BURST: usize = 2_000;
    let mut app = origin("app").await;
    let srv = mqtt_server(None).await;
    let c = tunnel(&srv, &app, None).await;
    let mut device = connected(srv.mqtt.unwrap(), v4::Connect::new("burst")).await;
    let topic = format!("{}/burst", c.name());
    device.write_all(&qos0_burst(&topic, BURST)).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    within("every QoS 0 message of the burst", async {
        while seen.len() < BURST {
            let post = app.inbox.recv().await.unwrap();
            let payload = post.json()["payload"].as_str().unwrap().to_string();
            assert!(seen.insert(payload), "a message arrived twice");
        }
    })
    .await;
    c.stop().await;
}

#[tokio::test]
async fn a_device_flooding_qos_0_at_an_app_that_never_answers_holds_16_deliveries() {
    let app = origin("app").await;
    let srv = mqtt_server(None).await;
    let mut spec = spec(None, &app.target);
    set_mqtt(
        &mut spec,
        MqttSettings {
            path: Some("/hang".into()),
            ..MqttSettings::default()
        },
    );
    let c = client(client_config(srv.control, vec![spec])).await;
    let mut device = connected(srv.mqtt.unwrap(), v4::Connect::new("flood")).await;
    let topic = format!("{}/flood", c.name());
    device.write_all(&qos0_burst(&topic, 500)).await.unwrap();
    // The first 16 reach the app and hang there; the server reads no more
    // of the device until one ends (the test's deliver timeout is 5 s).
    within("16 deliveries hanging at the app", async {
        while app.connections.load(Ordering::SeqCst) < 16 {
            app.hang_started.notified().await;
        }
    })
    .await;
    let more = tokio::time::timeout(Duration::from_millis(500), async {
        while app.connections.load(Ordering::SeqCst) <= 16 {
            app.hang_started.notified().await;
        }
    })
    .await;
    assert!(
        more.is_err(),
        "{} deliveries at once from one device",
        app.connections.load(Ordering::SeqCst)
    );
    c.stop().await;
}

/// `count` QoS 0 PUBLISHes to `topic`, payloads "0", "1", ..., in one buffer.
fn qos0_burst(topic: &str, count: usize) -> BytesMut {
    let mut out = BytesMut::new();
    for i in 0..count {
        v4::Publish::new(topic, QoS::AtMostOnce, format!("{i}"))
            .write(&mut out)
            .unwrap();
    }
    out
}
