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

/// The live-view set for a BF disk of `bf_radius` pixels centred at `(cx, cy)` pixels:
/// * `sum` ([`SumUdf`]), `sum_sig` ([`SumSigUdf`]);
/// * `virtual` ([`MasksUdf`]) with `bf` = disk of `bf_radius` and `adf` = ring from
///   1.5 × to 3 × `bf_radius`;
/// * `com` ([`ComUdf`]) inside 1.25 × `bf_radius` (the disk plus room for its shift).
pub fn standard_udfs(cx: f64, cy: f64, bf_radius: f64) -> Vec<Box<dyn Udf>> {
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
                        r: bf_radius,
                    },
                ),
                (
                    "adf",
                    Mask::Ring {
                        cx,
                        cy,
                        r_inner: 1.5 * bf_radius,
                        r_outer: 3.0 * bf_radius,
                    },
                ),
            ])
            .named("virtual"),
        ),
        Box::new(ComUdf::new(cx, cy, 1.25 * bf_radius)),
    ]
}
