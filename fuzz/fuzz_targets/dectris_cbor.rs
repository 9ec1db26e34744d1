//! DECTRIS stream v2 CBOR messages (protocols.md §2.6): the message parse, then each image
//! channel's typed array decoded as the receiver decodes it, when its frame fits the
//! receiver's default memory budget.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stemflow_core::frame::{FrameDecoder, TileData};
use stemflow_drivers::dectris::DectrisDecoder;
use stemflow_drivers::dectris::stream::{self, V2Message};

/// Largest frame decoded, bytes.
const MAX_FRAME: usize = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(V2Message::Image(img)) = stream::parse_v2_message(data) else {
        return;
    };
    for (_, a) in img.channels {
        let n = a.sig_shape.len();
        if n.saturating_mul(a.dtype.size()) > MAX_FRAME {
            continue;
        }
        let dec = DectrisDecoder::new("fuzz", a.sig_shape, a.dtype, a.encoding, a.big_endian);
        let mut out = TileData::zeros(a.dtype, n);
        let _ = dec.decode_into(&a.data, out.pixels_mut(0..n));
    }
});
