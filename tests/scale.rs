//! Many requests at once through one tunnel, up to its stream limit and
//! past it (`examples/scale.rs` measures the same at full size). Every
//! assertion is on counts, never on time.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use droid_client::{ClientEvent, Target};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Barrier, mpsc, watch};

/// Each request holds four sockets (visitor, server, client to app, app):
/// raise the soft limit where the default is lower than that needs.
fn enough_files(requests: u64) {
    let _ = rlimit::increase_nofile_limit(4 * requests + 512);
}

/// A listener that queues a burst of hundreds of connections (the default
/// 128 would drop some SYNs, to be retried a second later).
fn listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(1024).unwrap()
}

async fn wide_server(tweak: impl FnOnce(&mut droid_server::ServerConfig)) -> TestServer {
    server_on(listener(), listener(), |c| {
        // Every visitor here comes from 127.0.0.1: as if each came from an
        // address of its own.
        c.visitors.max_per_ip = c.visitors.max_connections;
        tweak(c)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_requests_in_flight_at_once_through_one_tunnel() {
    const N: usize = 500;
    enough_files(N as u64);
    // The app answers /gather only once all N are in flight at once.
    let app = app(N);
    let srv = wide_server(|_| {}).await;
    let mut c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let host = c.host();
    let mut done = burst(srv.http, &host, "/gather", N);
    assert_eq!(statuses(&mut done, N).await, vec![200; N]);
    assert_eq!(*app.arrived.borrow(), N);
    assert_eq!(app.most.load(Ordering::SeqCst), N);
    assert_no_reconnect(&mut c);
}

/// The local app. `/gather` answers once `gather` requests are in flight
/// at once; `/hold` waits for the gate to open. Both count arrivals and
/// the most in flight at once; anything else answers at once.
struct App {
    target: Target,
    arrived: watch::Receiver<usize>,
    most: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

struct AppState {
    arrived: watch::Sender<usize>,
    in_flight: AtomicUsize,
    most: Arc<AtomicUsize>,
    gate: watch::Receiver<bool>,
    gather: Barrier,
}

fn app(gather: usize) -> App {
    let listener = listener();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = watch::channel(0);
    let (gate, gate_rx) = watch::channel(false);
    let most = Arc::new(AtomicUsize::new(0));
    let state = Arc::new(AppState {
        arrived: arrived_tx,
        in_flight: AtomicUsize::new(0),
        most: most.clone(),
        gate: gate_rx,
        gather: Barrier::new(gather),
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let path = req.uri().path();
                    if path != "/hold" && path != "/gather" {
                        return Ok::<_, Infallible>(Response::new(full("ok")));
                    }
                    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    state.most.fetch_max(now, Ordering::SeqCst);
                    state.arrived.send_modify(|n| *n += 1);
                    if path == "/hold" {
                        let _ = state.gate.clone().wait_for(|open| *open).await;
                    } else {
                        state.gather.wait().await;
                    }
                    state.in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok(Response::new(full("done")))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    App {
        target: Target::new("127.0.0.1", addr.port()),
        arrived,
        most,
        gate,
    }
}

/// Sends `n` GETs of `path` at once; their statuses arrive on the channel
/// as they finish.
fn burst(addr: SocketAddr, host: &str, path: &str, n: usize) -> mpsc::UnboundedReceiver<u16> {
    let (tx, rx) = mpsc::unbounded_channel();
    for _ in 0..n {
        let (tx, host, path) = (tx.clone(), host.to_string(), path.to_string());
        tokio::spawn(async move {
            let (status, _) = get(addr, &host, &path).await;
            let _ = tx.send(status.as_u16());
        });
    }
    rx
}

async fn statuses(rx: &mut mpsc::UnboundedReceiver<u16>, n: usize) -> Vec<u16> {
    let mut got = Vec::new();
    within("responses", async {
        while got.len() < n {
            got.push(rx.recv().await.unwrap());
        }
    })
    .await;
    got
}

fn assert_no_reconnect(c: &mut TestClient) {
    while let Ok(event) = c.events.try_recv() {
        assert!(
            !matches!(event, ClientEvent::Disconnected { .. }),
            "the session died: {event:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_the_stream_limit_at_once_waits_or_gets_503_and_the_session_survives() {
    const LIMIT: usize = 10;
    enough_files(3 * LIMIT as u64);
    let mut app = app(1);
    let srv = wide_server(|c| {
        c.max_streams_per_tunnel = LIMIT;
        // The wait before a 503: long enough that a request queued behind
        // streams about to close always gets one in the second round.
        c.stream_open_timeout = Duration::from_secs(2);
    })
    .await;
    let mut c = client(client_config(srv.control, vec![spec(None, &app.target)])).await;
    let host = c.host();

    // Three times the limit while the app holds everything: LIMIT reach
    // it, the others wait for a stream until the server gives up on them.
    let mut done = burst(srv.http, &host, "/hold", 3 * LIMIT);
    within(
        "the first LIMIT arrive",
        app.arrived.wait_for(|n| *n == LIMIT),
    )
    .await
    .unwrap();
    let refused = statuses(&mut done, 2 * LIMIT).await;
    assert_eq!(refused, vec![503; 2 * LIMIT]);
    assert_eq!(*app.arrived.borrow(), LIMIT);
    app.gate.send_replace(true);
    assert_eq!(statuses(&mut done, LIMIT).await, vec![200; LIMIT]);

    // Twice the limit while the app holds: the second half waits for the
    // first to finish, then is answered.
    app.gate.send_replace(false);
    let mut done = burst(srv.http, &host, "/hold", 2 * LIMIT);
    within(
        "LIMIT more arrive",
        app.arrived.wait_for(|n| *n == 2 * LIMIT),
    )
    .await
    .unwrap();
    app.gate.send_replace(true);
    assert_eq!(statuses(&mut done, 2 * LIMIT).await, vec![200; 2 * LIMIT]);
    assert_eq!(*app.arrived.borrow(), 3 * LIMIT);
    // Never more than the limit reached the app at once.
    assert_eq!(app.most.load(Ordering::SeqCst), LIMIT);

    // The session lived through it all.
    assert_eq!(
        get(srv.http, &host, "/").await,
        (http::StatusCode::OK, "ok".into())
    );
    assert_no_reconnect(&mut c);
    assert_eq!(srv.server.registry().live_count(), 1);
}
