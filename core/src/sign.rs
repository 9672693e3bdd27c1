//! Signing deliveries the Standard Webhooks way
//! (<https://www.standardwebhooks.com>), so an app checks them with the
//! library it already has for any other webhook.
//!
//! Every delivery carries three headers:
//! - `webhook-id`: the delivery's id (a ULID), the same on every retry of
//!   one message to one destination, so the app can drop duplicates
//!   (delivery is at least once);
//! - `webhook-timestamp`: unix seconds when this attempt was made;
//! - `webhook-signature`: `v1,` and the base64 of HMAC-SHA256 over
//!   `"{id}.{timestamp}.{body}"`, keyed with the tunnel's secret.
//!
//! A secret is shown as `whsec_` and the base64 of its key bytes; the key
//! is what HMAC uses. An app recomputes the HMAC over the raw body it
//! received, compares in constant time ([`verify`] does both), and rejects
//! timestamps that are too old, to stop replays.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Header carrying the delivery id (a ULID).
pub const ID_HEADER: &str = "webhook-id";
/// Header carrying the unix time of the attempt, in seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Header carrying the signatures, `v1,BASE64`, space-separated.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// What a secret's text starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// The fewest key bytes a secret may have (Standard Webhooks asks 24 to 64).
pub const MIN_SECRET_BYTES: usize = 24;

type HmacSha256 = Hmac<Sha256>;

/// A signing secret: its key bytes. Its text is `whsec_` and their base64;
/// its `Debug` masks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

/// Why a text is not a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a signing secret is whsec_ followed by the base64 of {MIN_SECRET_BYTES} to 64 random bytes ({0}); leave it out to have one made"
)]
pub struct SecretError(&'static str);

impl Secret {
    /// The secret of `key`.
    pub fn from_key(key: Vec<u8>) -> Secret {
        Secret(key)
    }

    /// Reads `whsec_BASE64`, as Droid prints it and Standard Webhooks
    /// libraries take it.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError("it does not start with whsec_"))?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError("what follows whsec_ is not base64"))?;
        if !(MIN_SECRET_BYTES..=64).contains(&key.len()) {
            return Err(SecretError("the key is too short or too long"));
        }
        Ok(Secret(key))
    }

    /// The key of a secret as it was configured: `whsec_BASE64`, or (for
    /// what an older client sent) the text's own bytes.
    pub fn key_of(text: &str) -> Vec<u8> {
        text.strip_prefix(SECRET_PREFIX)
            .and_then(|encoded| STANDARD.decode(encoded).ok())
            .unwrap_or_else(|| text.as_bytes().to_vec())
    }

    /// The key HMAC uses.
    pub fn key(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SECRET_PREFIX}{}", STANDARD.encode(&self.0))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(MASKED)")
    }
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: new_from_slice cannot fail for it, but
    // fall back to an empty key rather than unwrap.
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| HmacSha256::new_from_slice(&[]).unwrap_or_else(|_| unreachable!()));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` of `body` with delivery `id` at `timestamp`:
/// `v1,` and the base64 of HMAC-SHA256 over `"{id}.{timestamp}.{body}"`.
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v1,{}",
        STANDARD.encode(mac(key, id, timestamp, body).finalize().into_bytes())
    )
}

/// Checks a `webhook-signature` header (one or more `v1,BASE64`, space
/// separated) against the body, id and timestamp the app received. The
/// comparison is constant-time. Freshness is the caller's business: compare
/// `timestamp` with the clock too.
pub fn verify(key: &[u8], id: &str, timestamp: &str, body: &[u8], signatures: &str) -> bool {
    signatures.split_whitespace().any(|one| {
        let Some(expected) = one
            .strip_prefix("v1,")
            .and_then(|encoded| STANDARD.decode(encoded).ok())
        else {
            return false;
        };
        mac(key, id, timestamp, body)
            .verify_slice(&expected)
            .is_ok()
    })
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Parses hex (either case); `None` when it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let sig = sign(b"key", "msg_1", "1700000000", b"{\"a\":1}");
        assert!(sig.starts_with("v1,"));
        assert!(verify(b"key", "msg_1", "1700000000", b"{\"a\":1}", &sig));
        let two = format!("v1,AAAA {sig}");
        assert!(verify(b"key", "msg_1", "1700000000", b"{\"a\":1}", &two));
        assert!(!verify(b"key", "msg_2", "1700000000", b"{\"a\":1}", &sig));
        assert!(!verify(b"key", "msg_1", "1700000001", b"{\"a\":1}", &sig));
        assert!(!verify(b"other", "msg_1", "1700000000", b"{\"a\":1}", &sig));
        assert!(!verify(b"key", "msg_1", "1700000000", b"{\"a\":2}", &sig));
        assert!(!verify(
            b"key",
            "msg_1",
            "1700000000",
            b"{\"a\":1}",
            "v2,zz"
        ));
    }

    #[test]
    fn the_specs_example_verifies() {
        // The example of the Standard Webhooks specification.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(
                secret.key(),
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                body
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(secret.to_string(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    }

    #[test]
    fn secrets_are_whsec_and_base64() {
        assert!(Secret::parse("s3cret").is_err());
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err(), "5 bytes");
        assert_eq!(Secret::key_of("plain"), b"plain");
        assert_eq!(
            format!("{:?}", Secret::from_key(vec![1; 32])),
            "Secret(MASKED)"
        );
        assert_eq!(unhex("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
