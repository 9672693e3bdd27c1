//! The control stream's decoder: whatever a peer sends, decoding never
//! panics, memory stays bounded by the line limit, and a message that
//! decodes re-encodes as one line that decodes to the same message.
#![no_main]

use droid_core::protocol::{self, ControlMessage, MessageReader, ProtocolError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = protocol::decode_line::<ControlMessage>(data) {
        let line = protocol::encode_line(&message);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let again: ControlMessage =
            protocol::decode_line(&line[..line.len() - 1]).expect("a re-encoded message decodes");
        assert_eq!(again, message);
    }
    // The same bytes as a stream of lines, as the server and client read
    // the control stream, with a small limit so long lines are exercised.
    droid_fuzz::block_on(async {
        let mut reader = MessageReader::new(data, 256);
        for _ in 0..=data.len() {
            match reader.next().await {
                Ok(_) | Err(ProtocolError::Malformed(_)) | Err(ProtocolError::TooLong(256)) => {}
                Err(ProtocolError::Closed) => break,
                Err(e) => panic!("unexpected error from an in-memory stream: {e}"),
            }
        }
    });
});
