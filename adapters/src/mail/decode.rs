//! Transfer decoding that works around mail-parser 0.11's weaknesses.
//!
//! Measured here (and fixed only in mail-parser 1.x, which needs a newer
//! rustc):
//! - a `==` in a quoted-printable part makes mail-parser give up on the whole
//!   part: the body comes back still encoded, flagged `is_encoding_problem`;
//! - an unpadded final base64 quantum (`AAEC/w`) is dropped: a byte lost at
//!   the end of an attachment;
//! - a binary attachment labelled `text/plain` is charset-decoded lossily.
//!
//! So the bytes of every attachment, and of any text part mail-parser
//! flagged, are decoded here from the raw part (mail-parser's offsets),
//! leniently: base64 without padding or with stray characters, and
//! quoted-printable in the `quoted_printable` crate's robust mode.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use mail_parser::{Message, MessagePart, MimeHeaders, PartType};

const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes base64 the way mail clients do: characters outside the alphabet
/// (line ends, stray spaces) and padding are skipped, a final partial
/// quantum is kept, and a lone trailing character is dropped.
pub fn lenient_base64(input: &[u8]) -> Vec<u8> {
    let mut clean: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    if clean.len() % 4 == 1 {
        clean.pop();
    }
    LENIENT_BASE64.decode(&clean).unwrap_or_default()
}

/// The declared `Content-Transfer-Encoding` of a part, lowercased.
fn transfer_encoding(part: &MessagePart<'_>) -> Option<String> {
    part.content_transfer_encoding()
        .map(|cte| cte.trim().to_ascii_lowercase())
}

/// The raw (still encoded) body of `part` inside `message`, when the
/// offsets are sane.
fn raw_body<'a>(message: &'a Message<'_>, part: &MessagePart<'_>) -> Option<&'a [u8]> {
    let start = usize::try_from(part.offset_body).ok()?;
    let end = usize::try_from(part.offset_end).ok()?;
    message.raw_message().get(start..end)
}

/// The decoded bytes of a leaf part: exact for binary content whatever its
/// label says. Nested messages give their raw bytes; multiparts give nothing.
pub fn part_bytes<'a>(message: &'a Message<'_>, part: &'a MessagePart<'_>) -> Cow<'a, [u8]> {
    match &part.body {
        PartType::Message(nested) => return Cow::Borrowed(nested.raw_message()),
        PartType::Multipart(_) => return Cow::Borrowed(&[]),
        _ => {}
    }
    let Some(raw) = raw_body(message, part) else {
        return Cow::Borrowed(part.contents());
    };
    match transfer_encoding(part).as_deref() {
        Some("base64") => Cow::Owned(lenient_base64(raw)),
        Some("quoted-printable") => {
            match quoted_printable::decode(raw, quoted_printable::ParseMode::Robust) {
                Ok(bytes) => Cow::Owned(bytes),
                Err(_) => Cow::Borrowed(part.contents()),
            }
        }
        _ => Cow::Borrowed(raw),
    }
}

/// The text of a text or html part, in UTF-8. mail-parser's decoding is used
/// unless it flagged a problem or the part is base64 with a short final
/// quantum; then the part is decoded here and the charset applied with
/// mail-parser's own charset decoders.
pub fn part_text(message: &Message<'_>, part: &MessagePart<'_>) -> String {
    let suspicious = part.is_encoding_problem
        || (transfer_encoding(part).as_deref() == Some("base64")
            && raw_body(message, part).is_some_and(|raw| {
                raw.iter().filter(|b| !b.is_ascii_whitespace()).count() % 4 != 0
            }));
    if !suspicious && let Some(text) = part.text_contents() {
        return text.to_string();
    }
    let bytes = part_bytes(message, part);
    let charset = part
        .content_type()
        .and_then(|ct| ct.attribute("charset"))
        .map(|c| c.to_string());
    if let Some(decoder) =
        charset.and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()))
    {
        decoder(&bytes)
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MessageParser;

    #[test]
    fn base64_without_padding_keeps_last_byte() {
        assert_eq!(lenient_base64(b"AAEC/w"), vec![0, 1, 2, 0xff]);
        assert_eq!(lenient_base64(b"AAEC/w=="), vec![0, 1, 2, 0xff]);
        assert_eq!(lenient_base64(b"AA\r\nEC /w"), vec![0, 1, 2, 0xff]);
        assert_eq!(lenient_base64(b"AAECA"), vec![0, 1, 2]);
    }

    const MIXED: &str = "Subject: a\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=a.bin\r\n\r\nAAEC/w\r\n--XX\r\nContent-Type: text/plain; name=b.txt\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=b.bin\r\n\r\nAP/+gIE=\r\n--XX\r\nContent-Type: text/plain; name=c.txt\r\nContent-Disposition: attachment; filename=c.txt\r\n\r\nplain body\r\nline2\r\n--XX--\r\n";

    #[test]
    fn attachments_are_exact() {
        let message = MessageParser::default().parse(MIXED.as_bytes()).unwrap();
        let parts: Vec<Vec<u8>> = message
            .attachments()
            .map(|p| part_bytes(&message, p).into_owned())
            .collect();
        assert_eq!(parts[0], vec![0, 1, 2, 0xff]);
        assert_eq!(parts[1], vec![0, 0xff, 0xfe, 0x80, 0x81]);
        assert_eq!(parts[2], b"plain body\r\nline2".to_vec());
    }

    #[test]
    fn quoted_printable_with_double_equals() {
        let raw = "Subject: a\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\na == b =C3=A9t=C3=A9\r\n";
        let message = MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(part_text(&message, &message.parts[0]), "a == b été\r\n");
        let raw = "Subject: a\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9 ==\r\n";
        let message = MessageParser::default().parse(raw.as_bytes()).unwrap();
        assert_eq!(part_text(&message, &message.parts[0]), "café ==\r\n");
    }
}
