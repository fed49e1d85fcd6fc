//! What this machine offers the CUDA backend, found without ever letting
//! cudarc panic: cudarc loads libcuda, libnvrtc and libcublasLt with
//! `dlopen` on first use and panics when one is missing, so each library is
//! looked for first and only then called.
//!
//! [`probe`] fills a [`Report`] (what `mpc devices` prints); [`Report::usable`]
//! says whether `--device cuda` can run and, if not, why.

use std::ffi::c_int;
use std::fmt;

use super::nvrtc;

/// The oldest driver the backend runs on: cudarc is built for the CUDA 13.0
/// API (feature `cuda-13000`) and asks the driver for its symbols by name.
pub const MIN_DRIVER: i32 = 13000;

/// One GPU as the driver describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (major, minor).
    pub capability: (i32, i32),
    pub total_bytes: usize,
}

impl GpuInfo {
    /// The NVRTC architecture of the GPU ("sm_90").
    pub fn arch(&self) -> String {
        arch(self.capability)
    }
}

/// The NVRTC architecture name of a compute capability.
pub fn arch((major, minor): (i32, i32)) -> String {
    format!("sm_{major}{minor}")
}

/// What was found, each part with why it is missing when it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The driver's CUDA version (e.g. 13000 for 13.0).
    pub driver: Result<i32, String>,
    /// NVRTC's version and where the CUDA headers are.
    pub nvrtc: Result<nvrtc::Toolchain, String>,
    /// cuBLASLt's version (e.g. 130100).
    pub cublaslt: Result<usize, String>,
    /// The GPUs, empty when the driver is missing.
    pub gpus: Vec<GpuInfo>,
}

impl Report {
    /// Ok when `--device cuda` can run on GPU `ordinal`; else why not, as
    /// one sentence per missing part.
    pub fn usable(&self, ordinal: usize) -> Result<&GpuInfo, String> {
        let mut why = Vec::new();
        match &self.driver {
            Err(e) => why.push(e.clone()),
            Ok(v) if *v < MIN_DRIVER => why.push(format!(
                "the NVIDIA driver supports CUDA {} but mpc's CUDA backend needs {} or later",
                version(*v),
                version(MIN_DRIVER)
            )),
            Ok(_) => {}
        }
        if let Err(e) = &self.nvrtc {
            why.push(e.clone());
        }
        if let Err(e) = &self.cublaslt {
            why.push(e.clone());
        }
        if self.driver.is_ok() && self.gpus.is_empty() {
            why.push("the driver reports no GPU".to_string());
        }
        let gpu = self.gpus.iter().find(|g| g.ordinal == ordinal);
        if why.is_empty() && gpu.is_none() {
            why.push(format!("there is no GPU {ordinal} (this machine has {})", self.gpus.len()));
        }
        match gpu {
            Some(g) if why.is_empty() => Ok(g),
            _ => Err(why.join("; ")),
        }
    }
}

/// "13.0" from 13000.
pub fn version(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.driver {
            Ok(v) => writeln!(f, "driver     CUDA {}", version(*v))?,
            Err(e) => writeln!(f, "driver     not found: {e}")?,
        }
        match &self.nvrtc {
            Ok(tc) => {
                writeln!(f, "nvrtc      {}.{} (headers in {})", tc.version.0, tc.version.1, tc.include_dir.display())?
            }
            Err(e) => writeln!(f, "nvrtc      not usable: {e}")?,
        }
        match &self.cublaslt {
            Ok(v) => writeln!(f, "cublaslt   {}.{}.{}", v / 10000, (v / 100) % 100, v % 100)?,
            Err(e) => writeln!(f, "cublaslt   not found: {e}")?,
        }
        if self.gpus.is_empty() {
            writeln!(f, "gpus       none")?;
        }
        for g in &self.gpus {
            writeln!(
                f,
                "gpu {}      {}, compute capability {}.{} ({}), {:.1} GiB",
                g.ordinal,
                g.name,
                g.capability.0,
                g.capability.1,
                g.arch(),
                g.total_bytes as f64 / (1u64 << 30) as f64
            )?;
        }
        match self.usable(0) {
            Ok(g) => write!(f, "--device cuda runs on gpu 0 ({})", g.name),
            Err(e) => write!(f, "--device cuda cannot run: {e}"),
        }
    }
}

/// Looks at the driver, NVRTC, cuBLASLt and the GPUs. Never panics and
/// never calls into a library it has not found.
pub fn probe() -> Report {
    let driver = probe_driver();
    let gpus = match driver {
        Ok(_) => gpus().unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    Report { driver, nvrtc: nvrtc::probe().map_err(|e| e.0), cublaslt: probe_cublaslt(), gpus }
}

/// Why there is no usable driver, when there is none; cheaper than
/// [`probe`] (no NVRTC compile), for deciding `--device auto`.
pub fn no_driver() -> Option<String> {
    probe_driver().err()
}

fn probe_driver() -> Result<i32, String> {
    use cudarc::driver::sys;
    // SAFETY: opens and closes the library, as cudarc's first call would.
    if !unsafe { sys::is_culib_present() } {
        return Err("no NVIDIA driver: libcuda.so.1 could not be loaded".to_string());
    }
    let mut v: c_int = 0;
    // SAFETY: the library is present; cuDriverGetVersion writes one int and
    // needs no cuInit.
    unsafe { sys::cuDriverGetVersion(&mut v) }.result().map_err(|e| format!("cuDriverGetVersion failed: {e:?}"))?;
    cudarc::driver::result::init().map_err(|e| format!("cuInit failed: {e} (is a GPU visible to this process?)"))?;
    Ok(v)
}

fn gpus() -> Result<Vec<GpuInfo>, String> {
    use cudarc::driver::result::device;
    use cudarc::driver::sys::CUdevice_attribute as A;
    let n = device::get_count().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for i in 0..n {
        let dev = device::get(i).map_err(|e| e.to_string())?;
        // SAFETY: `dev` is a device handle the driver just gave.
        let attr = |a| unsafe { device::get_attribute(dev, a) }.map_err(|e| e.to_string());
        out.push(GpuInfo {
            ordinal: i as usize,
            name: device::get_name(dev).map_err(|e| e.to_string())?,
            capability: (
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            // SAFETY: as above.
            total_bytes: unsafe { device::total_mem(dev) }.map_err(|e| e.to_string())?,
        });
    }
    Ok(out)
}

fn probe_cublaslt() -> Result<usize, String> {
    use cudarc::cublaslt::sys;
    // SAFETY: opens and closes the library, as cudarc's first call would.
    if !unsafe { sys::is_culib_present() } {
        return Err("libcublasLt.so.13 could not be loaded: put its directory (e.g. \
                    site-packages/nvidia/cu13/lib of the nvidia-cublas wheel) on LD_LIBRARY_PATH"
            .to_string());
    }
    // SAFETY: the library is present; the call takes nothing.
    Ok(unsafe { sys::cublasLtGetVersion() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> GpuInfo {
        GpuInfo { ordinal: 0, name: "NVIDIA H100 80GB HBM3".into(), capability: (9, 0), total_bytes: 85 << 30 }
    }

    fn toolchain() -> nvrtc::Toolchain {
        nvrtc::Toolchain { version: (13, 0), include_dir: "/usr/local/cuda/include".into() }
    }

    #[test]
    fn a_complete_machine_is_usable_and_printed() {
        let r = Report { driver: Ok(13000), nvrtc: Ok(toolchain()), cublaslt: Ok(130100), gpus: vec![h100()] };
        assert_eq!(r.usable(0).map(|g| g.arch()), Ok("sm_90".to_string()));
        let text = r.to_string();
        assert!(text.contains("driver     CUDA 13.0"), "{text}");
        assert!(text.contains("cublaslt   13.1.0"), "{text}");
        assert!(text.contains("NVIDIA H100 80GB HBM3, compute capability 9.0 (sm_90), 85.0 GiB"), "{text}");
        assert!(text.ends_with("--device cuda runs on gpu 0 (NVIDIA H100 80GB HBM3)"), "{text}");
        assert!(r.usable(1).unwrap_err().contains("there is no GPU 1 (this machine has 1)"));
    }

    #[test]
    fn every_missing_part_is_named() {
        let r = Report {
            driver: Err("libcuda could not be loaded".into()),
            nvrtc: Err("libnvrtc could not be loaded".into()),
            cublaslt: Err("libcublasLt could not be loaded".into()),
            gpus: vec![],
        };
        let why = r.usable(0).unwrap_err();
        for part in ["libcuda", "libnvrtc", "libcublasLt"] {
            assert!(why.contains(part), "{why}");
        }
        assert!(r.to_string().contains("gpus       none"));
    }

    #[test]
    fn an_old_driver_or_no_gpu_is_refused() {
        let r = Report { driver: Ok(12040), nvrtc: Ok(toolchain()), cublaslt: Ok(130100), gpus: vec![h100()] };
        assert_eq!(
            r.usable(0).unwrap_err(),
            "the NVIDIA driver supports CUDA 12.4 but mpc's CUDA backend needs 13.0 or later"
        );
        let r = Report { driver: Ok(13000), nvrtc: Ok(toolchain()), cublaslt: Ok(130100), gpus: vec![] };
        assert_eq!(r.usable(0).unwrap_err(), "the driver reports no GPU");
    }

    #[test]
    fn probing_this_machine_never_panics() {
        let r = probe();
        // Whatever is here, the report prints and says whether cuda can run.
        assert!(r.to_string().contains("--device cuda"));
    }
}
