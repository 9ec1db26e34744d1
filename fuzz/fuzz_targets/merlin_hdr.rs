//! The Merlin acquisition header (`HDR`, protocols.md §1.5) as it arrives on the data port
//! or in a `.hdr` file: parsing and everything derived from it (frame count, scan shape,
//! counter depth) must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stemflow_drivers::merlin::hdr::MerlinHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = MerlinHeader::parse(data) {
        let _ = h.frames_in_acquisition();
        let _ = h.nav_shape();
        let _ = h.counter_depth();
        let _ = h.raw();
    }
});
