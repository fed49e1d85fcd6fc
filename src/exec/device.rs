//! Which executor runs a training session: `--device cpu|cuda|cuda-emu|auto`.
//!
//! `auto` takes the GPU when one is usable and the CUDA backend runs every op
//! of the graph, else the CPU reference, with a one-line notice saying why.
//! `cuda` on a machine without a usable GPU is an error naming what is
//! missing (never a cudarc panic: the libraries are probed first).
//! `cuda-emu` runs the CUDA backend's kernels on the CPU through the SIMT
//! emulation (docs/EMULATION.md): slow, for checking the kernels.

use std::fmt;
use std::str::FromStr;

use super::cuda::backend::{refusal, CudaBackend};
use super::cuda::device::CudaGpu;
use super::cuda::emu::EmuGpu;
use super::cuda::probe::{self, Report};
use super::{CpuBackend, Plan, Session, State, Trainer};
use crate::ir::graph::Graph;

/// A `--device` choice.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda,
    CudaEmu,
    Auto,
}

impl Device {
    pub const NAMES: [&'static str; 4] = ["cpu", "cuda", "cuda-emu", "auto"];
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Device, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            "cuda-emu" => Ok(Device::CudaEmu),
            "auto" => Ok(Device::Auto),
            _ => Err(format!("unknown device `{s}`: expected one of {}", Device::NAMES.join(", "))),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = [Device::Cpu, Device::Cuda, Device::CudaEmu, Device::Auto].iter().position(|d| d == self);
        f.write_str(Device::NAMES[i.unwrap_or(0)])
    }
}

/// What `auto` and `cuda` come to, decided from the probe and the graph
/// (a pure function: tested without a GPU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Cpu,
    /// GPU `ordinal`.
    Cuda(usize),
    CudaEmu,
}

/// Resolves `device` given whether GPU 0 is usable (`gpu`: Ok, or why not)
/// and why the CUDA backend would refuse the graph (None: it runs it all).
/// Returns the choice and, for `auto` falling back to the CPU, the notice.
pub fn resolve(
    device: Device,
    gpu: Result<(), String>,
    refused: Option<String>,
) -> Result<(Resolved, Option<String>), String> {
    match device {
        Device::Cpu => Ok((Resolved::Cpu, None)),
        Device::CudaEmu => match refused {
            Some(why) => Err(why),
            None => Ok((Resolved::CudaEmu, None)),
        },
        Device::Cuda => match (gpu, refused) {
            (Err(why), _) => {
                Err(format!("--device cuda: no usable CUDA GPU: {why} (`mpc devices` shows what was found)"))
            }
            (Ok(()), Some(why)) => Err(why),
            (Ok(()), None) => Ok((Resolved::Cuda(0), None)),
        },
        Device::Auto => match (gpu, refused) {
            (Err(why), _) => Ok((Resolved::Cpu, Some(format!("no usable CUDA GPU ({why}); training on the CPU")))),
            (Ok(()), Some(why)) => Ok((Resolved::Cpu, Some(format!("{why}; training on the CPU")))),
            (Ok(()), None) => Ok((Resolved::Cuda(0), None)),
        },
    }
}

/// A session opened on a device.
pub struct Opened {
    pub trainer: Box<dyn Trainer>,
    /// What runs it ("cpu", "NVIDIA H100 80GB HBM3 (sm_90)", ...).
    pub describe: String,
    /// For `auto` falling back to the CPU: why, in one line.
    pub notice: Option<String>,
}

/// Opens a training session of `g` on `device`, its state uploaded once.
/// `tf32` lets f32 GEMMs use TF32 tensor cores on a GPU; `fuse` runs each
/// fusion group as one generated kernel there (the CPU fuses nothing), and
/// `gemm_epilogues` lets it fuse into GEMMs too (see
/// [`CudaBackend::with_gemm_epilogues`]).
pub fn open(
    g: &Graph,
    seed: u64,
    state: &State,
    device: Device,
    tf32: bool,
    (fuse, gemm_epilogues): (bool, bool),
) -> Result<Opened, String> {
    // Without a driver the rest need not be looked at (NVRTC's probe compiles).
    let no_driver = match device {
        Device::Cuda | Device::Auto => probe::no_driver(),
        _ => Some("not probed".to_string()),
    };
    let report: Option<Report> = no_driver.is_none().then(probe::probe);
    let gpu = match (&report, no_driver) {
        (Some(r), _) => r.usable(0).map(|_| ()),
        (None, why) => Err(why.unwrap_or_default()),
    };
    let refused = match device {
        Device::Cpu => None,
        _ => refusal(&Plan::new(g, seed).map_err(|e| e.to_string())?),
    };
    let (resolved, notice) = resolve(device, gpu, refused)?;
    let e = |x: super::ExecError| x.to_string();
    let (trainer, describe): (Box<dyn Trainer>, String) = match resolved {
        Resolved::Cpu => (Box::new(Session::new(g, CpuBackend, seed, state).map_err(e)?), "cpu".into()),
        Resolved::CudaEmu => {
            let b = CudaBackend::new(EmuGpu::new(), tf32).with_fusion(fuse).with_gemm_epilogues(gemm_epilogues);
            (Box::new(Session::new(g, b, seed, state).map_err(e)?), "cuda-emu (SIMT emulation on the CPU)".into())
        }
        Resolved::Cuda(ordinal) => {
            let report = report.as_ref().ok_or("the GPU was not probed")?;
            let gpu = CudaGpu::open(report, ordinal).map_err(|x| x.to_string())?;
            let describe = super::cuda::gpu::Gpu::describe(&gpu);
            let b = CudaBackend::new(gpu, tf32).with_fusion(fuse).with_gemm_epilogues(gemm_epilogues);
            (Box::new(Session::new(g, b, seed, state).map_err(e)?), describe)
        }
    };
    Ok(Opened { trainer, describe, notice })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_list_the_choices() {
        for n in Device::NAMES {
            assert_eq!(n.parse::<Device>().unwrap().to_string(), n);
        }
        assert_eq!(
            "gpu".parse::<Device>().unwrap_err(),
            "unknown device `gpu`: expected one of cpu, cuda, cuda-emu, auto"
        );
    }

    #[test]
    fn auto_falls_back_with_a_reason_and_cuda_refuses() {
        let none = || Err("libcuda could not be loaded".to_string());
        let (r, notice) = resolve(Device::Auto, none(), None).unwrap();
        assert_eq!(r, Resolved::Cpu);
        assert_eq!(notice.unwrap(), "no usable CUDA GPU (libcuda could not be loaded); training on the CPU");
        let e = resolve(Device::Cuda, none(), None).unwrap_err();
        assert!(e.starts_with("--device cuda: no usable CUDA GPU: libcuda could not be loaded"), "{e}");
        // A GPU, but an op the backend lacks.
        let lacks = || Some("the CUDA backend does not run these ops yet: `ln` (layer_norm)".to_string());
        let (r, notice) = resolve(Device::Auto, Ok(()), lacks()).unwrap();
        assert_eq!(r, Resolved::Cpu);
        assert!(notice.unwrap().ends_with("(layer_norm); training on the CPU"));
        assert!(resolve(Device::Cuda, Ok(()), lacks()).unwrap_err().contains("`ln` (layer_norm)"));
        assert!(resolve(Device::CudaEmu, Err("x".into()), lacks()).is_err());
        // Everything there.
        assert_eq!(resolve(Device::Auto, Ok(()), None).unwrap(), (Resolved::Cuda(0), None));
        assert_eq!(resolve(Device::Cuda, Ok(()), None).unwrap(), (Resolved::Cuda(0), None));
        assert_eq!(resolve(Device::Cpu, none(), lacks()).unwrap(), (Resolved::Cpu, None));
        assert_eq!(resolve(Device::CudaEmu, none(), None).unwrap(), (Resolved::CudaEmu, None));
    }
}
