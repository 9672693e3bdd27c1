//! The mail-to-POST conversion: any bytes received as a message become a
//! body in every format without panicking; JSON bodies are valid JSON,
//! multipart bodies are closed by their boundary, raw bodies are the bytes
//! received, and envelope headers are always valid HTTP header values.
#![no_main]

use droid_adapters::mail::{self, Envelope, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the inline-attachment limit (0 to 16 KiB).
    let (inline, raw) = match data.split_first() {
        Some((&b, rest)) => (usize::from(b) * 64, rest),
        None => (0, data),
    };
    let text = String::from_utf8_lossy(raw);
    let first_line = text.lines().next().unwrap_or_default();
    let envelopes = [
        Envelope {
            mail_from: "ann@example.com".into(),
            rcpt_to: vec![
                "inbox+42@quiet-otter-42.droid.test".into(),
                "Bob@x.droid.test".into(),
            ],
            client_ip: "127.0.0.1".into(),
            helo: "mx.example.com".into(),
            tls: false,
            tls_session: None,
            auth: None,
            received_at: 1_767_225_600,
        },
        // an envelope made of the input too: what a hostile SMTP peer controls
        Envelope {
            mail_from: first_line.to_string(),
            rcpt_to: first_line.split(',').map(str::to_string).collect(),
            client_ip: "::1".into(),
            helo: text.to_string(),
            tls: true,
            tls_session: Some(droid_adapters::adapter::TlsSession {
                version: first_line.to_string(),
                cipher: text.to_string(),
            }),
            auth: None,
            received_at: 0,
        },
    ];
    for envelope in &envelopes {
        for format in [Format::Json, Format::Multipart, Format::Raw] {
            let body = mail::render(format, raw, envelope, inline);
            assert!(
                http::HeaderValue::from_str(&body.content_type).is_ok(),
                "{:?}",
                body.content_type
            );
            match format {
                Format::Json => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&body.bytes).expect("the JSON body is JSON");
                    assert_eq!(v["raw_size"].as_u64(), Some(raw.len() as u64));
                }
                Format::Multipart => {
                    let boundary = body
                        .content_type
                        .strip_prefix("multipart/form-data; boundary=")
                        .expect("a boundary");
                    let end = format!("--{boundary}--\r\n");
                    assert!(body.bytes.ends_with(end.as_bytes()));
                }
                Format::Raw => assert_eq!(body.bytes, raw),
            }
        }
        for (name, value) in mail::raw_envelope_headers(envelope) {
            assert!(
                http::HeaderValue::from_str(&value).is_ok(),
                "{name}: {value:?}"
            );
        }
    }
});
