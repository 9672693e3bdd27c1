//! Any bytes crossing a tunnel, read the way the inspector's capture reads
//! each direction of an HTTP/1 connection (heads, chunked and sized bodies,
//! upgrades), cut at every size from one byte to the whole.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, bytes)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).max(1);
    droid_client::inspect::messages_in(bytes, false, cut);
    droid_client::inspect::messages_in(bytes, true, cut);
    droid_client::inspect::messages_in(bytes, false, bytes.len().max(1));
});
