//! Signing deliveries, so an app can tell a POST came through Droid.
//!
//! Every delivery carries three headers:
//! - `Droid-Delivery-Id`: a ULID, the same on every retry of one message to
//!   one destination, so the app can drop duplicates (delivery is at least
//!   once).
//! - `Droid-Timestamp`: unix seconds when this attempt was made.
//! - `Droid-Signature`: lowercase hex of HMAC-SHA256 over
//!   `"{timestamp}.{body}"`, keyed with the destination's secret.
//!
//! An app recomputes the HMAC over the raw body it received, compares in
//! constant time ([`verify_signature`] does both), and rejects timestamps
//! that are too old to stop replays.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Header carrying the delivery id (a ULID).
pub const DELIVERY_ID_HEADER: &str = "droid-delivery-id";
/// Header carrying the unix time of the attempt, in seconds.
pub const TIMESTAMP_HEADER: &str = "droid-timestamp";
/// Header carrying the hex HMAC-SHA256 signature.
pub const SIGNATURE_HEADER: &str = "droid-signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: &str, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: new_from_slice cannot fail for it, but
    // fall back to an empty key rather than unwrap.
    let mut mac = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| HmacSha256::new_from_slice(&[]).unwrap_or_else(|_| unreachable!()));
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature of `body` at `timestamp`: lowercase hex HMAC-SHA256 over
/// `"{timestamp}.{body}"`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    hex(&mac(secret, timestamp, body).finalize().into_bytes())
}

/// Checks a `Droid-Signature` header against the body and `Droid-Timestamp`
/// the app received. The comparison is constant-time. Freshness is the
/// caller's business: compare `timestamp` with the clock too.
pub fn verify_signature(secret: &[u8], timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Some(expected) = unhex(signature.trim()) else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&expected).is_ok()
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
        let sig = sign(b"key", "1700000000", b"{\"a\":1}");
        assert_eq!(sig.len(), 64);
        assert!(verify_signature(b"key", "1700000000", b"{\"a\":1}", &sig));
        assert!(verify_signature(
            b"key",
            "1700000000",
            b"{\"a\":1}",
            &sig.to_uppercase()
        ));
        assert!(!verify_signature(b"key", "1700000001", b"{\"a\":1}", &sig));
        assert!(!verify_signature(
            b"other",
            "1700000000",
            b"{\"a\":1}",
            &sig
        ));
        assert!(!verify_signature(b"key", "1700000000", b"{\"a\":2}", &sig));
        assert!(!verify_signature(b"key", "1700000000", b"{\"a\":1}", "zz"));
    }

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        // Our input is "{timestamp}.{body}", so split the data at its first '.'-free point.
        let mut m = HmacSha256::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(unhex("0aFf"), Some(vec![0x0a, 0xff]));
    }
}
