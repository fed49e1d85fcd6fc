//! Generated kernels in the SIMT emulation: a fused group's source
//! ([`super::fused`]) compiled for the host by the compiler build.rs used
//! for `kernels/*.cu` (its path is `MPC_HOST_CXX`, set by build.rs), with
//! the same flags (C++20, -O2, `-DMPC_EMU`, `-ffp-contract=off`), against
//! the same headers and emulation runtime (`kernels/emu/simt.{h,cpp}`,
//! embedded here and written beside the library), into a shared object
//! that is then `dlopen`ed. The library carries its own copy of the
//! runtime, so its launches and errors are its own (`mpc_emu_last_error`
//! is looked up in it). Libraries are cached by a hash of everything that
//! goes into them, under the build's `OUT_DIR` (in the target directory),
//! and loaded once per process.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::emu::EmuKernel;
use super::gpu::GpuError;
use super::nvrtc::HEADERS;
use crate::exec::rng::fnv1a;

/// The emulation's header and runtime, as (path under the include dir, text).
const RUNTIME: &[(&str, &str)] = &[
    ("emu/simt.h", include_str!("../../../kernels/emu/simt.h")),
    ("emu/simt.cpp", include_str!("../../../kernels/emu/simt.cpp")),
];

/// The flags of build.rs's compile of kernels/*.cu, and those that make a
/// shared object of it.
const FLAGS: &[&str] = &[
    "-std=c++20",
    "-O2",
    "-DMPC_EMU",
    "-DMPC_EMU_DLOPEN",
    "-ffp-contract=off",
    "-fPIC",
    "-shared",
    "-Wl,-Bsymbolic",
    "-x",
    "c++",
];

/// `mpc_emu_last_error` of one library.
pub(crate) type LastError = unsafe extern "C" fn() -> *const c_char;

/// A loaded generated kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loaded {
    pub kernel: EmuKernel,
    pub last_error: LastError,
}

fn cache_dir() -> PathBuf {
    Path::new(env!("OUT_DIR")).join("fused")
}

fn write_if_changed(path: &Path, text: &str) -> Result<(), GpuError> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let dir = path.parent().ok_or_else(|| GpuError(format!("{} has no directory", path.display())))?;
    std::fs::create_dir_all(dir).map_err(|e| GpuError(format!("cannot create {}: {e}", dir.display())))?;
    let tmp = aside(path);
    std::fs::write(&tmp, text).map_err(|e| GpuError(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| GpuError(format!("cannot write {}: {e}", path.display())))
}

fn compile(cxx: &str, args: &[&std::ffi::OsStr], what: &Path) -> Result<(), GpuError> {
    let out = Command::new(cxx)
        .args(args)
        .output()
        .map_err(|e| GpuError(format!("cannot run the host compiler {cxx}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(GpuError(format!(
            "the host compiler failed on {}:\n{}",
            what.display(),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A path to write `path` through: renamed into place once whole, since
/// another test thread or process may want the same file meanwhile.
fn aside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{:?}.tmp", std::process::id(), std::thread::current().id()))
}

/// Compiles `source` (unless cached) and loads its kernels `names`.
pub(crate) fn load(names: &[String], source: &str) -> Result<Vec<(String, Loaded)>, GpuError> {
    static LOADED: OnceLock<Mutex<HashMap<String, Loaded>>> = OnceLock::new();
    let mut loaded = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let cxx = env!("MPC_HOST_CXX");
    let mut key = format!("{cxx}\0{}\0", FLAGS.join(" "));
    for (file, text) in HEADERS.iter().chain(RUNTIME) {
        key.push_str(&format!("{file}\0{text}\0"));
    }
    // The runtime is compiled once per toolchain and headers, each source once.
    let dir = cache_dir().join(format!("{:016x}", fnv1a(&key)));
    let include = dir.join("include");
    let runtime = dir.join("simt.o");
    if !runtime.exists() {
        for (file, text) in HEADERS.iter().chain(RUNTIME) {
            write_if_changed(&include.join(file), text)?;
        }
        let (tmp, cpp) = (aside(&runtime), include.join("emu/simt.cpp"));
        let mut args: Vec<&std::ffi::OsStr> = FLAGS.iter().map(|f| f.as_ref()).filter(|f| *f != "-shared").collect();
        args.extend([
            "-c".as_ref(),
            "-I".as_ref(),
            include.as_os_str(),
            cpp.as_os_str(),
            "-o".as_ref(),
            tmp.as_os_str(),
        ]);
        compile(cxx, &args, &cpp)?;
        std::fs::rename(&tmp, &runtime).map_err(|e| GpuError(format!("cannot write {}: {e}", runtime.display())))?;
    }
    let stem = format!("fused_{:016x}", fnv1a(source));
    let lib = dir.join(format!("{stem}.so"));
    if !lib.exists() {
        let src = dir.join(format!("{stem}.cu"));
        write_if_changed(&src, source)?;
        let tmp = aside(&lib);
        let mut args: Vec<&std::ffi::OsStr> = FLAGS.iter().map(|f| f.as_ref()).collect();
        args.extend(["-I".as_ref(), include.as_os_str(), src.as_os_str()]);
        // The object is not C++ source: the language applies no further.
        args.extend(["-x".as_ref(), "none".as_ref(), runtime.as_os_str(), "-o".as_ref(), tmp.as_os_str()]);
        compile(cxx, &args, &src)?;
        std::fs::rename(&tmp, &lib).map_err(|e| GpuError(format!("cannot write {}: {e}", lib.display())))?;
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let l = match loaded.get(name) {
            Some(l) => *l,
            None => {
                let l = open(&lib, name)?;
                loaded.insert(name.clone(), l);
                l
            }
        };
        out.push((name.clone(), l));
    }
    Ok(out)
}

fn open(lib: &Path, name: &str) -> Result<Loaded, GpuError> {
    let path = CString::new(lib.as_os_str().as_encoded_bytes())
        .map_err(|_| GpuError(format!("{}: a NUL byte in the path", lib.display())))?;
    // SAFETY: a NUL-terminated path. The handle is never closed: the
    // kernels it holds may be launched for the rest of the process.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(GpuError(format!("cannot load {}: {}", lib.display(), dlerror())));
    }
    let sym = |s: &str| -> Result<*mut c_void, GpuError> {
        let c = CString::new(s).map_err(|_| GpuError(format!("symbol {s}: a NUL byte")))?;
        // SAFETY: a live handle and a NUL-terminated name.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() {
            Err(GpuError(format!("{} has no symbol {s}", lib.display())))
        } else {
            Ok(p)
        }
    };
    let kernel = sym(&format!("mpc_emu_{name}"))?;
    let last_error = sym("mpc_emu_last_error")?;
    // SAFETY: MPC_EXPORT(name) defines `mpc_emu_<name>` with the EmuKernel
    // signature, and simt.cpp `mpc_emu_last_error` with LastError's; both
    // come from the sources compiled above.
    unsafe {
        Ok(Loaded {
            kernel: std::mem::transmute::<*mut c_void, EmuKernel>(kernel),
            last_error: std::mem::transmute::<*mut c_void, LastError>(last_error),
        })
    }
}

fn dlerror() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated message.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        return "unknown error".into();
    }
    // SAFETY: see above.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
