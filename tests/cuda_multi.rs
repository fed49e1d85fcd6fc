//! The multi-tensor kernels (one launch over every tensor of a group,
//! chunked as apex's multi_tensor_apply) against the per-tensor kernels
//! they replace, on the SIMT emulation: the same element arithmetic, so
//! the same bits, and the same inf/NaN flag; over odd sizes, empty tensors
//! and tensors of several chunks.

use half::{bf16, f16};
use mpc::exec::cuda::emu::{EmuGpu, EmuMem};
use mpc::exec::cuda::gpu::{Gpu, KArg, Launch};
use mpc::exec::cuda::launch::{blocks, THREADS};
use mpc::exec::cuda::multi::{bytes_of, pack, Member};
use mpc::DType;

/// Sizes around the test chunk of 1000 elements: empty, one, odd, several chunks.
const SIZES: [usize; 6] = [0, 1, 255, 1000, 2501, 7];
const CHUNK: u64 = 1000;

/// A deterministic spread of values in [-3, 3).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 6.0 - 3.0
        })
        .collect()
}

fn encode(v: &[f32], d: DType) -> Vec<u8> {
    match d {
        DType::F16 => v.iter().flat_map(|x| f16::from_f32(*x).to_bits().to_le_bytes()).collect(),
        DType::Bf16 => v.iter().flat_map(|x| bf16::from_f32(*x).to_bits().to_le_bytes()).collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

struct Dev {
    gpu: EmuGpu,
}

impl Dev {
    fn put(&mut self, bytes: &[u8]) -> EmuMem {
        let m = self.gpu.alloc(bytes.len()).unwrap();
        self.gpu.write(&m, 0, bytes).unwrap();
        m
    }
    fn get(&mut self, m: &EmuMem) -> Vec<u8> {
        let mut out = vec![0u8; m.len()];
        self.gpu.read(m, 0, &mut out).unwrap();
        out
    }
    fn addr(&self, m: &EmuMem) -> u64 {
        self.gpu.address(m, 0).unwrap()
    }
    fn each(&mut self, name: &str, n: usize, args: &[KArg<'_, EmuMem>]) {
        if n > 0 {
            self.gpu.launch(name, Launch::linear(blocks(n as u64), THREADS), args).unwrap();
        }
    }
    /// Launches `name` over `members` with its tables, then `args` after the chunk size.
    fn multi(&mut self, name: &str, members: &[Member], args: &[KArg<'_, EmuMem>]) {
        let t = pack(members, CHUNK).unwrap();
        let tensors = self.put(&bytes_of(t.tensors.iter().copied()));
        let chunks = self.put(&bytes_of(t.chunks.iter().map(|&c| c as u64)));
        let mut all = vec![KArg::Ptr(&tensors, 0), KArg::Ptr(&chunks, 0), KArg::I64(CHUNK as i64)];
        all.extend_from_slice(args);
        self.gpu.launch(name, Launch::linear(t.blocks, THREADS), &all).unwrap();
    }
}

fn dev() -> Dev {
    Dev { gpu: EmuGpu::new() }
}

/// Unscale and the overflow check of every gradient in one launch: the
/// unscaled values and the flag are the per-tensor kernels', with no
/// overflow, an inf in the third chunk of a tensor, and a NaN.
#[test]
fn multi_unscale_found_inf_is_the_per_tensor_kernels() {
    for d in [DType::F32, DType::F16, DType::Bf16] {
        for poison in [None, Some(f32::INFINITY), Some(f32::NAN)] {
            let mut dev = dev();
            let t = d.name();
            let scale = dev.put(&1024f32.to_le_bytes());
            let grads: Vec<EmuMem> = SIZES
                .iter()
                .enumerate()
                .map(|(k, &n)| {
                    let mut v: Vec<f32> = values(k as u64, n).iter().map(|x| x * 1024.0).collect();
                    if let (Some(p), 4) = (poison, k) {
                        v[2001] = p;
                    }
                    dev.put(&encode(&v, d))
                })
                .collect();
            let outs = |dev: &mut Dev| -> Vec<EmuMem> { SIZES.iter().map(|&n| dev.put(&vec![0u8; 4 * n])).collect() };
            let (one, many) = (outs(&mut dev), outs(&mut dev));
            let (flag1, flag2) = (dev.put(&[0xff; 4]), dev.put(&[0xff; 4]));
            dev.each("constant_f32", 1, &[KArg::Ptr(&flag1, 0), KArg::I64(1), KArg::F64(0.0)]);
            for ((g, o), &n) in grads.iter().zip(&one).zip(&SIZES) {
                let args = [KArg::Ptr(g, 0), KArg::Ptr(&scale, 0), KArg::Ptr(o, 0), KArg::I64(n as i64)];
                dev.each(&format!("unscale_{t}"), n, &args);
                dev.each("found_inf_f32", n, &[KArg::Ptr(o, 0), KArg::I64(n as i64), KArg::Ptr(&flag1, 0)]);
            }
            let members: Vec<Member> = grads
                .iter()
                .zip(&many)
                .zip(&SIZES)
                .map(|((g, o), &n)| Member { n: n as u64, ptrs: vec![dev.addr(g), dev.addr(o)], extra: vec![] })
                .collect();
            dev.each("constant_f32", 1, &[KArg::Ptr(&flag2, 0), KArg::I64(1), KArg::F64(0.0)]);
            dev.multi(&format!("multi_unscale_found_inf_{t}"), &members, &[KArg::Ptr(&scale, 0), KArg::Ptr(&flag2, 0)]);
            for (k, (a, b)) in one.iter().zip(&many).enumerate() {
                let (a, b) = (dev.get(a), dev.get(b));
                assert!(a.is_empty() || a.iter().any(|&x| x != 0), "{t}: tensor {k} was not written");
                assert_eq!(a, b, "{t}, tensor {k}, {poison:?}");
            }
            let flag = dev.get(&flag2);
            assert_eq!(dev.get(&flag1), flag, "{t} {poison:?}");
            assert_eq!(f32::from_le_bytes(flag.try_into().unwrap()), if poison.is_some() { 1.0 } else { 0.0 });
        }
    }
}

/// The state of one optimizer test: per tensor its inputs and two sets of outputs.
struct Tensors {
    ins: Vec<Vec<EmuMem>>,
    one: Vec<Vec<EmuMem>>,
    many: Vec<Vec<EmuMem>>,
}

/// `inputs` value tensors and `outputs` output tensors of type `d` per size.
fn tensors(dev: &mut Dev, d: DType, inputs: usize, outputs: usize) -> Tensors {
    let size = d.size_bytes();
    let mut ins = Vec::new();
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for (k, &n) in SIZES.iter().enumerate() {
        // Second moments are squares: non-negative.
        ins.push(
            (0..inputs)
                .map(|i| {
                    let v: Vec<f32> =
                        values(10 * k as u64 + i as u64, n).iter().map(|x| if i == 3 { x * x } else { *x }).collect();
                    dev.put(&encode(&v, d))
                })
                .collect(),
        );
        one.push((0..outputs).map(|_| dev.put(&vec![0u8; size * n])).collect());
        many.push((0..outputs).map(|_| dev.put(&vec![0u8; size * n])).collect());
    }
    Tensors { ins, one, many }
}

impl Tensors {
    fn members(&self, dev: &Dev, wd: &[f64]) -> Vec<Member> {
        (0..SIZES.len())
            .map(|k| Member {
                n: SIZES[k] as u64,
                ptrs: self.ins[k].iter().chain(&self.many[k]).map(|m| dev.addr(m)).collect(),
                extra: vec![wd[k].to_bits()],
            })
            .collect()
    }
    fn same(&self, dev: &mut Dev, what: &str) {
        for k in 0..SIZES.len() {
            for (a, b) in self.one[k].iter().zip(&self.many[k]) {
                let (a, b) = (dev.get(a), dev.get(b));
                // Outputs start zeroed: a launch that wrote nothing would compare equal.
                assert!(a.is_empty() || a.iter().any(|&x| x != 0), "{what}: tensor {k} was not written");
                assert_eq!(a, b, "{what}: tensor {k}");
            }
        }
    }
}

/// Weight decay per tensor: some params without (`--no-decay`) share the launch.
const WD: [f64; 6] = [0.01, 0.0, 0.01, 0.1, 0.0, 0.01];

/// AdamW and Adam with L2 over every param in one launch, lr as attribute
/// or device scalar, i32 and i64 step counters, f32 masters and f16 params.
#[test]
fn multi_adam_is_the_per_tensor_kernel() {
    for d in [DType::F32, DType::F16] {
        for (s, step_bytes) in [("i32", 3i32.to_le_bytes().to_vec()), ("i64", 3i64.to_le_bytes().to_vec())] {
            for decoupled in [1, 0] {
                for lr_input in [false, true] {
                    let mut dev = dev();
                    let t = d.name();
                    let step = dev.put(&step_bytes);
                    let lr = dev.put(&1e-3f32.to_le_bytes());
                    let x = tensors(&mut dev, d, 4, 3);
                    let tag = if lr_input { "lr_" } else { "" };
                    let tail = [KArg::F64(0.9), KArg::F64(0.999), KArg::F64(1e-8)];
                    for (k, &n) in SIZES.iter().enumerate() {
                        let (i, o) = (&x.ins[k], &x.one[k]);
                        let mut args =
                            vec![KArg::Ptr(&i[0], 0), KArg::Ptr(&i[1], 0), KArg::Ptr(&i[2], 0), KArg::Ptr(&i[3], 0)];
                        args.push(KArg::Ptr(&step, 0));
                        if lr_input {
                            args.push(KArg::Ptr(&lr, 0));
                        }
                        args.extend([
                            KArg::Ptr(&o[0], 0),
                            KArg::Ptr(&o[1], 0),
                            KArg::Ptr(&o[2], 0),
                            KArg::I64(n as i64),
                        ]);
                        if !lr_input {
                            args.push(KArg::F64(1e-3));
                        }
                        args.extend(tail);
                        args.extend([KArg::F64(WD[k]), KArg::I32(decoupled)]);
                        dev.each(&format!("adam_{tag}{t}_{s}"), n, &args);
                    }
                    let members = x.members(&dev, &WD);
                    let mut args = vec![KArg::Ptr(&step, 0)];
                    args.push(if lr_input { KArg::Ptr(&lr, 0) } else { KArg::F64(1e-3) });
                    args.extend(tail);
                    args.push(KArg::I32(decoupled));
                    dev.multi(&format!("multi_adam_{tag}{t}_{s}"), &members, &args);
                    x.same(&mut dev, &format!("adam {tag}{t} {s} decoupled={decoupled}"));
                }
            }
        }
    }
}

/// SGD and SGD with momentum over every param in one launch.
#[test]
fn multi_sgd_is_the_per_tensor_kernel() {
    for d in [DType::F32, DType::Bf16] {
        for lr_input in [false, true] {
            let mut dev = dev();
            let t = d.name();
            let lr = dev.put(&0.05f32.to_le_bytes());
            let tag = if lr_input { "lr_" } else { "" };
            let x = tensors(&mut dev, d, 2, 1);
            for (k, &n) in SIZES.iter().enumerate() {
                let (i, o) = (&x.ins[k], &x.one[k]);
                let mut args = vec![KArg::Ptr(&i[0], 0), KArg::Ptr(&i[1], 0)];
                if lr_input {
                    args.push(KArg::Ptr(&lr, 0));
                }
                args.extend([KArg::Ptr(&o[0], 0), KArg::I64(n as i64)]);
                if !lr_input {
                    args.push(KArg::F64(0.05));
                }
                args.push(KArg::F64(WD[k]));
                dev.each(&format!("sgd_{tag}{t}"), n, &args);
            }
            let members = x.members(&dev, &WD);
            let lr_arg = if lr_input { KArg::Ptr(&lr, 0) } else { KArg::F64(0.05) };
            dev.multi(&format!("multi_sgd_{tag}{t}"), &members, &[lr_arg]);
            x.same(&mut dev, &format!("sgd {tag}{t}"));

            let x = tensors(&mut dev, d, 3, 2);
            for (k, &n) in SIZES.iter().enumerate() {
                let (i, o) = (&x.ins[k], &x.one[k]);
                let mut args = vec![KArg::Ptr(&i[0], 0), KArg::Ptr(&i[1], 0), KArg::Ptr(&i[2], 0)];
                if lr_input {
                    args.push(KArg::Ptr(&lr, 0));
                }
                args.extend([KArg::Ptr(&o[0], 0), KArg::Ptr(&o[1], 0), KArg::I64(n as i64)]);
                if !lr_input {
                    args.push(KArg::F64(0.05));
                }
                args.extend([KArg::F64(0.9), KArg::F64(WD[k])]);
                dev.each(&format!("sgd_momentum_{tag}{t}"), n, &args);
            }
            let members = x.members(&dev, &WD);
            dev.multi(&format!("multi_sgd_momentum_{tag}{t}"), &members, &[lr_arg, KArg::F64(0.9)]);
            x.same(&mut dev, &format!("sgd_momentum {tag}{t}"));
        }
    }
}

/// Skip-on-overflow's selects over every tensor in one launch: with the
/// flag clear, set, or NaN (which counts as set), the outputs are the
/// per-tensor kernel's bits; a tensor whose chosen source is its own
/// output (a select kept in place) is left alone, as per tensor.
#[test]
fn multi_select_is_the_per_tensor_kernel() {
    for d in [DType::F32, DType::F16, DType::Bf16] {
        for flag in [0.0f32, 1.0, f32::NAN] {
            let mut dev = dev();
            let t = d.name();
            let found = dev.put(&flag.to_le_bytes());
            let x = tensors(&mut dev, d, 2, 1);
            for (k, &n) in SIZES.iter().enumerate() {
                let (i, o) = (&x.ins[k], &x.one[k]);
                let args = [KArg::Ptr(&found, 0), KArg::Ptr(&i[0], 0), KArg::Ptr(&i[1], 0), KArg::Ptr(&o[0], 0)];
                dev.each(&format!("select_{t}"), n, &[&args[..], &[KArg::I64(n as i64)]].concat());
            }
            let members: Vec<Member> =
                x.members(&dev, &WD).into_iter().map(|m| Member { extra: vec![], ..m }).collect();
            dev.multi(&format!("multi_select_{t}"), &members, &[KArg::Ptr(&found, 0)]);
            x.same(&mut dev, &format!("select {t} flag {flag}"));
        }
    }
    // In place: out is on_inf's buffer; with the flag set nothing is
    // written, with it clear `otherwise` is copied over.
    for (flag, want_first) in [(1.0f32, true), (0.0, false)] {
        let mut dev = dev();
        let found = dev.put(&flag.to_le_bytes());
        let (a, b) = (values(1, 2501), values(2, 2501));
        let (am, bm) = (dev.put(&encode(&a, DType::F32)), dev.put(&encode(&b, DType::F32)));
        let m = Member { n: 2501, ptrs: vec![dev.addr(&am), dev.addr(&bm), dev.addr(&am)], extra: vec![] };
        dev.multi("multi_select_f32", &[m], &[KArg::Ptr(&found, 0)]);
        let want = if want_first { &a } else { &b };
        assert_eq!(dev.get(&am), encode(want, DType::F32), "in place, flag {flag}");
    }
}
