//! Merlin MPX framing (protocols.md §1.2) and control-port replies (§1.3): the 15-byte
//! `MPX,<10 digits>,` prefix of every message on both ports, then a reply payload as the
//! control client reads it. Neither may panic, and an accepted length never exceeds the
//! limit it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stemflow_drivers::merlin::control::parse_reply;
use stemflow_drivers::merlin::mpx::MpxPrefix;

fuzz_target!(|data: &[u8]| {
    let max = 1 << 30;
    if let Ok(p) = MpxPrefix::parse(data, max) {
        assert!(p.length > 0 && p.length <= max);
        let _ = p.payload_len();
    }
    // The reply to each kind of request, as the control client parses it.
    if let Some(rest) = data.get(15..) {
        let text = String::from_utf8_lossy(rest);
        for (kind, name) in [
            ("GET", "DETECTORSTATUS"),
            ("SET", "NUMFRAMESTOACQUIRE"),
            ("CMD", "STARTACQUISITION"),
        ] {
            if let Ok(r) = parse_reply(&text, kind, name) {
                assert_eq!(r.name, name);
            }
        }
    }
});
