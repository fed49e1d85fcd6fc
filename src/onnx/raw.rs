//! Weight data as shared little-endian bytes, and the bulk conversions of
//! the export.
//!
//! An imported initializer's bytes are a slice of the model file's buffer
//! (no copy); an exported initializer is either that slice again (same
//! element type) or the result of one conversion pass that writes straight
//! into the buffer the output is written from. All conversions of a model
//! run as one batch, split over the cores (rayon's pool, whose threads
//! outlive the call: a thread spawned per conversion cost a small model
//! a fifth of its time), into one allocation (advised to
//! use huge pages on Linux: with the system allocator, page faults on a
//! fresh buffer of hundreds of MB cost as much as the conversion itself;
//! 25 M values took 14.6 ms without the advice and 9.7 ms with it, two
//! threads. The mpc binary turns huge pages off for its process unless
//! `MIMALLOC_ALLOW_THP` is set, and the advice is then a no-op).

use rustc_hash::FxHashMap;
use std::mem::MaybeUninit;
use std::path::Path;

use bytes::Bytes;
use half::{f16, slice::HalfFloatSliceExt};

use crate::exec::{Data, ExecError, Tensor};
use crate::ir::types::DType;

/// A tensor's elements as little-endian bytes, shared without copying.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub dims: Vec<u64>,
    pub data: Bytes,
}

/// Weights by node name, as [`crate::exec::State`] holds tensors. A hash
/// map: an imported model's weights are looked up one by one, by name, at
/// import and at export (as a `BTreeMap`, string comparisons were 2.6 % of
/// lowering a 10^5-node ONNX chain).
pub type RawWeights = FxHashMap<String, RawTensor>;

/// Wraps a vector of plain values so that [`Bytes`] can own it.
struct Owned<T>(Vec<T>);

impl<T: bytemuck::Pod> AsRef<[u8]> for Owned<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

/// A vector's elements as little-endian bytes, without a copy where the
/// machine is little-endian.
fn le_bytes<T, const N: usize>(v: Vec<T>, to_le: impl Fn(&T) -> [u8; N]) -> Bytes
where
    T: bytemuck::Pod + Send + 'static,
{
    if cfg!(target_endian = "little") {
        Bytes::from_owner(Owned(v))
    } else {
        Bytes::from(v.iter().flat_map(to_le).collect::<Vec<u8>>())
    }
}

impl RawTensor {
    /// A tensor over `data`, which must hold exactly the elements `dims` count.
    pub fn new(dtype: DType, dims: Vec<u64>, data: Bytes) -> Result<RawTensor, String> {
        let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or("its size overflows")?;
        if (data.len() as u64) != n.saturating_mul(dtype.size_bytes() as u64) {
            return Err(format!(
                "it has {} bytes but {} {dtype} elements (dims {dims:?}) need {}",
                data.len(),
                n,
                n.saturating_mul(dtype.size_bytes() as u64)
            ));
        }
        Ok(RawTensor { dtype, dims, data })
    }

    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size_bytes()
    }

    /// The tensor's bytes, moved rather than copied on a little-endian machine.
    pub fn from_tensor(t: Tensor) -> RawTensor {
        let dims = t.shape().0.clone();
        let dtype = t.dtype();
        let data = match t.into_data() {
            Data::F32(v) => le_bytes(v, |x| x.to_le_bytes()),
            Data::F16(v) => le_bytes(v, |x| x.to_le_bytes()),
            Data::Bf16(v) => le_bytes(v, |x| x.to_le_bytes()),
            Data::I32(v) => le_bytes(v, |x| x.to_le_bytes()),
            Data::I64(v) => le_bytes(v, |x| x.to_le_bytes()),
            Data::Bool(v) => Bytes::from(v.into_iter().map(u8::from).collect::<Vec<u8>>()),
        };
        RawTensor { dtype, dims, data }
    }

    /// A tensor for the executor (a copy).
    pub fn to_tensor(&self) -> Result<Tensor, ExecError> {
        Ok(Tensor::new(self.dims.clone(), crate::tensor::Data::from_le_bytes(self.dtype, &self.data))?)
    }

    /// The values converted to `to`: the same bytes when the type is the same,
    /// otherwise as [`Data::cast`] converts (exact widening, nearest-even
    /// narrowing). For the bulk f32 → f16/bf16 conversions use [`convert`].
    pub fn cast(&self, to: DType) -> Result<RawTensor, ExecError> {
        if to == self.dtype {
            return Ok(self.clone());
        }
        let t = self.to_tensor()?;
        Ok(RawTensor::from_tensor(Tensor::new(t.shape().clone(), t.data().cast(to))?))
    }
}

/// A bulk conversion of little-endian f32 values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// To f16, nearest even.
    F16,
    /// To bf16, nearest even.
    Bf16,
    /// To bf16 and back: f32 values that a bf16 holds exactly.
    Bf16AsF32,
}

impl Rounding {
    pub(crate) fn out_bytes(self) -> usize {
        match self {
            Rounding::F16 | Rounding::Bf16 => 2,
            Rounding::Bf16AsF32 => 4,
        }
    }
}

/// Values per piece of work handed to a thread.
pub(crate) const PIECE: usize = 1 << 18;
/// Below this many values in all, the batch runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 19;
/// Values converted through the stack buffers at a time.
const BLOCK: usize = 1024;

/// Converts each `(f32 little-endian bytes, rounding)` job; returns the
/// results in order, all slices of one new buffer. A trailing partial
/// element in a source is ignored (callers pass whole tensors).
pub fn convert(jobs: &[(Bytes, Rounding)]) -> Vec<Bytes> {
    let sizes: Vec<usize> = jobs.iter().map(|(src, r)| src.len() / 4 * r.out_bytes()).collect();
    let total: usize = sizes.iter().sum();
    let mut arena: Vec<u8> = Vec::with_capacity(total);
    advise_huge_pages(arena.as_mut_ptr(), total);

    // Pieces of at most PIECE values, each with its slice of the output.
    let mut pieces = Vec::new();
    let mut rest: &mut [MaybeUninit<u8>] = &mut arena.spare_capacity_mut()[..total];
    for ((src, r), &size) in jobs.iter().zip(&sizes) {
        let (mut dst, tail) = rest.split_at_mut(size);
        rest = tail;
        let mut src = &src[..src.len() / 4 * 4];
        while !src.is_empty() {
            let n = (src.len() / 4).min(PIECE);
            let (s, s_tail) = src.split_at(n * 4);
            let (d, d_tail) = dst.split_at_mut(n * r.out_bytes());
            pieces.push((s, d, *r));
            src = s_tail;
            dst = d_tail;
        }
    }
    let stream = total >= STREAM_MIN;
    if total / 2 < PARALLEL_MIN || cores() < 2 {
        for (s, d, r) in pieces {
            convert_piece(s, d, r, stream);
        }
    } else {
        use rayon::prelude::*;
        pieces.into_par_iter().for_each(|(s, d, r)| convert_piece(s, d, r, stream));
    }
    // SAFETY: the pieces cover the first `total` bytes of the spare capacity
    // exactly (split from it above), and convert_piece writes every byte of
    // its piece.
    unsafe { arena.set_len(total) };
    let arena = Bytes::from(arena);
    let mut at = 0;
    sizes
        .iter()
        .map(|&size| {
            let b = arena.slice(at..at + size);
            at += size;
            b
        })
        .collect()
}

/// The cores this process may use, asked once: std reads the cgroup
/// quota files on every call, which cost more than a small model's
/// whole conversion.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Conversions that write at least this many bytes in all use non-temporal
/// stores for f16 (on x86-64): their output cannot stay in the cache for
/// its reader anyway, and streaming it saves reading each destination line
/// before writing it (7 M values from memory: 1.02 ms with ordinary stores,
/// 0.80 with streaming ones, 0.72 with AVX-512's; below the cache's size
/// ordinary stores are a little faster: 0.083 against 0.086 ms for 1.2 M).
pub(crate) const STREAM_MIN: usize = 8 << 20;

/// Converts `src` (little-endian f32) into `dst`, writing every byte of it;
/// `stream`: with non-temporal stores (see [`STREAM_MIN`]).
pub(crate) fn convert_piece(src: &[u8], dst: &mut [MaybeUninit<u8>], r: Rounding, stream: bool) {
    // Every caller's SAFETY (an arena whose length is then set) rests on this.
    debug_assert_eq!(dst.len(), src.len() / 4 * r.out_bytes(), "a piece's output covers its input");
    #[cfg(target_arch = "x86_64")]
    if r == Rounding::F16 {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            unsafe { f16_avx512(src, dst, stream) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: as above.
            unsafe { f16_f16c(src, dst, stream) };
            return;
        }
    }
    let _ = stream;
    let mut f = [0f32; BLOCK];
    let mut h = [f16::ZERO; BLOCK];
    let mut b = [0u16; BLOCK];
    let width = r.out_bytes();
    for (s, d) in src.chunks(BLOCK * 4).zip(dst.chunks_mut(BLOCK * width)) {
        let n = s.len() / 4;
        for (x, c) in f[..n].iter_mut().zip(s.chunks_exact(4)) {
            *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        let out: &[u8] = match r {
            Rounding::F16 => {
                h[..n].convert_from_f32_slice(&f[..n]);
                to_le(&mut h[..n])
            }
            Rounding::Bf16 => {
                for (o, x) in b[..n].iter_mut().zip(&f[..n]) {
                    *o = bf16_bits(x.to_bits());
                }
                to_le(&mut b[..n])
            }
            Rounding::Bf16AsF32 => {
                for x in &mut f[..n] {
                    *x = f32::from_bits(u32::from(bf16_bits(x.to_bits())) << 16);
                }
                to_le(&mut f[..n])
            }
        };
        // One copy of the block (a single memcpy; per-element stores into
        // uninitialised bytes do not vectorise).
        for (o, i) in d.iter_mut().zip(out) {
            o.write(*i);
        }
    }
}

/// f32 to f16 with `half` (the F16C kernels' leading and trailing values).
#[cfg(target_arch = "x86_64")]
fn f16_scalar(src: &[u8], dst: &mut [MaybeUninit<u8>], values: std::ops::Range<usize>) {
    for k in values {
        let c = &src[4 * k..4 * k + 4];
        let h = f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes();
        dst[2 * k].write(h[0]);
        dst[2 * k + 1].write(h[1]);
    }
}

/// Where a kernel storing `width` values at a time starts its vector loop
/// (values before it go through [`f16_scalar`]): at 0, or with `stream` at
/// the first value whose destination is aligned for non-temporal stores,
/// `None` if there is none (an odd destination address).
#[cfg(target_arch = "x86_64")]
fn vector_start(dst: &[MaybeUninit<u8>], n: usize, width: usize, stream: bool) -> Option<usize> {
    if !stream {
        return Some(0);
    }
    let align = 2 * width;
    let addr = dst.as_ptr() as usize;
    addr.is_multiple_of(2).then(|| ((align - addr % align) % align / 2).min(n))
}

/// An f32-to-f16 kernel, `$width` values at a time with `$cvt` (F16C's
/// instruction on registers of that width: nearest even, as `half`),
/// straight from the source bytes to the destination with no staging copy;
/// with `stream`, non-temporal stores (to the addresses `vector_start`
/// aligns). The values before and after the vector loop go through
/// [`f16_scalar`].
macro_rules! f16_kernel {
    ($(#[$doc:meta])* $name:ident, $feature:literal, $width:literal, $vec:ident, $load:ident, $cvt:ident, $store:ident, $stream:ident) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name(src: &[u8], dst: &mut [MaybeUninit<u8>], stream: bool) {
            use std::arch::x86_64::*;
            let n = (src.len() / 4).min(dst.len() / 2);
            let Some(start) = vector_start(dst, n, $width, stream) else { return $name(src, dst, false) };
            f16_scalar(src, dst, 0..start);
            let end = start + (n - start) / $width * $width;
            let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
            let mut i = start;
            while i < end {
                // SAFETY: i + $width <= n, so the 4 * $width bytes read and
                // the 2 * $width written lie inside `src` and `dst`; the
                // loads are unaligned ones, and with `stream` the stores go
                // to addresses aligned to 2 * $width bytes (vector_start).
                unsafe {
                    let h = $cvt::<_MM_FROUND_TO_NEAREST_INT>($load(s.add(4 * i) as *const f32));
                    if stream {
                        $stream(d.add(2 * i) as *mut $vec, h);
                    } else {
                        $store(d.add(2 * i) as *mut $vec, h);
                    }
                }
                i += $width;
            }
            if stream {
                // Streaming stores are weakly ordered: they must be done
                // before the piece is reported done to the thread that reads it.
                _mm_sfence();
            }
            f16_scalar(src, dst, end..n);
        }
    };
}

f16_kernel!(
    /// Eight values at a time with F16C.
    f16_f16c, "avx,f16c", 8, __m128i, _mm256_loadu_ps, _mm256_cvtps_ph, _mm_storeu_si128, _mm_stream_si128
);
f16_kernel!(
    /// Sixteen values at a time with AVX-512 (the same instruction on wider
    /// registers, so the same rounding).
    f16_avx512, "avx512f", 16, __m256i, _mm512_loadu_ps, _mm512_cvtps_ph, _mm256_storeu_si256, _mm256_stream_si256
);

/// `half::bf16::from_f32(x).to_bits()` without its branches, so that a loop
/// of it vectorises: nearest even, and a NaN stays a NaN with its quiet bit
/// set.
#[inline(always)]
fn bf16_bits(x: u32) -> u16 {
    // Wraps only for NaNs (above 0xff80_0000), whose result is not used.
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let quiet_nan = (x >> 16) | 0x0040;
    (if x & 0x7fff_ffff > 0x7f80_0000 { quiet_nan } else { rounded }) as u16
}

/// The values' little-endian bytes (swapped in place on a big-endian machine).
fn to_le<T: bytemuck::Pod>(v: &mut [T]) -> &[u8] {
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(v);
    if cfg!(target_endian = "big") {
        for e in bytes.chunks_exact_mut(std::mem::size_of::<T>()) {
            e.reverse();
        }
    }
    bytes
}

/// Asks Linux to back `[p, p + len)` with transparent huge pages where it
/// can (a hint: nothing changes where THP is off).
pub(crate) fn advise_huge_pages(p: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (p as usize).next_multiple_of(HUGE);
        let end = (p as usize).saturating_add(len) / HUGE * HUGE;
        if len >= 4 * HUGE && end > start {
            // SAFETY: the range lies inside an allocation this thread owns;
            // MADV_HUGEPAGE changes no contents and its failure is harmless.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, len);
}

/// Writes weights as a safetensors file, atomically, straight from their bytes.
pub fn write_safetensors(path: &Path, weights: &RawWeights) -> Result<(), String> {
    // In name order, whatever the map's: the same file from the same weights.
    let mut sorted: Vec<(&String, &RawTensor)> = weights.iter().collect();
    sorted.sort_unstable_by_key(|&(name, _)| name);
    let raw = sorted.into_iter().map(|(name, t)| (name.as_str(), t.dtype, t.dims.as_slice(), t.data.as_ref()));
    crate::tensor::safetensors::write_raw(path, raw).map_err(|e| e.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn f32_bytes(v: &[f32]) -> Bytes {
        Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    /// Values that exercise rounding: ties, subnormals, overflow, NaN, signs.
    fn awkward(n: usize) -> Vec<f32> {
        let special = [
            0.0,
            -0.0,
            1.0,
            65504.0,
            65520.0,
            1e-8,
            6.0e-8,
            -3.0e-5,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN_POSITIVE,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
            1.0 + 1.0 / 256.0,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffc0_1234),
        ];
        (0..n)
            .map(|i| match special.get(i) {
                Some(&x) => x,
                None => f32::from_bits((i as u32).wrapping_mul(2654435761) & 0xbfff_ffff),
            })
            .collect()
    }

    #[test]
    fn conversions_match_the_executors_rounding_bit_for_bit() {
        // Sizes below and above the block, the piece, the parallel threshold
        // and (f16 output) streaming stores.
        for n in [0, 1, 7, BLOCK + 3, PIECE + 5, PARALLEL_MIN * 2 + 11, STREAM_MIN / 2 + 5] {
            let v = awkward(n);
            let src = f32_bytes(&v);
            let out =
                convert(&[(src.clone(), Rounding::F16), (src.clone(), Rounding::Bf16), (src, Rounding::Bf16AsF32)]);
            let want_h: Vec<u8> = v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
            let want_b: Vec<u8> = v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
            let want_e: Vec<u8> = v.iter().flat_map(|&x| bf16::from_f32(x).to_f32().to_le_bytes()).collect();
            assert!(out[0][..] == want_h[..], "f16, n = {n}");
            assert!(out[1][..] == want_b[..], "bf16, n = {n}");
            assert!(out[2][..] == want_e[..], "bf16 as f32, n = {n}");
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn every_f16_kernel_rounds_as_half_at_every_alignment() {
        let v = awkward(300);
        let src = f32_bytes(&v);
        let want: Vec<u8> = v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
        type Kernel = unsafe fn(&[u8], &mut [MaybeUninit<u8>], bool);
        let mut kernels: Vec<(&str, Kernel)> = Vec::new();
        if std::arch::is_x86_feature_detected!("avx") && std::arch::is_x86_feature_detected!("f16c") {
            kernels.push(("f16c", f16_f16c));
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            kernels.push(("avx512", f16_avx512));
        }
        let mut buf = vec![MaybeUninit::new(0xa5u8); want.len() + 64];
        for (name, kernel) in kernels {
            // Destinations at every offset, odd ones included (no streaming
            // there), and lengths that end inside and between vectors.
            for offset in 0..33 {
                for n in [0, 1, 15, 16, 17, 31, 33, 300] {
                    for stream in [false, true] {
                        let dst = &mut buf[offset..offset + 2 * n];
                        // SAFETY: the test runs each kernel only where the CPU has its features.
                        unsafe { kernel(&src[..4 * n], dst, stream) };
                        // SAFETY: every byte of `buf` is initialised (0xa5 at first).
                        let got: Vec<u8> = dst.iter().map(|b| unsafe { b.assume_init() }).collect();
                        assert!(got == want[..2 * n], "{name}, offset {offset}, n {n}, stream {stream}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_branchless_bf16_rounding_is_halfs() {
        // Every exponent and sign with mantissas around the rounding
        // boundaries, plus a sweep through the whole range.
        let mut xs: Vec<u32> = (0..=0x1ffu32)
            .flat_map(|se| {
                [0u32, 1, 0x7fff, 0x8000, 0x8001, 0x17fff, 0x18000, 0x18001, 0x7f_ffff, 0x40_0000]
                    .map(move |m| (se << 23) | m)
            })
            .collect();
        xs.extend((0..1u64 << 32).step_by(65_537).map(|x| x as u32));
        for x in xs {
            assert_eq!(bf16_bits(x), bf16::from_f32(f32::from_bits(x)).to_bits(), "{x:#010x}");
        }
    }

    #[test]
    fn tensors_round_trip_through_bytes() {
        let t = Tensor::from_f32(DType::F16, vec![2, 3], &[1.0, -2.5, 3.0, 0.5, 65504.0, -0.0]).unwrap();
        let r = RawTensor::from_tensor(t.clone());
        assert_eq!(r.data.len(), 12);
        assert_eq!(&r.data[..2], &f16::from_f32(1.0).to_le_bytes());
        assert!(r.to_tensor().unwrap().bit_eq(&t));
        let c = r.cast(DType::F32).unwrap();
        assert_eq!(c.dtype, DType::F32);
        assert_eq!(c.to_tensor().unwrap().to_f32_vec(), t.to_f32_vec());
        let b = RawTensor::from_tensor(Tensor::new(vec![2], Data::Bool(vec![true, false])).unwrap());
        assert_eq!(&b.data[..], &[1, 0]);
    }

    #[test]
    fn a_tensor_with_the_wrong_byte_count_is_refused() {
        let e = RawTensor::new(DType::F32, vec![2, 2], Bytes::from(vec![0u8; 12])).unwrap_err();
        assert!(e.contains("12 bytes") && e.contains("need 16"), "{e}");
        assert!(RawTensor::new(DType::F32, vec![u64::MAX, 4], Bytes::new()).is_err());
    }

    #[test]
    fn safetensors_written_from_bytes_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let mut w = RawWeights::default();
        w.insert("a".into(), RawTensor::new(DType::F32, vec![2], f32_bytes(&[1.5, -2.0])).unwrap());
        w.insert("b".into(), RawTensor::from_tensor(Tensor::new(vec![1], Data::I64(vec![-7])).unwrap()));
        write_safetensors(&path, &w).unwrap();
        let back = crate::tensor::safetensors::read(&path).unwrap().0;
        assert_eq!(back["a"].to_f32_vec(), vec![1.5, -2.0]);
        assert_eq!(back["b"].data().to_i64_vec(), Some(vec![-7]));
    }
}
