//! Watching a local target that did not answer, to tell the server the
//! moment it does: the server then retries that tunnel's spooled mail and
//! MQTT messages at once instead of at their next back-off step.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::Target;

/// How often a target that did not answer is tried again.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// The tunnels whose targets are being watched, and where to say that one
/// answers again. Ends with the session that made it.
#[derive(Clone)]
pub(crate) struct Probes {
    up: mpsc::UnboundedSender<String>,
    watching: Arc<Mutex<HashSet<String>>>,
}

impl Probes {
    /// Probes, and the tunnels whose target answers again.
    pub fn new() -> (Probes, mpsc::UnboundedReceiver<String>) {
        let (up, back) = mpsc::unbounded_channel();
        let probes = Probes {
            up,
            watching: Arc::default(),
        };
        (probes, back)
    }

    /// Nothing answered at `tunnel`'s target: watch it until it does (one
    /// watcher per tunnel), or until the session ends.
    pub fn target_down(&self, tunnel: &str, target: &Target) {
        let Ok(mut watching) = self.watching.lock() else {
            return;
        };
        if !watching.insert(tunnel.to_string()) {
            return;
        }
        let (probes, tunnel, target) = (self.clone(), tunnel.to_string(), target.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(PROBE_EVERY) => {}
                    () = probes.up.closed() => return,
                }
                if TcpStream::connect((target.host.as_str(), target.port))
                    .await
                    .is_ok()
                {
                    if let Ok(mut watching) = probes.watching.lock() {
                        watching.remove(&tunnel);
                    }
                    let _ = probes.up.send(tunnel);
                    return;
                }
            }
        });
    }
}
