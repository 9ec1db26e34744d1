//! The HDF5 layout of a stemflow recording (object paths, chunk shape) and the pure
//! arithmetic that maps frame ranges onto the 4-D frames dataset. `docs/formats.md`
//! describes the same layout for readers of the files.

use stemflow_core::{DType, NavShape, SigShape};

/// Version of the layout below, stored as the `/entry` (and root) attribute
/// `stemflow_layout_version`. Bumped whenever an object is renamed or changes meaning.
/// Version 2 added the reader views ([`crate::views`]), the calibration and files without
/// frames (raw recording off); version 1 files read the same.
pub const LAYOUT_VERSION: u64 = 2;

pub use stemflow_core::metadata::{EMD_ALIAS, RECORDING_FILE};

/// The acquisition group (NeXus `NXentry`).
pub const ENTRY: &str = "/entry";
/// Raw frames and validity (NeXus `NXdata`).
pub const DATA: &str = "/entry/data";
/// Raw frames: `(nav_rows, nav_cols, sig_rows, sig_cols)`, native unsigned dtype, chunked.
pub const FRAMES: &str = "/entry/data/frames";
/// Per-frame validity: `(nav_rows, nav_cols)` `u8`, codes [`VALIDITY_CODES`].
pub const VALIDITY: &str = "/entry/data/validity";
/// Instrument metadata (NeXus `NXinstrument`).
pub const INSTRUMENT: &str = "/entry/instrument";
/// UDF results: one group per UDF, one `f64` dataset per buffer.
pub const RESULTS: &str = "/entry/results";
/// The whole `RunMetadata` as JSON text.
pub const METADATA_JSON: &str = "/entry/run_metadata_json";
/// The run record as JSON text (when one was given to `finish`).
pub const RUN_RECORD_JSON: &str = "/entry/run_record_json";
/// The `/entry` attribute that is 0 while recording and 1 once `finish` has completed.
pub const COMPLETE_ATTR: &str = "recording_complete";

/// What the validity codes mean; stored as the `codes` attribute of [`VALIDITY`].
pub const VALIDITY_CODES: &str = "0 = lost (never received), 1 = received, 2 = damaged (received but not decodable; pixels are zero), 3 = not acquired (the run was cancelled before this position; pixels are zero)";

/// Chunk size aimed at when the caller does not choose `frames_per_chunk`: large enough
/// that HDF5's per-chunk overhead vanishes, small enough that a reader fetching one scan
/// position does not read much more than it needs.
pub const TARGET_CHUNK_BYTES: usize = 2 << 20;

/// Frames per chunk giving chunks of about [`TARGET_CHUNK_BYTES`] (at least 1, at most 1024).
pub fn default_frames_per_chunk(sig: SigShape, dtype: DType) -> usize {
    let frame_bytes = (sig.len() * dtype.size()).max(1);
    (TARGET_CHUNK_BYTES / frame_bytes).clamp(1, 1024)
}

/// The chunk shape `(rows, cols, sig_rows, sig_cols)` for about `frames_per_chunk` frames.
///
/// Chunks hold whole frames and run along the flattened scan: within one scan row when
/// `frames_per_chunk <= nav.cols` (the largest divisor of `nav.cols` not above
/// `frames_per_chunk` is used when it is at least half of it, so chunks tile every row
/// exactly), else whole scan rows (`frames_per_chunk / nav.cols` of them).
pub fn chunk_shape(nav: NavShape, sig: SigShape, frames_per_chunk: usize) -> [usize; 4] {
    let k = frames_per_chunk.clamp(1, nav.len().max(1));
    if k <= nav.cols {
        let divisor = (1..=k)
            .rev()
            .find(|d| nav.cols.is_multiple_of(*d))
            .unwrap_or(1);
        let cols = if divisor * 2 >= k { divisor } else { k };
        [1, cols, sig.rows, sig.cols]
    } else {
        [
            (k / nav.cols).clamp(1, nav.rows),
            nav.cols,
            sig.rows,
            sig.cols,
        ]
    }
}

/// A rectangle of scan positions that a run of consecutive frames covers: scan rows
/// `row..row + rows`, columns `col..col + cols`; its frames start at frame `offset` of the
/// run. Either `rows == 1` or the block spans whole scan rows (`col == 0`, `cols ==
/// nav.cols`), so it is one hyperslab of the 4-D dataset and one contiguous slice of the
/// tile's frame-major pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    /// First scan row.
    pub row: usize,
    /// Scan rows covered.
    pub rows: usize,
    /// First scan column.
    pub col: usize,
    /// Scan columns covered.
    pub cols: usize,
    /// Index (within the run) of the block's first frame.
    pub offset: usize,
}

impl Block {
    /// Frames in the block.
    pub fn frames(&self) -> usize {
        self.rows * self.cols
    }
}

/// Splits frames `first..first + n` (flattened, row-major scan order) into at most three
/// blocks: the rest of the first scan row, the whole rows after it, the start of the last
/// row. The caller has checked that `first + n <= nav.len()`.
pub fn blocks(first: u64, n: usize, nav: NavShape) -> Vec<Block> {
    let mut out = Vec::with_capacity(3);
    let (mut idx, end) = (first as usize, first as usize + n);
    while idx < end {
        let (row, col) = (idx / nav.cols, idx % nav.cols);
        let left = end - idx;
        let block = if col == 0 && left >= nav.cols {
            Block {
                row,
                rows: left / nav.cols,
                col: 0,
                cols: nav.cols,
                offset: idx - first as usize,
            }
        } else {
            Block {
                row,
                rows: 1,
                col,
                cols: left.min(nav.cols - col),
                offset: idx - first as usize,
            }
        };
        idx += block.frames();
        out.push(block);
    }
    out
}

/// An HDF5 link name for a UDF or buffer name: `/` (the path separator) becomes `_`, and
/// an empty name or `.` becomes `_`, so every name can be stored.
pub fn link_name(name: &str) -> String {
    let s = name.replace('/', "_");
    if s.is_empty() || s == "." {
        "_".to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_runs_at_row_boundaries() {
        let nav = NavShape::new(4, 5);
        // Inside one row.
        assert_eq!(
            blocks(1, 3, nav),
            vec![Block {
                row: 0,
                rows: 1,
                col: 1,
                cols: 3,
                offset: 0
            }]
        );
        // Tail of row 0, rows 1-2 whole, head of row 3.
        assert_eq!(
            blocks(3, 14, nav),
            vec![
                Block {
                    row: 0,
                    rows: 1,
                    col: 3,
                    cols: 2,
                    offset: 0
                },
                Block {
                    row: 1,
                    rows: 2,
                    col: 0,
                    cols: 5,
                    offset: 2
                },
                Block {
                    row: 3,
                    rows: 1,
                    col: 0,
                    cols: 2,
                    offset: 12
                },
            ]
        );
        // Everything: one block.
        assert_eq!(
            blocks(0, 20, nav),
            vec![Block {
                row: 0,
                rows: 4,
                col: 0,
                cols: 5,
                offset: 0
            }]
        );
        assert!(blocks(7, 0, nav).is_empty());
        // Frames covered add up for every start and length.
        for first in 0..20u64 {
            for n in 0..=(20 - first as usize) {
                let b = blocks(first, n, nav);
                assert_eq!(b.iter().map(Block::frames).sum::<usize>(), n);
                assert!(b.len() <= 3);
            }
        }
    }

    #[test]
    fn chunks_tile_rows_or_span_rows() {
        let sig = SigShape::new(256, 256);
        assert_eq!(
            chunk_shape(NavShape::new(256, 256), sig, 16),
            [1, 16, 256, 256]
        );
        // 100 columns: 10 divides, 10 >= 16 / 2.
        assert_eq!(
            chunk_shape(NavShape::new(8, 100), sig, 16),
            [1, 10, 256, 256]
        );
        // 97 columns (prime): no useful divisor, edge chunks accepted.
        assert_eq!(
            chunk_shape(NavShape::new(8, 97), sig, 16),
            [1, 16, 256, 256]
        );
        // Narrow scans: whole rows per chunk, never more rows than the scan has.
        assert_eq!(chunk_shape(NavShape::new(8, 4), sig, 16), [4, 4, 256, 256]);
        assert_eq!(chunk_shape(NavShape::new(2, 4), sig, 16), [2, 4, 256, 256]);
        assert_eq!(default_frames_per_chunk(sig, DType::U16), 16);
        assert_eq!(
            default_frames_per_chunk(SigShape::new(2048, 2048), DType::U32),
            1
        );
    }

    #[test]
    fn link_names_are_storable() {
        assert_eq!(link_name("a/b"), "a_b");
        assert_eq!(link_name(""), "_");
        assert_eq!(link_name("."), "_");
        assert_eq!(link_name("virtual_bf"), "virtual_bf");
    }
}
