//! An in-memory data set: frames already in RAM (an array handed over by a front end, e.g.
//! a NumPy array from Python), read by the engine like a file.

use super::{DataSet, IoError};
use std::path::{Path, PathBuf};
use stemflow_core::dataset::shape_tile;
use stemflow_core::frame::{Tile, TileData};
use stemflow_core::{DType, NavShape, SigShape};

/// Frames held in memory, frame-major and row-major within a frame.
#[derive(Debug)]
pub struct MemoryDataSet {
    name: PathBuf,
    nav_shape: NavShape,
    sig_shape: SigShape,
    data: TileData,
}

impl MemoryDataSet {
    /// A data set of `nav_shape` frames of `sig_shape` pixels held in `data`
    /// (`nav_shape.len() * sig_shape.len()` elements); `name` stands for the path in
    /// messages and metadata (e.g. `<memory>`).
    ///
    /// # Errors
    /// [`IoError::Format`] when `data` does not hold exactly that many pixels, or a shape is
    /// empty.
    pub fn new(
        name: impl Into<PathBuf>,
        nav_shape: NavShape,
        sig_shape: SigShape,
        data: TileData,
    ) -> Result<Self, IoError> {
        let name = name.into();
        let want = (nav_shape.len() as u128) * (sig_shape.len() as u128);
        if nav_shape.is_empty() || sig_shape.is_empty() || want != data.len() as u128 {
            return Err(IoError::Format {
                path: name,
                detail: format!(
                    "{nav_shape} frames of {sig_shape} pixels need {want} values, the array holds {}",
                    data.len()
                ),
            });
        }
        Ok(Self {
            name,
            nav_shape,
            sig_shape,
            data,
        })
    }
}

impl DataSet for MemoryDataSet {
    fn path(&self) -> &Path {
        &self.name
    }
    fn nav_shape(&self) -> NavShape {
        self.nav_shape
    }
    fn sig_shape(&self) -> SigShape {
        self.sig_shape
    }
    fn dtype(&self) -> DType {
        self.data.dtype()
    }
    fn frames(&self) -> u64 {
        self.nav_shape.len() as u64
    }
    fn read_tile(&mut self, first: u64, n: usize, out: &mut Tile) -> Result<(), IoError> {
        let frames = self.frames();
        let end = first.saturating_add(n as u64);
        if end > frames {
            return Err(IoError::Range {
                path: self.name.clone(),
                first,
                end,
                frames,
            });
        }
        let px = self.sig_shape.len();
        shape_tile(out, first, n, self.sig_shape, self.data.dtype());
        let from = first as usize * px..end as usize * px;
        match (&self.data, &mut out.data) {
            (TileData::U8(s), TileData::U8(d)) => d.copy_from_slice(&s[from]),
            (TileData::U16(s), TileData::U16(d)) => d.copy_from_slice(&s[from]),
            (TileData::U32(s), TileData::U32(d)) => d.copy_from_slice(&s[from]),
            (TileData::U64(s), TileData::U64(d)) => d.copy_from_slice(&s[from]),
            (TileData::F32(s), TileData::F32(d)) => d.copy_from_slice(&s[from]),
            (TileData::F64(s), TileData::F64(d)) => d.copy_from_slice(&s[from]),
            _ => unreachable!("shape_tile gives the tile the data set's dtype"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_frames_asked_for_and_refuses_others() {
        let data = TileData::U16((0..24).collect());
        let mut ds =
            MemoryDataSet::new("<memory>", NavShape::new(2, 3), SigShape::new(2, 2), data).unwrap();
        let mut t = Tile {
            first_frame: 0,
            n_frames: 0,
            sig_shape: SigShape::new(2, 2),
            data: TileData::U8(Vec::new()),
        };
        ds.read_tile(4, 2, &mut t).unwrap();
        assert_eq!(t.first_frame, 4);
        assert_eq!(t.data, TileData::U16((16..24).collect()));
        assert!(matches!(
            ds.read_tile(5, 2, &mut t),
            Err(IoError::Range { frames: 6, .. })
        ));
        let short = TileData::U8(vec![0; 5]);
        assert!(
            MemoryDataSet::new("<memory>", NavShape::new(2, 3), SigShape::new(2, 2), short)
                .is_err()
        );
    }
}
