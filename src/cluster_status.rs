//! `droid cluster status`: the cluster's nodes and names, as tables.

use std::fmt::Write;

use anyhow::Result;
use droid_server::cluster_status::{ClusterStatus, NodeStatus};

/// Reads the cluster in the Redis at `url` and prints it.
pub fn print(url: &str, names: bool) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(droid_server::cluster_status::status(url, names))?;
    print!("{}", render(&status, names));
    Ok(())
}

/// The tables: one line a node, then (with `names`) one line a name.
fn render(status: &ClusterStatus, names: bool) -> String {
    let mut out = String::new();
    if status.nodes.is_empty() {
        out.push_str("no node has joined this cluster\n");
    } else {
        let _ = writeln!(
            out,
            "{:<16} {:<22} {:<14} {:<20} {:>7}  VERSION",
            "NODE", "PEER", "RENEWED", "LEASE", "TUNNELS"
        );
        for node in &status.nodes {
            let _ = writeln!(
                out,
                "{:<16} {:<22} {:<14} {:<20} {:>7}  {}",
                node.id,
                node.peer.as_deref().unwrap_or("-"),
                renewed(node),
                lease(node),
                node.tunnels,
                node.version.as_deref().unwrap_or("-"),
            );
        }
    }
    if names {
        out.push('\n');
        if status.names.is_empty() {
            out.push_str("no names\n");
        } else {
            let _ = writeln!(out, "{:<32} {:<12} {:<16} OWNER", "NAME", "STATE", "NODE");
            for name in &status.names {
                let _ = writeln!(
                    out,
                    "{:<32} {:<12} {:<16} {}",
                    name.name, name.state, name.node, name.owner
                );
            }
        }
    }
    out
}

fn renewed(node: &NodeStatus) -> String {
    node.renewed_ago
        .map_or("-".into(), |ago| format!("{:.1}s ago", ago.as_secs_f64()))
}

fn lease(node: &NodeStatus) -> String {
    let left = node.lease_left_ms as f64 / 1000.0;
    if node.lease_left_ms >= 0 {
        format!("live, {left:.1}s left")
    } else {
        format!("gone {:.0}s ago", -left)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use droid_server::cluster_status::NameStatus;

    use super::*;

    #[test]
    fn nodes_and_names_print_one_line_each() {
        let status = ClusterStatus {
            nodes: vec![
                NodeStatus {
                    id: "one".into(),
                    peer: Some("10.0.0.1:7900".into()),
                    renewed_ago: Some(Duration::from_millis(1200)),
                    lease_left_ms: 8_800,
                    tunnels: 2,
                    version: Some("0.1.0".into()),
                },
                NodeStatus {
                    id: "two".into(),
                    peer: None,
                    renewed_ago: None,
                    lease_left_ms: -60_000,
                    tunnels: 0,
                    version: None,
                },
            ],
            names: vec![NameStatus {
                name: "shop".into(),
                state: "live".into(),
                node: "one".into(),
                owner: "3f9a".into(),
            }],
        };
        let text = render(&status, true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("one "), "{text}");
        assert!(
            lines[1].contains("10.0.0.1:7900") && lines[1].contains("1.2s ago"),
            "{text}"
        );
        assert!(
            lines[1].contains("live, 8.8s left") && lines[1].ends_with("2  0.1.0"),
            "{text}"
        );
        assert!(
            lines[2].contains("gone 60s ago") && lines[2].ends_with("0  -"),
            "{text}"
        );
        assert!(
            lines[5].starts_with("shop ") && lines[5].ends_with("one              3f9a"),
            "{text}"
        );
        assert!(!render(&status, false).contains("shop"));
    }
}
