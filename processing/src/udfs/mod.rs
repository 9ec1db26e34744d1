//! Built-in UDFs. Each is generic over the pixel type inside and picks it once per tile.
//!
//! | UDF | buffers | what |
//! |---|---|---|
//! | [`SumUdf`] | sig `intensity` | sum of all frames |
//! | [`SumSigUdf`] | nav `intensity` | sum of each frame |
//! | [`MasksUdf`] | nav, one per mask | virtual detectors (BF disk, ADF ring, …) |
//! | [`ComUdf`] | nav `x`, `y`, `magnitude`, `divergence`, `curl` | centre of mass in a disk, minus the reference centre (DPC) |
//! | [`StatsUdf`] | sig `mean`, `var`, `std`, `min`, `max`, `sum`; single `frames` | per-pixel statistics |
//! | [`RadialProfileUdf`] | nav `profile` `[n_bins]`; single `radius`, `pixels` | azimuthal average |
//! | [`PickUdf`] | sig `intensity`; single `picked` | one frame by scan position |
//! | [`SignalMonitorUdf`] | sig `latest`; single `frame` | the latest frame |
//! | [`PartitionMonitorUdf`] | sig `intensity`; single `frames` | sum of the latest partition |
//! | [`RecordUdf`] | single `frames_written` | frames to a `.npy` file |

mod com;
mod masks;
mod pick;
mod radial;
mod record;
mod stats;
mod sum;
mod sum_sig;

pub use crate::mask::{MasksParams, NamedMask};
pub use com::{ComParams, ComUdf};
pub use masks::MasksUdf;
pub use pick::{PartitionMonitorUdf, PickParams, PickUdf, SignalMonitorUdf};
pub use radial::{RadialProfileParams, RadialProfileUdf};
pub use record::{RecordParams, RecordUdf};
pub use stats::StatsUdf;
pub use sum::SumUdf;
pub use sum_sig::SumSigUdf;

use crate::mask::Mask;
use crate::udf::Udf;

/// Virtual detector geometry of the live-view set, in detector pixels: where the
/// bright-field disk is and how large the BF disk, the ADF ring and the CoM disk are.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Geometry {
    /// Centre x (column), pixels.
    pub cx: f64,
    /// Centre y (row), pixels.
    pub cy: f64,
    /// Bright-field disk radius, pixels.
    pub bf_radius: f64,
    /// ADF ring inner radius, pixels.
    pub adf_inner: f64,
    /// ADF ring outer radius, pixels.
    pub adf_outer: f64,
    /// CoM mask radius, pixels.
    pub com_radius: f64,
}

impl Geometry {
    /// The geometry around a BF disk of `bf_radius` pixels centred at `(cx, cy)`: ADF ring
    /// from 1.5 × to 3 × `bf_radius`, CoM inside 1.25 × `bf_radius` (the disk plus room for
    /// its shift).
    pub fn around_disk(cx: f64, cy: f64, bf_radius: f64) -> Self {
        Self {
            cx,
            cy,
            bf_radius,
            adf_inner: 1.5 * bf_radius,
            adf_outer: 3.0 * bf_radius,
            com_radius: 1.25 * bf_radius,
        }
    }

    /// A geometry for frames of `sig` whose bright-field disk is unknown: centred, BF
    /// radius 1/8 of the smaller side, otherwise as [`Geometry::around_disk`].
    pub fn centred(sig: stemflow_core::SigShape) -> Self {
        let r = sig.rows.min(sig.cols) as f64 / 8.0;
        Self::around_disk(sig.cols as f64 / 2.0, sig.rows as f64 / 2.0, r)
    }

    /// The live-view set on this geometry:
    /// * `sum` ([`SumUdf`]), `sum_sig` ([`SumSigUdf`]);
    /// * `virtual` ([`MasksUdf`]) with `bf` = disk of `bf_radius` and `adf` = ring from
    ///   `adf_inner` to `adf_outer`;
    /// * `com` ([`ComUdf`]) inside `com_radius`.
    pub fn udfs(&self) -> Vec<Box<dyn Udf>> {
        let (cx, cy) = (self.cx, self.cy);
        vec![
            Box::new(SumUdf::new()),
            Box::new(SumSigUdf::new()),
            Box::new(
                MasksUdf::new([
                    (
                        "bf",
                        Mask::Disk {
                            cx,
                            cy,
                            r: self.bf_radius,
                        },
                    ),
                    (
                        "adf",
                        Mask::Ring {
                            cx,
                            cy,
                            r_inner: self.adf_inner,
                            r_outer: self.adf_outer,
                        },
                    ),
                ])
                .named("virtual"),
            ),
            Box::new(ComUdf::new(cx, cy, self.com_radius)),
        ]
    }
}

/// The live-view set for a BF disk of `bf_radius` pixels centred at `(cx, cy)` pixels
/// ([`Geometry::around_disk`] and [`Geometry::udfs`]).
pub fn standard_udfs(cx: f64, cy: f64, bf_radius: f64) -> Vec<Box<dyn Udf>> {
    Geometry::around_disk(cx, cy, bf_radius).udfs()
}
