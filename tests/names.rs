//! Names are never pulled from a live user, come back to their owner after a
//! drop, a crash or a clean exit, and dead peers are noticed by heartbeats.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use droid_client::ClientEvent;
use droid_server::registry::Lookup;

#[tokio::test]
async fn a_taken_name_gets_a_clear_error_not_another_name() {
    let app = origin("app").await;
    let srv = server().await;
    let first = client(client_config(
        srv.control,
        vec![spec(Some("myapp"), &app.target)],
    ))
    .await;
    let message = refused(srv.control, "myapp", &app.target).await;
    assert_eq!(message, "the name myapp is in use by another client");
    // the first client still has it
    assert_eq!(get(srv.http, &first.host(), "/").await.1, "origin app /");
}

#[tokio::test]
async fn a_dropped_connection_reconnects_by_itself_with_the_same_names() {
    let app = origin("app").await;
    let srv = server().await;
    let cutter = Cutter::start(srv.control).await;
    let mut c = client(client_config(
        cutter.addr,
        vec![spec(None, &app.target), spec(Some("fixed"), &app.target)],
    ))
    .await;
    let before: Vec<String> = c.grants.iter().map(|g| g.name.clone()).collect();
    cutter.cut();
    c.wait_for("disconnect", |e| {
        matches!(e, ClientEvent::Disconnected { .. }).then_some(())
    })
    .await;
    let after = c.reconnected().await;
    assert_eq!(before, after);
    assert_eq!(
        get(srv.http, &c.host(), "/back").await.1,
        "origin app /back"
    );
}

#[tokio::test]
async fn a_killed_client_restarted_by_its_user_gets_its_names_back_and_nobody_else_can() {
    let app = origin("app").await;
    let srv = server().await;
    let state = tempfile::tempdir().unwrap();
    let cutter = Cutter::start(srv.control).await;
    let mut config = client_config(cutter.addr, vec![spec(None, &app.target)]);
    config.state_dir = Some(state.path().to_path_buf());
    config.state_key = "same command".into();
    let killed = client(config.clone()).await;
    let name = killed.name().to_string();
    // kill -9: no goodbye, the socket just closes
    killed.task.abort();
    cutter.cut();
    within("server notices", async {
        while !matches!(srv.server.registry().lookup(&name), Lookup::Resuming) {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // someone else asking for it during the grace period is refused
    let message = refused(srv.control, &name, &app.target).await;
    assert!(message.contains("reconnecting"), "{message}");
    // the same user runs the same command again: same name, at once
    let again = client(config).await;
    assert_eq!(again.name(), name);
    assert_eq!(get(srv.http, &again.host(), "/").await.1, "origin app /");
}

#[tokio::test]
async fn a_clean_exit_releases_the_name_for_its_owner_only() {
    let app = origin("app").await;
    let srv = server().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = client_config(srv.control, vec![spec(None, &app.target)]);
    config.state_dir = Some(state.path().to_path_buf());
    let first = client(config.clone()).await;
    let name = first.name().to_string();
    first.stop().await;
    // released at once: the server no longer routes it...
    assert!(matches!(
        srv.server.registry().lookup(&name),
        Lookup::Absent
    ));
    let (status, _) = get(srv.http, &format!("{name}.{DOMAIN}"), "/").await;
    assert_eq!(status, 404);
    // ...nobody else may take it...
    let message = refused(srv.control, &name, &app.target).await;
    assert!(message.contains("kept for its previous owner"), "{message}");
    // ...and running the same command again gets it back
    let again = client(config).await;
    assert_eq!(again.name(), name);
}

#[tokio::test]
async fn a_second_copy_of_the_same_command_gets_its_own_name() {
    let app = origin("app").await;
    let srv = server().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = client_config(srv.control, vec![spec(None, &app.target)]);
    config.state_dir = Some(state.path().to_path_buf());
    let one = client(config.clone()).await;
    let two = client(config).await;
    assert_ne!(one.name(), two.name());
    assert_eq!(srv.server.registry().live_count(), 2);
}

#[tokio::test]
async fn heartbeats_detect_a_silent_network_on_both_sides() {
    let app = origin("app").await;
    let srv = server_with(|c| {
        c.heartbeat_interval = Duration::from_millis(100);
        c.heartbeat_timeout = Duration::from_millis(800);
    })
    .await;
    let cutter = Cutter::start(srv.control).await;
    let mut config = client_config(cutter.addr, vec![spec(None, &app.target)]);
    config.heartbeat_timeout = Duration::from_millis(800);
    let mut c = client(config).await;
    let name = c.name().to_string();
    // the cable is pulled: no FIN, no RST, bytes just vanish
    cutter.blackhole();
    let reason = c
        .wait_for("client notices", |e| match e {
            ClientEvent::Disconnected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert!(reason.contains("no heartbeat"), "{reason}");
    // the client reconnects over a fresh connection and keeps its name; the
    // server noticed the old session died (or the owner took it over)
    let back = c
        .wait_for("reconnect", |e| match e {
            ClientEvent::Connected { tunnels, .. } => Some(tunnels[0].name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(back, name);
    assert_eq!(get(srv.http, &c.host(), "/").await.1, "origin app /");
}

#[tokio::test]
async fn the_server_removes_a_silent_client() {
    let app = origin("app").await;
    let srv = server_with(|c| {
        c.heartbeat_interval = Duration::from_secs(60);
        c.heartbeat_timeout = Duration::from_millis(500);
    })
    .await;
    let cutter = Cutter::start(srv.control).await;
    let mut config = client_config(cutter.addr, vec![spec(None, &app.target)]);
    config.heartbeat_timeout = Duration::from_secs(60);
    let c = client(config).await;
    let name = c.name().to_string();
    cutter.blackhole();
    within("server drops the silent session", async {
        while !matches!(srv.server.registry().lookup(&name), Lookup::Resuming) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(srv.server.registry().live_count(), 0);
    let (status, body) = get(srv.http, &c.host(), "/").await;
    assert_eq!(status, 502);
    assert!(body.contains("reconnecting"), "{body}");
}

/// The arguments of `droid server --state DIR` on loopback ports.
fn stateful_args(state: &std::path::Path) -> [&str; 9] {
    [
        "server",
        "--domain",
        DOMAIN,
        "--http",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
    ]
}

/// `droid server --state DIR` on loopback ports; its HTTP and control
/// addresses, and how many names it read back.
async fn stateful_server(
    state: &std::path::Path,
) -> (Droid, std::net::SocketAddr, std::net::SocketAddr, usize) {
    let mut server = Droid::start(&stateful_args(state), state);
    let (http, control) = server.line("the server's addresses", server_addrs).await;
    let restored = server
        .line("the names read back", |l| {
            l.split(", ")
                .nth(1)?
                .strip_suffix(" read back")?
                .parse::<usize>()
                .ok()
        })
        .await;
    (server, http, control, restored)
}

#[tokio::test]
async fn a_server_with_state_keeps_names_for_their_owners_across_a_kill_9() {
    let app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let (mut server, http, control, restored) = stateful_server(state.path()).await;
    assert_eq!(restored, 0);
    // A second server on the same directory stops at once, saying why.
    let second = droid_command(&stateful_args(state.path()), state.path()).output();
    let second = within("the second server", second).await.unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success() && stderr.contains("names.redb"),
        "{stderr}"
    );
    // Two owners: one exits cleanly (its name is quarantined), one is
    // connected when the server dies.
    let owner = |dir: &std::path::Path, control, name: Option<&str>| {
        let mut config = client_config(control, vec![spec(name, &app.target)]);
        config.state_dir = Some(dir.to_path_buf());
        config.state_key = "same command".into();
        config
    };
    let (left_dir, live_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let left = client(owner(left_dir.path(), control, Some("keeper"))).await;
    left.stop().await;
    let live = client(owner(live_dir.path(), control, None)).await;
    let live_name = live.name().to_string();
    assert_eq!(get(http, &live.host(), "/").await.1, "origin app /");

    // kill -9, and a new server on the same state directory.
    server.child.start_kill().unwrap();
    within("the server dies", server.child.wait())
        .await
        .unwrap();
    live.task.abort();
    let (_server, http, control, restored) = stateful_server(state.path()).await;
    assert_eq!(restored, 2, "keeper and {live_name}");

    // Strangers get neither name...
    for name in ["keeper", live_name.as_str()] {
        let message = refused(control, name, &app.target).await;
        assert!(
            message.contains("kept for its previous owner"),
            "{name}: {message}"
        );
    }
    // ...their owners get both back, and requests flow again.
    let again = client(owner(left_dir.path(), control, Some("keeper"))).await;
    assert_eq!(again.name(), "keeper");
    let back = client(owner(live_dir.path(), control, None)).await;
    assert_eq!(back.name(), live_name);
    assert_eq!(get(http, &back.host(), "/").await.1, "origin app /");
    assert_eq!(get(http, &again.host(), "/").await.1, "origin app /");
}

#[tokio::test]
async fn a_client_given_several_servers_skips_a_dead_one_and_moves_on_when_its_server_is_lost() {
    let app = origin("app").await;
    // Nothing listens here: connections are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let first = server().await;
    let second = server().await;
    let mut config = client_config(
        dead,
        vec![spec(None, &app.target), spec(Some("fixed"), &app.target)],
    );
    config.server = format!("{dead}, {},{}", first.control, second.control);
    let mut c = client(config).await;
    let before: Vec<String> = c.grants.iter().map(|g| g.name.clone()).collect();
    assert!(matches!(
        first.server.registry().lookup(c.name()),
        Lookup::Live(_)
    ));
    assert_eq!(get(first.http, &c.host(), "/").await.1, "origin app /");

    // Its server goes away: the client goes on to the next one, with the
    // same names.
    first.stop().await;
    let after = c.reconnected().await;
    assert_eq!(before, after);
    assert_eq!(
        get(second.http, &c.host(), "/moved").await.1,
        "origin app /moved"
    );
}

/// `droid server --state DIR` on loopback ports with `extra` options; its
/// control address.
async fn server_binary(extra: &[&str], dir: &std::path::Path) -> (Droid, std::net::SocketAddr) {
    let mut args = stateful_args(dir).to_vec();
    args.extend_from_slice(extra);
    let mut server = Droid::start(&args, dir);
    let (_, control) = server.line("the server's addresses", server_addrs).await;
    (server, control)
}

/// The attack of issue 36: hellos of 64 names each, dropped without a
/// goodbye, as fast as a script sends them, to push a victim's names out
/// of the registry's memory. Returns how many were granted, and the
/// refusals' messages.
async fn flood(control: std::net::SocketAddr, hellos: usize) -> (usize, Vec<String>) {
    let started = std::time::Instant::now();
    let (mut granted, mut refusals) = (0, Vec::new());
    for _ in 0..hellos {
        let session = raw_hello(control, &[None; 64], None).await;
        match &session.answer {
            Ok(_) => granted += 1,
            Err(e) => {
                assert_eq!(
                    e.code,
                    droid_core::protocol::ErrorCode::Unavailable,
                    "{}",
                    e.message
                );
                refusals.push(e.message.clone());
            }
        }
        session.drop_without_goodbye();
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the flood is bounded in time"
        );
    }
    (granted, refusals)
}

/// A victim's two names: one dropped without a goodbye (resuming), one
/// released cleanly (quarantined); and the secret that owns them.
async fn victim(control: std::net::SocketAddr) -> String {
    let dropped = raw_hello(control, &[Some("bank")], None).await;
    let secret = dropped.answer.as_ref().unwrap().resume.clone();
    dropped.drop_without_goodbye();
    let left = raw_hello(control, &[Some("shop")], Some(&secret)).await;
    assert!(left.answer.is_ok());
    left.goodbye().await;
    secret
}

/// After the flood: strangers get neither name, the owner gets both back.
async fn names_still_held(control: std::net::SocketAddr, secret: &str) {
    for name in ["bank", "shop"] {
        let stranger = raw_hello(control, &[Some(name)], None).await;
        let e = stranger.answer.as_ref().unwrap_err();
        assert_eq!(
            e.code,
            droid_core::protocol::ErrorCode::NameTaken,
            "{name}: {}",
            e.message
        );
    }
    let owner = raw_hello(control, &[Some("bank"), Some("shop")], Some(secret)).await;
    let names: Vec<String> = owner
        .answer
        .as_ref()
        .unwrap()
        .tunnels
        .iter()
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(names, ["bank", "shop"]);
}

#[tokio::test]
async fn a_flood_of_names_from_one_address_is_refused_and_steals_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The defaults: 60 new names a minute per address.
    let (_server, control) = server_binary(&[], dir.path()).await;
    let secret = victim(control).await;
    let (granted, refusals) = flood(control, 1600).await;
    // The victim's two names took 2 of the minute's 60: a hello of 64
    // needs a full bucket.
    assert_eq!(granted, 0);
    assert_eq!(refusals.len(), 1600);
    assert!(
        refusals[0].starts_with("too many new names from address 127.0.0.1; try again in "),
        "{}",
        refusals[0]
    );
    names_still_held(control, &secret).await;
}

#[tokio::test]
async fn at_the_cap_of_names_new_ones_are_refused_and_old_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    // No rate: only the caps stand between the flood and the victim.
    let extra = [
        "--new-names-per-minute",
        "0",
        "--max-names",
        "2000",
        "--max-names-per-ip",
        "0",
    ];
    let (_server, control) = server_binary(&extra, dir.path()).await;
    let secret = victim(control).await;
    let (granted, refusals) = flood(control, 1600).await;
    assert_eq!(granted, (2000 - 2) / 64, "until the registry is full");
    assert!(
        refusals[0].starts_with("this server remembers as many names as it may (2000)"),
        "{}",
        refusals[0]
    );
    names_still_held(control, &secret).await;

    // One address's share, on its own.
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--new-names-per-minute", "0", "--max-names-per-ip", "640"];
    let (_server, control) = server_binary(&extra, dir.path()).await;
    let secret = victim(control).await;
    let (granted, refusals) = flood(control, 20).await;
    assert_eq!(granted, (640 - 2) / 64);
    assert!(
        refusals[0].starts_with("too many names from address 127.0.0.1: it has 578 remembered"),
        "{}",
        refusals[0]
    );
    names_still_held(control, &secret).await;
}

#[tokio::test]
async fn common_service_names_and_punycode_are_kept_unless_the_server_frees_them() {
    let srv = server().await;
    let (mail, mqtt) = (mail_server(None).await, mqtt_server(None).await);
    // Each adapter keeps its own protocol's name where it runs.
    for (control, name) in [
        (srv.control, "www"),
        (srv.control, "mail"),
        (srv.control, "api"),
        (srv.control, "admin"),
        (srv.control, "xn--80ak6aa92e"),
        (mail.control, "smtp"),
        (mqtt.control, "mqtt"),
    ] {
        let s = raw_hello(control, &[Some(name)], None).await;
        let e = s.answer.as_ref().unwrap_err();
        assert_eq!(
            e.code,
            droid_core::protocol::ErrorCode::BadName,
            "{name}: {}",
            e.message
        );
        assert!(
            e.message
                .starts_with(&format!("the name {name} is kept on this server")),
            "{}",
            e.message
        );
    }
    // Names that merely contain them are anybody's.
    let s = raw_hello(srv.control, &[Some("my-api"), Some("www2")], None).await;
    assert!(s.answer.is_ok());
    let free = server_with(|c| c.names.keep_service_names = false).await;
    let s = raw_hello(free.control, &[Some("www"), Some("xn--80ak6aa92e")], None).await;
    assert!(s.answer.is_ok(), "{:?}", s.answer);
}
