//! Whether a received mail can be trusted: SPF, DKIM, DMARC and ARC,
//! checked with Stalwart's `mail-auth` when the message arrives, and told
//! to the app in RFC 8601's words (`pass`, `fail`, `softfail`, `neutral`,
//! `none`, `temperror`, `permerror`). A DNS that fails or is slow gives
//! `temperror`, never a lost mail; with `enforce`, a mail that fails DMARC
//! for a domain whose policy is `reject` is refused (`550 5.7.1`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcOutput, DmarcResult,
    MessageAuthenticator, SpfResult,
};
use serde::{Deserialize, Serialize};

/// How long all of a mail's checks may take before what is missing is
/// `temperror`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(8);

/// What the checks found, as the app gets it (`auth` in the JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResults {
    /// SPF for the envelope sender (`MAIL FROM`, or the HELO name).
    pub spf: SpfVerdict,
    /// Each DKIM signature.
    pub dkim: Vec<DkimVerdict>,
    /// DMARC for the `From` domain.
    pub dmarc: DmarcVerdict,
    /// ARC, when the message carries a chain (`none` when not).
    pub arc: String,
    /// The same as an RFC 8601 `Authentication-Results` header.
    pub authentication_results: String,
}

/// `{result, domain}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpfVerdict {
    /// RFC 8601's word.
    pub result: String,
    /// The domain checked.
    pub domain: String,
}

/// `{result, domain, selector}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimVerdict {
    /// RFC 8601's word.
    pub result: String,
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
}

/// `{result, policy}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DmarcVerdict {
    /// RFC 8601's word.
    pub result: String,
    /// The domain's policy: `none`, `quarantine`, `reject`, or null
    /// without a record.
    pub policy: Option<String>,
}

/// What a mail's checks came to.
pub struct Checked {
    /// For the app.
    pub results: AuthResults,
    /// The SMTP reply refusing it, under `enforce`.
    pub refusal: Option<String>,
}

/// The checks a server runs on the mail it receives.
pub struct MailAuth {
    authenticator: MessageAuthenticator,
    enforce: bool,
    hostname: String,
}

impl std::fmt::Debug for MailAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailAuth")
            .field("enforce", &self.enforce)
            .finish()
    }
}

impl MailAuth {
    /// Checks against `dns` (a resolver's address) or the system's
    /// resolver; refuses what DMARC says to reject when `enforce`.
    pub fn new(dns: Option<SocketAddr>, enforce: bool, hostname: &str) -> Result<MailAuth, String> {
        let mut options = ResolverOpts::default();
        options.timeout = Duration::from_secs(1);
        options.attempts = 1;
        let authenticator = match dns {
            Some(addr) => {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = addr.port();
                        c
                    })
                    .collect();
                let server = NameServerConfig::new(addr.ip(), true, connections);
                MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![server]), options)
            }
            None => MessageAuthenticator::new_system_conf(),
        }
        .map_err(|e| format!("cannot set up DNS for checking mail: {e}"))?;
        Ok(MailAuth {
            authenticator,
            enforce,
            hostname: hostname.to_string(),
        })
    }

    /// Checks `raw`, received from `ip` that said `helo` and `MAIL FROM`
    /// `mail_from`.
    pub async fn check(&self, raw: &[u8], ip: IpAddr, helo: &str, mail_from: &str) -> Checked {
        let checked = tokio::time::timeout(CHECK_TIMEOUT, self.run(raw, ip, helo, mail_from)).await;
        checked.unwrap_or_else(|_| Checked {
            results: unknown("temperror", "the checks took too long"),
            refusal: None,
        })
    }

    async fn run(&self, raw: &[u8], ip: IpAddr, helo: &str, mail_from: &str) -> Checked {
        let Some(message) = AuthenticatedMessage::parse(raw) else {
            return Checked {
                results: unknown("permerror", "not a message"),
                refusal: None,
            };
        };
        let auth = &self.authenticator;
        // The three ask the DNS for different names: at once, so a slow or
        // absent DNS costs one wait, not three.
        let spf_params = SpfParameters::verify_mail_from(ip, helo, &self.hostname, mail_from);
        let (dkim, arc, spf) = tokio::join!(
            auth.verify_dkim(&message),
            auth.verify_arc(&message),
            auth.verify_spf(spf_params)
        );
        let mail_from_domain = mail_from.rsplit_once('@').map_or(helo, |(_, d)| d);
        let dmarc = auth
            .verify_dmarc(DmarcParameters::new(
                &message,
                &dkim,
                mail_from_domain,
                &spf,
            ))
            .await;
        let header_from = message.from.first().map_or("", |f| f.as_str());
        // RFC 7489 §6.6.1: a message with no From, or From addresses in
        // several domains, cannot be judged: permerror, and refused when
        // enforcing (else the domain an app shows would be unchecked).
        let mut from_domains: Vec<&str> = message
            .from
            .iter()
            .map(|f| f.rsplit_once('@').map_or(f.as_str(), |(_, d)| d))
            .collect();
        from_domains.sort_unstable();
        from_domains.dedup();
        let unjudged = from_domains.len() != 1;
        let dmarc_result = if unjudged {
            "permerror"
        } else {
            dmarc_word(&dmarc)
        };
        let policy = match dmarc.policy() {
            Policy::None => Some("none"),
            Policy::Quarantine => Some("quarantine"),
            Policy::Reject => Some("reject"),
            Policy::Unspecified => None,
        };
        let mut header = AuthenticationResults::new(&self.hostname)
            .with_dkim_results(&dkim, header_from)
            .with_spf_mailfrom_result(&spf, ip, mail_from, helo)
            .with_arc_result(&arc, ip)
            .to_header()
            // RFC 8601 §2.7.1: a signature that does not verify fails.
            .replace(
                "dkim=neutral (body hash did not verify)",
                "dkim=fail (body hash did not verify)",
            )
            .trim_end()
            .to_string();
        header.push_str(&format!(
            ";\r\n\tdmarc={dmarc_result} header.from={} policy.dmarc={}",
            pvalue(dmarc.domain()),
            policy.unwrap_or("none")
        ));
        let refusal = if !self.enforce {
            None
        } else if unjudged {
            Some("550 5.7.1 Rejected: DMARC cannot judge a mail with no From or From addresses in several domains".to_string())
        } else if dmarc_result == "fail" && policy == Some("reject") {
            Some(format!(
                "550 5.7.1 Rejected: the mail fails DMARC and {} asks that such mail be rejected",
                pvalue(dmarc.domain())
            ))
        } else {
            None
        };
        let results = AuthResults {
            spf: SpfVerdict {
                result: spf_word(spf.result()).to_string(),
                domain: spf.domain().to_string(),
            },
            dkim: dkim
                .iter()
                .map(|d| DkimVerdict {
                    result: dkim_word(d.result()).to_string(),
                    domain: d.signature().map(|s| s.d.clone()).unwrap_or_default(),
                    selector: d.signature().map(|s| s.s.clone()).unwrap_or_default(),
                })
                .collect(),
            dmarc: DmarcVerdict {
                result: dmarc_result.to_string(),
                policy: policy.map(str::to_string),
            },
            arc: dkim_word(arc.result()).to_string(),
            authentication_results: header
                .trim_start_matches("Authentication-Results:")
                .trim()
                .to_string(),
        };
        Checked { results, refusal }
    }
}

/// `text` as an RFC 8601 pvalue: the characters a domain has, no others.
fn pvalue(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect()
}

/// Every check `word`, for a mail that could not be checked (`why`).
fn unknown(word: &str, why: &str) -> AuthResults {
    AuthResults {
        spf: SpfVerdict {
            result: word.into(),
            domain: String::new(),
        },
        dkim: Vec::new(),
        dmarc: DmarcVerdict {
            result: word.into(),
            policy: None,
        },
        arc: word.into(),
        authentication_results: format!("droid; none ({why})"),
    }
}

fn spf_word(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_word(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "pass",
        // RFC 8601 §2.7.1: a signature that does not verify fails.
        DkimResult::Neutral(mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch)) => "fail",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// DMARC passes when an aligned SPF or DKIM does; a temporary or
/// permanent error says so; else a domain that publishes a record fails
/// (RFC 7489 §6.6.2), and one that publishes none is `none`.
fn dmarc_word(dmarc: &DmarcOutput) -> &'static str {
    let (spf, dkim) = (dmarc.spf_result(), dmarc.dkim_result());
    let either = |want: fn(&DmarcResult) -> bool| want(spf) || want(dkim);
    if either(|r| matches!(r, DmarcResult::Pass)) {
        "pass"
    } else if either(|r| matches!(r, DmarcResult::TempError(_))) {
        "temperror"
    } else if either(|r| matches!(r, DmarcResult::PermError(_))) {
        "permerror"
    } else if dmarc.dmarc_record().is_some() || either(|r| matches!(r, DmarcResult::Fail(_))) {
        "fail"
    } else {
        "none"
    }
}
