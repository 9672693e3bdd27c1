//! A `redis-server` of a test's or a benchmark's own: on a loopback port,
//! without persistence unless asked, killed by its pid when dropped or
//! killed. The tests (`tests/common`) and the examples (`#[path]`) share
//! this one file; each uses part of it.
#![allow(dead_code)]

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running `redis-server`.
pub struct Redis {
    child: tokio::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The `user:password` its URL logs in with, if it wants one.
    login: Option<String>,
    /// Its TLS port, which its URL then names (`rediss://`), and the CA
    /// its certificate chains to.
    tls_port: Option<u16>,
    ca: Option<Vec<u8>>,
}

impl Redis {
    /// On a free loopback port, without persistence.
    pub async fn start() -> io::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Redis::on(port, None).await
    }

    /// On `port` (to come back where its clients look for it); with
    /// `appendonly`, it keeps its data in that directory, fsynced always.
    /// Ready once it answers PING, within 10 s.
    pub async fn on(port: u16, appendonly: Option<&Path>) -> io::Result<Redis> {
        Redis::with(port, appendonly, Vec::new()).await
    }

    /// On a free loopback port, with the directives of the config file
    /// `config` (ACL users, say); its URL logs in as `login`
    /// (`user:password`).
    pub async fn configured(config: &Path, login: &str) -> io::Result<Redis> {
        let extra = vec![config.to_string_lossy().into_owned()];
        let mut redis = Redis::with(free_port()?, None, extra).await?;
        redis.login = Some(login.to_string());
        Ok(redis)
    }

    /// [`Redis::configured`], also speaking TLS on a port of its own with
    /// `cert` and `key` (for `localhost`, from the CA `ca`), which its URL
    /// names.
    pub async fn tls(
        config: &Path,
        login: &str,
        (cert, key, ca): (&str, &str, &[u8]),
    ) -> io::Result<Redis> {
        let tls_port = free_port()?;
        let extra = [
            &config.to_string_lossy(),
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            cert,
            "--tls-auth-clients",
            "no",
        ]
        .map(String::from)
        .to_vec();
        let mut redis = Redis::with(free_port()?, None, extra).await?;
        redis.login = Some(login.to_string());
        redis.tls_port = Some(tls_port);
        redis.ca = Some(ca.to_vec());
        Ok(redis)
    }

    async fn with(port: u16, appendonly: Option<&Path>, extra: Vec<String>) -> io::Result<Redis> {
        let mut args = extra;
        args.extend(["--port", &port.to_string(), "--bind", "127.0.0.1"].map(String::from));
        args.extend(["--save", ""].map(String::from));
        // A replica's synchronization never writes to the working directory.
        args.extend(
            [
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
                "--repl-diskless-load",
                "on-empty-db",
            ]
            .map(String::from),
        );
        match appendonly {
            Some(dir) => args.extend([
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                "always".into(),
                "--dir".into(),
                dir.to_string_lossy().into_owned(),
            ]),
            None => args.extend(["--appendonly", "no"].map(String::from)),
        }
        let redis = Redis::spawned(spawn("redis-server", &args)?, port);
        redis
            .until("redis-server answers PING", "PING", |r| {
                r.starts_with("+PONG") || r.starts_with("-NOAUTH")
            })
            .await?;
        Ok(redis)
    }

    /// A replica of `master` on a free loopback port, once it has
    /// synchronized (within 10 s).
    pub async fn replica_of(master: &Redis) -> io::Result<Redis> {
        let extra = ["--replicaof", "127.0.0.1", &master.port.to_string()]
            .map(String::from)
            .to_vec();
        let replica = Redis::with(free_port()?, None, extra).await?;
        replica
            .until("the replica synchronized", "INFO replication", |r| {
                r.contains("master_link_status:up")
            })
            .await?;
        Ok(replica)
    }

    /// Asks `command` every 20 ms until `done` accepts its reply, for at
    /// most 10 s.
    pub async fn until(
        &self,
        what: &str,
        command: &str,
        done: impl Fn(&str) -> bool,
    ) -> io::Result<()> {
        for _ in 0..500 {
            if self.command(command).await.is_ok_and(|r| done(&r)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: not within 10 s (port {})", self.port),
        ))
    }

    /// A Redis Sentinel (`redis-sentinel`, Debian's package of that name)
    /// on a free loopback port, its config file in `dir`, watching the
    /// master on `master_port` as `name` with quorum 2 and taking it for
    /// down after 1 s of silence.
    pub async fn sentinel(dir: &Path, master_port: u16, name: &str) -> io::Result<Redis> {
        let port = free_port()?;
        let config = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n"
            ),
        )?;
        let args = [config.to_string_lossy().into_owned()];
        let sentinel = Redis::spawned(spawn("redis-sentinel", &args)?, port);
        sentinel
            .until("the sentinel answers", "PING", |r| r.starts_with("+PONG"))
            .await?;
        Ok(sentinel)
    }

    /// The CA a node must trust to reach it, when it speaks TLS.
    pub fn ca(&self) -> Option<Vec<u8>> {
        self.ca.clone()
    }

    /// Its URL for `--cluster`.
    pub fn url(&self) -> String {
        let login = self
            .login
            .as_ref()
            .map(|l| format!("{l}@"))
            .unwrap_or_default();
        match self.tls_port {
            Some(port) => format!("rediss://{login}localhost:{port}"),
            None => format!("redis://{login}127.0.0.1:{}", self.port),
        }
    }

    /// One inline command and its reply (its first 64 KiB, within 5 s).
    pub async fn command(&self, command: &str) -> io::Result<String> {
        let exchange = async {
            let mut c = TcpStream::connect(("127.0.0.1", self.port)).await?;
            c.write_all(format!("{command}\r\n").as_bytes()).await?;
            let mut reply = vec![0u8; 64 * 1024];
            let n = c.read(&mut reply).await?;
            Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer in 5 s"))?
    }

    /// Kills it by its pid and waits for it to exit (at most 10 s).
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

impl Redis {
    fn spawned(child: tokio::process::Child, port: u16) -> Redis {
        Redis {
            child,
            port,
            login: None,
            tls_port: None,
            ca: None,
        }
    }
}

/// Starts `program` (Debian's package of that name) with `args`, its
/// stdout discarded, killed when dropped.
fn spawn(program: &str, args: &[String]) -> io::Result<tokio::process::Child> {
    tokio::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{program} is missing ({e}): install Debian's {program} (bash .ci/test does)"
                ),
            )
        })
}

/// A free loopback port.
fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
