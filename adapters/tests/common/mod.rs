//! Shared test harness: a recording hyper origin, an SMTP adapter on port 0,
//! and a runner for inline Python (smtplib) clients.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use droid_adapters::{
    ConnLimits, MailOptions, MailRouter, SmtpAdapter, SmtpConfig, Spool, UrlRouter, UrlSink,
};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One request the origin received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A local app: records every request, answers with `answer`.
pub struct Origin {
    pub addr: SocketAddr,
    pub rx: mpsc::UnboundedReceiver<Received>,
    pub answer: Arc<Mutex<(u16, String)>>,
    pub count: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Origin {
    pub async fn start() -> Origin {
        Origin::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Origin {
        let listener = droid_adapters::bind_listener(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let answer = Arc::new(Mutex::new((200u16, "ok".to_string())));
        let count = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (answer2, count2, stop2) = (answer.clone(), count.clone(), stop.clone());
        let connections2 = connections.clone();
        tokio::spawn(async move {
            loop {
                let (io, _) = tokio::select! {
                    _ = stop2.cancelled() => break,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                connections2.fetch_add(1, Ordering::SeqCst);
                let stopped = stop2.clone();
                let (tx, answer, count) = (tx.clone(), answer2.clone(), count2.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (tx, answer, count) = (tx.clone(), answer.clone(), count.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            count.fetch_add(1, Ordering::SeqCst);
                            let _ = tx.send(Received {
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body,
                            });
                            let (status, text) = answer.lock().unwrap().clone();
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::from(text)))
                                    .unwrap(),
                            )
                        }
                    });
                    let serve = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), service);
                    // A stopped app closes its kept connections too.
                    tokio::select! {
                        _ = serve => {}
                        _ = stopped.cancelled() => {}
                    }
                });
            }
        });
        Origin {
            addr,
            rx,
            answer,
            count,
            connections,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn set_answer(&self, status: u16, text: &str) {
        *self.answer.lock().unwrap() = (status, text.to_string());
    }

    /// The next request, within 20 s.
    pub async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(20), self.rx.recv())
            .await
            .expect("no delivery within 20 s")
            .expect("origin gone")
    }

    /// Stops accepting (the port then refuses connections) and closes the
    /// connections it has.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// An SMTP adapter running on 127.0.0.1:0.
pub struct Smtp {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Smtp {
    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

pub async fn start_smtp(
    config: SmtpConfig,
    router: Arc<dyn MailRouter>,
    spool: Option<Arc<Spool>>,
    limits: ConnLimits,
) -> Smtp {
    let listener = droid_adapters::bind_listener("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let adapter = Arc::new(SmtpAdapter::new(config, router, spool));
    let task = tokio::spawn(droid_adapters::run_adapter(
        [listener.into()],
        adapter,
        limits,
        shutdown.clone(),
    ));
    Smtp {
        addr,
        shutdown,
        task,
    }
}

/// A URL router to `origin` (any domain unless `domain`), with `secret`.
pub fn url_router(
    origin: &Origin,
    path: &str,
    domain: Option<&str>,
    options: MailOptions,
) -> Arc<UrlRouter> {
    let sink = UrlSink::new(&origin.url(path))
        .unwrap()
        .with_timeout(Duration::from_secs(5));
    let options = MailOptions {
        path: sink.path().to_string(),
        ..options
    };
    Arc::new(UrlRouter::new(
        Arc::new(sink),
        origin.url(path),
        options,
        domain.map(str::to_string),
    ))
}

/// Runs `python3 -c script args...` with a 120 s limit; returns (ok, stdout, stderr).
pub async fn python(script: &str, args: &[&str]) -> (bool, String, String) {
    let child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("python timed out")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A raw SMTP client over a tokio TcpStream, for pipelining and abuse tests.
pub struct RawClient {
    pub stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        RawClient {
            stream: tokio::io::BufReader::new(stream),
        }
    }

    pub async fn send(&mut self, text: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.get_mut().write_all(text).await.unwrap();
    }

    /// Reads one reply (all its lines), within 20 s.
    pub async fn reply(&mut self) -> String {
        use tokio::io::AsyncBufReadExt;
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.stream.read_line(&mut line))
                .await
                .expect("no reply within 20 s")
                .unwrap();
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }
}

/// Waits (bounded: 20 s) until `check` holds, polling every 10 ms.
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Whether `post` carries a good Standard Webhooks signature by the key
/// `key`.
pub fn signed_with(post: &Received, key: &[u8]) -> bool {
    droid_adapters::verify(
        key,
        &post.header("webhook-id"),
        &post.header("webhook-timestamp"),
        &post.body,
        &post.header("webhook-signature"),
    )
}
