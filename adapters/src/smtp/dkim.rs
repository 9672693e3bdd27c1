//! DKIM signatures on the mail apps send (`droid server --dkim-key FILE
//! --dkim-selector SEL`), with Stalwart's `mail-auth`: `d=` the server's
//! domain, so a receiver sees a signature aligned with the `From` of every
//! tunnel (`anything@NAME.DOMAIN`) for DMARC.

use std::path::Path;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use tokio_rustls::rustls::pki_types::PrivateKeyDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

/// The headers signed, when the message has them.
const SIGNED: &[&str] = &[
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
];

/// A signer for one domain and selector, RSA (`rsa-sha256`) or Ed25519
/// (`ed25519-sha256`).
enum Signer {
    Rsa(Box<DkimSigner<RsaKey<Sha256>, Done>>),
    Ed25519(Box<DkimSigner<Ed25519Key, Done>>),
}

/// What signs the mail apps send.
pub struct Dkim {
    signer: Signer,
    /// `SELECTOR._domainkey.DOMAIN`, where the public key is published.
    pub record: String,
}

impl std::fmt::Debug for Dkim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dkim")
            .field("record", &self.record)
            .finish()
    }
}

impl Dkim {
    /// Reads a PEM private key (PKCS#8 RSA or Ed25519, or PKCS#1 RSA)
    /// from `path`, to sign for `domain` as `selector`.
    pub fn load(path: &Path, selector: &str, domain: &str) -> Result<Dkim, String> {
        if selector.is_empty()
            || !selector
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(format!(
                "`{selector}` is not a DKIM selector (letters, digits, - and .)"
            ));
        }
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the DKIM key {}: {e}", path.display()))?;
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| format!("{} is not a PEM private key: {e}", path.display()))?;
        let ed25519 = match &der {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                Ed25519Key::from_pkcs8_der(pkcs8.secret_pkcs8_der()).ok()
            }
            _ => None,
        };
        let signer = match ed25519 {
            Some(key) => Signer::Ed25519(Box::new(
                DkimSigner::from_key(key)
                    .domain(domain)
                    .selector(selector)
                    .headers(SIGNED.iter().copied()),
            )),
            None => {
                let key = RsaKey::<Sha256>::from_key_der(der).map_err(|e| {
                    format!(
                        "{} is neither an RSA nor an Ed25519 key: {e}",
                        path.display()
                    )
                })?;
                Signer::Rsa(Box::new(
                    DkimSigner::from_key(key)
                        .domain(domain)
                        .selector(selector)
                        .headers(SIGNED.iter().copied()),
                ))
            }
        };
        Ok(Dkim {
            signer,
            record: format!("{selector}._domainkey.{domain}"),
        })
    }

    /// `raw` with a `DKIM-Signature` on top.
    pub fn sign(&self, raw: &[u8]) -> Result<Vec<u8>, String> {
        let signature = match &self.signer {
            Signer::Rsa(signer) => signer.sign(raw),
            Signer::Ed25519(signer) => signer.sign(raw),
        }
        .map_err(|e| format!("cannot sign with DKIM: {e}"))?;
        let mut signed = signature.to_header().into_bytes();
        signed.extend_from_slice(raw);
        Ok(signed)
    }
}
