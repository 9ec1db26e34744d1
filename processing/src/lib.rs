//! stemflow processing: user-defined functions (UDFs) on live frame streams and on files.
//!
//! The model is LiberTEM's: a UDF declares result buffers of kind nav (per scan position),
//! sig (per detector pixel) or single; it processes frames or tiles of consecutive frames in
//! per-worker partitions; partitions merge into the global results, which go out as
//! snapshots while the run goes on. The same UDFs run live ([`run_live`], on raw stacks
//! from a detector receiver) and offline ([`run_dataset`] on a `.npy`, raw or HDF5 file,
//! [`run_tiles`] on decoded tiles from any reader), with bit-identical results.
//!
//! ```text
//! RawStack ─decode─▶ Tile ─▶ PartitionTask per UDF (per worker) ─merge─▶ Snapshot
//!                      └──▶ TileSink (recorder)
//! ```
//!
//! # Layout
//! - [`udf`]: the [`Udf`] / [`PartitionTask`] traits, buffer declarations, [`TileView`].
//! - [`udfs`]: built-ins — [`SumUdf`], [`SumSigUdf`], [`StatsUdf`], [`MasksUdf`]
//!   (virtual detectors: disk, ring, rectangle, polygon, custom), [`ComUdf`] (centre of
//!   mass / DPC with divergence and curl), [`RadialProfileUdf`], [`PickUdf`],
//!   [`SignalMonitorUdf`], [`PartitionMonitorUdf`], [`RecordUdf`] — and the standard
//!   live-view set.
//! - [`io`]: offline data sets (`.npy`, raw binary, HDF5), custom masks from `.npy`, and
//!   re-exports of [`DataSet`], [`IoError`] and [`ElementType`] (which live in
//!   `stemflow_core`, so the drivers' recordings implement the same trait) and of
//!   [`run_dataset`].
//! - [`roi`]: regions of interest over the scan.
//! - [`spec`]: [`ReductionSpec`], the UDFs and ROI of a run chosen in TOML.
//! - [`mask`]: disk and ring masks, the pixel-centre convention, the span form.
//! - [`pixel`]: the [`Pixel`] element types and the exact integer kernels.
//! - [`windows`]: masks as vector windows (AVX-512 kernels for the virtual detectors).
//! - [`engine`]: [`run_live`], [`run_dataset`], [`run_tiles`] (one coordinator loop for
//!   every source), run configuration, snapshots, summaries, [`ProcessingError`].
//! - [`bench`](mod@bench): [`bench_in_memory`] and [`bench_live_in_memory`], the engine's
//!   throughput on frames held in memory.
//! - [`result`], [`sink`]: re-exports of the result buffers and the tile sink trait, which
//!   live in `stemflow_core` so the recorder and the view need not depend on the engine.

pub mod bench;
pub mod engine;
pub mod fused;
pub mod io;
pub mod mask;
pub mod pixel;
pub mod result;
pub mod roi;
pub mod sink;
pub mod spec;
pub mod udf;
pub mod udfs;
pub mod windows;

pub use bench::{
    BenchConfig, BenchFigures, LatencyFigures, LatencyProbe, bench_in_memory, bench_live_in_memory,
    bench_udfs, full_set, memory_read_bandwidth,
};
pub use engine::{
    Outcome, ProcessingError, RunConfig, RunSummary, Snapshot, partition_frames, run_dataset,
    run_dataset_range, run_live, run_tiles,
};
pub use io::{
    CsrHdf5DataSet, DataSet, ElementType, Hdf5DataSet, IoError, MemoryDataSet, NpyDataSet,
    RawDataSet, RawSpec,
};
pub use mask::CustomMask;
pub use mask::{Mask, MasksParams, NamedMask, Span, SpanMask, line_fraction};
pub use pixel::{FloatPixel, Pixel};
pub use roi::{Roi, RoiError};
pub use spec::{ReductionSpec, RoiRect, RoiSpec, SpecError, UdfSpec};
pub use stemflow_core::DType;
pub use udf::{
    BandRead, BufferDecl, Fusable, Granularity, LinearTerms, MAX_BAND_FRAMES, PartitionTask,
    ResultDType, TileView, TypedValues, Udf, UdfMeta, Weight, new_results, params_text,
    typed_values,
};
pub use udfs::{
    ComParams, ComUdf, MasksUdf, PartitionMonitorUdf, PickParams, PickUdf, RadialProfileParams,
    RadialProfileUdf, RecordParams, RecordUdf, SignalMonitorUdf, StatsUdf, SumSigUdf, SumUdf,
    standard_udfs,
};
