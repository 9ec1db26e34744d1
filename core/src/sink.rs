//! Where decoded tiles go besides the UDFs: the recorder implements [`TileSink`].

use crate::csr::CsrRows;
use crate::frame::{RawStack, Tile};

/// Compresses frames for a sink, on the pipeline's worker threads: right after a worker
/// has decoded and reduced a frame, while it is still in cache, and on all workers at once
/// instead of on the sink's one thread.
pub trait FrameEncoder: Send + Sync {
    /// Appends frame `i` of `tile`, encoded, to `out` (cleared by the caller).
    ///
    /// # Errors
    /// The encoder cannot take the tile's pixel type or shape (text for the sink's error).
    fn encode(&self, tile: &Tile, i: usize, out: &mut Vec<u8>) -> Result<(), String>;
}

/// Frames of one tile as a [`FrameEncoder`] encoded them: `(acquisition index, bytes)`.
pub type EncodedFrames = Vec<(u64, Vec<u8>)>;

/// Error type a sink reports; the pipeline stops and reports it with the sink's name.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Receives every decoded tile of a run (e.g. to write raw frames to HDF5).
///
/// Called from the pipeline's coordinating thread, once per tile, not necessarily in frame
/// order (tiles carry their `first_frame`). A sink that falls behind slows the pipeline down
/// (backpressure), it never makes it drop frames.
pub trait TileSink: Send {
    /// Name for errors and logs (e.g. `hdf5 recorder`).
    fn name(&self) -> &str;
    /// Takes one tile.
    ///
    /// # Errors
    /// Any failure to store the tile; the pipeline ends the run with it.
    fn write_tile(&mut self, tile: &Tile) -> Result<(), SinkError>;

    /// Whether [`write_tile_with_raw`](Self::write_tile_with_raw) can use the payloads of
    /// a stack whose decoder reports [`hdf5_chunk_filter`](crate::frame::FrameDecoder::hdf5_chunk_filter)
    /// `filter`; the pipeline keeps a stack's bytes until its tile is written only then.
    fn takes_raw(&self, filter: u32) -> bool {
        let _ = filter;
        false
    }

    /// Takes one tile decoded from `raw` (its first `tile.n_frames` frames), the frames in
    /// `damaged` (acquisition indices) having failed to decode. The default writes the
    /// decoded tile; a recorder storing the detector's own compressed chunks writes the
    /// payloads instead.
    ///
    /// # Errors
    /// As [`write_tile`](Self::write_tile).
    fn write_tile_with_raw(
        &mut self,
        tile: &Tile,
        raw: &RawStack,
        damaged: &[u64],
    ) -> Result<(), SinkError> {
        let _ = (raw, damaged);
        self.write_tile(tile)
    }

    /// Takes sparse rows (CSR, decision 0010): `rows` holds frames
    /// `rows.first_frame..+rows.n_frames()`, those in `damaged` (acquisition indices)
    /// empty because their chunk was malformed. The default densifies them into `u32`
    /// frames and writes that tile ([`write_tile`](Self::write_tile)); a recorder that
    /// stores CSR writes the rows themselves.
    ///
    /// # Errors
    /// As [`write_tile`](Self::write_tile).
    fn write_csr(&mut self, rows: &CsrRows, damaged: &[u64]) -> Result<(), SinkError> {
        let _ = damaged;
        let mut tile = Tile::zeros(rows.first_frame, 0, rows.sig_shape, crate::DType::U32);
        rows.densify_into(0..rows.n_frames(), &mut tile);
        self.write_tile(&tile)
    }

    /// The encoder whose output [`write_encoded`](Self::write_encoded) takes, if the sink
    /// stores frames compressed one by one; the pipeline's workers then encode each tile's
    /// frames (damaged ones left out) and the sink gets them with the tile.
    fn frame_encoder(&self) -> Option<std::sync::Arc<dyn FrameEncoder>> {
        None
    }

    /// Takes one tile with its frames encoded by [`frame_encoder`](Self::frame_encoder).
    /// The default writes the decoded tile.
    ///
    /// # Errors
    /// As [`write_tile`](Self::write_tile).
    fn write_encoded(&mut self, tile: &Tile, encoded: EncodedFrames) -> Result<(), SinkError> {
        let _ = encoded;
        self.write_tile(tile)
    }
}
