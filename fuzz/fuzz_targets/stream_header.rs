//! The stream-header decoder: a header line is read without consuming a
//! byte past its newline (the HTTP exchange follows it), lines over the
//! limit are refused, and decoding never panics.
#![no_main]

use droid_core::protocol::{self, ProtocolError, StreamHeader};
use libfuzzer_sys::fuzz_target;

/// A small limit, so the fuzzer reaches it often.
const MAX: usize = 512;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = protocol::decode_line::<StreamHeader>(data) {
        let _ = header.tunnel();
        let line = protocol::encode_line(&header);
        let again: StreamHeader =
            protocol::decode_line(&line[..line.len() - 1]).expect("a re-encoded header decodes");
        assert_eq!(again, header);
    }
    droid_fuzz::block_on(async {
        let mut rest: &[u8] = data;
        let newline = data.iter().position(|&b| b == b'\n');
        let content = newline.unwrap_or(data.len());
        match protocol::read_line(&mut rest, MAX).await {
            Ok(Some(line)) => {
                let nl = newline.expect("a line ends at a newline");
                let mut want = &data[..nl];
                if want.last() == Some(&b'\r') {
                    want = &want[..want.len() - 1];
                }
                assert_eq!(line, want);
                assert_eq!(rest, &data[nl + 1..], "consumed past the header line");
                let _ = protocol::decode_line::<StreamHeader>(&line);
            }
            Ok(None) => assert!(data.is_empty()),
            Err(ProtocolError::TooLong(MAX)) => assert!(content > MAX),
            Err(ProtocolError::Closed) => assert!(newline.is_none() && !data.is_empty()),
            Err(e) => panic!("unexpected error from an in-memory stream: {e}"),
        }
        // and as the client reads it: one message, then the rest untouched
        let mut rest: &[u8] = data;
        let _ = protocol::read_message::<_, StreamHeader>(&mut rest, MAX).await;
    });
});
