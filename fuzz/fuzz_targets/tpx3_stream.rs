//! The ASI TPX3 data stream (protocols.md §3.3–§3.4) as the receiver walks it: 32-byte
//! headers, `ScanStart` metadata skipped, and each `ArrayChunk`'s CSR payload checked and
//! normalised into rows. A payload is taken only when its announced size fits the input
//! (the receiver checks it against its limit before reading).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stemflow_core::csr::CsrRows;
use stemflow_drivers::asi::wire::{HEADER_LEN, Header};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut format = None;
    let mut rows = CsrRows::default();
    let mut next = 0u64;
    while rest.len() >= HEADER_LEN {
        let (head, tail) = rest.split_at(HEADER_LEN);
        rest = tail;
        let Ok(h) = Header::parse(head.try_into().expect("32 bytes")) else {
            return;
        };
        match h {
            Header::AcquisitionStart(a) => {
                let f = a.format();
                if f.sig_shape.len() > 1 << 24 {
                    return;
                }
                rows.clear(0, f.sig_shape);
                format = Some(f);
                next = 0;
            }
            Header::ScanStart(s) => {
                let Some(r) = usize::try_from(s.metadata_length)
                    .ok()
                    .and_then(|n| rest.get(n..))
                else {
                    return;
                };
                rest = r;
            }
            Header::ArrayChunk(c) => {
                let Some(f) = format else { return };
                let Some(len) = usize::try_from(c.payload_len())
                    .ok()
                    .filter(|&n| n <= rest.len())
                else {
                    return;
                };
                let (payload, tail) = rest.split_at(len);
                rest = tail;
                let chunk = c.chunk_ref(0, next);
                let before = rows.n_frames();
                if rows.push_chunk(&f, &chunk, payload).is_ok() {
                    assert_eq!(rows.n_frames(), before + c.frames as usize);
                    next += u64::from(c.frames);
                }
            }
            _ => {}
        }
    }
});
