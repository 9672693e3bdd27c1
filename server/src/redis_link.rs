//! How a node reaches the cluster's Redis: one server named by its URL
//! (`redis://`, `rediss://`), or the master that Redis Sentinel names
//! (`redis+sentinel://H1:P1,H2:P2/MASTER`, `rediss+sentinel://` for TLS to
//! the sentinels and the master alike).
//!
//! With Sentinel, a node asks the sentinels which server is the master
//! when it starts and then once a second ([`RedisLink::new_master`]); when
//! they name another one (a failover) it connects there, checks that the
//! server says it is a master, and the cluster makes the new connection
//! the one every command goes through ([`RedisLink::install`]). The
//! credentials in the URL (`USER:PASSWORD@`) are for the master; the
//! sentinels are asked without them.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use tracing::debug;

/// How long a sentinel or a candidate master may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the registry's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Address {
    /// One server, by its URL.
    Direct(String),
    /// The master the sentinels name.
    Sentinel(Sentinels),
}

/// A `redis+sentinel://` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sentinels {
    /// `HOST:PORT` of each sentinel.
    hosts: Vec<String>,
    /// The name the sentinels monitor the master by.
    master: String,
    /// `USER:PASSWORD` (or `:PASSWORD`) for the master, if any.
    login: Option<String>,
    tls: bool,
}

impl Address {
    fn parse(url: &str) -> Result<Address, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return Ok(Address::Direct(url.to_string()));
        };
        let (login, rest) = match rest.rsplit_once('@') {
            Some((login, rest)) => (Some(login.to_string()), rest),
            None => (None, rest),
        };
        let usage = "a Sentinel URL is redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER";
        let (hosts, master) = rest.split_once('/').ok_or(usage)?;
        let hosts: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if hosts.is_empty() || master.is_empty() || master.contains('/') {
            return Err(usage.into());
        }
        if let Some(bad) = hosts.iter().find(|h| !h.contains(':')) {
            return Err(format!(
                "sentinel `{bad}` needs a port (26379 is Sentinel's)"
            ));
        }
        Ok(Address::Sentinel(Sentinels {
            hosts,
            master: master.to_string(),
            login,
            tls,
        }))
    }
}

impl Sentinels {
    /// The URL of the server at `host:port`, with this URL's login.
    fn url_of(&self, host_port: &str, login: bool) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        match self.login.as_deref().filter(|_| login) {
            Some(login) => format!("{scheme}://{login}@{host_port}"),
            None => format!("{scheme}://{host_port}"),
        }
    }

    /// `HOST:PORT` of the master, as the first sentinel that answers says.
    async fn ask(&self, ca: Option<&[u8]>) -> Result<String, String> {
        let mut reasons = Vec::new();
        for host in &self.hosts {
            let asked = async {
                let client = client(&self.url_of(host, false), ca)?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match tokio::time::timeout(ASK_TIMEOUT, asked).await {
                Ok(Ok(Some((ip, port)))) => return Ok(host_port(&ip, port)),
                Ok(Ok(None)) => reasons.push(format!(
                    "sentinel {host} monitors no master named {}",
                    self.master
                )),
                Ok(Err(e)) => reasons.push(format!("sentinel {host}: {e}")),
                Err(_) => reasons.push(format!("sentinel {host} did not answer in time")),
            }
        }
        Err(reasons.join("; "))
    }
}

/// `HOST:PORT`, an IPv6 address in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A client for `url`, trusting `ca` for TLS if given.
fn client(url: &str, ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match ca {
        Some(ca) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.to_vec()),
            },
        ),
        None => redis::Client::open(url),
    }
}

/// A connection to one Redis server, as the cluster uses it.
pub(crate) struct Master {
    /// Where it is (`HOST:PORT`, or the URL of a direct server).
    pub(crate) at: String,
    conn: ConnectionManager,
    client: redis::Client,
}

impl Master {
    /// Commands go through this (it reconnects by itself).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// The connection to the registry's Redis, following a Sentinel failover.
pub(crate) struct RedisLink {
    address: Address,
    ca: Option<Vec<u8>>,
    current: Mutex<Master>,
    /// Counts the masters installed, for those that hold connections of
    /// their own (the subscription to events).
    installed: watch::Sender<u64>,
}

impl RedisLink {
    /// Connects to the Redis `url` names (for Sentinel, to the master the
    /// sentinels name now).
    pub(crate) async fn connect(url: &str, ca: Option<Vec<u8>>) -> Result<RedisLink, String> {
        let address = Address::parse(url)?;
        if let (Some(_), Address::Direct(url)) = (&ca, &address)
            && !url.starts_with("rediss://")
        {
            return Err("a CA for Redis (--cluster-ca) is for a rediss:// URL (TLS)".into());
        }
        let master = match &address {
            Address::Direct(url) => {
                let client = client(url, ca.as_deref()).map_err(|e| e.to_string())?;
                manage(url.clone(), client).await?
            }
            Address::Sentinel(sentinels) => {
                let at = sentinels.ask(ca.as_deref()).await?;
                master_at(sentinels, &at, ca.as_deref()).await?
            }
        };
        Ok(RedisLink {
            address,
            ca,
            current: Mutex::new(master),
            installed: watch::Sender::new(0),
        })
    }

    /// Whether the sentinels name the master (else it is one server).
    pub(crate) fn follows_sentinels(&self) -> bool {
        matches!(self.address, Address::Sentinel(_))
    }

    /// Commands go through this (it reconnects by itself).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.lock().conn.clone()
    }

    /// A client of the current master, for connections of their own.
    pub(crate) fn client(&self) -> redis::Client {
        self.lock().client.clone()
    }

    /// Changes each time another master is installed.
    pub(crate) fn installed(&self) -> watch::Receiver<u64> {
        self.installed.subscribe()
    }

    /// A connection to the master the sentinels name now, when that is
    /// another server than the one in use and it says it is a master;
    /// `None` otherwise (and always without Sentinel).
    pub(crate) async fn new_master(&self) -> Option<Master> {
        let Address::Sentinel(sentinels) = &self.address else {
            return None;
        };
        let at = match sentinels.ask(self.ca.as_deref()).await {
            Ok(at) => at,
            Err(reason) => {
                debug!(%reason, "no sentinel named the master");
                return None;
            }
        };
        if at == self.lock().at {
            return None;
        }
        match master_at(sentinels, &at, self.ca.as_deref()).await {
            Ok(master) => Some(master),
            Err(reason) => {
                debug!(%at, %reason, "the master the sentinels name is not ready");
                None
            }
        }
    }

    /// Makes `master` the server every command goes through.
    pub(crate) fn install(&self, master: Master) {
        *self.lock() = master;
        self.installed.send_modify(|n| *n += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Master> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A managed connection to the server at `at`, once it says it is the
/// master.
async fn master_at(sentinels: &Sentinels, at: &str, ca: Option<&[u8]>) -> Result<Master, String> {
    let url = sentinels.url_of(at, true);
    let client = client(&url, ca).map_err(|e| e.to_string())?;
    let master = manage(at.to_string(), client).await?;
    let mut conn = master.conn();
    let role = tokio::time::timeout(
        ASK_TIMEOUT,
        redis::cmd("ROLE").query_async::<redis::Value>(&mut conn),
    )
    .await
    .map_err(|_| format!("{at} did not answer ROLE in time"))?
    .map_err(|e| e.to_string())?;
    let is_master = matches!(&role, redis::Value::Array(items)
        if matches!(items.first(), Some(redis::Value::BulkString(b)) if b == b"master"));
    if !is_master {
        return Err(format!("{at}, named by the sentinels, is not a master yet"));
    }
    Ok(Master {
        at: at.to_string(),
        conn: master.conn,
        client: master.client,
    })
}

async fn manage(at: String, client: redis::Client) -> Result<Master, String> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    let conn = client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Master { at, conn, client })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_are_taken_apart() {
        let parsed = Address::parse("redis+sentinel://u:p@h1:26379,h2:26380/main").unwrap();
        let Address::Sentinel(s) = parsed else {
            panic!("not a sentinel URL");
        };
        assert_eq!(s.hosts, ["h1:26379", "h2:26380"]);
        assert_eq!(s.master, "main");
        assert_eq!(s.url_of("10.0.0.1:6379", true), "redis://u:p@10.0.0.1:6379");
        assert_eq!(s.url_of("h1:26379", false), "redis://h1:26379");
        let tls = Address::parse("rediss+sentinel://h1:26379/m").unwrap();
        assert!(matches!(
            tls,
            Address::Sentinel(Sentinels { tls: true, .. })
        ));
        assert_eq!(
            Address::parse("redis://h:6379").unwrap(),
            Address::Direct("redis://h:6379".into())
        );
        for bad in [
            "redis+sentinel://h1:26379",
            "redis+sentinel:///m",
            "redis+sentinel://h1/m",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(host_port("::1", 6379), "[::1]:6379");
    }
}
