//! [`DectrisDataSet`]: a DECTRIS HDF5 recording (`*_master.h5` with its data files) as a
//! [`DataSet`], so that the processing engine (and anything else that reads data sets)
//! runs on it like on any file: frames are read as raw chunks and decoded by
//! [`MasterFile`] (bitshuffle-LZ4 / LZ4 with our own codec, no HDF5 filter plugin needed;
//! masked pixels zeroed).

use super::master::{MasterFile, MasterFileError};
use std::path::Path;
use stemflow_core::dataset::{DataSet, IoError};
use stemflow_core::frame::Tile;
use stemflow_core::{DType, NavShape, SigShape};

/// A DECTRIS master set as a [`DataSet`]: frames of the detector's
/// [`MasterFile::sig_shape`] and [`MasterFile::dtype`] (u8, u16 or u32, the set's
/// `bit_depth_image`), all data files together in acquisition order, pixels of the
/// `pixel_mask` set to 0.
#[derive(Debug)]
pub struct DectrisDataSet {
    file: MasterFile,
    /// The scan grid the frames are laid out on.
    nav: NavShape,
}

impl DectrisDataSet {
    /// Opens a master file ([`MasterFile::open`]); the scan shape is `nav_shape`, else the
    /// one stored beside the master (`STEM Metadata` of `<stem>.h5`), else 1 × frames.
    ///
    /// # Errors
    /// [`MasterFileError`], naming the file: HDF5 errors (a missing master or data file),
    /// no frame data, an unsupported layout, pixel type or filter, a pixel mask of another
    /// shape.
    pub fn open(path: &Path, nav_shape: Option<NavShape>) -> Result<Self, MasterFileError> {
        let file = MasterFile::open(path)?;
        let nav = nav_shape
            .or_else(|| file.nav_shape())
            .unwrap_or(NavShape::new(1, file.frames() as usize));
        Ok(Self { file, nav })
    }

    /// The reader underneath, for the detector metadata and the pixel mask.
    pub fn file(&self) -> &MasterFile {
        &self.file
    }
}

impl DataSet for DectrisDataSet {
    /// The master file.
    fn path(&self) -> &Path {
        self.file.master_path()
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
    /// Reads and decodes frames `first..first + n` ([`MasterFile::read_tile`]).
    ///
    /// # Errors
    /// [`IoError::Reader`] naming the master file and carrying the [`MasterFileError`]
    /// (range, a chunk that cannot be read or does not decode).
    fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), IoError> {
        let path = self.file.master_path().to_path_buf();
        self.file
            .read_tile(first, n, out)
            .map_err(|e| IoError::Reader {
                path,
                source: Box::new(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use stemflow_core::frame::TileData;

    /// The real ARINA set of the shared test data (`shared/data/dectris/arina`): 16 frames
    /// of 192 × 192 u32 on a 4 × 4 scan, bitshuffle-LZ4, all zero (a dark recording).
    fn arina() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/dectris/arina/test_00_master.h5"
        ))
    }

    /// Shape, type, scan and every decoded pixel agree with the DECTRIS reader's, read in
    /// tiles of 5 frames (the last one shorter) into one reused tile, as the engine does.
    #[test]
    fn reads_the_real_arina_set_exactly_as_the_master_reader() {
        let mut ds = DectrisDataSet::open(&arina(), None).unwrap();
        let mut file = MasterFile::open(arina()).unwrap();
        assert_eq!(ds.path(), file.master_path());
        assert_eq!(ds.frames(), 16);
        assert_eq!(ds.sig_shape(), SigShape::new(192, 192));
        assert_eq!(ds.dtype(), DType::U32);
        assert_eq!(ds.element(), DType::U32.into());
        assert_eq!(ds.nav_shape(), NavShape::new(4, 4), "from test_00.h5");
        assert_eq!(ds.nav_shape(), file.nav_shape().unwrap());
        assert_eq!(ds.file().masked_pixels(), file.masked_pixels());

        let mut tile = Tile::zeros(0, 0, SigShape::new(1, 1), DType::U8);
        let mut expected = Tile::zeros(0, 0, SigShape::new(1, 1), DType::U8);
        for (first, n) in file.tile_ranges(5).collect::<Vec<_>>() {
            // Garbage that must be replaced, as in a reused tile.
            tile.data = TileData::U32(vec![7; 3]);
            ds.read_tile(first, n, &mut tile).unwrap();
            file.read_tile(first, n, &mut expected).unwrap();
            assert_eq!(
                (tile.first_frame, tile.n_frames, tile.sig_shape),
                (first, n, SigShape::new(192, 192))
            );
            assert_eq!(tile.data, expected.data, "frames {first}..+{n}");
        }
    }

    /// The scan shape given wins over the one stored beside the master; frames beyond the
    /// set are an [`IoError::Reader`] naming the master file.
    #[test]
    fn the_given_scan_wins_and_reads_past_the_end_are_refused() {
        let mut ds = DectrisDataSet::open(&arina(), Some(NavShape::new(2, 8))).unwrap();
        assert_eq!(ds.nav_shape(), NavShape::new(2, 8));
        let mut tile = Tile::zeros(0, 0, SigShape::new(1, 1), DType::U8);
        let e = ds.read_tile(15, 2, &mut tile).unwrap_err();
        let IoError::Reader { path, source } = &e else {
            panic!("expected a reader error, got {e:?}");
        };
        assert_eq!(path, &arina());
        assert!(
            source.downcast_ref::<MasterFileError>().is_some(),
            "the DECTRIS reader's error is kept: {source}"
        );
        assert!(e.to_string().contains("test_00_master.h5"), "{e}");
    }

    /// A data file opened on its own has no stored scan: 1 × frames.
    #[test]
    fn a_set_without_a_stored_scan_is_one_row() {
        let data = arina().with_file_name("test_00_data_000001.h5");
        let ds = DectrisDataSet::open(&data, None).unwrap();
        assert_eq!(ds.nav_shape(), NavShape::new(1, 16));
    }
}
