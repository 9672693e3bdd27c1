//! After DATA: one delivery per destination, and the single SMTP reply.
//!
//! Each destination (recipients grouped by owner and destination) gets its
//! own [`Delivery`] with its own id and an envelope that lists only its own
//! recipients (so one app never learns another's recipients). The attempts
//! run concurrently. Then:
//! - a destination whose app answered 2xx is done;
//! - one whose app said 4xx (not 408/429) rejected the message;
//! - any other outcome goes to the spool; if the spool is disabled, full or
//!   failing, that destination failed temporarily.
//!
//! The reply: `451` if any destination failed temporarily (the sender keeps
//! the mail and tries again; a destination that already took it may see it
//! twice, with a new delivery id, never zero times); else `550` with the
//! app's reason if every destination rejected it; else `250`. When some
//! destinations rejected and others accepted, the rejection is logged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::delivery::{self, Attempt, Content, Delivery};
use crate::mail::Envelope;
use crate::route::Route;
use crate::spool::Spool;
use crate::stats::DeliveryStats;

/// What became of the message for one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The app took it.
    Delivered,
    /// It is in the spool.
    Spooled,
    /// The app refused it, with this reason.
    Rejected(String),
    /// Neither delivered nor spooled: the sender must keep it.
    TempFail(String),
}

/// Groups accepted recipients by destination, keeping their order.
pub fn group(recipients: Vec<(String, Route)>) -> Vec<(Route, Vec<String>)> {
    let mut groups: Vec<(Route, Vec<String>)> = Vec::new();
    for (rcpt, route) in recipients {
        match groups
            .iter_mut()
            .find(|(r, _)| r.owner == route.owner && r.destination == route.destination)
        {
            Some((_, list)) => list.push(rcpt),
            None => groups.push((route, vec![rcpt])),
        }
    }
    groups
}

/// Delivers `raw` to every destination and returns the SMTP reply line
/// (without CRLF).
pub async fn accept(
    raw: Bytes,
    envelope: Envelope,
    recipients: Vec<(String, Route)>,
    spool: Option<&Arc<Spool>>,
    timeout: Duration,
    stats: &DeliveryStats,
) -> String {
    let attempts = group(recipients).into_iter().map(|(route, rcpts)| {
        let delivery = Delivery {
            id: delivery::new_id(),
            owner: route.owner.clone(),
            destination: route.destination.clone(),
            content: Content::Mail {
                options: route.options.clone(),
                envelope: Envelope { rcpt_to: rcpts, ..envelope.clone() },
            },
            raw: raw.clone(),
        };
        async move {
            let outcome = match delivery.attempt(&*route.sink, timeout).await {
                Attempt::Accepted => Outcome::Delivered,
                Attempt::Rejected { status, reason } => {
                    tracing::info!(id = %delivery.id, destination = %delivery.destination, status, %reason, "app rejected the message");
                    Outcome::Rejected(reason)
                }
                Attempt::Retry { reason } => match spool {
                    None => {
                        tracing::warn!(id = %delivery.id, destination = %delivery.destination, %reason, "app unavailable and no spool");
                        Outcome::TempFail(reason)
                    }
                    Some(spool) => match spool.store(&delivery, &reason).await {
                        Ok(()) => Outcome::Spooled,
                        Err(error) => {
                            tracing::warn!(id = %delivery.id, destination = %delivery.destination, %error, "cannot spool");
                            Outcome::TempFail(error.to_string())
                        }
                    },
                },
            };
            match outcome {
                Outcome::Delivered => {
                    stats.delivered.inc();
                    tracing::info!(id = %delivery.id, destination = %delivery.destination, size = delivery.raw.len(), "delivered");
                }
                Outcome::Spooled => {
                    stats.spooled.inc();
                }
                _ => {}
            }
            (delivery.id, outcome)
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    reply(&outcomes)
}

/// The one SMTP reply for the outcomes of all destinations.
pub fn reply(outcomes: &[(String, Outcome)]) -> String {
    if outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::TempFail(_)))
    {
        return "451 4.3.0 Cannot deliver or queue the message now, try again later".into();
    }
    let rejected: Vec<&str> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Rejected(reason) => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    if !outcomes.is_empty() && rejected.len() == outcomes.len() {
        return format!("550 5.7.1 {}", rejected[0]);
    }
    let ids: Vec<&str> = outcomes
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Rejected(_)))
        .map(|(id, _)| id.as_str())
        .collect();
    let spooled = outcomes.iter().any(|(_, o)| *o == Outcome::Spooled);
    format!(
        "250 2.0.0 Ok: {} {}",
        if spooled { "queued as" } else { "delivered as" },
        ids.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let o = |x: Outcome| ("ID".to_string(), x);
        assert!(reply(&[o(Outcome::Delivered)]).starts_with("250 "));
        assert!(reply(&[o(Outcome::Spooled)]).contains("queued"));
        assert_eq!(
            reply(&[o(Outcome::Rejected("no such user".into()))]),
            "550 5.7.1 no such user"
        );
        assert!(
            reply(&[o(Outcome::Rejected("x".into())), o(Outcome::Delivered)]).starts_with("250 ")
        );
        assert!(
            reply(&[o(Outcome::TempFail("x".into())), o(Outcome::Delivered)]).starts_with("451 ")
        );
    }
}
