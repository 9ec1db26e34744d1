//! stemflow detector drivers: the wire protocols of pixelated detectors, their frame
//! decoders, control clients and data receivers. Blocking I/O on std threads, every wait
//! with a deadline; no actor code here (the detector actor drives these from a blocking
//! thread). See `docs/adding-a-detector.md` for how a new detector fits in.
//!
//! # Layout
//! - [`merlin`]: Quantum Detectors Merlin (protocols.md §1):
//!   - [`merlin::mpx`]: MPX framing of both ports;
//!   - [`merlin::hdr`]: the acquisition header (`HDR`);
//!   - [`merlin::mq1`]: the frame header (`MQ1`);
//!   - [`merlin::decode`]: [`merlin::MerlinDecoder`], the `FrameDecoder` for MQ1 payloads
//!     (big-endian, raw 1/6/12-bit, quad assembly);
//!   - [`merlin::file`](mod@merlin::file): [`merlin::MibFile`], offline `.hdr` + `.mib` reader into tiles;
//!   - [`merlin::settings`]: acquisition settings and trigger sources;
//!   - [`merlin::control`]: [`merlin::MerlinControl`], the control-port client (6341);
//!   - [`merlin::error`]: [`merlin::MerlinError`], data-channel errors;
//!   - [`merlin::receiver`]: [`merlin::MerlinReceiver`], the data-port receiver (6342)
//!     filling pooled raw frame stacks.

pub mod merlin;
pub mod scpi;
