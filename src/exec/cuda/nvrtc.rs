//! NVRTC compilation of the kernels in `kernels/*.cu`.
//!
//! The sources are embedded in the binary ([`SOURCES`], with the shared
//! header [`COMMON`] handed to NVRTC as an in-memory header) and compiled at
//! run time, each file its own program, once per process and architecture
//! ([`compile`] caches). NVRTC itself is loaded by cudarc with `dlopen`:
//! `libnvrtc.so.13` (and `libnvrtc-builtins.so.13.0`, which NVRTC opens when
//! it compiles) must be on the loader's search path, e.g. through
//! `LD_LIBRARY_PATH`. cudarc panics when the library is missing, so
//! [`probe`] checks for it first and reports what is missing instead.
//!
//! `cuda_fp16.h` and `cuda_bf16.h` come from the CUDA headers, looked up in
//! this order (see [`find_include_dir`]): `$MPC_CUDA_INCLUDE`,
//! `$CUDA_HOME/include`, `$CUDA_PATH/include`, `/usr/local/cuda/include`,
//! `../include` beside a `libnvrtc.so*` on `LD_LIBRARY_PATH` (the layout of
//! the `nvidia-cuda-nvrtc` and `nvidia-cuda-runtime` wheels:
//! `site-packages/nvidia/cu13/{lib,include}`), and last
//! `nvidia/cu13/include` in the `nvidia` package of `python3`.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CString};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{result, sys, Ptx};

use super::gpu::GpuError;

/// The header every kernel file includes first, as (include name, source).
pub const COMMON: (&str, &str) = ("common.cuh", include_str!("../../../kernels/common.cuh"));

/// The ops' scalar definitions, shared by the elementwise kernels and the
/// generated fused kernels (see `kernels/scalar.cuh`).
pub const SCALAR: (&str, &str) = ("scalar.cuh", include_str!("../../../kernels/scalar.cuh"));

/// layer_norm's forward pass, shared by norm.cu and the fused kernels that
/// end in a layer_norm (see `kernels/norm.cuh`).
pub const NORM: (&str, &str) = ("norm.cuh", include_str!("../../../kernels/norm.cuh"));

/// The headers every program is given, in memory.
pub const HEADERS: &[(&str, &str)] = &[COMMON, SCALAR, NORM];

/// Every kernel file as (file name, source); each is one NVRTC program and
/// one loaded module. Kernel names are unique across all of them.
pub const SOURCES: &[(&str, &str)] = &[
    ("cast.cu", include_str!("../../../kernels/cast.cu")),
    ("elementwise.cu", include_str!("../../../kernels/elementwise.cu")),
    ("reduce.cu", include_str!("../../../kernels/reduce.cu")),
    ("loss.cu", include_str!("../../../kernels/loss.cu")),
    ("optim.cu", include_str!("../../../kernels/optim.cu")),
    ("scale.cu", include_str!("../../../kernels/scale.cu")),
    ("layout.cu", include_str!("../../../kernels/layout.cu")),
    ("conv.cu", include_str!("../../../kernels/conv.cu")),
    ("pool.cu", include_str!("../../../kernels/pool.cu")),
    ("bnorm.cu", include_str!("../../../kernels/bnorm.cu")),
    ("lrn.cu", include_str!("../../../kernels/lrn.cu")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    ("embed.cu", include_str!("../../../kernels/embed.cu")),
];

/// The self-test kernels (kernels/selftest.cu): they exercise the features the
/// kernels use, for the SIMT emulation's tests and for a GPU check, and are
/// not loaded with [`SOURCES`] since mpc's steps never launch them.
pub const SELFTEST: (&str, &str) = ("selftest.cu", include_str!("../../../kernels/selftest.cu"));

/// NVRTC options for every file besides the architecture and the include
/// path. `--fmad=false`: no multiply-add contraction, so the kernels' f32
/// arithmetic rounds after every operation, as the CPU reference does
/// (division and sqrtf are IEEE by default: `--prec-div`/`--prec-sqrt`).
pub const OPTIONS: &[&str] = &["--std=c++17", "--fmad=false"];

/// The environment variable naming the directory with `cuda_fp16.h`.
pub const INCLUDE_ENV: &str = "MPC_CUDA_INCLUDE";

/// What [`probe`] found: a loadable NVRTC and the CUDA headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolchain {
    /// NVRTC's version, (major, minor).
    pub version: (i32, i32),
    /// The directory holding `cuda_fp16.h` and `cuda_bf16.h`.
    pub include_dir: PathBuf,
}

/// One compiled kernel file.
#[derive(Clone, Debug)]
pub struct Module {
    /// The file name in `kernels/`.
    pub file: &'static str,
    /// The architecture it was compiled for (`sm_90`, `compute_90`).
    pub arch: String,
    /// The PTX text.
    pub ptx: String,
    /// The CUBIN for a real architecture (`sm_XX`); empty for `compute_XX`.
    pub cubin: Vec<u8>,
    /// NVRTC's log (empty unless options such as `-Xptxas=-v` ask for output).
    pub log: String,
}

impl Module {
    /// The image for the driver to load: the CUBIN when there is one (no
    /// JIT at load), else the PTX.
    pub fn image(&self) -> Ptx {
        if self.cubin.is_empty() {
            Ptx::from_src(self.ptx.clone())
        } else {
            Ptx::from_binary(self.cubin.clone())
        }
    }

    /// The kernels' names (`.entry` in the PTX), in PTX order.
    pub fn kernels(&self) -> Vec<&str> {
        entries(&self.ptx)
    }
}

/// The entry (kernel) names declared in PTX text.
pub fn entries(ptx: &str) -> Vec<&str> {
    ptx.lines()
        .filter_map(|l| {
            let rest = l.trim_start().strip_prefix(".visible ").unwrap_or(l.trim_start());
            let rest = rest.strip_prefix(".entry ")?;
            Some(rest.split(|c: char| c == '(' || c.is_whitespace()).next().unwrap_or(rest))
        })
        .collect()
}

/// Per-kernel resource use from ptxas' verbose log (`-Xptxas=-v`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelUsage {
    pub name: String,
    pub registers: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// Parses ptxas' verbose output: "Compiling entry function 'k' for
/// 'sm_90'", then "N bytes spill stores, M bytes spill loads" and "Used R
/// registers" for that entry.
pub fn ptxas_usage(log: &str) -> Vec<KernelUsage> {
    let number_before = |line: &str, word: &str| -> Option<u32> {
        let at = line.find(word)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    let mut out: Vec<KernelUsage> = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or(rest);
            out.push(KernelUsage { name: name.to_string(), ..KernelUsage::default() });
            continue;
        }
        let Some(k) = out.last_mut() else { continue };
        if let Some(r) = line.find("Used ").and_then(|at| number_before(&line[at + 5..], " registers")) {
            k.registers = r;
        }
        if let Some(s) = number_before(line, " bytes spill stores") {
            k.spill_stores = s;
        }
        if let Some(s) = number_before(line, " bytes spill loads") {
            k.spill_loads = s;
        }
    }
    out
}

/// Checks that NVRTC can be loaded and can compile, and finds the CUDA
/// headers; the error says what is missing. Never panics.
pub fn probe() -> Result<Toolchain, GpuError> {
    // SAFETY: opens and closes the shared library (running its initialisers),
    // which is all cudarc does before its first call into it.
    if !unsafe { sys::is_culib_present() } {
        return Err(GpuError(
            "libnvrtc.so.13 could not be loaded: put its directory (e.g. site-packages/nvidia/cu13/lib \
             of the nvidia-cuda-nvrtc wheel) on LD_LIBRARY_PATH"
                .to_string(),
        ));
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the library is present; nvrtcVersion writes two ints.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| GpuError(format!("nvrtcVersion failed: {e:?}")))?;
    let include_dir = find_include_dir()?;
    // A first compile: NVRTC opens libnvrtc-builtins only now.
    program("mpc_probe.cu", "extern \"C\" __global__ void mpc_probe() {}\n", &[], &["--std=c++17".to_string()])
        .map_err(|e| GpuError(format!("NVRTC {major}.{minor} loads but cannot compile: {e}")))?;
    Ok(Toolchain { version: (major, minor), include_dir })
}

fn has_headers(dir: &Path) -> bool {
    dir.join("cuda_fp16.h").is_file() && dir.join("cuda_bf16.h").is_file()
}

/// The directory with `cuda_fp16.h` and `cuda_bf16.h` (order in the module
/// doc). `$MPC_CUDA_INCLUDE`, when set, must hold them: it is not passed over.
pub fn find_include_dir() -> Result<PathBuf, GpuError> {
    if let Some(dir) = std::env::var_os(INCLUDE_ENV).filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_headers(&dir) {
            Ok(dir)
        } else {
            Err(GpuError(format!("{INCLUDE_ENV}={} holds no cuda_fp16.h and cuda_bf16.h", dir.display())))
        };
    }
    let mut tried: Vec<PathBuf> = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            candidates.push(PathBuf::from(home).join("include"));
        }
    }
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    candidates.extend(beside_libnvrtc());
    for dir in candidates {
        if has_headers(&dir) {
            return Ok(dir);
        }
        tried.push(dir);
    }
    for dir in python_wheel_includes() {
        if has_headers(&dir) {
            return Ok(dir);
        }
        tried.push(dir);
    }
    let tried: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
    Err(GpuError(format!(
        "cuda_fp16.h not found (set {INCLUDE_ENV}, CUDA_HOME or install the nvidia-cuda-runtime wheel); tried: {}",
        tried.join(", ")
    )))
}

/// `../include` of every `LD_LIBRARY_PATH` directory that holds a libnvrtc.
fn beside_libnvrtc() -> Vec<PathBuf> {
    let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") else { return Vec::new() };
    std::env::split_paths(&paths)
        .filter(|dir| {
            std::fs::read_dir(dir).is_ok_and(|mut it| {
                it.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libnvrtc.so")))
            })
        })
        .filter_map(|dir| dir.parent().map(|p| p.join("include")))
        .collect()
}

/// `nvidia/cu13/include` under each directory of python3's `nvidia`
/// namespace package (where the CUDA 13 wheels put their headers).
fn python_wheel_includes() -> Vec<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import nvidia\nfor p in nvidia.__path__: print(p)"])
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| Path::new(l).join("cu13").join("include"))
            .collect(),
        _ => Vec::new(),
    }
}

/// The options for one file: [`OPTIONS`], the architecture, the include
/// path, then `extra`.
pub fn options(tc: &Toolchain, arch: &str, extra: &[&str]) -> Vec<String> {
    let mut o: Vec<String> = OPTIONS.iter().map(|s| s.to_string()).collect();
    o.push(format!("--gpu-architecture={arch}"));
    o.push(format!("--include-path={}", tc.include_dir.display()));
    o.extend(extra.iter().map(|s| s.to_string()));
    o
}

/// Compiles one kernel file (with [`HEADERS`]) for `arch`
/// (`sm_XX` gives PTX and a CUBIN, `compute_XX` PTX only); `extra` options
/// follow the standard ones (e.g. `-Xptxas=-v` for register counts in the
/// log). The error names the file and carries NVRTC's log.
pub fn compile_file(
    tc: &Toolchain,
    file: &'static str,
    src: &str,
    arch: &str,
    extra: &[&str],
) -> Result<Module, GpuError> {
    let (ptx, cubin, log) = program(file, src, HEADERS, &options(tc, arch, extra))
        .map_err(|e| GpuError(format!("kernels/{file} for {arch}: {e}")))?;
    Ok(Module { file, arch: arch.to_string(), ptx, cubin, log })
}

/// Compiles a generated kernel source (a fused group's, see
/// [`super::fused`]) for `arch`, with [`HEADERS`]: (PTX, CUBIN).
pub fn compile_generated(tc: &Toolchain, name: &str, src: &str, arch: &str) -> Result<(String, Vec<u8>), GpuError> {
    let (ptx, cubin, _) = program(name, src, HEADERS, &options(tc, arch, &[]))
        .map_err(|e| GpuError(format!("generated kernel {name} for {arch}: {e}")))?;
    Ok((ptx, cubin))
}

/// Every file of [`SOURCES`] compiled for `arch` (in parallel, one thread
/// per file), in [`SOURCES`]' order; the first error in that order.
pub fn compile_all(tc: &Toolchain, arch: &str, extra: &[&str]) -> Result<Vec<Module>, GpuError> {
    std::thread::scope(|s| {
        let jobs: Vec<_> =
            SOURCES.iter().map(|&(file, src)| s.spawn(move || compile_file(tc, file, src, arch, extra))).collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap_or_else(|_| Err(GpuError("an NVRTC compile thread panicked".into()))))
            .collect()
    })
}

/// Every kernel file compiled for `arch`, once per process and
/// architecture (later calls return the same modules), and across
/// processes through the disk cache ([`super::kcache`]); probes first, so
/// a missing NVRTC is an error, not a panic.
pub fn compile(arch: &str) -> Result<Arc<[Module]>, GpuError> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<[Module]>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // Held across the compile: a second caller waits rather than compiling again.
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = map.get(arch) {
        return Ok(m.clone());
    }
    let tc = probe()?;
    let (modules, _) = super::kcache::compile_all(&tc, arch, super::kcache::dir().as_deref())?;
    let modules: Arc<[Module]> = modules.into();
    map.insert(arch.to_string(), modules.clone());
    Ok(modules)
}

/// An NVRTC program: creates, compiles and destroys it; returns (PTX,
/// CUBIN, log), or an error with the log.
fn program(
    name: &str,
    src: &str,
    headers: &[(&str, &str)],
    opts: &[String],
) -> Result<(String, Vec<u8>, String), String> {
    let c = |s: &str| CString::new(s).map_err(|_| format!("{name}: a NUL byte in the source or options"));
    let (src_c, name_c) = (c(src)?, c(name)?);
    let header_srcs = headers.iter().map(|h| c(h.1)).collect::<Result<Vec<_>, _>>()?;
    let header_names = headers.iter().map(|h| c(h.0)).collect::<Result<Vec<_>, _>>()?;
    let srcs: Vec<*const c_char> = header_srcs.iter().map(|s| s.as_ptr()).collect();
    let names: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
    let mut prog = MaybeUninit::<sys::nvrtcProgram>::uninit();
    // SAFETY: every pointer is a live NUL-terminated string for this call
    // (NVRTC copies them); the arrays hold `headers.len()` entries.
    unsafe {
        sys::nvrtcCreateProgram(
            prog.as_mut_ptr(),
            src_c.as_ptr(),
            name_c.as_ptr(),
            headers.len() as c_int,
            if headers.is_empty() { std::ptr::null() } else { srcs.as_ptr() },
            if headers.is_empty() { std::ptr::null() } else { names.as_ptr() },
        )
    }
    .result()
    .map_err(|e| format!("nvrtcCreateProgram failed: {e:?}"))?;
    // SAFETY: created above.
    let prog = Program(unsafe { prog.assume_init() });
    // SAFETY: `prog.0` is a live program until `prog` drops.
    let compiled = unsafe { result::compile_program(prog.0, opts) };
    let log = unsafe { result::get_program_log(prog.0) }.map(|l| c_text(&l)).unwrap_or_default();
    if let Err(e) = compiled {
        return Err(format!("NVRTC failed ({:?}) with options {}:\n{log}", e.0, opts.join(" ")));
    }
    let ptx = unsafe { result::get_ptx(prog.0) }.map_err(|e| format!("nvrtcGetPTX failed: {e:?}"))?;
    let mut size = 0usize;
    // SAFETY: as above; the CUBIN buffer has the size NVRTC reports.
    unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }.result().map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
    let mut cubin = vec![0u8; size];
    if size > 0 {
        unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast()) }
            .result()
            .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
    }
    Ok((c_text(&ptx), cubin, log))
}

/// A C string in a buffer (up to its first NUL) as text.
fn c_text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Destroys the program when dropped.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram and destroyed only here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_read_from_ptx() {
        let ptx = ".version 9.0\n.visible .entry add_f32(\n\t.param .u64 a\n)\n{\n}\n.entry helper_k(\n)\n";
        assert_eq!(entries(ptx), vec!["add_f32", "helper_k"]);
    }

    #[test]
    fn ptxas_usage_pairs_counts_with_entries() {
        let log = "ptxas info    : 0 bytes gmem\n\
                   ptxas info    : Compiling entry function 'relu_f16' for 'sm_90'\n\
                   ptxas info    : Function properties for relu_f16\n\
                   ptxas         .     0 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
                   ptxas info    : Used 15 registers, used 0 barriers\n\
                   ptxas info    : Compiling entry function 'k2' for 'sm_90'\n\
                   ptxas info    : Used 40 registers, used 1 barriers, 368 bytes cmem[0]\n";
        let u = ptxas_usage(log);
        assert_eq!(
            u,
            vec![
                KernelUsage { name: "relu_f16".into(), registers: 15, spill_stores: 8, spill_loads: 4 },
                KernelUsage { name: "k2".into(), registers: 40, spill_stores: 0, spill_loads: 0 },
            ]
        );
    }

    #[test]
    fn c_text_stops_at_nul() {
        let buf: Vec<c_char> = b"ab\0cd".iter().map(|&b| b as c_char).collect();
        assert_eq!(c_text(&buf), "ab");
    }
}
