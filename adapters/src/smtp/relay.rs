//! The relay a server sends apps' mail through: `smtp://USER:PASS@HOST:587`
//! (STARTTLS required) or `smtps://USER:PASS@HOST:465` (implicit TLS),
//! its certificate checked against the system's roots or one CA file.

use std::path::Path;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::send::Refused;

/// How long one relay exchange may take.
const RELAY_TIMEOUT: Duration = Duration::from_secs(30);

/// A relay, ready to send through.
#[derive(Clone)]
pub struct Relay {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `HOST:PORT`, for messages.
    pub name: String,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("name", &self.name).finish()
    }
}

impl Relay {
    /// The relay at `url`, trusting `ca` (a PEM file) instead of the
    /// system's roots when given. The error says what is wrong.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Relay, String> {
        let parsed = url::Url::parse(url).map_err(|e| {
            format!("the relay is not a URL ({e}); write smtp://USER:PASS@HOST:587 or smtps://USER:PASS@HOST:465")
        })?;
        let implicit = match parsed.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => {
                return Err(format!(
                    "a relay URL starts with smtp:// (STARTTLS) or smtps:// (TLS), not {other}://"
                ));
            }
        };
        let host = parsed
            .host_str()
            .ok_or_else(|| "the relay URL names no host".to_string())?
            .to_string();
        let port = parsed.port().unwrap_or(if implicit { 465 } else { 587 });
        let mut tls = TlsParameters::builder(host.clone());
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read the relay's CA {}: {e}", ca.display()))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| format!("{} is not a PEM certificate: {e}", ca.display()))?;
            tls = tls
                .certificate_store(CertificateStore::None)
                .add_root_certificate(cert);
        }
        let tls = tls
            .build_rustls()
            .map_err(|e| format!("cannot set up TLS to the relay: {e}"))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .timeout(Some(RELAY_TIMEOUT))
            .tls(if implicit {
                Tls::Wrapper(tls)
            } else {
                Tls::Required(tls)
            });
        if !parsed.username().is_empty() {
            let decode = |s: &str| {
                percent_decode(s).ok_or_else(|| {
                    "the relay URL's login has a %-escape that is not UTF-8".to_string()
                })
            };
            let user = decode(parsed.username())?;
            let password = decode(parsed.password().unwrap_or_default())?;
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(Relay {
            transport: builder.build(),
            name: format!("{host}:{port}"),
        })
    }

    /// Sends `raw` from `from` to `to`; the relay's answer when it took the
    /// message (`250 ...`), else why not, as the app is told it.
    pub async fn send(
        &self,
        from: &Address,
        to: &[Address],
        raw: &[u8],
    ) -> Result<String, Refused> {
        let envelope = Envelope::new(Some(from.clone()), to.to_vec())
            .map_err(|e| Refused::invalid(format!("no envelope: {e}")))?;
        match self.transport.send_raw(&envelope, raw).await {
            Ok(response) => Ok(format!(
                "{} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
            Err(e) if e.is_permanent() => Err(Refused {
                status: 422,
                code: 701,
                message: format!("the relay {} refused the message: {e}", self.name),
            }),
            Err(e) if e.is_transient() => Err(Refused {
                status: 503,
                code: 701,
                message: format!(
                    "the relay {} cannot take the message now ({e}); try again later",
                    self.name
                ),
            }),
            Err(e) => Err(Refused {
                status: 503,
                code: 701,
                message: format!(
                    "the relay {} cannot be reached ({e}); try again later",
                    self.name
                ),
            }),
        }
    }
}

/// `p%40ss` as `p@ss`; `None` when the bytes are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls_are_read_or_refused_with_a_sentence() {
        let relay = Relay::new("smtp://me:p%40ss@relay.example.com", None).unwrap();
        assert_eq!(relay.name, "relay.example.com:587");
        let relay = Relay::new("smtps://relay.example.com", None).unwrap();
        assert_eq!(relay.name, "relay.example.com:465");
        assert!(
            Relay::new("http://x", None)
                .unwrap_err()
                .contains("smtp://")
        );
        assert!(
            Relay::new("nonsense", None)
                .unwrap_err()
                .contains("not a URL")
        );
        assert_eq!(percent_decode("p%40ss").as_deref(), Some("p@ss"));
        assert_eq!(percent_decode("%ff"), None);
    }
}
