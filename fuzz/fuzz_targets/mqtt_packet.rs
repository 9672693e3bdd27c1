//! The MQTT packet reader (MQTT 3.1.1 and 5 through the `mqttbytes`
//! codec, after the version is read from the CONNECT): any bytes a device
//! sends are read without a panic, and a limit on packet size holds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = droid_adapters::mqtt::packets_in(data, 1 << 20);
    // A smaller limit never lets more packets through than a larger one.
    assert!(droid_adapters::mqtt::packets_in(data, 64) <= whole);
});
