//! Single roundings into the 16-bit floats from wider values.
//!
//! `half`'s `f16::from_f64` goes through f32 (two roundings) and
//! `bf16::from_f64` drops the low 32 bits first: near a tie of the 16-bit
//! type both can round the wrong way (1 + 2^-11 + 2^-40 to f16 gives 1.0,
//! not 1 + 2^-10). Rounding to f32 *toward odd* first and then to nearest
//! even is one correct rounding, because f32 keeps at least two more bits
//! than either 16-bit type (Boldo and Melquiond, "When double rounding is
//! odd", 2005): an inexact intermediate lands strictly between two
//! 16-bit neighbours, never on their midpoint.

use half::{bf16, f16};

/// `x` rounded to f32 toward odd: the nearest f32 toward zero, with its
/// lowest significand bit set when that is not `x` itself.
pub fn f32_odd(x: f64) -> f32 {
    let r = x as f32;
    if r.is_nan() || f64::from(r) == x {
        return r;
    }
    // Nearest-even went away from zero (or overflowed): step back toward zero.
    let t = if f64::from(r).abs() > x.abs() { f32::from_bits(r.to_bits() - 1) } else { r };
    f32::from_bits(t.to_bits() | 1)
}

/// `x` rounded to f32 toward odd (see [`f32_odd`]), from an integer.
pub fn f32_odd_i64(x: i64) -> f32 {
    let r = x as f32;
    // Every finite f32 in i64's range is an integer that i128 holds exactly.
    let (exact, wide) = (i128::from(x), r as i128);
    if wide == exact {
        return r;
    }
    let t = if wide.abs() > exact.abs() { f32::from_bits(r.to_bits() - 1) } else { r };
    f32::from_bits(t.to_bits() | 1)
}

/// `x` rounded once (nearest even) to f16.
pub fn f16_from_f64(x: f64) -> f16 {
    f16::from_f32(f32_odd(x))
}

/// `x` rounded once (nearest even) to bf16.
pub fn bf16_from_f64(x: f64) -> bf16 {
    bf16::from_f32(f32_odd(x))
}

/// `x` rounded once (nearest even) to f16.
pub fn f16_from_i64(x: i64) -> f16 {
    f16::from_f32(f32_odd_i64(x))
}

/// `x` rounded once (nearest even) to bf16.
pub fn bf16_from_i64(x: i64) -> bf16 {
    bf16::from_f32(f32_odd_i64(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of neighbouring finite 16-bit values (as f64, exact), and
    /// each one's midpoint nudged by `d` relative: the rounding must give
    /// the neighbour on the nudged side, and the midpoint itself the even one.
    fn check_midpoints(values: &[f64], round: impl Fn(f64) -> f64, even: impl Fn(usize) -> bool) {
        for i in 0..values.len() - 1 {
            let (lo, hi) = (values[i], values[i + 1]);
            let mid = lo + (hi - lo) / 2.0;
            let nudge = (hi - lo) * 2f64.powi(-30);
            assert_eq!(round(mid - nudge), lo, "below the midpoint of {lo} and {hi}");
            assert_eq!(round(mid + nudge), hi, "above the midpoint of {lo} and {hi}");
            assert_eq!(round(mid), if even(i) { lo } else { hi }, "the midpoint of {lo} and {hi}");
        }
    }

    #[test]
    fn f16_rounds_once_at_every_midpoint() {
        // The positive finite f16 values in order (bits 0..0x7bff), then 65520 rounds to inf.
        let values: Vec<f64> = (0u16..=0x7bff).map(|b| f16::from_bits(b).to_f64()).collect();
        check_midpoints(&values, |x| f16_from_f64(x).to_f64(), |i| i % 2 == 0);
        check_midpoints(&values.iter().map(|v| -v).collect::<Vec<_>>(), |x| f16_from_f64(x).to_f64(), |i| i % 2 == 0);
        assert_eq!(f16_from_f64(65520.0), f16::INFINITY);
        assert_eq!(f16_from_f64(65519.99), f16::MAX);
        assert_eq!(f16_from_f64(1.0 + 2f64.powi(-11) + 2f64.powi(-40)).to_f64(), 1.0 + 2f64.powi(-10));
        assert!(f16_from_f64(f64::NAN).is_nan());
        assert_eq!(f16_from_f64(1e300), f16::INFINITY);
        assert_eq!(f16_from_f64(-1e-300).to_bits(), 0x8000);
    }

    #[test]
    fn bf16_rounds_once_at_every_midpoint() {
        let values: Vec<f64> = (0u16..=0x7f7f).map(|b| bf16::from_bits(b).to_f64()).collect();
        check_midpoints(&values, |x| bf16_from_f64(x).to_f64(), |i| i % 2 == 0);
        // half's bf16::from_f64 drops the low bits first: this one it gets wrong.
        let x = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(bf16_from_f64(x).to_f64(), 1.0 + 2f64.powi(-7));
        assert_eq!(bf16_from_f64(f64::MAX), bf16::INFINITY);
    }

    #[test]
    fn integers_round_once() {
        // 2^24 + 2^16 + 1 is just above a bf16 midpoint; via f32 it lands on it.
        assert_eq!(bf16_from_i64(16_842_753).to_f64(), 16_908_288.0);
        assert_eq!(bf16_from_i64(16_842_752).to_f64(), 16_777_216.0);
        assert_eq!(f16_from_i64(2049).to_f64(), 2048.0);
        assert_eq!(f16_from_i64(2051).to_f64(), 2052.0);
        assert_eq!(f16_from_i64(i64::MAX), f16::INFINITY);
        assert_eq!(bf16_from_i64(i64::MIN).to_f64(), -(2f64.powi(63)));
        // Each i64 near a bf16 midpoint of a large binade.
        for e in 30..62 {
            let ulp = 1i64 << (e - 7);
            let mid = (1i64 << e) + ulp / 2;
            assert_eq!(bf16_from_i64(mid + 1).to_f64(), ((1i64 << e) + ulp) as f64, "2^{e}");
            assert_eq!(bf16_from_i64(mid - 1).to_f64(), (1i64 << e) as f64, "2^{e}");
            assert_eq!(bf16_from_i64(mid).to_f64(), (1i64 << e) as f64, "2^{e}");
        }
    }
}
