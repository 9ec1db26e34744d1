//! stemflow processing: user-defined functions (UDFs) on live frame streams and on files.
//!
//! The model is LiberTEM's: a UDF declares result buffers of kind nav (per scan position),
//! sig (per detector pixel) or single; it processes frames or tiles of consecutive frames in
//! per-worker partitions; partitions merge into the global results, which go out as
//! snapshots while the run goes on. The same UDFs run live ([`run_live`], on raw stacks
//! from a detector receiver) and offline ([`run_tiles`], on decoded tiles from a file), with
//! bit-identical results.
//!
//! ```text
//! RawStack ─decode─▶ Tile ─▶ PartitionTask per UDF (per worker) ─merge─▶ Snapshot
//!                      └──▶ TileSink (recorder)
//! ```
//!
//! # Layout
//! - [`udf`]: the [`Udf`] / [`PartitionTask`] traits, buffer declarations, [`TileView`].
//! - [`udfs`]: built-ins — [`SumUdf`], [`SumSigUdf`], [`MasksUdf`] (virtual detectors),
//!   [`ComUdf`] (centre of mass) — and the standard live-view set.
//! - [`mask`]: disk and ring masks, the pixel-centre convention, the span form.
//! - [`pixel`]: the [`Pixel`] element types and the exact integer kernels.
//! - [`engine`]: [`run_live`], [`run_tiles`], run configuration, snapshots, summaries,
//!   [`ProcessingError`].
//! - [`bench`]: [`bench_in_memory`] and [`bench_live_in_memory`], the engine's throughput
//!   on frames held in memory.
//! - [`result`], [`sink`]: re-exports of the result buffers and the tile sink trait, which
//!   live in `stemflow_core` so the recorder and the view need not depend on the engine.

pub mod bench;
pub mod engine;
pub mod mask;
pub mod pixel;
pub mod result;
pub mod sink;
pub mod udf;
pub mod udfs;

pub use bench::{BenchConfig, BenchFigures, bench_in_memory, bench_live_in_memory, bench_udfs};
pub use engine::{Outcome, ProcessingError, RunConfig, RunSummary, Snapshot, run_live, run_tiles};
pub use mask::{Mask, Span, SpanMask};
pub use pixel::Pixel;
pub use stemflow_core::DType;
pub use udf::{BufferDecl, PartitionTask, TileView, Udf, UdfMeta, new_results};
pub use udfs::{ComUdf, MasksUdf, SumSigUdf, SumUdf, standard_udfs};
