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
//!   - [`merlin::dataset`]: [`merlin::MibDataSet`], a recording as a core `DataSet`;
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
//!   master/data sets read as raw chunks ([`dectris::DectrisDataSet`], a core `DataSet`).
//! - [`asi`]: ASI Timepix3 (CheeTah, protocols.md §3): the sparse CSR event stream's
//!   headers, its receiver (chunks kept whole in pooled stacks, decision 0010), the `.tpx`
//!   stream file as a sparse data set, Serval's REST client and the `Detector`.
//! - [`receiver`]: the receiver core both data receivers run on — pooled stack writing,
//!   per-acquisition frame accounting and the validity map, end reasons, events and
//!   deadlines — behind [`receiver::Protocol`], which a detector implements (its framing,
//!   header parsing and per-frame checks); dense frames or chunks of many frames (the
//!   sparse CSR stream of protocols.md §3).
//! - [`nav_hint`]: scan-shape hints with a side left to the announced frame count (passive
//!   mode).
//! - [`scpi`]: SCPI instruments over TCP and serial ports (IEEE 488.2 framing, error queue
//!   after every setting): a waveform generator as a scan's pixel clock, and scan generators
//!   and microscope columns driven through command maps from their config files.

pub mod asi;
pub mod dectris;
mod http;
pub mod merlin;
pub mod nav_hint;
mod net;
pub mod receiver;
pub mod scpi;

/// Bytes of frame payload a receiver's stack aims at when its `frames_per_stack` is 0
/// (automatic, the default): a stack is the unit of work one processing worker takes (the
/// live partition), and 4 MiB keeps its hand-over cost negligible while many stacks fit in
/// the pool; as offline (`stemflow_processing::engine::partition_frames`).
pub const AUTO_STACK_BYTES: usize = 4 << 20;

/// Frames per stack for frames of `payload` bytes (each, on the wire or in the largest
/// compressed blob): `frames_per_stack` when not 0, else [`AUTO_STACK_BYTES`] worth, at
/// least 8 (the processing engine reduces frames four at a time) and at most 4096.
/// E.g. 256 × 256 u16 Merlin frames (131 KiB with header): 31; 512 × 512 u32: 8;
/// 64 × 64 u8: 1024.
pub fn stack_frames(frames_per_stack: usize, payload: usize) -> usize {
    if frames_per_stack > 0 {
        return frames_per_stack;
    }
    (AUTO_STACK_BYTES / payload.max(1)).clamp(8, 4096)
}

#[cfg(test)]
mod tests {
    use super::stack_frames;

    #[test]
    fn automatic_stacks_hold_about_4_mib_of_frames() {
        // A fixed setting wins.
        assert_eq!(stack_frames(32, 1 << 20), 32);
        // 256 × 256 u16 Merlin frames with their 768-byte MQ1 header: 31 frames.
        assert_eq!(stack_frames(0, 131_072 + 768), 31);
        // 512 × 512 u32 (1 MiB): 4 would fit, but a stack holds at least 8.
        assert_eq!(stack_frames(0, 1 << 20), 8);
        // 64 × 64 u8: 1024; tiny frames stop at 4096.
        assert_eq!(stack_frames(0, 4096), 1024);
        assert_eq!(stack_frames(0, 16), 4096);
        assert_eq!(stack_frames(0, 0), 4096);
    }
}
