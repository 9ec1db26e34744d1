//! Bitshuffle + LZ4 as an HDF5 filter (id 32008, the id the bitshuffle project registered
//! with The HDF Group and that DECTRIS files and `hdf5plugin` use), implemented with
//! stemflow's own codec ([`stemflow_core::codec`]), and HDF5's direct chunk write.
//!
//! Why register our own: libhdf5 ships without this filter. To create a dataset that
//! declares it, the filter must be known to the library; to read such a dataset back
//! (`stemflow process` on a bslz4 recording), it must decode. Registering it in-process
//! does both with no plugin to install. Writing does not go through the filter: the
//! recorder compresses whole chunks itself (on its writer thread) and hands them to
//! `H5Dwrite_chunk`, and a DECTRIS frame that arrived as a bitshuffle-LZ4 blob is already
//! such a chunk (protocols.md §2.5: the stream's `bs*-lz4<` blob is the filter's chunk
//! format, 12-byte header included) and is written as it came.
//!
//! Filter parameters (`cd_values`), as the bitshuffle reference writes them: `[major,
//! minor, element size in bytes, block size in elements (0 = default), 2 = LZ4]`.

use crate::error::RecordingError;
use hdf5::Dataset;
use hdf5_sys::h5d::{H5Dget_chunk_info_by_coord, H5Dread_chunk, H5Dwrite_chunk};
use hdf5_sys::h5p::H5P_DEFAULT;
use hdf5_sys::h5z::{
    H5Z_CLASS_T_VERS, H5Z_FLAG_REVERSE, H5Z_class2_t, H5Z_filter_t, H5Zfilter_avail, H5Zregister,
};
use std::ffi::c_void;
use std::os::raw::c_uint;
use std::path::Path;
use std::sync::OnceLock;
use stemflow_core::codec;

/// The HDF5 filter id of bitshuffle (+ LZ4).
pub const FILTER_ID: H5Z_filter_t = 32008;
/// `cd_values[4]` meaning "LZ4 after the bit shuffle" in the bitshuffle filter.
pub const LZ4_FLAG: c_uint = 2;

static NAME: &[u8] = b"bitshuffle + LZ4 (stemflow)\0";

/// Registers the filter with libhdf5 once per process (a filter already registered, e.g.
/// by a plugin loaded earlier, is kept).
///
/// # Errors
/// [`RecordingError::Spec`] when libhdf5 refuses the registration.
pub fn register() -> Result<(), RecordingError> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        hdf5::sync::sync(|| {
            // SAFETY: plain libhdf5 calls under the library's lock; the class is copied by
            // H5Zregister, and its name and function are 'static.
            unsafe {
                if H5Zfilter_avail(FILTER_ID) > 0 {
                    return Ok(());
                }
                let class = H5Z_class2_t {
                    version: H5Z_CLASS_T_VERS as _,
                    id: FILTER_ID,
                    encoder_present: 1,
                    decoder_present: 1,
                    name: NAME.as_ptr().cast(),
                    can_apply: None,
                    set_local: None,
                    filter: Some(filter),
                };
                if H5Zregister((&raw const class).cast()) < 0 {
                    return Err("libhdf5 refused to register filter 32008".to_string());
                }
                Ok(())
            }
        })
    })
    .clone()
    .map_err(|detail| RecordingError::Spec {
        path: Path::new("").to_path_buf(),
        detail,
    })
}

/// The filter function libhdf5 calls for a chunk: decodes (`H5Z_FLAG_REVERSE`) or
/// encodes `*buf` (`nbytes` valid bytes) into a new `malloc`ed buffer that replaces it.
/// Returns the new size, 0 on failure (libhdf5 then reports the chunk as unreadable).
unsafe extern "C" fn filter(
    flags: c_uint,
    cd_nelmts: usize,
    cd_values: *const c_uint,
    nbytes: usize,
    buf_size: *mut usize,
    buf: *mut *mut c_void,
) -> usize {
    let run = || -> Option<Vec<u8>> {
        // SAFETY: libhdf5 passes `cd_nelmts` parameters and a buffer of at least `nbytes`.
        let params = if cd_values.is_null() {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(cd_values, cd_nelmts) }
        };
        let input = unsafe { std::slice::from_raw_parts((*buf).cast::<u8>(), nbytes) };
        let elem = params.get(2).copied().unwrap_or(1).max(1) as usize;
        let block = params.get(3).copied().unwrap_or(0) as usize;
        if flags & H5Z_FLAG_REVERSE != 0 {
            let (total, _) = codec::bslz4_header(input).ok()?;
            let mut out = vec![0u8; usize::try_from(total).ok()?];
            let enc = codec::Encoding::parse_for(&format!("bs{}-lz4<", elem * 8), elem).ok()?;
            codec::decode_into(&enc, input, &mut out).ok()?;
            Some(out)
        } else {
            codec::try_encode_bslz4(input, elem, block).ok()
        }
    };
    let Ok(Some(out)) = std::panic::catch_unwind(run) else {
        return 0;
    };
    // SAFETY: libhdf5 frees filter buffers with free(); the new one comes from malloc.
    unsafe {
        let new = libc::malloc(out.len().max(1)).cast::<u8>();
        if new.is_null() {
            return 0;
        }
        std::ptr::copy_nonoverlapping(out.as_ptr(), new, out.len());
        libc::free(*buf);
        *buf = new.cast();
        *buf_size = out.len();
    }
    out.len()
}

/// Writes one already-compressed chunk at chunk-grid `offset` (element coordinates of its
/// first element) of `ds`, bypassing the filter pipeline (`H5Dwrite_chunk`, HDF5 ≥ 1.10.3).
///
/// # Errors
/// The libhdf5 error, as [`hdf5::Error`].
pub fn write_chunk(ds: &Dataset, offset: &[u64], chunk: &[u8]) -> hdf5::Result<()> {
    hdf5::sync::sync(|| {
        // SAFETY: `offset` has one entry per dimension of `ds` (the caller's layout), the
        // chunk bytes outlive the call, and libhdf5 copies them.
        let r = unsafe {
            H5Dwrite_chunk(
                ds.id(),
                H5P_DEFAULT,
                0,
                offset.as_ptr(),
                chunk.len(),
                chunk.as_ptr().cast(),
            )
        };
        if r < 0 {
            Err(hdf5::Error::query().unwrap_or_else(|e| e))
        } else {
            Ok(())
        }
    })
}

/// Reads the stored (still compressed) bytes of the chunk at element `offset` of `ds`
/// (`H5Dread_chunk`): to check what was written, without decoding.
///
/// # Errors
/// The libhdf5 error, e.g. for a chunk never written.
pub fn read_chunk(ds: &Dataset, offset: &[u64]) -> hdf5::Result<Vec<u8>> {
    hdf5::sync::sync(|| {
        let mut size: u64 = 0;
        // SAFETY: `offset` has one entry per dimension; `size` and the buffer are sized by
        // libhdf5's own answer.
        unsafe {
            let (mut mask, mut addr): (u32, u64) = (0, 0);
            if H5Dget_chunk_info_by_coord(
                ds.id(),
                offset.as_ptr(),
                &raw mut mask,
                &raw mut addr,
                &raw mut size,
            ) < 0
            {
                return Err(hdf5::Error::query().unwrap_or_else(|e| e));
            }
            let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
            let mut filters: u32 = 0;
            if H5Dread_chunk(
                ds.id(),
                H5P_DEFAULT,
                offset.as_ptr(),
                &raw mut filters,
                buf.as_mut_ptr().cast(),
            ) < 0
            {
                return Err(hdf5::Error::query().unwrap_or_else(|e| e));
            }
            Ok(buf)
        }
    })
}

/// Compresses one chunk of `elem`-byte pixels as the filter would.
///
/// # Errors
/// [`codec::CodecError`] when `data` is not whole elements.
pub fn encode(data: &[u8], elem: usize) -> Result<Vec<u8>, codec::CodecError> {
    codec::try_encode_bslz4(data, elem, 0)
}
