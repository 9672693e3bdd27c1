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
        Redis::with(port, appendonly, None).await
    }

    /// On a free loopback port, with the directives of the config file
    /// `config` (ACL users, say); its URL logs in as `login`
    /// (`user:password`).
    pub async fn configured(config: &Path, login: &str) -> io::Result<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut redis = Redis::with(port, None, Some(config)).await?;
        redis.login = Some(login.to_string());
        Ok(redis)
    }

    async fn with(
        port: u16,
        appendonly: Option<&Path>,
        config: Option<&Path>,
    ) -> io::Result<Redis> {
        let mut args: Vec<String> = config
            .map(|c| c.to_string_lossy().into_owned())
            .into_iter()
            .collect();
        args.extend(["--port", &port.to_string(), "--bind", "127.0.0.1"].map(String::from));
        args.extend(["--save", ""].map(String::from));
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
        let child = tokio::process::Command::new("redis-server")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("redis-server is missing ({e}): install Debian's redis-server (bash .ci/test does)"),
                )
            })?;
        let redis = Redis {
            child,
            port,
            login: None,
        };
        for _ in 0..500 {
            if redis
                .command("PING")
                .await
                .is_ok_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
            {
                return Ok(redis);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("redis-server on port {port} did not answer PING within 10 s"),
        ))
    }

    /// Its URL for `--cluster`.
    pub fn url(&self) -> String {
        match &self.login {
            Some(login) => format!("redis://{login}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
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
