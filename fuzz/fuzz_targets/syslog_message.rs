//! The syslog reader: any datagram or TCP stream a sender writes is read
//! without a panic. A message is never lost to the parser (every input
//! gives one, `raw` at worst), and no frame is longer than the largest
//! message.
#![no_main]

use droid_adapters::syslog::frame::Framer;
use droid_adapters::syslog::parse::{self, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = parse::parse(data, 2026);
    assert!(parsed.facility <= 23 && parsed.severity <= 7);
    if parsed.format == Format::Raw {
        assert!(parsed.structured_data.is_empty());
    }
    const MAX: usize = 512;
    let mut framer = Framer::new(MAX);
    let mut buf = bytes::BytesMut::new();
    // Fed in two pieces, as a stream arrives.
    let (first, second) = data.split_at(data.len() / 2);
    for piece in [first, second] {
        buf.extend_from_slice(piece);
        loop {
            match framer.next(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.bytes.len() <= MAX);
                    let _ = parse::parse(&frame.bytes, 2026);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
