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
//!     filling pooled raw frame stacks;
//!   - [`merlin::detector`]: [`merlin::MerlinDetector`], the Merlin as the orchestrator's
//!     `Detector` (active and passive mode).
//! - [`dectris`]: DECTRIS SIMPLON detectors, ARINA and QUADRO (protocols.md §2): the
//!   bitshuffle-LZ4 / LZ4 codecs (our own, SIMD), the REST client, stream v1 (JSON) and v2
//!   (CBOR) over our blocking ZeroMQ client, the receiver, the `Detector`, and offline HDF5
//!   master/data sets read as raw chunks.
//! - [`nav_hint`]: scan-shape hints with a side left to the announced frame count (passive
//!   mode).
//! - [`scpi`]: SCPI instruments over TCP and serial ports (IEEE 488.2 framing, error queue
//!   after every setting): a waveform generator as a scan's pixel clock, and scan generators
//!   and microscope columns driven through command maps from their config files.

pub mod dectris;
pub mod merlin;
pub mod nav_hint;
mod net;
pub mod scpi;
