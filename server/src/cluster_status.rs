//! What `droid cluster status` shows: the nodes of a cluster as Redis
//! knows them (peer address, when each last renewed its lease, how many
//! tunnels each holds, its version) and, when asked, where each name is.
//! It reads Redis only; it changes nothing.

use std::collections::HashMap;
use std::time::Duration;

use redis::AsyncCommands;

use crate::cluster::ClusterError;

/// One node, as Redis knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Its `--node-id`.
    pub id: String,
    /// Where the other nodes reach it.
    pub peer: Option<String>,
    /// How long ago it last renewed its lease (unknown for a node of a
    /// version that did not say).
    pub renewed_ago: Option<Duration>,
    /// Its lease's time left; negative once it ran out (the node is gone).
    pub lease_left_ms: i64,
    /// Names live on it.
    pub tunnels: usize,
    /// The droid version it runs (unknown for one too old to say).
    pub version: Option<String>,
}

/// One name's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameStatus {
    /// The name (the first label of its host).
    pub name: String,
    /// `live` (on a node whose lease runs), `resuming` (its node's lease ran
    /// out: its owner may come back), or the record's own state
    /// (`released`: kept for its owner).
    pub state: String,
    /// The node that holds it, or held it last.
    pub node: String,
    /// The owner's id (a hash of its resume secret), shortened.
    pub owner: String,
}

/// The cluster as one read of Redis saw it.
#[derive(Debug, Clone, Default)]
pub struct ClusterStatus {
    /// Every node Redis has a lease for, lapsed or not.
    pub nodes: Vec<NodeStatus>,
    /// Every name, when asked for (sorted).
    pub names: Vec<NameStatus>,
}

/// How long each step may take: a status command never hangs.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the cluster's state from the Redis at `url`.
pub async fn status(url: &str, with_names: bool) -> Result<ClusterStatus, ClusterError> {
    let failed = |reason: String| ClusterError::new(url, reason);
    let link = tokio::time::timeout(TIMEOUT, crate::redis_link::RedisLink::connect(url, None))
        .await
        .map_err(|_| failed("Redis did not answer in time".into()))?
        .map_err(failed)?;
    let read = async {
        let mut conn = link.conn();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await?;
        let now = secs * 1000 + micros / 1000;
        let leases: Vec<(String, f64)> = conn.zrange_withscores("droid:nodes", 0, -1).await?;
        let peers: HashMap<String, String> = conn.hgetall("droid:peers").await?;
        let names = read_names(&mut conn, now, &leases).await?;
        let mut nodes = Vec::new();
        for (id, deadline) in leases {
            let (version, renewed): (Option<String>, Option<i64>) = redis::cmd("HMGET")
                .arg(format!("droid:node:{id}"))
                .arg(&["version", "renewed"])
                .query_async(&mut conn)
                .await?;
            nodes.push(NodeStatus {
                peer: peers.get(&id).cloned(),
                renewed_ago: renewed.map(|at| Duration::from_millis((now - at).max(0) as u64)),
                lease_left_ms: deadline as i64 - now,
                tunnels: names
                    .iter()
                    .filter(|n| n.node == id && n.state == "live")
                    .count(),
                version,
                id,
            });
        }
        Ok::<_, redis::RedisError>(ClusterStatus {
            nodes,
            names: if with_names { names } else { Vec::new() },
        })
    };
    match tokio::time::timeout(TIMEOUT * 4, read).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed("Redis did not answer in time".into())),
    }
}

/// Every name record, with its state as the nodes would see it now.
async fn read_names(
    conn: &mut redis::aio::ConnectionManager,
    now: i64,
    leases: &[(String, f64)],
) -> redis::RedisResult<Vec<NameStatus>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("droid:name:*")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    let mut names = Vec::with_capacity(keys.len());
    for key in keys {
        let (state, node, owner): (Option<String>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(&key)
                .arg(&["state", "node", "owner"])
                .query_async(conn)
                .await?;
        let (Some(state), Some(node)) = (state, node) else {
            continue;
        };
        let node_live = leases
            .iter()
            .any(|(id, deadline)| *id == node && *deadline as i64 >= now);
        let state = match state.as_str() {
            "live" if node_live => "live".to_string(),
            "live" => "resuming".to_string(),
            other => other.to_string(),
        };
        names.push(NameStatus {
            name: key.trim_start_matches("droid:name:").to_string(),
            state,
            node,
            owner: owner.unwrap_or_default().chars().take(12).collect(),
        });
    }
    Ok(names)
}
