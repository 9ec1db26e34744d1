//! Frame sources of the Merlin simulator and the cache of encoded frames the sender streams
//! from.
//!
//! The cache holds frames in MIB layout (MQ1 header + payload, back to back, no MPX prefix):
//! a recording's `.mib` content is used as is; synthetic frames are rendered and encoded once
//! per (counter depth, file format). The sender copies only the small header of each frame
//! (to patch the sequence number and prepend the MPX prefix) and hands the payload to the
//! kernel straight from the cache.

use super::control::Settings;
use super::mib::Recording;
use super::wire::{self, Geometry, Mq1, PixelFormat};
use crate::specimen::Specimen;
use chrono::Utc;
use stemflow_core::{NavShape, SigShape};

/// Bytes of encoded synthetic frames the simulator keeps ready (see [`cache_plan`]).
pub(crate) const SYNTHETIC_CACHE_BYTES: usize = 256 << 20;

/// Fewest synthetic frames cached when frames cycle (the throughput path).
pub(crate) const MIN_CYCLE_FRAMES: usize = 64;

/// Where frames come from.
#[derive(Debug)]
pub(crate) enum Source {
    Recording(Recording),
    Synthetic {
        specimen: Specimen,
        nav: NavShape,
        sig: SigShape,
        seed: u64,
    },
}

/// Encoded frames in MIB layout.
#[derive(Debug)]
pub(crate) struct WireFrames {
    /// `count` frames of `mq1_len + payload_len` bytes.
    pub(crate) bytes: Vec<u8>,
    pub(crate) count: usize,
    pub(crate) mq1_len: usize,
    pub(crate) payload_len: usize,
    /// (counter depth, file format) the frames were encoded for.
    pub(crate) key: (u8, u8),
}

impl WireFrames {
    pub(crate) fn stride(&self) -> usize {
        self.mq1_len + self.payload_len
    }
}

/// How synthetic frames are produced for an acquisition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CachePlan {
    /// Every scan position pre-rendered: frame `i` is position `i % nav.len()` (noise repeats
    /// on every pass of a continuous acquisition).
    All,
    /// Rendered as each frame is sent (exact, fresh noise, real timestamps; ~2000+ frames/s).
    OnTheFly,
    /// The first `n` positions pre-rendered and cycled: throughput without rendering cost,
    /// but frame content no longer matches the scan position.
    Cycle(usize),
}

/// Caches every scan position when the encoded frames fit in [`SYNTHETIC_CACHE_BYTES`];
/// otherwise renders on the fly when paced by the frame time, or cycles a cache of
/// [`MIN_CYCLE_FRAMES`] frames when sending as fast as possible.
pub(crate) fn cache_plan(
    nav: NavShape,
    frame_bytes: usize,
    as_fast_as_possible: bool,
) -> CachePlan {
    if nav.len().saturating_mul(frame_bytes.max(1)) <= SYNTHETIC_CACHE_BYTES {
        CachePlan::All
    } else if as_fast_as_possible {
        CachePlan::Cycle(MIN_CYCLE_FRAMES.min(nav.len()))
    } else {
        CachePlan::OnTheFly
    }
}

/// Renders and encodes synthetic frame `index` (MQ1 header + payload) into `out`, using
/// `counts` (sig-shape long) as scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn render_synthetic(
    specimen: &Specimen,
    nav: NavShape,
    sig: SigShape,
    seed: u64,
    index: u64,
    format: PixelFormat,
    settings: &Settings,
    counts: &mut [u32],
    out: &mut [u8],
) {
    let geometry = Geometry::for_sig(sig);
    specimen.render_frame(nav, index, sig, seed, counts);
    let header = wire::mq1_header(&Mq1 {
        index,
        geometry,
        format,
        depth: settings.counter_depth,
        exposure_s: settings.acq_time_ms * 1e-3,
        time: Utc::now(),
    });
    out[..header.len()].copy_from_slice(&header);
    wire::encode_payload(
        counts,
        format,
        settings.counter_depth,
        &mut out[header.len()..],
    );
}

/// Rewrites the MQ1 headers of cached synthetic frames for `settings` (exposure time) with
/// timestamp `time` — done at every arm, so headers match the acquisition without
/// re-rendering any pixels.
pub(crate) fn refresh_headers(
    cache: &mut WireFrames,
    sig: SigShape,
    settings: &Settings,
    time: chrono::DateTime<Utc>,
) {
    let Some(format) = settings.format() else {
        return;
    };
    let geometry = Geometry::for_sig(sig);
    let stride = cache.stride();
    for (k, frame) in cache.bytes.chunks_exact_mut(stride).enumerate() {
        let header = wire::mq1_header(&Mq1 {
            index: k as u64,
            geometry,
            format,
            depth: settings.counter_depth,
            exposure_s: settings.acq_time_ms * 1e-3,
            time,
        });
        frame[..header.len()].copy_from_slice(&header);
    }
}

/// Builds the cache for `settings`: the recording's frames, or `n` synthetic frames rendered
/// on all cores.
///
/// # Errors
/// A message when the settings name a pixel format that does not exist.
pub(crate) fn build(
    source: &mut Source,
    settings: &Settings,
    n: usize,
) -> Result<WireFrames, String> {
    let key = (settings.counter_depth, settings.file_format);
    match source {
        Source::Recording(rec) => Ok(WireFrames {
            // Replay reads the recording in place; the recording gives up its bytes once.
            bytes: std::mem::take(&mut rec.mib),
            count: rec.count,
            mq1_len: rec.header_len,
            payload_len: rec.frame_len - rec.header_len,
            key,
        }),
        Source::Synthetic {
            specimen,
            nav,
            sig,
            seed,
        } => {
            let format = settings.format().ok_or_else(|| {
                format!(
                    "counter depth {} with file format {} has no pixel format",
                    settings.counter_depth, settings.file_format
                )
            })?;
            let geometry = Geometry::for_sig(*sig);
            let payload_len = wire::payload_len(*sig, format, settings.counter_depth);
            let stride = geometry.data_offset + payload_len;
            let mut bytes = vec![0u8; n * stride];
            let threads = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(n.max(1));
            let per = n.div_ceil(threads).max(1);
            let (specimen, nav, sig, seed) = (&*specimen, *nav, *sig, *seed);
            std::thread::scope(|s| {
                for (t, chunk) in bytes.chunks_mut(per * stride).enumerate() {
                    s.spawn(move || {
                        let mut counts = vec![0u32; sig.len()];
                        for (k, frame) in chunk.chunks_mut(stride).enumerate() {
                            let index = (t * per + k) as u64;
                            render_synthetic(
                                specimen,
                                nav,
                                sig,
                                seed,
                                index,
                                format,
                                settings,
                                &mut counts,
                                frame,
                            );
                        }
                    });
                }
            });
            Ok(WireFrames {
                bytes,
                count: n,
                mq1_len: geometry.data_offset,
                payload_len,
                key,
            })
        }
    }
}
