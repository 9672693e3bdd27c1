//! What `droid http` prints: the URL on a line of its own, then one line per
//! request, like ngrok. Logs go to stderr through tracing; this is stdout.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use droid_client::{AdapterParts, ClientEvent, Target, TunnelSpec};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::embedded::Embedded;

pub fn banner(tunnels: &[TunnelSpec], embedded: Option<&Embedded>) {
    let to = |t: &TunnelSpec| match t.kind {
        droid_client::TunnelKind::Tcp => format!("tcp {}", t.target),
        _ => format!("http://{}", t.target),
    };
    let target = match tunnels {
        [one] => to(one),
        many => many
            .iter()
            .map(|t| {
                format!(
                    "{} to {}",
                    t.name.as_deref().unwrap_or("a random name"),
                    to(t)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    match embedded {
        Some(e) => {
            say(&format!(
                "droid: forwarding {target} through a local server on {} (use --server HOST:PORT for a public one)",
                e.http
            ));
            for line in &e.lines {
                say(&format!("droid: {line}"));
            }
        }
        None => say(&format!("droid: forwarding {target}")),
    }
    for t in tunnels {
        let who = t
            .name
            .as_deref()
            .map(|n| format!(" of {n}"))
            .unwrap_or_default();
        if t.auth.is_some() {
            say(&format!(
                "droid: visitors{who} must log in (--auth): the server asks before anything reaches your app"
            ));
        }
        if !t.allow_ip.is_empty() {
            say(&format!(
                "droid: only visitors{who} from {} get through (--allow-ip); others get a 403",
                t.allow_ip.join(", ")
            ));
        }
    }
}

/// What the lines printed when the tunnels are up say besides their URLs.
pub struct Announce {
    /// What each tunnel asked of the adapters, in the order of the grants.
    pub tunnels: Vec<AdapterParts>,
    /// Where the inspector listens, if it runs.
    pub inspect: Option<SocketAddr>,
}

/// Says plainly when nothing listens at the target yet; the tunnel comes up
/// anyway and requests reach the app as soon as it starts.
pub async fn check_target(target: &Target) {
    let probe = TcpStream::connect((target.host.as_str(), target.port));
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => say(&format!(
            "droid: nothing listens on {target} yet ({e}); waiting for your app, visitors get a 502 until it starts"
        )),
        Err(_) => say(&format!(
            "droid: {target} does not answer yet; waiting for your app"
        )),
    }
}

/// Prints events as they come, on a thread of its own: a stdout that
/// blocks (a pipe nobody reads) stops the printing, never the tunnels. Under
/// load, the lines of every event already waiting go out in one write.
///
/// After each write the thread lets events gather for [`PRINT_GATHER`]
/// before it waits for the next one: an event that finds it waiting must
/// wake it, a syscall and a thread switch on the tunnels' own thread, and
/// under load that came to one for every two requests.
pub fn print_events(mut events: mpsc::Receiver<ClientEvent>, announce: Announce) {
    let mut lines = String::new();
    while let Some(first) = events.blocking_recv() {
        let mut next = Some(first);
        while let Some(event) = next.take() {
            describe_event(event, &announce, &mut lines);
            if lines.len() < 64 * 1024 {
                next = events.try_recv().ok();
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(lines.as_bytes());
        let _ = out.flush();
        drop(out);
        lines.clear();
        std::thread::sleep(PRINT_GATHER);
    }
}

/// How long the printing thread lets events gather after a write. Short
/// next to what a reader notices; long enough that under load one wakeup
/// prints hundreds of requests, far below the queue's bound
/// ([`droid_client::EVENT_QUEUE`]).
const PRINT_GATHER: Duration = Duration::from_millis(5);

/// Appends the lines an event prints to `out`.
fn describe_event(event: ClientEvent, announce: &Announce, out: &mut String) {
    let mut say = |line: &str| {
        out.push_str(line);
        out.push('\n');
    };
    match event {
        ClientEvent::Connected {
            tunnels,
            reconnected,
            signing_secret,
        } => {
            for (i, t) in tunnels.iter().enumerate() {
                if reconnected {
                    say(&format!("droid: reconnected, {} is up again", t.url));
                    continue;
                }
                say(&t.url);
                if i == 0
                    && let Some(inspect) = announce.inspect
                {
                    // Right after the (first) tunnel's URL, where it is looked for.
                    say(&format!(
                        "inspect http://{inspect}, every request and mail, with replay"
                    ));
                }
                if let Some(asked) = announce.tunnels.get(i) {
                    for line in crate::adapters::describe(asked, &t.adapters) {
                        say(&line);
                    }
                }
            }
            if !reconnected && tunnels.iter().any(|t| !t.adapters.is_empty()) {
                // The secret in use, never a remembered one nothing signs with.
                say(&match signing_secret {
                    Some(secret) => format!(
                        "droid: deliveries are signed (Standard Webhooks) with the secret {secret}"
                    ),
                    None => "droid: deliveries are signed (Standard Webhooks) with the secret you set (--mail-secret)".to_string(),
                });
            }
        }
        ClientEvent::Disconnected { reason, retry_in } => {
            say(&format!(
                "droid: tunnel down: {reason}; retrying in {:.1}s",
                retry_in.as_secs_f32()
            ));
        }
        ClientEvent::Request {
            method,
            path,
            status,
            elapsed,
            ..
        } => {
            // Straight into the batch: a line for every request, so no
            // string of its own first.
            request_line(out, &method, &path, status, elapsed);
        }
        ClientEvent::TargetDown { target, error, .. } => {
            say(&format!(
                "droid: the tunnel is up but nothing answers at {target} ({error})"
            ));
        }
    }
}

/// Prints a line and flushes, so scripts reading a pipe see it at once.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Spaces to pad the columns of a request line with.
const SPACES: &str = "                                        ";

/// Appends `{method:<7} {path:<40} {status} {ms:>8.1} ms` and a newline.
/// `format!` pads a column one character at a time, and for a line printed
/// on every request that was a tenth of the client's instructions: here
/// each column's padding is one slice.
fn request_line(out: &mut String, method: &str, path: &str, status: u16, elapsed: Duration) {
    pad_to(out, method, 7);
    out.push(' ');
    pad_to(out, path, 40);
    let _ = write!(out, " {status} ");
    let number = out.len();
    let _ = write!(out, "{:.1}", elapsed.as_secs_f64() * 1e3);
    if let Some(pad) = SPACES.get(..8usize.saturating_sub(out.len() - number)) {
        out.insert_str(number, pad);
    }
    out.push_str(" ms\n");
}

/// Appends `text`, then spaces up to `width` characters (as `{:<width}`).
fn pad_to(out: &mut String, text: &str, width: usize) {
    out.push_str(text);
    let short = width.saturating_sub(text.chars().count());
    out.push_str(&SPACES[..short.min(SPACES.len())]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_is_laid_out_as_format_would() {
        let cases = [
            ("GET", "/", 200, Duration::from_micros(2_100)),
            ("POST", "/api/login", 302, Duration::from_micros(14_949)),
            ("OPTIONS", "/x", 204, Duration::from_micros(50)),
            ("PROPFIND", "/dav", 207, Duration::from_micros(999_999_999)),
            ("GET", &"/long".repeat(20), 404, Duration::from_secs(120)),
            ("GET", "/grüße/日本", 200, Duration::ZERO),
            ("GET", &"/".repeat(40), 200, Duration::from_micros(1_250)),
        ];
        for (method, path, status, elapsed) in cases {
            let mut line = String::new();
            request_line(&mut line, method, path, status, elapsed);
            let expected = format!(
                "{method:<7} {path:<40} {status} {:>8.1} ms\n",
                elapsed.as_secs_f64() * 1e3
            );
            assert_eq!(line, expected);
        }
    }
}
