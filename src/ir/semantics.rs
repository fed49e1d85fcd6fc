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

/// The learning rate of optimizer step `k` (0-based, the steps taken
/// before it) under linear warmup and cosine decay, in f64 rounded to f32:
/// `lr·k/warmup` while `k < warmup`, then
/// `min_lr + (lr − min_lr)·(1 + cos(π·p))/2` with
/// `p = min(1, (k − warmup)/max(1, total − warmup))`. This is Hugging Face's
/// `get_cosine_with_min_lr_schedule_with_warmup` (num_cycles 0.5), whose
/// LambdaLR gives the first step k = 0 (so a warmup starts at 0), except
/// that past `total` the rate stays at `min_lr` where Hugging Face's cosine
/// would rise again.
pub fn lr_schedule(k: i64, lr: f64, warmup: u32, total: u32, min_lr: f64) -> f32 {
    let k = k.max(0) as f64;
    let w = f64::from(warmup);
    if k < w {
        return (lr * k / w) as f32;
    }
    let p = ((k - w) / (f64::from(total) - w).max(1.0)).min(1.0);
    (min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())) as f32
}

/// The error function in f64, accurate to a few ulps.
///
/// For |x| < 6 the series of Abramowitz & Stegun 7.1.6,
/// `erf x = 2/√π · exp(-x²) · Σₙ 2ⁿ x^(2n+1) / (1·3·…·(2n+1))`, whose terms
/// are all of x's sign (no cancellation); beyond, ±1, since
/// `erfc(6) < 2.2e-17` is below half an ulp of 1.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a >= 6.0 {
        return 1f64.copysign(x);
    }
    let a2 = a * a;
    let (mut term, mut sum, mut k) = (a, a, 1.0);
    // The terms grow while 2a² > 2k + 1, then fall geometrically: at most a
    // few hundred iterations at |x| near 6.
    while term > sum * 1e-17 {
        term *= 2.0 * a2 / (2.0 * k + 1.0);
        sum += term;
        k += 1.0;
    }
    (std::f64::consts::FRAC_2_SQRT_PI * (-a2).exp() * sum).min(1.0).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed values of a warmup of 4 steps from 0, then a cosine
    /// from 0.1 to 0.001 over steps 4..=12.
    #[test]
    fn lr_schedule_warms_up_then_decays() {
        let at = |k| lr_schedule(k, 0.1, 4, 12, 0.001);
        assert_eq!([at(0), at(1), at(2), at(3)], [0.0, 0.025, 0.05, 0.075]);
        assert_eq!(at(4), 0.1);
        // p = 1/4: 0.001 + 0.099·(1 + cos(π/4))/2 = 0.001 + 0.099·0.853553390593 = 0.0855017856687.
        assert_eq!(at(6), 0.085_501_785_669_f64 as f32);
        // p = 1/2: the midpoint, 0.0505.
        assert_eq!(at(8), 0.0505);
        // p = 3/4: 0.001 + 0.099·0.146446609407 = 0.0154982143313.
        assert_eq!(at(10), 0.015_498_214_331_f64 as f32);
        assert_eq!([at(12), at(13), at(1000)], [0.001; 3]);
        // No warmup: the first step has the peak rate. total = warmup: the
        // peak at step `total`, min_lr after it (the decay takes one step, as
        // Hugging Face's max(1, total - warmup)).
        assert_eq!(lr_schedule(0, 0.1, 0, 10, 0.0), 0.1);
        assert_eq!([lr_schedule(5, 0.1, 5, 5, 0.0), lr_schedule(6, 0.1, 5, 5, 0.0)], [0.1, 0.0]);
    }

    #[test]
    fn erf_matches_known_values() {
        // erf to 10 digits (Abramowitz & Stegun, Table 7.1).
        for (x, want) in [
            (0.0, 0.0),
            (0.1, 0.1124629160),
            (0.5, 0.5204998778),
            (1.0, 0.8427007929),
            (1.5, 0.9661051465),
            (2.0, 0.9953222650),
            (3.0, 0.9999779095),
            (-0.5, -0.5204998778),
        ] {
            assert!((erf(x) - want).abs() < 1e-10, "erf({x}) = {} vs {want}", erf(x));
        }
        assert_eq!(erf(6.0), 1.0);
        assert_eq!(erf(f64::NEG_INFINITY), -1.0);
        assert!(erf(f64::NAN).is_nan());
        assert!(erf(-0.0).is_sign_negative());
        // Odd, monotone, and 1 - erf(5) = erfc(5) ≈ 1.5375e-12.
        assert!(((1.0 - erf(5.0)) - 1.5374597944e-12).abs() < 1e-15);
        assert!(erf(5.9) <= erf(5.99) && erf(5.99) <= 1.0);
        assert!((erf(1e-10) - 1e-10 * std::f64::consts::FRAC_2_SQRT_PI).abs() < 1e-25);
    }

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
