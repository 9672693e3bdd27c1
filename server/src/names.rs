//! Tunnel names: which are valid, and random ones that are easy to read.
//!
//! A random name is `adjective-noun-N` with N below 10,000, from petname's
//! medium English lists: about 1.26 × 10^10 names, well above the 2^32 the
//! seed's users needed so that old links never reach a new user by chance.

use petname::Petnames;
use rand::RngExt;

/// The largest number appended to a random name, exclusive.
const NUMBER_SPACE: u32 = 10_000;

/// Draws random readable names.
pub struct NameGenerator {
    words: Petnames<'static>,
}

impl Default for NameGenerator {
    fn default() -> Self {
        NameGenerator {
            words: Petnames::medium(),
        }
    }
}

impl NameGenerator {
    /// A new random name such as `quiet-otter-42`.
    pub fn generate(&self) -> String {
        let mut rng = rand::rng();
        let mut name = String::with_capacity(32);
        self.words.namer(2, "-").generate_into(&mut name, &mut rng);
        let n: u32 = rng.random_range(0..NUMBER_SPACE);
        name.push('-');
        name.push_str(&n.to_string());
        name
    }

    /// How many distinct names [`NameGenerator::generate`] can return.
    pub fn space(&self) -> u128 {
        self.words.cardinality(2) * u128::from(NUMBER_SPACE)
    }
}

/// Names kept from anybody but a token that reserves them, by default: the
/// names of common services (a stranger's tunnel at `mail.` or `api.` of a
/// server's domain is a phishing page waiting to happen).
/// Each adapter the server runs adds its own protocol's names
/// (`droid_adapters::ServerAdapter::reserved_names`).
pub const SERVICE_NAMES: [&str; 13] = [
    "www",
    "mail",
    "api",
    "admin",
    "mx",
    "imap",
    "pop",
    "ftp",
    "webmail",
    "autoconfig",
    "autodiscover",
    "ns1",
    "ns2",
];

/// Whether `name` is kept by default: a common service's name, or
/// punycode (`xn--`: an internationalized name that may look like another).
pub fn is_kept_by_default(name: &str) -> bool {
    SERVICE_NAMES.contains(&name) || name.starts_with("xn--")
}

/// Checks that `name` can be a DNS label of a tunnel's host name: 1 to 63
/// lowercase letters, digits and inner hyphens.
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("the name {name:?} must be 1 to 63 characters long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "the name {name:?} may hold only lowercase letters, digits and hyphens"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "the name {name:?} must not start or end with a hyphen"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_space_is_at_least_two_to_the_32() {
        let g = NameGenerator::default();
        assert!(g.space() >= 1u128 << 32, "space {}", g.space());
    }

    #[test]
    fn random_names_are_valid_and_readable() {
        let g = NameGenerator::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let name = g.generate();
            validate(&name).unwrap();
            assert_eq!(name.split('-').count(), 3, "{name}");
            seen.insert(name);
        }
        assert!(seen.len() > 990, "names repeat too often: {}", seen.len());
    }

    #[test]
    fn invalid_names_are_refused_with_a_reason() {
        for bad in [
            "",
            "UPPER",
            "has.dot",
            "-lead",
            "trail-",
            "spa ce",
            &"x".repeat(64),
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
        validate("myapp").unwrap();
        validate("a-1").unwrap();
    }
}
