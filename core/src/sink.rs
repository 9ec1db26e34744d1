//! Where decoded tiles go besides the UDFs: the recorder implements [`TileSink`].

use crate::frame::Tile;

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
}
