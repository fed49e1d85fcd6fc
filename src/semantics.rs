//! Scalar semantics shared by every executor, so that a backend never
//! re-decides what an op does. Tensor kernels call these per element.

/// PyTorch GradScaler's update (torch/amp/grad_scaler.py,
/// `_amp_update_scale_`): returns the next scale and growth tracker.
pub fn scale_update(
    scale: f32,
    tracker: i32,
    found_inf: bool,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
) -> (f32, i32) {
    if found_inf {
        return ((scale as f64 * backoff_factor) as f32, 0);
    }
    let t = tracker.saturating_add(1);
    if t as i64 == growth_interval as i64 {
        let grown = (scale as f64 * growth_factor) as f32;
        // The scale only grows while it stays finite.
        (if grown.is_finite() { grown } else { scale }, 0)
    } else {
        (scale, t)
    }
}

/// `1/scale`, computed in f64 and rounded to f32, as GradScaler does.
pub fn inv_scale(scale: f32) -> f32 {
    (1.0f64 / scale as f64) as f32
}

/// `min(1, max_norm / (norm + 1e-6))`, PyTorch's `clip_grad_norm_` coefficient.
pub fn clip_coef(norm: f32, max_norm: f64) -> f32 {
    let c = max_norm / (norm as f64 + 1e-6);
    c.min(1.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: (f64, f64, u32) = (2.0, 0.5, 2000);

    fn step(s: (f32, i32), inf: bool) -> (f32, i32) {
        scale_update(s.0, s.1, inf, G.0, G.1, G.2)
    }

    #[test]
    fn one_overflow_halves_the_scale() {
        assert_eq!(step((65536.0, 7), true), (32768.0, 0));
    }

    #[test]
    fn two_thousand_clean_steps_double_it() {
        let mut s = step((65536.0, 0), true);
        for _ in 0..2000 {
            s = step(s, false);
        }
        assert_eq!(s, (65536.0, 0));
    }

    #[test]
    fn nineteen_ninety_nine_clean_steps_leave_it() {
        let mut s = (32768.0, 0);
        for _ in 0..1999 {
            s = step(s, false);
        }
        assert_eq!(s, (32768.0, 1999));
    }

    #[test]
    fn the_scale_never_grows_to_infinity() {
        assert_eq!(scale_update(f32::MAX, 1999, false, 2.0, 0.5, 2000), (f32::MAX, 0));
    }

    #[test]
    fn inverse_is_rounded_once() {
        assert_eq!(inv_scale(65536.0), 1.0 / 65536.0);
        assert_eq!(inv_scale(3.0), (1.0f64 / 3.0) as f32);
        assert_eq!(clip_coef(0.5, 1.0), 1.0);
        assert!((clip_coef(4.0, 1.0) - 0.25).abs() < 1e-6);
    }
}
