//! Raw LZ4 blocks (the blocks inside bitshuffle-LZ4 blobs, and DECTRIS `lz4<` frames):
//! our decoder must never read or write out of bounds, and a block it accepts fills its
//! output exactly. Round trip: what our compressor makes decodes back to its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stemflow_core::codec::lz4;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, block)) = data.split_first() else {
        return;
    };
    let mut out = vec![0u8; [0usize, 1, 16, 255, 4096, 8192][usize::from(sel % 6)]];
    let _ = lz4::decompress(block, &mut out);
    let mut packed = Vec::new();
    lz4::compress(block, &mut packed);
    let mut back = vec![0u8; block.len()];
    lz4::decompress(&packed, &mut back).expect("our own block decodes");
    assert_eq!(back, block);
});
