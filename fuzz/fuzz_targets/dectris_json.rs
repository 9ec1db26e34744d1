//! DECTRIS stream v1 JSON parts (protocols.md §2.4): the `htype` sniffing every part goes
//! through, each typed parser, the encoding string, and the framing check of a blob
//! against the frame size its `dimage_d` part announced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stemflow_drivers::dectris::decode::check_framing;
use stemflow_drivers::dectris::stream::{self, V1Part};

fuzz_target!(|data: &[u8]| {
    let _ = stream::htype_of(data);
    let _ = stream::parse_global_header(data);
    let _ = stream::parse_detector_config(data);
    let _ = stream::parse_image_header(data);
    let _ = stream::parse_image_times(data);
    if let Ok(V1Part::ImageData(d)) = stream::parse_v1_part(data) {
        let bytes = d.sig_shape.len().saturating_mul(d.dtype.size());
        if let Ok(enc) = stemflow_core::codec::Encoding::parse_for(&d.encoding_text, d.dtype.size())
        {
            // The blob is whatever follows the JSON in the input (split at its end).
            let end = data
                .iter()
                .rposition(|&b| b == b'}')
                .map_or(data.len(), |i| i + 1);
            let _ = check_framing(&enc, &data[end..], bytes);
        }
    }
});
