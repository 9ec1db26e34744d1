//! The synthetic specimen's frames carry its ground truth: a virtual ADF image (ring sum,
//! computed here without any processing crate) correlates with `adf_truth`, and the BF disk's
//! centre of mass moves with `phase_gradient_truth`.

use stemflow_core::{NavShape, SigShape};
use stemflow_simulators::specimen::Specimen;

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    sab / (saa * sbb).sqrt()
}

struct Scan {
    adf: Vec<f64>,
    com_y: Vec<f64>,
    com_x: Vec<f64>,
}

/// Renders every frame of the scan and reduces it: ADF = counts in the ring
/// 1.6 r_bf ≤ r < 3 r_bf; CoM over the disk 0 ≤ r < 1.4 r_bf, relative to the frame centre.
fn reduce(sp: &Specimen, nav: NavShape, sig: SigShape) -> Scan {
    let r_bf = sp.params().bf_radius_px;
    let (cy, cx) = (sig.rows as f64 / 2.0, sig.cols as f64 / 2.0);
    let mut frame = vec![0u32; sig.len()];
    let mut out = Scan {
        adf: vec![],
        com_y: vec![],
        com_x: vec![],
    };
    for i in 0..nav.len() as u64 {
        sp.render_frame(nav, i, sig, 77, &mut frame);
        let (mut ring, mut m, mut my, mut mx) = (0.0, 0.0, 0.0, 0.0);
        for r in 0..sig.rows {
            for c in 0..sig.cols {
                let v = frame[r * sig.cols + c] as f64;
                let (dy, dx) = (r as f64 + 0.5 - cy, c as f64 + 0.5 - cx);
                let d = (dy * dy + dx * dx).sqrt();
                if (1.6 * r_bf..3.0 * r_bf).contains(&d) {
                    ring += v;
                }
                if d < 1.4 * r_bf {
                    m += v;
                    my += v * dy;
                    mx += v * dx;
                }
            }
        }
        out.adf.push(ring);
        out.com_y.push(my / m);
        out.com_x.push(mx / m);
    }
    out
}

/// Virtual ADF (a ring beyond the BF disk) reproduces the ground-truth ADF map: r ≥ 0.9.
#[test]
fn virtual_adf_matches_truth() {
    let sp = Specimen::builder()
        .disk_radius_px(8.0)
        .dose(4000.0)
        .particles(10)
        .seed(5)
        .build();
    let nav = NavShape::new(32, 32);
    let scan = reduce(&sp, nav, SigShape::new(64, 64));
    let r = pearson(&scan.adf, &sp.adf_truth(nav));
    assert!(r >= 0.9, "ADF vs truth: Pearson r = {r:.3}");
}

/// The BF disk moves in the direction of the true phase gradient: the CoM shift correlates
/// with the truth (> 0.8) in both axes, with the right sign and a gain of order one.
#[test]
fn com_follows_phase_gradient() {
    let sp = Specimen::builder()
        .disk_radius_px(8.0)
        .dose(4000.0)
        .particles(10)
        .seed(5)
        .build();
    let nav = NavShape::new(32, 32);
    let scan = reduce(&sp, nav, SigShape::new(64, 64));
    let (ty, tx) = sp.phase_gradient_truth(nav);
    let ry = pearson(&scan.com_y, &ty);
    let rx = pearson(&scan.com_x, &tx);
    assert!(
        ry > 0.8 && rx > 0.8,
        "CoM vs truth: r_y = {ry:.3}, r_x = {rx:.3}"
    );
    // Gain: a least-squares slope of order 1 px per px. Below 1 because scattered electrons
    // inside the CoM window do not move with the disk and dilute the CoM (≈ 0.75 here).
    let slope = |m: &[f64], t: &[f64]| {
        let num: f64 = m.iter().zip(t).map(|(a, b)| a * b).sum();
        num / t.iter().map(|b| b * b).sum::<f64>()
    };
    let (gy, gx) = (slope(&scan.com_y, &ty), slope(&scan.com_x, &tx));
    assert!(
        (0.5..1.1).contains(&gy) && (0.5..1.1).contains(&gx),
        "gain y {gy:.2}, x {gx:.2}"
    );
}
