//! Any bytes a visitor sends to the server's HTTP front, read as the front
//! reads them (request heads, their rewrite for the app, bodies by their
//! framing), and the same bytes read as an app's answer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    droid_server::read_as_visitor_and_app(data);
});
