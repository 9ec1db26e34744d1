//! A Merlin frame (`MQ1` header then pixels, protocols.md §1.6–§1.7) as the receiver and
//! the `.mib` reader see it: the quick per-frame parse, the full header parse, the decoder
//! built from it and the pixel decode of whatever payload follows. Frames are decoded only
//! when they fit the receiver's default memory budget, as the receiver allocates only then.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stemflow_core::frame::{FrameDecoder, TileData};
use stemflow_drivers::merlin::decode::MerlinDecoder;
use stemflow_drivers::merlin::mq1::{self, Mq1Header};

/// Largest frame decoded, bytes (a 512 × 512 u32 frame is 1 MiB).
const MAX_FRAME: usize = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let quick = mq1::quick_parse(data);
    let offset = mq1::peek_data_offset(data);
    let Ok(h) = Mq1Header::parse(data) else {
        return;
    };
    if let Ok((seq, off)) = quick {
        assert_eq!((seq, off), (h.sequence, h.data_offset));
    }
    if let Ok(off) = offset {
        assert_eq!(off, h.data_offset);
    }
    let Ok(dec) = MerlinDecoder::new(&h, None) else {
        return;
    };
    let n = dec.sig_shape().len();
    if n.saturating_mul(dec.dtype().size()) > MAX_FRAME {
        return;
    }
    let payload = data.get(h.data_offset..).unwrap_or_default();
    let mut out = TileData::zeros(dec.dtype(), n);
    let _ = dec.decode_into(payload, out.pixels_mut(0..n));
});
