//! `.npy` headers (NumPy format 1.0–3.0) as `stemflow process` and the Python API open
//! them: preamble, header length (checked before it is read), the header dict, the
//! element type and the shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stemflow_processing::io::npy;

fuzz_target!(init: {
    // Our reader turns npyz's overflow panic on a forged shape into an error with
    // catch_unwind; keep the panic quiet instead of aborting. A panic anywhere else still
    // reaches libFuzzer, which reports it as a crash.
    std::panic::set_hook(Box::new(|_| {}));
}, |data: &[u8]| {
    let _ = npy::parse_header(data, std::path::Path::new("fuzz.npy"));
});
