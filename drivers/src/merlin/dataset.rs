//! [`MibDataSet`]: a recorded Merlin `.hdr`/`.mib` set as a [`DataSet`], so that the
//! processing engine (and anything else that reads data sets) runs on it like on any file:
//! frames are read and decoded by [`MibFile`] (big-endian, raw 1/6/12-bit, quad
//! assembly; protocols.md §1.6, §1.7).

use super::file::{MibFile, MibFileError};
use std::path::Path;
use stemflow_core::dataset::{DataSet, IoError};
use stemflow_core::frame::Tile;
use stemflow_core::{DType, NavShape, SigShape};

/// A Merlin `.hdr`/`.mib` recording as a [`DataSet`]: frames of the recording's
/// [`MibFile::sig_shape`] (256 × 256 for a single chip, 512 × 512 for a quad) and
/// [`MibFile::dtype`] (u8 for 1- and 6-bit counters, raw 1-bit included; u16 for 12-bit;
/// u32 for 24-bit), in file order.
#[derive(Debug)]
pub struct MibDataSet {
    file: MibFile,
    /// The scan grid the frames are laid out on.
    nav: NavShape,
}

impl MibDataSet {
    /// Opens a `.hdr` or `.mib` file ([`MibFile::open`]); the scan shape is `nav_shape`,
    /// else the header's (ScanY × ScanX), else 1 × frames.
    ///
    /// # Errors
    /// [`MibFileError`], naming the file: unknown extension, missing `.mib`, I/O, an
    /// invalid header, an undecodable format, a file that ends inside a frame.
    pub fn open(path: &Path, nav_shape: Option<NavShape>) -> Result<Self, MibFileError> {
        let file = MibFile::open(path)?;
        let nav = nav_shape
            .or_else(|| file.nav_shape())
            .unwrap_or(NavShape::new(1, file.frames() as usize));
        Ok(Self { file, nav })
    }

    /// The reader underneath, for the header and the frame format.
    pub fn file(&self) -> &MibFile {
        &self.file
    }
}

impl DataSet for MibDataSet {
    /// The `.mib` file (also when the set was opened by its `.hdr`).
    fn path(&self) -> &Path {
        self.file.mib_path()
    }
    fn nav_shape(&self) -> NavShape {
        self.nav
    }
    fn sig_shape(&self) -> SigShape {
        self.file.sig_shape()
    }
    fn dtype(&self) -> DType {
        self.file.dtype()
    }
    fn frames(&self) -> u64 {
        self.file.frames()
    }
    /// Reads and decodes frames `first..first + n` ([`MibFile::read_tile`]).
    ///
    /// # Errors
    /// [`IoError::Reader`] naming the `.mib` and carrying the [`MibFileError`] (range,
    /// I/O, truncation, a frame header that disagrees with the first, a payload that does
    /// not decode).
    fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), IoError> {
        self.file
            .read_tile(first, n, out)
            .map_err(|e| IoError::Reader {
                path: self.file.mib_path().to_path_buf(),
                source: Box::new(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use stemflow_core::frame::TileData;

    /// A recording of the shared test data (`shared/data/merlin/Merlin_Single_Quad`).
    fn recording(name: &str) -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/merlin/Merlin_Single_Quad"
        ))
        .join(name)
    }

    /// Pixels `range` of `data`, as tile data of the same type.
    fn pixels(data: &TileData, range: std::ops::Range<usize>) -> TileData {
        match data {
            TileData::U8(v) => TileData::U8(v[range].to_vec()),
            TileData::U16(v) => TileData::U16(v[range].to_vec()),
            TileData::U32(v) => TileData::U32(v[range].to_vec()),
            TileData::U64(v) => TileData::U64(v[range].to_vec()),
            TileData::F32(v) => TileData::F32(v[range].to_vec()),
            TileData::F64(v) => TileData::F64(v[range].to_vec()),
        }
    }

    /// Reads all frames of `ds` in tiles of `per` frames into one reused tile, as the
    /// engine does; returns the pixels of each tile.
    fn tiles(ds: &mut dyn DataSet, per: usize) -> Vec<TileData> {
        let mut tile = Tile::zeros(0, 0, SigShape::new(1, 1), DType::U8);
        let mut out = Vec::new();
        let mut first = 0;
        while first < ds.frames() {
            let n = (per as u64).min(ds.frames() - first) as usize;
            ds.read_tile(first, n, &mut tile).unwrap();
            assert_eq!(
                (tile.first_frame, tile.n_frames, tile.sig_shape),
                (first, n, ds.sig_shape())
            );
            out.push(tile.data.clone());
            first += n as u64;
        }
        out
    }

    /// Shape, type, frame count and every decoded pixel agree with the Merlin reader's, for
    /// a single chip (12-bit → u16), a quad (24-bit → u32) and raw 1-bit frames (→ u8),
    /// opened by the `.mib` or by the `.hdr`.
    #[test]
    fn reads_real_recordings_exactly_as_the_merlin_reader() {
        let cases = [
            (
                "Single_9_Frame_CounterDepth_12_Rows_256.mib",
                DType::U16,
                256,
            ),
            ("Quad_9_Frame_CounterDepth_24_Rows_256.hdr", DType::U32, 512),
            (
                "Single_9_Frame_CounterDepth_1_Rows_256RAW.mib",
                DType::U8,
                256,
            ),
        ];
        for (name, dtype, side) in cases {
            let path = recording(name);
            let mut ds = MibDataSet::open(&path, None).unwrap();
            let mut file = MibFile::open(&path).unwrap();
            assert_eq!(ds.path(), file.mib_path(), "{name}");
            assert_eq!(ds.frames(), 9, "{name}");
            assert_eq!(ds.dtype(), dtype, "{name}");
            assert_eq!(ds.element(), dtype.into(), "{name}");
            assert_eq!(ds.sig_shape(), SigShape::new(side, side), "{name}");
            assert_eq!(
                ds.nav_shape(),
                file.nav_shape().unwrap_or(NavShape::new(1, 9)),
                "{name}"
            );
            // Tiles of 4 frames (the last one shorter) against the whole set at once.
            let mut all = Tile::zeros(0, 0, SigShape::new(1, 1), DType::U8);
            file.read_tile(0, 9, &mut all).unwrap();
            let parts = tiles(&mut ds, 4);
            assert_eq!(parts.len(), 3, "{name}");
            let n = side * side;
            for (k, part) in parts.iter().enumerate() {
                let frames = 4 * k..(4 * k + 4).min(9);
                let expected = pixels(&all.data, frames.start * n..frames.end * n);
                assert!(part == &expected, "{name}: tile {k}");
            }
        }
    }

    /// The scan shape given wins over the header's; frames beyond the set are an
    /// [`IoError::Reader`] naming the `.mib`.
    #[test]
    fn the_given_scan_wins_and_reads_past_the_end_are_refused() {
        let path = recording("Single_9_Frame_CounterDepth_12_Rows_256.mib");
        let mut ds = MibDataSet::open(&path, Some(NavShape::new(3, 3))).unwrap();
        assert_eq!(ds.nav_shape(), NavShape::new(3, 3));
        let mut tile = Tile::zeros(0, 0, SigShape::new(1, 1), DType::U8);
        let e = ds.read_tile(8, 2, &mut tile).unwrap_err();
        let IoError::Reader { path: p, source } = &e else {
            panic!("expected a reader error, got {e:?}");
        };
        assert_eq!(p, &path);
        assert!(
            source.downcast_ref::<MibFileError>().is_some(),
            "the Merlin reader's error is kept: {source}"
        );
        assert!(e.to_string().contains("Single_9_Frame"), "{e}");
    }

    /// A missing file is the Merlin reader's error, naming the file.
    #[test]
    fn a_missing_recording_is_an_error_naming_it() {
        let path = recording("no_such_recording.mib");
        let e = MibDataSet::open(&path, None).unwrap_err();
        assert!(e.to_string().contains("no_such_recording.mib"), "{e}");
    }
}
