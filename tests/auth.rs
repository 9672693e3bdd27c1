//! Who may open tunnels and who may reach them: tokens, reserved names,
//! tunnel limits per session, token and address, HTTP basic auth and IP
//! allow-lists, all enforced by the server.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use droid_client::{ClientConfig, ClientError, ClientEvent};
use droid_core::protocol::{ErrorCode, ErrorMessage};
use droid_server::registry::Lookup;
use droid_server::{AuthPolicy, TokenRule};
use http::Request;
use http_body_util::BodyExt;

/// Runs a client that must be refused for good, and returns the refusal.
async fn refusal(config: ClientConfig) -> ErrorMessage {
    let mut c = client_unchecked(config);
    match within("refusal", &mut c.task).await.unwrap() {
        Err(ClientError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn with_token(mut config: ClientConfig, token: &str) -> ClientConfig {
    config.token = Some(token.to_string());
    config
}

fn rule(token: &str, names: &[&str], max_tunnels: Option<usize>) -> TokenRule {
    TokenRule {
        token: token.into(),
        names: names.iter().map(|n| n.to_string()).collect(),
        max_tunnels,
        ..TokenRule::default()
    }
}

#[tokio::test]
async fn a_server_that_requires_a_token_refuses_clients_without_the_right_one() {
    let app = origin("app").await;
    let srv = server_with(|c| {
        c.auth = AuthPolicy {
            tokens: vec![
                rule("alpha-token", &[], None),
                rule("beta-token", &[], None),
            ],
            require_token: true,
            ..AuthPolicy::default()
        };
    })
    .await;
    let config = || client_config(srv.control, vec![spec(None, &app.target)]);

    let e = refusal(config()).await;
    assert_eq!(e.code, ErrorCode::Unauthorized);
    assert!(e.message.contains("requires a token"), "{}", e.message);
    let e = refusal(with_token(config(), "alpha-tokem")).await;
    assert_eq!(e.code, ErrorCode::Unauthorized);
    assert_eq!(e.message, "the token is not valid on this server");
    assert!(!e.message.contains("alpha"));
    assert_eq!(srv.server.registry().live_count(), 0);

    let a = client(with_token(config(), "alpha-token")).await;
    let b = client(with_token(config(), "beta-token")).await;
    assert_eq!(get(srv.http, &a.host(), "/a").await.1, "origin app /a");
    assert_eq!(get(srv.http, &b.host(), "/b").await.1, "origin app /b");
}

#[tokio::test]
async fn a_reserved_name_belongs_to_its_token_even_when_tokens_are_not_required() {
    let app = origin("app").await;
    let srv = server_with(|c| {
        c.auth = AuthPolicy {
            tokens: vec![rule("alpha", &["api"], None), rule("beta", &[], None)],
            require_token: false,
            ..AuthPolicy::default()
        };
    })
    .await;
    let named = |control| client_config(control, vec![spec(Some("api"), &app.target)]);

    // the no-sign-up default still works: no token, a random name
    let anonymous = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    assert_eq!(
        get(srv.http, &anonymous.host(), "/").await.1,
        "origin app /"
    );
    // nobody but alpha may claim api, with no token or another one
    for config in [named(srv.control), with_token(named(srv.control), "beta")] {
        let e = refusal(config).await;
        assert_eq!(e.code, ErrorCode::BadName);
        assert!(e.message.contains("reserved"), "{}", e.message);
    }
    // alpha may, through a cutter so that its connection can drop
    let cutter = Cutter::start(srv.control).await;
    let state = tempfile::tempdir().unwrap();
    let mut owner_config = with_token(named(cutter.addr), "alpha");
    owner_config.state_dir = Some(state.path().to_path_buf());
    owner_config.state_key = "the owner".into();
    let killed = client(owner_config.clone()).await;
    assert_eq!(killed.name(), "api");

    // another client with the same token cannot take it while it is live...
    let e = refusal(with_token(named(srv.control), "alpha")).await;
    assert_eq!(e.code, ErrorCode::NameTaken);
    assert_eq!(e.message, "the name api is in use by another client");

    // ...nor while its owner is away (killed: no goodbye)
    killed.task.abort();
    cutter.cut();
    within("the server notices the drop", async {
        while !matches!(srv.server.registry().lookup("api"), Lookup::Resuming) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let e = refusal(with_token(named(srv.control), "alpha")).await;
    assert_eq!(e.code, ErrorCode::NameTaken);
    assert!(e.message.contains("reconnecting"), "{}", e.message);
    // the owner comes back and gets it
    let owner = client(owner_config).await;
    assert_eq!(owner.name(), "api");
    assert_eq!(get(srv.http, "api.droid.test", "/").await.1, "origin app /");

    // once released, the name waits for its token, not for its last holder:
    // another client with the token (another machine) takes it at once
    owner.stop().await;
    let other = client(with_token(named(srv.control), "alpha")).await;
    assert_eq!(other.name(), "api");
    // and random names never land on a reserved one (checked by the
    // generator); anonymous clients still get theirs
    assert!(matches!(
        srv.server.registry().lookup("api"),
        Lookup::Live(_)
    ));
}

#[tokio::test]
async fn basic_auth_is_checked_at_the_server_and_the_credentials_stop_there() {
    let app = origin("app").await;
    let srv = server().await;
    let mut s = spec(None, &app.target);
    s.auth = Some("ann:s3cret".into());
    let c = client(client_config(srv.control, vec![s])).await;

    let response = send(srv.http, get_request(&c.host(), "/headers")).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        format!("Basic realm=\"{}\", charset=\"UTF-8\"", c.name())
    );
    for wrong in ["Basic YW5uOndyb25n", "Bearer YW5uOnMzY3JldA==", "Basic"] {
        let request = Request::get("/headers")
            .header("host", c.host())
            .header("authorization", wrong)
            .body(empty())
            .unwrap();
        assert_eq!(send(srv.http, request).await.status(), 401, "{wrong}");
    }
    let request = Request::get("/headers")
        .header("host", c.host())
        .header("authorization", "Basic YW5uOnMzY3JldA==")
        .body(empty())
        .unwrap();
    let response = send(srv.http, request).await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        seen["headers"].get("authorization").is_none(),
        "the app saw Droid's credentials: {seen}"
    );
}

#[tokio::test]
async fn an_ip_allow_list_refuses_other_addresses_with_403() {
    let app = origin("app").await;
    let srv = server().await;
    let mut elsewhere = spec(None, &app.target);
    elsewhere.allow_ip = vec!["192.0.2.0/24".into(), "2001:db8::/32".into()];
    let mut here = spec(None, &app.target);
    here.allow_ip = vec!["127.0.0.0/8".into()];
    let c = client(client_config(srv.control, vec![elsewhere, here])).await;
    let (status, body) = get(srv.http, &format!("{}.{DOMAIN}", c.grants[0].name), "/").await;
    assert_eq!(status, 403);
    assert!(
        body.contains("does not accept visitors from 127.0.0.1"),
        "{body}"
    );
    let (status, body) = get(srv.http, &format!("{}.{DOMAIN}", c.grants[1].name), "/").await;
    assert_eq!((status.as_u16(), body.as_str()), (200, "origin app /"));

    // a malformed block is refused at hello, for good
    let mut bad = spec(None, &app.target);
    bad.allow_ip = vec!["10.0.0.0/33".into()];
    let e = refusal(client_config(srv.control, vec![bad])).await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("10.0.0.0/33"), "{}", e.message);
}

#[tokio::test]
async fn tunnels_per_session_token_and_address_are_capped_and_others_keep_working() {
    let app = origin("app").await;
    let srv = server_with(|c| {
        c.auth = AuthPolicy {
            tokens: vec![rule("small", &[], Some(1))],
            require_token: false,
            max_tunnels_per_session: 3,
            max_tunnels_per_ip: Some(3),
            ..AuthPolicy::default()
        };
    })
    .await;
    let tunnels = |n: usize| (0..n).map(|_| spec(None, &app.target)).collect::<Vec<_>>();

    // per session: a hello asking for more is refused for good
    let e = refusal(client_config(srv.control, tunnels(4))).await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("1 to 3 tunnels"), "{}", e.message);

    // per token: its rule says one
    let token_client = client(with_token(client_config(srv.control, tunnels(1)), "small")).await;
    let mut second = client_unchecked(with_token(client_config(srv.control, tunnels(1)), "small"));
    let reason = second
        .wait_for("refused by the token's cap", |e| match e {
            ClientEvent::Disconnected { reason, .. } => Some(reason.clone()),
            ClientEvent::Connected { .. } => panic!("the token's cap did not hold"),
            _ => None,
        })
        .await;
    assert!(
        reason.contains("token #1 may hold at most 1 tunnels"),
        "{reason}"
    );
    second.shutdown.cancel();

    // per address: 127.0.0.1 holds 1 (the token's) + 2 = 3 ...
    let two = client(client_config(srv.control, tunnels(2))).await;
    let mut fourth = client_unchecked(client_config(srv.control, tunnels(1)));
    let reason = fourth
        .wait_for("refused by the address cap", |e| match e {
            ClientEvent::Disconnected { reason, .. } => Some(reason.clone()),
            ClientEvent::Connected { .. } => panic!("the address cap did not hold"),
            _ => None,
        })
        .await;
    assert!(
        reason.contains("address 127.0.0.1 may hold at most 3 tunnels"),
        "{reason}"
    );
    // ...and everyone under the caps keeps being served
    assert_eq!(get(srv.http, &two.host(), "/").await.1, "origin app /");
    assert_eq!(
        get(srv.http, &token_client.host(), "/").await.1,
        "origin app /"
    );
    // a freed slot is taken by the waiting client, which keeps retrying
    two.stop().await;
    let up = fourth
        .wait_for("connected once a slot is free", |e| match e {
            ClientEvent::Connected { tunnels, .. } => Some(tunnels[0].name.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        get(srv.http, &format!("{up}.{DOMAIN}"), "/").await.1,
        "origin app /"
    );
}

/// The same through the binary: `droid server --token --max-body-size`,
/// `droid http --token --auth --allow-ip`.
#[tokio::test]
async fn the_command_line_wires_tokens_auth_allow_lists_and_limits() {
    use std::process::Stdio;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    let app = origin("app").await;
    let state = tempfile::tempdir().unwrap();
    let droid = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_droid"));
        command
            .args(args)
            .env("DROID_STATE_DIR", state.path())
            .env_remove("DROID_SERVER")
            .env_remove("DROID_TOKEN")
            .env_remove("DROID_AUTH")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    };
    let mut server = droid(&[
        "server",
        "--domain",
        "tunnel.test",
        "--http",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
        "--token",
        "team-token",
        "--max-body-size",
        "10",
    ])
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let (http, control) = next_line(&mut lines, "the server's addresses", server_addrs).await;
    let (http, control) = (http.to_string(), control.to_string());
    let target = app.addr.port().to_string();

    // no token: the client exits at once with the reason
    let out = within(
        "refused client",
        droid(&["http", &target, "--server", &control]).output(),
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("this server requires a token"), "{stderr}");

    let mut client = droid(&[
        "http",
        &target,
        "--server",
        &control,
        "--name",
        "private",
        "--token",
        "team-token",
        "--auth",
        "ann:s3cret",
        "--allow-ip",
        "127.0.0.0/8",
    ])
    .spawn()
    .unwrap();
    let mut client_lines = BufReader::new(client.stdout.take().unwrap()).lines();
    within("the URL", async {
        loop {
            let l = client_lines.next_line().await.unwrap().unwrap();
            if l.starts_with("http://private.tunnel.test") {
                return;
            }
        }
    })
    .await;
    let http: std::net::SocketAddr = http.parse().unwrap();
    let host = "private.tunnel.test";
    assert_eq!(get(http, host, "/").await.0, 401);
    let authed = |path: &str, body: &str| {
        Request::post(path)
            .header("host", host)
            .header("authorization", "Basic YW5uOnMzY3JldA==")
            .body(full(body.to_string()))
            .unwrap()
    };
    let response = send(http, authed("/echo", "ten bytes!")).await;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ten bytes!");
    assert_eq!(
        send(http, authed("/echo", "eleven bytes")).await.status(),
        413
    );
    let _ = client.kill().await;
    let _ = server.kill().await;
}
