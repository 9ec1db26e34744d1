//! Axis and colour-bar numbers: tick values at 1, 2 or 5 × 10^k, their labels, and the
//! round lengths of scale bars.

/// The largest 1, 2 or 5 × 10^k that is at most `x` (`x` > 0 and finite; else 0).
pub fn nice_below(x: f64) -> f64 {
    if !(x.is_finite() && x > 0.0) {
        return 0.0;
    }
    let decade = 10f64.powi(x.log10().floor() as i32);
    // A small tolerance: 0.3 / 0.1 is 2.9999999999999996.
    let m = x / decade * (1.0 + 1e-9);
    let nice = if m >= 5.0 {
        5.0
    } else if m >= 2.0 {
        2.0
    } else {
        1.0
    };
    nice * decade
}

/// A step of 1, 2 or 5 × 10^k that puts about `n` ticks on a span of `span` (≥ 1 tick).
pub fn nice_step(span: f64, n: usize) -> f64 {
    let raw = span / n.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let decade = 10f64.powi(raw.log10().floor() as i32);
    let m = raw / decade;
    let nice = if m <= 1.0 + 1e-9 {
        1.0
    } else if m <= 2.0 + 1e-9 {
        2.0
    } else if m <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * decade
}

/// Tick values within `[lo, hi]` (both finite, `hi > lo`) at a round step giving about `n`
/// of them, and that step. Values within a millionth of a step of zero are exactly 0.
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> (Vec<f64>, f64) {
    let step = nice_step(hi - lo, n);
    let eps = step * 1e-6;
    let first = ((lo - eps) / step).ceil();
    let last = ((hi + eps) / step).floor();
    let mut ticks = Vec::new();
    let mut k = first;
    while k <= last && ticks.len() < 100 {
        let v = k * step;
        ticks.push(if v.abs() < eps { 0.0 } else { v });
        k += 1.0;
    }
    (ticks, step)
}

/// `v` as a tick label on an axis whose ticks are `step` apart: as many decimals as the
/// step needs (`0.25` → 2, `20` → 0), scientific notation for very large or very small
/// numbers (`1.5e-5`, `2e6`).
pub fn label(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let step_exp = if step > 0.0 && step.is_finite() {
        step.log10().floor() as i32
    } else {
        0
    };
    let mag = v.abs().log10().floor() as i32;
    if mag >= 6 || step_exp <= -5 {
        let digits = (mag - step_exp).clamp(0, 3) as usize;
        return trim_exponent(&format!("{v:.digits$e}"));
    }
    let decimals = (-step_exp).max(0) as usize;
    format!("{v:.decimals$}")
}

/// A length of a scale bar: `v` (a 1, 2 or 5 × 10^k) with as many decimals as it needs.
pub fn length_label(v: f64) -> String {
    let exp = if v > 0.0 { v.log10().floor() as i32 } else { 0 };
    label(v, 10f64.powi(exp))
}

/// `v` with four significant digits at most, trailing zeros dropped (`1`, `0.5`, `1235`,
/// `2.5e-7`): a colour bar's only label, for a constant map.
pub fn plain(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let mag = v.abs().log10().floor() as i32;
    let text = label(v, 10f64.powi(mag - 3));
    if text.contains('e') || !text.contains('.') {
        text
    } else {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `1.50e-5` → `1.5e-5`, `2.00e6` → `2e6`.
fn trim_exponent(s: &str) -> String {
    match s.split_once('e') {
        Some((m, e)) if m.contains('.') => {
            let m = m.trim_end_matches('0').trim_end_matches('.');
            format!("{m}e{e}")
        }
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside() {
        let (t, s) = nice_ticks(0.3, 9.7, 5);
        assert_eq!(s, 2.0);
        assert_eq!(t, vec![2.0, 4.0, 6.0, 8.0]);
        let (t, s) = nice_ticks(-0.74, 0.74, 5);
        assert_eq!(s, 0.5);
        assert_eq!(t, vec![-0.5, 0.0, 0.5]);
        let (t, _) = nice_ticks(1000.0, 1000.5, 5);
        assert!(t.iter().all(|v| (1000.0..=1000.5).contains(v)), "{t:?}");
        assert_eq!(t.first(), Some(&1000.0));
    }

    #[test]
    fn labels_have_the_decimals_the_step_needs() {
        assert_eq!(label(0.5, 0.5), "0.5");
        assert_eq!(label(-0.25, 0.05), "-0.25");
        assert_eq!(label(2000.0, 500.0), "2000");
        assert_eq!(label(1.5e-5, 5e-6), "1.5e-5");
        assert_eq!(label(3e7, 1e7), "3e7");
        assert_eq!(label(0.0, 1.0), "0");
        assert_eq!(length_label(0.2), "0.2");
        assert_eq!(length_label(50.0), "50");
        assert_eq!(plain(1.0), "1");
        assert_eq!(plain(1234.6), "1235");
        assert_eq!(plain(0.5), "0.5");
    }

    #[test]
    fn nice_lengths() {
        assert_eq!(nice_below(32.0), 20.0);
        assert_eq!(nice_below(0.3), 0.2);
        assert_eq!(nice_below(5.0), 5.0);
        assert_eq!(nice_below(9.99), 5.0);
        assert_eq!(nice_below(0.0), 0.0);
    }
}
