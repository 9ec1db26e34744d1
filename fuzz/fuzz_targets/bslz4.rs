//! Bitshuffle-LZ4 blobs (DECTRIS `bs8/16/32-lz4<`, HDF5 filter 32008; protocols.md §2.5):
//! the header, the blob decoder of the stream, and the HDF5 filter's chunk decoder. The
//! first byte picks the element size and the frame size the receiver would expect (never
//! taken from the blob), the rest is the blob. A blob that decodes must fill the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stemflow_core::codec::{self, Encoding};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, blob)) = data.split_first() else {
        return;
    };
    let elem = [1usize, 2, 4][usize::from(sel % 3)];
    // Frame sizes around the block size (8 KiB), with and without leftover elements.
    let elems = [8usize, 15, 1024, 4096, 4099, 65536][usize::from(sel / 3 % 6)];
    let mut out = vec![0u8; elems * elem];
    let _ = codec::bslz4_header(blob);
    if let Ok(n) = codec::decode_into(&Encoding::bslz4(elem), blob, &mut out) {
        assert_eq!(n, out.len());
    }
    if let Ok(n) = codec::decode_hdf5_lz4_into(blob, &mut out) {
        assert!(n <= out.len());
    }
});
