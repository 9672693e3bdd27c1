//! mail-parser's MIT test corpus (see tests/corpus/README.md) through the
//! JSON and multipart conversions: no panic, and JSON that serialises.
#![allow(clippy::unwrap_used)]

use droid_adapters::mail::{self, Envelope, Format};

#[test]
fn corpus_converts_without_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let envelope = Envelope {
        mail_from: "a@example.com".into(),
        rcpt_to: vec!["b+tag@example.com".into()],
        client_ip: "127.0.0.1".into(),
        helo: "corpus".into(),
        tls: false,
        tls_session: None,
        auth: None,
        received_at: 0,
    };
    let mut count = 0;
    for dir in ["rfc", "malformed", "thirdparty"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for path in files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        {
            let raw = std::fs::read(path).unwrap();
            // Some corpus files use bare LF; SMTP delivers CRLF. Try both.
            let crlf = String::from_utf8_lossy(&raw)
                .replace("\r\n", "\n")
                .replace('\n', "\r\n")
                .into_bytes();
            for bytes in [&raw, &crlf] {
                let parsed = mail::json::parse(bytes, &envelope, 1024);
                assert_eq!(parsed.raw_size, bytes.len());
                for format in [Format::Json, Format::Multipart, Format::Raw] {
                    let body = mail::render(format, bytes, &envelope, 1024);
                    assert!(!body.bytes.is_empty(), "{}", path.display());
                }
                let json: serde_json::Value = serde_json::from_slice(
                    &mail::render(Format::Json, bytes, &envelope, 1024).bytes,
                )
                .unwrap();
                assert!(json["envelope"].is_object(), "{}", path.display());
            }
            count += 1;
        }
    }
    assert!(count >= 50, "only {count} corpus messages found");
}
