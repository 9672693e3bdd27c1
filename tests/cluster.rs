//! Several servers, one registry in Redis: a name is held once across the
//! nodes, kept for its owner on every node, and moves with its owner when
//! its node dies. Each test starts its own `redis-server` on a free
//! loopback port and stops it by its pid.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use common::pki::Pki;
use common::redis_server::Redis;
use common::*;
use droid_adapters::{MailSettings, MqttSettings};
use droid_client::{ClientEvent, Target, TunnelSpec};
use droid_core::protocol::ErrorCode;
use droid_server::cluster::{Cluster, ClusterConfig, LiveClaim};
use droid_server::registry::Lookup;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "the nodes' secret, long enough 7c0b9a1e";

/// A server that is node `id` of the cluster in `redis`, taking the other
/// nodes' requests on a peer port of its own.
async fn node(redis: &Redis, id: &str) -> (TestServer, Arc<Cluster>) {
    node_of(redis, id, server().await).await
}

/// Makes the running server `srv` node `id` of the cluster in `redis`.
async fn node_of(redis: &Redis, id: &str, srv: TestServer) -> (TestServer, Arc<Cluster>) {
    node_leased(redis, id, srv, Duration::from_secs(1)).await
}

/// [`node_of`] with a lease of `lease`.
async fn node_leased(
    redis: &Redis,
    id: &str,
    srv: TestServer,
    lease: Duration,
) -> (TestServer, Arc<Cluster>) {
    node_at(&redis.url(), redis.ca(), id, srv, lease).await
}

/// [`node_leased`] for the Redis that `url` names.
async fn node_at(
    url: &str,
    ca: Option<Vec<u8>>,
    id: &str,
    srv: TestServer,
    lease: Duration,
) -> (TestServer, Arc<Cluster>) {
    let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cluster = Arc::new(
        Cluster::join(
            ClusterConfig {
                redis: url.into(),
                node_id: id.into(),
                lease,
                peer: Some(peer.local_addr().unwrap().to_string()),
                secret: SECRET.into(),
                ca,
            },
            srv.server.config().names.clone(),
        )
        .await
        .unwrap(),
    );
    srv.server.join_cluster(cluster.clone());
    let (s, token) = (srv.server.clone(), srv.shutdown.clone());
    tokio::spawn(async move { s.keep_cluster_lease(token).await });
    let (s, token) = (srv.server.clone(), srv.shutdown.clone());
    tokio::spawn(async move { s.serve_peers(peer, token).await });
    (srv, cluster)
}

#[tokio::test]
async fn a_name_is_held_once_across_nodes_and_kept_for_its_owner_on_every_node() {
    let redis = Redis::start().await.unwrap();
    let app = origin("app").await;
    let (one, _) = node(&redis, "one").await;
    let (two, cluster_two) = node(&redis, "two").await;
    let state = tempfile::tempdir().unwrap();
    let owner = |control: SocketAddr| {
        let mut config = client_config(control, vec![spec(Some("shared"), &app.target)]);
        config.state_dir = Some(state.path().to_path_buf());
        config.state_key = "the owner".into();
        config
    };
    let first = client(owner(one.control)).await;
    assert_eq!(first.name(), "shared");

    // Live on node one: a stranger on node two is refused, and so is the
    // owner itself while node one serves it (never live on two nodes).
    let message = refused(two.control, "shared", &app.target).await;
    assert!(message.contains("in use by another client"), "{message}");
    let owner_id = droid_server::registry::owner_id(
        &std::fs::read_dir(state.path())
            .unwrap()
            .find_map(|e| {
                let text = std::fs::read_to_string(e.ok()?.path()).ok()?;
                let json: serde_json::Value = serde_json::from_str(&text).ok()?;
                json["secret"].as_str().map(str::to_string)
            })
            .expect("the client's resume secret"),
    );
    let claim = LiveClaim {
        keys: vec!["shared".into()],
        settings: vec![String::new()],
        index: vec![String::new()],
        owner: owner_id,
        session: 99,
    };
    let e = cluster_two.claim(&claim).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{}", e.message);

    // Released on node one: kept from strangers on node two, and the owner
    // takes it there.
    first.stop().await;
    let message = refused(two.control, "shared", &app.target).await;
    assert!(message.contains("kept for its previous owner"), "{message}");
    let moved = client(owner(two.control)).await;
    assert_eq!(moved.name(), "shared");
    assert_eq!(get(two.http, &moved.host(), "/").await.1, "origin app /");
    // And node one refuses strangers for node two, for the right reason
    // once it heard of the move: the name is live there, not merely kept
    // from its release here.
    within("node one hearing of the move", async {
        loop {
            let message = refused(one.control, "shared", &app.target).await;
            if message.contains("in use by another client") {
                return;
            }
            assert!(message.contains("kept for its previous owner"), "{message}");
        }
    })
    .await;
    redis.kill().await;
}

#[tokio::test]
async fn with_redis_gone_tunnels_keep_serving_and_new_claims_wait_for_it() {
    let redis = Redis::start().await.unwrap();
    let port = redis.port;
    let app = origin("app").await;
    let (one, _) = node(&redis, "one").await;
    let live = client(client_config(one.control, vec![spec(None, &app.target)])).await;
    redis.kill().await;

    // The live tunnel goes on; a new claim is told to try again.
    assert_eq!(
        get(one.http, &live.host(), "/still").await.1,
        "origin app /still"
    );
    let mut waiting = client_unchecked(client_config(
        one.control,
        vec![spec(Some("later"), &app.target)],
    ));
    let reason = waiting
        .wait_for("the claim refused", |e| match e {
            ClientEvent::Disconnected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert!(
        reason.contains("the registry is unavailable; try again"),
        "{reason}"
    );

    // Redis is back: the waiting client gets its name by itself.
    let _redis = Redis::on(port, None).await.unwrap();
    let tunnels = waiting
        .wait_for("the claim granted", |e| match e {
            ClientEvent::Connected { tunnels, .. } => Some(tunnels.clone()),
            _ => None,
        })
        .await;
    assert_eq!(tunnels[0].name, "later");
}

#[tokio::test]
async fn when_its_node_is_killed_a_client_moves_to_another_with_its_names() {
    let redis = Redis::start().await.unwrap();
    let app = origin("app").await;
    let dir = tempfile::tempdir().unwrap();
    let start = |id: &str| {
        Droid::start(
            &[
                "server",
                "--domain",
                DOMAIN,
                "--http",
                "127.0.0.1:0",
                "--control",
                "127.0.0.1:0",
                "--cluster",
                &redis.url(),
                "--node-id",
                id,
                "--cluster-lease",
                "1s",
                "--cluster-secret",
                SECRET,
            ],
            dir.path(),
        )
    };
    let mut one = start("one");
    let (_, one_control) = one.line("node one's addresses", server_addrs).await;
    let mut two = start("two");
    let (two_http, two_control) = two.line("node two's addresses", server_addrs).await;
    two.line("node two joined", |l| {
        l.contains("of the cluster").then_some(())
    })
    .await;

    let mut config = client_config(
        one_control,
        vec![spec(None, &app.target), spec(Some("fixed"), &app.target)],
    );
    config.server = format!("{one_control},{two_control}");
    let mut c = client(config).await;
    let before: Vec<String> = c.grants.iter().map(|g| g.name.clone()).collect();

    // kill -9 node one: once its lease (1 s) runs out, the client is back
    // on node two with the same names.
    let killed = std::time::Instant::now();
    one.child.start_kill().unwrap();
    within("node one dies", one.child.wait()).await.unwrap();
    let after = c.reconnected().await;
    let back = killed.elapsed();
    assert_eq!(before, after);
    // The lease, then the client's back-off between its tries (0.5 s, 1 s,
    // with jitter): about 2 s; bounded well above that.
    assert!(back < Duration::from_secs(5), "back after {back:?}");
    eprintln!("the client was back on node two {back:?} after node one was killed");
    assert_eq!(
        get(two_http, &format!("{}.{DOMAIN}", after[0]), "/")
            .await
            .1,
        "origin app /"
    );
    let message = refused(two_control, "fixed", &app.target).await;
    assert!(message.contains("in use by another client"), "{message}");
    redis.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_serves_any_tunnel_requests_websockets_events_and_100_mib() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let redis = Redis::start().await.unwrap();
    let app = origin("app").await;
    let (one, _) = node(&redis, "one").await;
    let (two, _) = node(&redis, "two").await;
    let (three, _) = node(&redis, "three").await;
    let c = client(client_config(one.control, vec![spec(None, &app.target)])).await;
    let host = c.host();

    // Through each node that does not hold it, and the one that does.
    for srv in [&two, &three, &one] {
        assert_eq!(get(srv.http, &host, "/hello").await.1, "origin app /hello");
    }
    // 200 at once through node two, on connections of their own.
    let requests = (0..200).map(|i| {
        let host = host.clone();
        let http = two.http;
        tokio::spawn(async move { get(http, &host, &format!("/n/{i}")).await })
    });
    for (i, answer) in futures::future::join_all(requests)
        .await
        .into_iter()
        .enumerate()
    {
        let (status, body) = answer.unwrap();
        assert_eq!((status.as_u16(), body), (200, format!("origin app /n/{i}")));
    }
    // The visitor's own address (127.0.0.2 here) reaches the app, not
    // node two's.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut visitor = socket.connect(two.http).await.unwrap();
    let request = format!("GET /headers HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    visitor.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    within("the headers", visitor.read_to_end(&mut answer))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.contains(r#""x-forwarded-for":"127.0.0.2""#),
        "{answer}"
    );

    // A websocket through node three.
    let tcp = TcpStream::connect(three.http).await.unwrap();
    let (mut ws, resp) = within(
        "ws handshake",
        tokio_tungstenite::client_async(format!("ws://{host}/ws"), tcp),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = within("ws echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(back, Message::text(format!("hello {i}")));
    }
    ws.close(None).await.unwrap();

    // Server-sent events through node two, each as it is sent: the origin
    // sends the second only after the first arrived here.
    let resp = send(two.http, get_request(&host, "/sse")).await;
    let mut body = resp.into_body();
    let first = within("first event", http_body_util::BodyExt::frame(&mut body)).await;
    assert_eq!(
        first.unwrap().unwrap().into_data().unwrap(),
        "data: one\n\n"
    );
    app.sse_next.notify_one();
    let second = within("second event", http_body_util::BodyExt::frame(&mut body)).await;
    assert_eq!(
        second.unwrap().unwrap().into_data().unwrap(),
        "data: two\n\n"
    );

    // 100 MiB through node two, every byte checked.
    const SIZE: usize = 100 * 1024 * 1024;
    let resp = send(two.http, get_request(&host, &format!("/bytes/{SIZE}"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        within("download", drain_checked(resp.into_body())).await,
        SIZE
    );

    // A name no node holds is still a 404, from any node.
    let (status, _) = get(two.http, &format!("nobody.{DOMAIN}"), "/").await;
    assert_eq!(status.as_u16(), 404);
    redis.kill().await;
}

#[tokio::test]
async fn the_peer_port_refuses_a_wrong_secret() {
    let redis = Redis::start().await.unwrap();
    let app = origin("app").await;
    let (one, _) = node(&redis, "one").await;
    let c = client(client_config(one.control, vec![spec(None, &app.target)])).await;
    // Read the peer address from Redis, as the other nodes do.
    let reply = redis.command("HGET droid:peers one").await.unwrap();
    let peer = reply.lines().nth(1).unwrap().to_string();

    // In plain text, with the old line and a guessed proof: closed, no
    // HTTP answer (a TLS alert at most).
    let mut sneaky = TcpStream::connect(&peer).await.unwrap();
    let request = format!(
        "DROID-PEER/1 guessed 203.0.113.9:1234 http\nGET / HTTP/1.1\r\nHost: {}\r\n\r\n",
        c.host()
    );
    sneaky.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = within("closed", sneaky.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("HTTP/"), "{answer}");

    // A node that joined the same Redis with another secret cannot send
    // its visitors to node one: its TLS is refused, they get a 502.
    let rogue_srv = server().await;
    let rogue = Arc::new(
        Cluster::join(
            ClusterConfig {
                redis: redis.url(),
                node_id: "rogue".into(),
                lease: Duration::from_secs(1),
                peer: None,
                secret: "another secret, long enough 7c0b9a1e".into(),
                ca: None,
            },
            rogue_srv.server.config().names.clone(),
        )
        .await
        .unwrap(),
    );
    rogue_srv.server.join_cluster(rogue);
    let (status, body) = get(rogue_srv.http, &c.host(), "/secret").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("did not answer"), "{body}");
    // The same request through node one itself reaches the app.
    assert_eq!(get(one.http, &c.host(), "/").await.0, 200);
    redis.kill().await;
}

#[tokio::test]
async fn a_redis_that_restarts_empty_gets_every_live_name_back() {
    let redis = Redis::start().await.unwrap();
    let port = redis.port;
    let app = origin("app").await;
    let (one, _) = node(&redis, "one").await;
    let (two, _) = node(&redis, "two").await;
    let c = client(client_config(
        one.control,
        vec![spec(Some("kept"), &app.target)],
    ))
    .await;
    redis.kill().await;
    let redis = Redis::on(port, None).await.unwrap();
    // A stranger at once, before node one has claimed its names again:
    // Redis settles first (new names wait), so `kept` is never theirs.
    let message = refused(two.control, "kept", &app.target).await;
    assert!(message.contains("in use by another client"), "{message}");
    // Node one claims its names again with its next lease renewal.
    within("the name claimed again", async {
        while !redis
            .command("EXISTS droid:name:kept")
            .await
            .is_ok_and(|r| r.starts_with(":1"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let message = refused(two.control, "kept", &app.target).await;
    assert!(message.contains("in use by another client"), "{message}");
    // Node two reaches it again too: the peer address came back with the lease.
    within("node two forwards again", async {
        while get(two.http, &c.host(), "/").await.1 != "origin app /" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    redis.kill().await;
}

#[tokio::test]
async fn with_appendonly_a_quarantined_name_survives_a_redis_restart() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = Redis::on(port, Some(data.path())).await.unwrap();
    let app = origin("app").await;
    let (one, _) = node(&redis, "one").await;
    let (two, _) = node(&redis, "two").await;
    let state = tempfile::tempdir().unwrap();
    let owner = |control: SocketAddr| {
        let mut config = client_config(control, vec![spec(Some("precious"), &app.target)]);
        config.state_dir = Some(state.path().to_path_buf());
        config.state_key = "the owner".into();
        config
    };
    client(owner(one.control)).await.stop().await;
    redis.kill().await;
    let redis = Redis::on(port, Some(data.path())).await.unwrap();
    // Node two never saw the name: only Redis can refuse it now.
    let message = refused(two.control, "precious", &app.target).await;
    assert!(message.contains("kept for its previous owner"), "{message}");
    let back = client(owner(two.control)).await;
    assert_eq!(back.name(), "precious");
    redis.kill().await;
}

const APP_SECRET: &str = "the app's secret";

/// A tunnel to `target` whose mail arrives as POST /inbound, signed with
/// [`APP_SECRET`].
fn inbox(name: Option<&str>, target: &Target) -> TunnelSpec {
    let mut tunnel = spec(name, target);
    set_mail(
        &mut tunnel,
        MailSettings {
            path: Some("/inbound".into()),
            ..MailSettings::default()
        },
    );
    tunnel.secret = Some(APP_SECRET.into());
    tunnel
}

/// The tunnel `sensors` to `target` with MQTT (login `dev:pw`, POSTs to
/// `/inbound/mqtt`, signed with [`APP_SECRET`]) on the node at `control`,
/// and its client's API, where the app publishes.
async fn sensors(control: SocketAddr, target: &Target) -> (TestClient, SocketAddr) {
    let mut tunnel = spec(Some("sensors"), target);
    tunnel.secret = Some(APP_SECRET.into());
    set_mqtt(
        &mut tunnel,
        MqttSettings {
            path: Some("/inbound/mqtt".into()),
            auth: Some("dev:pw".into()),
            ..MqttSettings::default()
        },
    );
    let inspector = droid_client::Inspector::new(droid_client::InspectorOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let mut config = client_config(control, vec![tunnel]);
    config.inspector = Some(inspector.clone());
    let c = client(config).await;
    let shutdown = c.shutdown.clone();
    tokio::spawn(async move { inspector.serve(listener, None, shutdown).await });
    (c, api)
}

/// Whether a delivery carries a good signature by [`APP_SECRET`].
fn signed(post: &Received) -> bool {
    signed_with(post, APP_SECRET)
}

#[tokio::test]
async fn any_nodes_smtp_takes_mail_for_a_tunnel_on_another_node_and_spools_it_until_its_owner_is_back()
 {
    let redis = Redis::start().await.unwrap();
    let mut app = origin("app").await;
    let spool = tempfile::tempdir().unwrap();
    // Node one's spool first retries after a minute: mail it kept can only
    // arrive sooner because it heard that the owner is back.
    let one = mail_server_retrying(Some(spool.path()), Duration::from_secs(60), |_| {}).await;
    let (one, _) = node_of(&redis, "one", one).await;
    let (two, _) = node_of(&redis, "two", mail_server(None).await).await;
    let state = tempfile::tempdir().unwrap();
    let target = app.target.clone();
    let owner = |control: SocketAddr| {
        let tunnel = inbox(Some("inbox"), &target);
        let mut config = client_config(control, vec![tunnel]);
        config.state_dir = Some(state.path().to_path_buf());
        config.state_key = "the owner".into();
        config
    };
    let live = client(owner(two.control)).await;
    let smtp_one = one.smtp.unwrap();
    let rcpt = format!("orders@inbox.{DOMAIN}");

    // Through node one to the tunnel on node two, parsed and signed as the
    // tunnel's client asked.
    let sent = smtplib_send(smtp_one, "shop@example.com", &[&rcpt], "Order 1", "first").await;
    assert_eq!(sent, "SENT");
    let post = app.next_mail().await;
    assert_eq!(post.path, "/inbound");
    assert_eq!(post.header("droid-adapter"), "smtp");
    assert!(signed(&post), "a bad signature");
    let mail = post.json();
    assert_eq!(mail["subject"], "Order 1");
    assert_eq!(mail["to"][0]["address"], rcpt);
    assert_eq!(mail["attachments"][0]["filename"], "report.pdf");

    // No node holds this name: refused, never relayed.
    let nobody = format!("x@nobody.{DOMAIN}");
    let sent = smtplib_send(smtp_one, "shop@example.com", &[&nobody], "No", "no").await;
    assert_eq!(sent, format!("REFUSED {nobody} 550"));

    // The client drops without a goodbye: its name resumes for it, and
    // node one keeps the mail on its disk.
    live.task.abort();
    within("node two sees the client gone", async {
        while !matches!(two.server.registry().lookup("inbox"), Lookup::Resuming) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let sent = smtplib_send(smtp_one, "shop@example.com", &[&rcpt], "Order 2", "kept").await;
    assert_eq!(sent, "SENT");
    assert!(app.inbox.try_recv().is_err(), "delivered with no tunnel up");
    // Its owner comes back on node two, and node one delivers through it.
    let back = std::time::Instant::now();
    let again = client(owner(two.control)).await;
    assert_eq!(again.name(), "inbox");
    let post = app.next_mail().await;
    let waited = back.elapsed();
    assert_eq!(post.json()["subject"], "Order 2");
    assert!(signed(&post));
    assert!(
        waited < Duration::from_secs(5),
        "the spooled mail took {waited:?}"
    );
    again.stop().await;
}

#[tokio::test]
async fn any_nodes_mqtt_takes_devices_and_their_subscriptions_for_a_tunnel_on_another_node() {
    let redis = Redis::start().await.unwrap();
    let mut app = origin("app").await;
    let (one, _) = node_of(&redis, "one", mqtt_server(None).await).await;
    let (two, _) = node_of(&redis, "two", mqtt_server(None).await).await;
    let (c, api) = sensors(two.control, &app.target).await;
    let mqtt_one = one.mqtt.unwrap();

    // A device on node one publishes to the tunnel on node two, with the
    // tunnel's login, which node one never saw.
    let login = ["-u", "dev", "-P", "pw"];
    let args = [
        &login[..],
        &["-V", "mqttv5", "-q", "1", "-t", "sensors/t1", "-m", "21.5"],
    ]
    .concat();
    let (ok, out) = mosquitto_pub_at("127.0.0.1", mqtt_one.port(), &args).await;
    assert!(ok && out.contains("received PUBACK"), "{out}");
    let post = app.next_mail().await;
    assert_eq!(post.path, "/inbound/mqtt");
    assert!(signed(&post));
    assert_eq!(post.json()["payload"], "21.5");
    // A wrong password is refused at CONNECT on node one too.
    let args = [
        "-u",
        "dev",
        "-P",
        "wrong",
        "-V",
        "mqttv5",
        "-t",
        "sensors/t1",
        "-m",
        "x",
    ];
    let (ok, out) = mosquitto_pub_at("127.0.0.1", mqtt_one.port(), &args).await;
    assert!(!ok, "{out}");

    // A device subscribed on node one gets what the app publishes through
    // node two, retained messages included.
    let mut device = Subscriber::start(
        mqtt_one,
        "mqttv311",
        &["sensors/cmd/#"],
        Some(("dev", "pw")),
    )
    .await;
    let (status, answer) = app_publish(
        api,
        serde_json::json!({"topic": "cmd/fan", "payload": "on", "qos": 1, "retain": true}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let line = device
        .line("the app's command", |l| l.starts_with("sensors/cmd/fan"))
        .await;
    assert!(line.ends_with(" on"), "{line}");
    let mut late =
        Subscriber::start(mqtt_one, "mqttv5", &["sensors/cmd/+"], Some(("dev", "pw"))).await;
    let line = late
        .line("the retained command", |l| l.starts_with("sensors/cmd/fan"))
        .await;
    assert!(line.ends_with(" on"), "{line}");

    // Redis gone: node one cannot check the login, and says so ("server
    // unavailable", not "bad login"), so the device tries again.
    redis.kill().await;
    let args = [
        "-u",
        "dev",
        "-P",
        "pw",
        "-V",
        "mqttv311",
        "-q",
        "1",
        "-t",
        "sensors/t1",
        "-m",
        "x",
    ];
    let (ok, out) = mosquitto_pub_at("127.0.0.1", mqtt_one.port(), &args).await;
    assert!(!ok && out.contains("unavailable"), "{out}");
    c.stop().await;
}

/// A counter's value in a server's metrics text.
fn counter(srv: &TestServer, name: &str) -> u64 {
    let text = srv.server.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// How node `srv` answered its cluster lookups: (kept, asked of Redis).
fn lookups(srv: &TestServer) -> (u64, u64) {
    (
        counter(srv, "droid_cluster_lookups_kept_total"),
        counter(srv, "droid_cluster_lookups_asked_total"),
    )
}

/// Asks `http` for `host` until the app answers, failing after 2 s (a
/// kept answer would stand for up to 10 s).
async fn answers_within_2_s(http: SocketAddr, host: &str, what: &str) {
    let started = std::time::Instant::now();
    while get(http, host, "/").await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: no answer in 2 s"
        );
    }
}

#[tokio::test]
async fn each_node_keeps_where_names_are_and_forgets_it_when_they_change() {
    let redis = Redis::start().await.unwrap();
    let app = origin("app").await;
    // Leases far longer than the test: answers are forgotten by events,
    // not because a lease ran out.
    let lease = Duration::from_secs(60);
    let (one, _) = node_leased(&redis, "one", server().await, lease).await;
    let (two, _) = node_leased(&redis, "two", server().await, lease).await;
    let (three, _) = node_leased(&redis, "three", server().await, lease).await;
    let state = tempfile::tempdir().unwrap();
    let owner = |control: SocketAddr, name: &str| {
        let mut config = client_config(control, vec![spec(Some(name), &app.target)]);
        config.state_dir = Some(state.path().to_path_buf());
        config.state_key = "the owner".into();
        config
    };
    let first = client(owner(one.control, "moving")).await;
    let host = first.host();

    // Node three follows the cluster's events once it keeps an answer;
    // from then on, requests on new connections do not ask Redis.
    within("node three keeping an answer", async {
        while lookups(&three).0 == 0 {
            assert_eq!(get(three.http, &host, "/").await.0, 200);
        }
    })
    .await;
    let (kept, asked) = lookups(&three);
    for i in 0..20 {
        let (status, body) = get(three.http, &host, &format!("/n/{i}")).await;
        assert_eq!((status.as_u16(), body), (200, format!("origin app /n/{i}")));
    }
    assert_eq!(lookups(&three), (kept + 20, asked));

    // "Nowhere" is kept too, and forgotten the moment the name is claimed
    // on another node (kept, it would stand for 10 s).
    let fresh = format!("fresh.{DOMAIN}");
    assert_eq!(get(three.http, &fresh, "/").await.0, 404);
    assert_eq!(get(three.http, &fresh, "/").await.0, 404);
    assert_eq!(lookups(&three), (kept + 21, asked + 1));
    let claimed = client(client_config(
        two.control,
        vec![spec(Some("fresh"), &app.target)],
    ))
    .await;
    answers_within_2_s(
        three.http,
        &fresh,
        "node three serving a name claimed elsewhere",
    )
    .await;

    // The owner moves its name to node two: node three sends the next
    // requests there.
    first.stop().await;
    let moved = client(owner(two.control, "moving")).await;
    assert_eq!(moved.host(), host);
    answers_within_2_s(three.http, &host, "node three following the moved name").await;
    for i in 0..5 {
        assert_eq!(get(three.http, &host, &format!("/m/{i}")).await.0, 200);
    }
    claimed.stop().await;
    moved.stop().await;
}

#[tokio::test]
async fn with_redis_gone_mail_and_requests_for_other_nodes_are_deferred_never_refused_for_good() {
    let redis = Redis::start().await.unwrap();
    let port = redis.port;
    let mut app = origin("app").await;
    let (one, _) = node_of(&redis, "one", mail_server(None).await).await;
    let (two, _) = node_of(&redis, "two", mail_server(None).await).await;
    let tunnel = inbox(Some("inbox"), &app.target);
    let _live = client(client_config(two.control, vec![tunnel])).await;
    let rcpt = format!("orders@inbox.{DOMAIN}");
    let (smtp_one, smtp_two) = (one.smtp.unwrap(), two.smtp.unwrap());
    redis.kill().await;

    // Node one cannot know where the name is: 451, so the sender retries
    // (a 550 would bounce the mail for good).
    let sent = smtplib_send(smtp_one, "shop@example.com", &[&rcpt], "Order", "x").await;
    assert_eq!(sent, format!("REFUSED {rcpt} 451"));
    // So are visitors there: 503, try again (not a 404).
    let host = format!("inbox.{DOMAIN}");
    let (status, body) = get(one.http, &host, "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("registry of tunnels is unavailable"),
        "{body}"
    );
    // Node two serves its own tunnel as before.
    assert_eq!(get(two.http, &host, "/").await.0, 200);
    let sent = smtplib_send(smtp_two, "shop@example.com", &[&rcpt], "Direct", "x").await;
    assert_eq!(sent, "SENT");
    assert_eq!(app.next_mail().await.json()["subject"], "Direct");

    // Redis is back (empty): node two claims its names again, and node one
    // takes the mail.
    let _redis = Redis::on(port, None).await.unwrap();
    within("node one taking the mail again", async {
        loop {
            let sent = smtplib_send(smtp_one, "shop@example.com", &[&rcpt], "Again", "x").await;
            if sent == "SENT" {
                return;
            }
            assert!(sent.ends_with(" 451") || sent.ends_with(" 550"), "{sent}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let post = app.next_mail().await;
    assert_eq!(post.json()["subject"], "Again");
    assert!(signed(&post));
}

/// Redis away for a while, then back empty: visitors sent round-robin to
/// three nodes are all answered, and mail to each node is delivered once.
/// The two that do not hold the tunnel send its requests and mail where
/// Redis last said it was live (issue 35, first part); once Redis is back
/// empty, until the holder has claimed it again.
#[tokio::test]
async fn with_redis_away_and_back_empty_every_node_serves_the_names_it_knew() {
    let redis = Redis::start().await.unwrap();
    let port = redis.port;
    let mut app = origin("app").await;
    let (one, _) = node_of(&redis, "one", mail_server(None).await).await;
    let (two, _) = node_of(&redis, "two", mail_server(None).await).await;
    let (three, _) = node_of(&redis, "three", mail_server(None).await).await;
    let tunnel = inbox(Some("steady"), &app.target);
    let c = client(client_config(one.control, vec![tunnel])).await;
    let host = c.host();
    let nodes = [one.http, two.http, three.http];
    let smtp = [one.smtp.unwrap(), two.smtp.unwrap(), three.smtp.unwrap()];
    for http in nodes {
        assert_eq!(get(http, &host, "/before").await.0, 200);
    }
    // Round-robin for `for_how_long` (and at most 30,000 requests): what
    // each node answered that was not a 200.
    let round_robin = |phase: &'static str, for_how_long: Duration| {
        let host = host.clone();
        async move {
            let (started, mut failed, mut served) = (std::time::Instant::now(), Vec::new(), 0);
            for i in 0..30_000 {
                if started.elapsed() > for_how_long {
                    break;
                }
                let (status, body) = get(nodes[i % 3], &host, &format!("/{phase}/{i}")).await;
                if status == 200 {
                    assert_eq!(body, format!("origin app /{phase}/{i}"));
                    served += 1;
                } else {
                    failed.push((i % 3, status.as_u16(), body));
                }
            }
            (served, failed)
        }
    };
    redis.kill().await;
    // Away for 15 s, as long as an outage the issue names.
    let (served, failed) = round_robin("away", Duration::from_secs(15)).await;
    println!(
        "Redis away: {served} requests served round-robin, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(served >= 30, "{served}");
    let rcpt = format!("orders@{host}");
    for (i, addr) in smtp.iter().enumerate() {
        let sent = smtplib_send(
            *addr,
            "shop@example.com",
            &[&rcpt],
            &format!("away {i}"),
            "x",
        )
        .await;
        assert_eq!(sent, "SENT", "node {i}");
    }
    let redis = Redis::on(port, None).await.unwrap();
    let (served, failed) = round_robin("back", Duration::from_secs(3)).await;
    println!(
        "Redis back empty: {served} requests served round-robin, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(served >= 30, "{served}");
    // Each mail arrived once: the three, then the one sent after them.
    let sent = smtplib_send(smtp[0], "shop@example.com", &[&rcpt], "last", "x").await;
    assert_eq!(sent, "SENT");
    let mut subjects = Vec::new();
    while subjects.last().map(String::as_str) != Some("last") {
        let post = app.next_mail().await;
        assert!(signed(&post));
        subjects.push(
            post.json()["subject"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    subjects.sort();
    assert_eq!(subjects, ["away 0", "away 1", "away 2", "last"]);
    redis.kill().await;
}

/// `droid cluster status` (the binary, against the cluster's Redis) lists
/// each node with its peer address, lease, tunnels and version, and with
/// `--names` where each name is; the server metrics say which node they
/// are; a Redis that does not answer is a clear error, its password not
/// shown.
#[tokio::test]
async fn droid_cluster_status_shows_the_nodes_and_where_each_name_is() {
    let redis = Redis::start().await.unwrap();
    let app = origin("app").await;
    let (one, _) = node(&redis, "one").await;
    let (two, _) = node(&redis, "two").await;
    let _shop = client(client_config(
        one.control,
        vec![spec(Some("shop"), &app.target)],
    ))
    .await;
    let _cart = client(client_config(
        two.control,
        vec![spec(Some("cart"), &app.target)],
    ))
    .await;
    let _blog = client(client_config(
        two.control,
        vec![spec(Some("blog"), &app.target)],
    ))
    .await;
    let status = |args: Vec<String>| async move {
        let out = within(
            "droid cluster status",
            tokio::process::Command::new(env!("CARGO_BIN_EXE_droid"))
                .arg("cluster")
                .arg("status")
                .args(args)
                .output(),
        )
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let errors = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), text, errors)
    };
    let (ok, text, errors) = status(vec!["--cluster".into(), redis.url()]).await;
    assert!(ok, "{errors}");
    let line = |id: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no node {id} in\n{text}"))
            .to_string()
    };
    for (id, tunnels) in [("one", 1), ("two", 2)] {
        let line = line(id);
        assert!(line.contains("127.0.0.1:"), "{line}");
        assert!(line.contains("s ago") && line.contains("live, "), "{line}");
        let version = env!("CARGO_PKG_VERSION");
        assert!(line.ends_with(&format!("{tunnels}  {version}")), "{line}");
    }
    assert!(!text.contains("shop"), "{text}");

    let (ok, text, errors) = status(vec!["--cluster".into(), redis.url(), "--names".into()]).await;
    assert!(ok, "{errors}");
    for (name, node) in [("shop", "one"), ("cart", "two"), ("blog", "two")] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[1..3], ["live", node], "{line}");
    }
    assert!(
        one.server
            .metrics_text()
            .contains("droid_cluster_node_info{node=\"one\"} 1")
    );

    let dead = dead_port().await;
    let url = format!("redis://admin:hunter2@127.0.0.1:{dead}");
    let (ok, _, errors) = status(vec!["--cluster".into(), url]).await;
    assert!(!ok);
    assert!(
        errors.contains("cannot reach the cluster registry at redis://admin:***@127.0.0.1:"),
        "{errors}"
    );
    assert!(!errors.contains("hunter2"), "{errors}");
    redis.kill().await;
}

#[tokio::test]
async fn grpc_reaches_an_h2c_app_through_a_node_that_does_not_hold_its_tunnel() {
    use common::grpc::{GrpcApp, grpc_call};
    let redis = Redis::start().await.unwrap();
    let mut app = GrpcApp::start().await;
    let (one, _) = node(&redis, "one").await;
    let (two, _) = node(&redis, "two").await;
    let mut tunnel = spec(None, &Target::from_str(&app.port.to_string()).unwrap());
    tunnel.app_protocol = droid_client::AppProtocol::H2c;
    let c = client(client_config(one.control, vec![tunnel])).await;
    let authority = format!("{}:{}", c.host(), two.http.port());
    let cases = [
        "unary",
        "server_stream",
        "bidi",
        "fail",
        "cancel",
        "concurrent",
        "big",
    ];
    grpc_call(&two.http.to_string(), &authority, &cases, None).await;
    // The cancel crossed both nodes and the tunnel to the app.
    app.ended("cancel").await;
    // Each call's status is counted once, by the node holding the tunnel.
    let calls = |srv: &TestServer, status: &str| {
        let name = format!("droid_server_grpc_calls_total{{grpc_status=\"{status}\"}}");
        srv.server
            .metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(&name)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    // unary, server_stream, bidi, 100 concurrent, big.
    assert_eq!(calls(&one, "OK"), 104);
    assert_eq!(calls(&one, "INVALID_ARGUMENT"), 1);
    assert_eq!(calls(&two, "OK"), 0);
}

#[tokio::test]
async fn a_retained_mqtt_message_reaches_a_subscriber_on_a_node_that_started_after_it() {
    let redis = Redis::start().await.unwrap();
    let app = origin("app").await;
    let (one, _) = node_of(&redis, "one", mqtt_server(None).await).await;
    let (c, api) = sensors(one.control, &app.target).await;
    // Retained on node one, with no device anywhere yet; then replaced,
    // and another topic retained and cleared.
    for (topic, payload) in [
        ("cmd/fan", "on"),
        ("cmd/fan", "off"),
        ("cmd/led", "red"),
        ("cmd/led", ""),
    ] {
        let body =
            serde_json::json!({"topic": topic, "payload": payload, "qos": 1, "retain": true});
        let (status, answer) = app_publish(api, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    // Node three starts only now, and a device subscribes there.
    let (three, _) = node_of(&redis, "three", mqtt_server(None).await).await;
    let mut late = Subscriber::start(
        three.mqtt.unwrap(),
        "mqttv5",
        &["sensors/cmd/+"],
        Some(("dev", "pw")),
    )
    .await;
    let line = late
        .line("the retained command", |l| l.starts_with("sensors/cmd/"))
        .await;
    assert_eq!(line, "sensors/cmd/fan off");
    // Kept in Redis under the tunnel's owner, the cleared topic gone.
    let keys = redis
        .command("KEYS droid:map:mqtt-retained/*")
        .await
        .unwrap();
    let maps: Vec<&str> = keys
        .lines()
        .filter(|l| l.starts_with("droid:map:"))
        .collect();
    assert!(maps.len() == 1 && maps[0].ends_with("/sensors"), "{keys}");
    let fields = redis.command(&format!("HKEYS {}", maps[0])).await.unwrap();
    let fields: Vec<&str> = fields
        .lines()
        .filter(|l| !l.starts_with(['*', '$']))
        .collect();
    assert_eq!(fields, ["sensors/cmd/fan"]);
    drop(c);
}

#[tokio::test]
async fn nodes_log_in_to_redis_as_an_acl_user_and_a_wrong_password_says_so_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("redis.conf");
    std::fs::write(
        &config,
        "user default off\nuser droid on >s3cret-pw ~* &* +@all\n",
    )
    .unwrap();
    let redis = Redis::configured(&config, "droid:s3cret-pw").await.unwrap();
    let app = origin("app").await;
    let (one, _) = node(&redis, "one").await;
    let (two, _) = node(&redis, "two").await;
    let c = client(client_config(one.control, vec![spec(None, &app.target)])).await;
    assert_eq!(get(two.http, &c.host(), "/x").await.1, "origin app /x");
    // A wrong password: joining fails at once, saying why, the password
    // never shown.
    let wrong = format!("redis://droid:not-it@127.0.0.1:{}", redis.port);
    let joined = Cluster::join(
        ClusterConfig {
            redis: wrong,
            node_id: "three".into(),
            lease: Duration::from_secs(1),
            peer: None,
            secret: SECRET.into(),
            ca: None,
        },
        one.server.config().names.clone(),
    )
    .await;
    let Err(error) = joined else {
        panic!("a wrong password joined the cluster");
    };
    let error = error.to_string();
    assert!(error.contains("redis://droid:***@127.0.0.1"), "{error}");
    assert!(!error.contains("not-it"), "{error}");
    let said = error.to_lowercase();
    assert!(
        said.contains("wrongpass") || said.contains("password"),
        "{error}"
    );
}

#[tokio::test]
async fn nodes_reach_a_redis_over_tls_and_one_that_trusts_another_ca_is_refused() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = pki.write(dir.path());
    let config = dir.path().join("redis.conf");
    std::fs::write(
        &config,
        "user default off\nuser droid on >s3cret-pw ~* &* +@all\n",
    )
    .unwrap();
    let certs = (cert.as_str(), key.as_str(), pki.ca.as_bytes());
    let redis = Redis::tls(&config, "droid:s3cret-pw", certs).await.unwrap();
    assert!(
        redis
            .url()
            .starts_with("rediss://droid:s3cret-pw@localhost:")
    );
    let app = origin("app").await;
    let (one, _) = node(&redis, "one").await;
    let (two, _) = node(&redis, "two").await;
    let c = client(client_config(one.control, vec![spec(None, &app.target)])).await;
    assert_eq!(get(two.http, &c.host(), "/x").await.1, "origin app /x");
    // A node that trusts another CA does not join, and says why.
    let joined = Cluster::join(
        ClusterConfig {
            redis: redis.url(),
            node_id: "three".into(),
            lease: Duration::from_secs(1),
            peer: None,
            secret: SECRET.into(),
            ca: Some(Pki::new().ca.into_bytes()),
        },
        one.server.config().names.clone(),
    )
    .await;
    let Err(error) = joined else {
        panic!("a node that trusts another CA joined");
    };
    let error = error.to_string();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    assert!(!error.contains("s3cret-pw"), "{error}");
}

/// One master, one replica and three sentinels; the master killed with
/// -9. The nodes follow the failover by themselves: a new client's claim
/// succeeds within 30 s of the kill, the name held before is still its
/// owner's (served through both nodes, refused to a stranger), and
/// `droid cluster status` reads the new master through the sentinels.
#[tokio::test]
async fn nodes_follow_a_sentinel_failover_and_owners_keep_their_names() {
    let master = Redis::start().await.unwrap();
    let replica = Redis::replica_of(&master).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(
            Redis::sentinel(dir.path(), master.port, "registry")
                .await
                .unwrap(),
        );
    }
    for sentinel in &sentinels {
        // Each knows the replica and the other two before the fault.
        let ready = |r: &str| r.contains("slaves=1,sentinels=3");
        sentinel
            .until("the sentinels know each other", "INFO sentinel", ready)
            .await
            .unwrap();
    }
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("redis+sentinel://{}/registry", hosts.join(","));
    let lease = Duration::from_secs(2);
    let app = origin("app").await;
    let (one, _) = node_at(&url, None, "one", server().await, lease).await;
    let (two, _) = node_at(&url, None, "two", server().await, lease).await;
    let c = client(client_config(
        one.control,
        vec![spec(Some("kept"), &app.target)],
    ))
    .await;
    assert_eq!(
        get(two.http, &c.host(), "/before").await.1,
        "origin app /before"
    );
    let killed = std::time::Instant::now();
    master.kill().await;
    // A new client, on the node that does not hold `kept`.
    let fresh = client(client_config(
        two.control,
        vec![spec(Some("fresh"), &app.target)],
    ))
    .await;
    let claimed_after = killed.elapsed();
    assert!(claimed_after < Duration::from_secs(30), "{claimed_after:?}");
    replica
        .until("the replica is the master", "ROLE", |r| {
            r.contains("master")
        })
        .await
        .unwrap();
    within("both names served through both nodes", async {
        for host in [c.host(), fresh.host()] {
            for http in [one.http, two.http] {
                while get(http, &host, "/after").await.1 != "origin app /after" {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
    .await;
    let message = refused(two.control, "kept", &app.target).await;
    assert!(message.contains("in use by another client"), "{message}");
    let status = droid_server::cluster_status::status(&url, true)
        .await
        .unwrap();
    let held: Vec<(&str, &str)> = status
        .names
        .iter()
        .map(|n| (n.name.as_str(), n.node.as_str()))
        .collect();
    assert!(held.contains(&("kept", "one")), "{held:?}");
    assert!(held.contains(&("fresh", "two")), "{held:?}");
    println!("a new claim succeeded {claimed_after:?} after the master was killed");
    for sentinel in sentinels {
        sentinel.kill().await;
    }
    replica.kill().await;
}

/// The ports of one `droid server` node, chosen before it starts so it
/// comes back where visitors, mail, clients and the other nodes look.
#[derive(Clone, Copy)]
struct NodePorts {
    http: u16,
    control: u16,
    smtp: u16,
    peer: u16,
}

impl NodePorts {
    async fn free() -> NodePorts {
        NodePorts {
            http: dead_port().await,
            control: dead_port().await,
            smtp: dead_port().await,
            peer: dead_port().await,
        }
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `droid server`, node `id` of the cluster in `redis` on `ports`, once
/// it has joined.
async fn node_binary(redis: &Redis, id: &str, ports: NodePorts, dir: &std::path::Path) -> Droid {
    let at = |port: u16| loopback(port).to_string();
    let (http, control, smtp, peer) = (
        at(ports.http),
        at(ports.control),
        at(ports.smtp),
        at(ports.peer),
    );
    let url = redis.url();
    let args = [
        "server",
        "--domain",
        DOMAIN,
        "--http",
        &http,
        "--control",
        &control,
        "--smtp",
        &smtp,
        "--no-spool",
        "--cluster",
        &url,
        "--node-id",
        id,
        "--peer",
        &peer,
        "--cluster-secret",
        SECRET,
        "--cluster-lease",
        "2s",
        "--drain-timeout",
        "10s",
    ];
    let mut node = Droid::start(&args, &dir.join(id));
    let joined = format!("node {id} of the cluster");
    node.line("the node joined", |l| l.contains(&joined).then_some(()))
        .await;
    node
}

/// A GET to the first of `nodes` (from `first` on) that takes it: a
/// refused connection, or one closed before any answer, is tried on the
/// next, as a browser tries a name's next address. The status and body
/// (`None` when no node took it), and how many connections were refused
/// and closed before any answer on the way.
async fn get_any(
    nodes: &[SocketAddr],
    first: usize,
    host: &str,
    path: &str,
) -> (Option<(u16, String)>, usize, usize) {
    let (mut refused, mut closed) = (0, 0);
    for tries in 1..=nodes.len() {
        let addr = nodes[(first + tries - 1) % nodes.len()];
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            refused += 1;
            continue;
        };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let mut answer = Vec::new();
        if stream.write_all(request.as_bytes()).await.is_ok() {
            let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
        }
        if answer.is_empty() {
            closed += 1;
            continue;
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        return (Some((status, body.unwrap_or_default())), refused, closed);
    }
    (None, refused, closed)
}

/// Three nodes (the binary) restarted one after another (SIGTERM, then
/// started again on the same ports) while requests go round-robin to the
/// nodes that are up and mail arrives on them. Each node drains: its
/// client is told to move and takes its name to the next node within a
/// second. Not one request fails, every mail arrives once, and the name
/// is the same throughout.
#[tokio::test]
async fn a_rolling_restart_of_three_nodes_loses_no_request_and_no_mail() {
    let redis = Redis::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut app = origin("app").await;
    let ids = ["one", "two", "three"];
    let (mut ports, mut nodes) = (Vec::new(), Vec::new());
    for id in ids {
        let at = NodePorts::free().await;
        nodes.push(Some(node_binary(&redis, id, at, dir.path()).await));
        ports.push(at);
    }
    let controls: Vec<String> = ports
        .iter()
        .map(|p| loopback(p.control).to_string())
        .collect();
    let mut config = client_config(
        loopback(ports[0].control),
        vec![inbox(Some("steady"), &app.target)],
    );
    config.server = controls.join(",");
    let mut c = client(config).await;
    let host = c.host();
    let https: Vec<SocketAddr> = ports.iter().map(|p| loopback(p.http)).collect();
    let smtps: Vec<SocketAddr> = ports.iter().map(|p| loopback(p.smtp)).collect();
    let up = get_any(&https, 1, &host, "/up").await.0;
    assert_eq!(up, Some((200, "origin app /up".into())));

    let stop = tokio_util::sync::CancellationToken::new();
    // The client's events, timed.
    let mut events = std::mem::replace(&mut c.events, tokio::sync::mpsc::channel(1).1);
    let watch = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                tokio::select! {
                    Some(event) = events.recv() => seen.push((std::time::Instant::now(), event)),
                    () = stop.cancelled() => return seen,
                }
            }
        })
    };
    // Requests, round-robin, until told to stop (at most 20,000).
    let load = {
        let (https, host, stop) = (https.clone(), host.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut served, mut failed, mut retried) = (0, Vec::new(), (0, 0));
            for i in 0..20_000 {
                if stop.is_cancelled() {
                    break;
                }
                let path = format!("/r/{i}");
                match get_any(&https, i % 3, &host, &path).await {
                    (Some((200, body)), refused, closed)
                        if body == format!("origin app {path}") =>
                    {
                        served += 1;
                        retried.0 += refused;
                        retried.1 += closed;
                    }
                    (answer, ..) => failed.push((i, answer)),
                }
            }
            (served, failed, retried)
        })
    };
    // Mail, one after another, each to the next node that takes it.
    let rcpt = format!("orders@{host}");
    let mail = {
        let (smtps, stop) = (smtps.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for i in 0..500 {
                if stop.is_cancelled() {
                    break;
                }
                let subject = format!("mail {i}");
                let mut taken = false;
                for k in 0..smtps.len() * 3 {
                    let to = [rcpt.as_str()];
                    let node = smtps[(i + k) % smtps.len()];
                    if smtplib_send(node, "shop@example.com", &to, &subject, "x").await == "SENT" {
                        taken = true;
                        break;
                    }
                }
                assert!(taken, "no node took {subject}");
                sent.push(subject);
            }
            sent
        })
    };

    let mut drains = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let node = nodes[i].take().unwrap();
        let asked = std::time::Instant::now();
        let status = node.terminate().await;
        assert!(status.success(), "node {id} exited with {status}");
        drains.push(asked.elapsed());
        nodes[i] = Some(node_binary(&redis, id, ports[i], dir.path()).await);
    }
    stop.cancel();
    let (served, failed, retried) = load.await.unwrap();
    let sent = mail.await.unwrap();
    let seen = watch.await.unwrap();
    let shown = &failed[..failed.len().min(5)];
    assert!(failed.is_empty(), "{} failed: {shown:?}", failed.len());
    assert!(served >= 100, "{served}");
    // Told to move three times (once by each node it was on), back
    // within a second each time, with its one name.
    let mut moves = Vec::new();
    let mut told: Option<std::time::Instant> = None;
    for (at, event) in &seen {
        match event {
            ClientEvent::Disconnected { retry_in, .. } if retry_in.is_zero() => told = Some(*at),
            ClientEvent::Disconnected { reason, .. } => panic!("lost its server: {reason}"),
            ClientEvent::Connected { tunnels, .. } => {
                let names: Vec<&str> = tunnels.iter().map(|t| t.name.as_str()).collect();
                assert_eq!(names, ["steady"]);
                moves.push(at.duration_since(told.take().expect("connected without a move")));
            }
            _ => {}
        }
    }
    assert_eq!(moves.len(), 3, "{moves:?}");
    assert!(
        moves.iter().all(|m| *m < Duration::from_secs(1)),
        "{moves:?}"
    );
    let mut arrived = Vec::new();
    while arrived.len() < sent.len() {
        let Ok(Some(post)) = tokio::time::timeout(WAIT, app.inbox.recv()).await else {
            panic!(
                "{} of {} mails arrived: {arrived:?}",
                arrived.len(),
                sent.len()
            );
        };
        arrived.push(
            post.json()["subject"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    arrived.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(arrived, expected, "every mail once");
    let (refused, closed) = retried;
    println!(
        "{served} requests served ({refused} connections refused and {closed} closed before an answer, \
         each tried on the next node), {} mails, drains {drains:?}, moves {moves:?}",
        sent.len()
    );
    // The client first: else the last node waits for it to move.
    c.shutdown.cancel();
    let _ = within("the client stops", &mut c.task).await;
    for node in nodes.into_iter().flatten() {
        node.terminate().await;
    }
    redis.kill().await;
}

/// A TCP tunnel held by node one answers on every node (each on a
/// loopback address of its own, the same port): `redis-cli` reaches the
/// Redis behind it through each, 100 MiB go each way through a node that
/// does not hold it, half-close passes, and once the tunnel is released
/// the port is given back on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_tunnels_port_answers_on_every_node() {
    use common::tcp::{echo, redis_cli, round_trip};
    use droid_server::TcpPorts;
    let redis = Redis::start().await.unwrap();
    let app = Redis::start().await.unwrap();
    let ips = [[127, 0, 0, 1], [127, 0, 0, 2], [127, 0, 0, 3]];
    // Two ports in a row, free on every node's address.
    let free = |port: u16| {
        ips.iter()
            .all(|ip| std::net::TcpListener::bind((std::net::Ipv4Addr::from(*ip), port)).is_ok())
    };
    let mut port = dead_port().await;
    while !(free(port) && free(port + 1)) {
        port = dead_port().await;
    }
    let mut nodes = Vec::new();
    for (id, ip) in ["one", "two", "three"].into_iter().zip(ips) {
        let srv = server_with(|c| {
            c.tcp_ports = Some(TcpPorts::Range(port, port + 1));
            c.tcp_bind = ip.into();
        })
        .await;
        nodes.push(node_of(&redis, id, srv).await.0);
    }
    let tunnels = vec![
        TunnelSpec::tcp(Target::new("127.0.0.1", app.port), Some(port)),
        TunnelSpec::tcp(echo().await, Some(port + 1)),
    ];
    let mut config = client_config(nodes[0].control, tunnels);
    let controls: Vec<String> = nodes.iter().map(|n| n.control.to_string()).collect();
    config.server = controls.join(",");
    let mut c = client(config).await;
    assert_eq!(c.grants[0].tcp, Some(port));
    let host = |ip: [u8; 4]| std::net::Ipv4Addr::from(ip).to_string();
    for ip in ips {
        within("the port open on every node", async {
            while TcpStream::connect((host(ip).as_str(), port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let pong = redis_cli(&host(ip), port, &["PING"], None).await;
        assert_eq!(pong.trim(), "PONG", "through {ip:?}");
    }
    // 100 MiB each way through node two.
    let big: Vec<u8> = (0..100 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let two = host(ips[1]);
    let set = redis_cli(&two, port, &["-x", "SET", "big"], Some(&big)).await;
    assert_eq!(set.trim(), "OK");
    let got = redis_cli(&two, port, &["GET", "big"], None).await;
    assert!(
        got.trim_end().as_bytes() == &big[..],
        "100 MiB back through node two"
    );
    // Half-close through node three: the echo answers after the visitor's FIN.
    let three = SocketAddr::from((ips[2], port + 1));
    assert_eq!(round_trip(three, b"half-closed").await, b"half-closed");
    // Node one drains: the client moves to node two with its ports, which
    // node two takes back from the ones it opened for node one.
    let draining = nodes[0].server.clone();
    tokio::spawn(async move { draining.drain().await });
    let ports = c
        .wait_for("the client moved", |e| match e {
            ClientEvent::Connected { tunnels, .. } => Some(tunnels.clone()),
            _ => None,
        })
        .await;
    assert_eq!(ports[0].tcp, Some(port));
    within("through node three to node two", async {
        while redis_cli(&host(ips[2]), port, &["GET", "moved"], None)
            .await
            .trim()
            != ""
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    for ip in &ips[1..] {
        let set = redis_cli(&host(*ip), port, &["SET", "moved", "yes"], None).await;
        assert_eq!(set.trim(), "OK", "through {ip:?} after the move");
    }
    // Released: the port is given back on every node still up.
    c.stop().await;
    for ip in &ips[1..] {
        within("the port given back", async {
            while TcpStream::connect((host(*ip).as_str(), port)).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    app.kill().await;
    redis.kill().await;
}

/// Through a node that does not hold it, one address gets at most 16
/// connections to a TCP tunnel's port at once: the 17th is reset, while a
/// visitor from another address is still served.
#[tokio::test]
async fn one_address_cannot_take_every_connection_through_another_nodes_port() {
    use common::tcp::echo;
    use droid_server::TcpPorts;
    let redis = Redis::start().await.unwrap();
    let ips = [[127, 0, 0, 1], [127, 0, 0, 2]];
    let free = |port: u16| {
        ips.iter()
            .all(|ip| std::net::TcpListener::bind((std::net::Ipv4Addr::from(*ip), port)).is_ok())
    };
    let mut port = dead_port().await;
    while !free(port) {
        port = dead_port().await;
    }
    let mut nodes = Vec::new();
    for (id, ip) in ["one", "two"].into_iter().zip(ips) {
        let srv = server_with(|c| {
            c.tcp_ports = Some(TcpPorts::Range(port, port));
            c.tcp_bind = ip.into();
        })
        .await;
        nodes.push(node_of(&redis, id, srv).await.0);
    }
    let tunnel = TunnelSpec::tcp(echo().await, Some(port));
    let _c = client(client_config(nodes[0].control, vec![tunnel])).await;
    let two = SocketAddr::from((ips[1], port));
    // An echo through node two, from `from`: what came back.
    let echo_from = |from: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        let mut stream = socket.connect(two).await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        let read = tokio::time::timeout(WAIT, stream.read_exact(&mut back)).await;
        (stream, matches!(read, Ok(Ok(_))).then_some(back))
    };
    // Waited for from the other address, which the count below spares.
    within("node two opened the port", async {
        loop {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::from(([127, 0, 0, 9], 0))).unwrap();
            if socket.connect(two).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..16 {
        let (stream, back) = echo_from([127, 0, 0, 1]).await;
        assert_eq!(back.as_ref(), Some(b"ping"));
        held.push(stream);
    }
    let (_, seventeenth) = echo_from([127, 0, 0, 1]).await;
    assert_eq!(seventeenth, None, "the 17th from one address is refused");
    let (_, other) = echo_from([127, 0, 0, 9]).await;
    assert_eq!(other.as_ref(), Some(b"ping"), "another address is served");
    drop(held);
    redis.kill().await;
}
