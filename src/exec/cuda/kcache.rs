//! The on-disk cache of compiled kernel modules, so that a process compiles
//! kernels/*.cu with NVRTC only when a source, the NVRTC version, the
//! options or the architecture changed (a cold compile of every file takes
//! seconds; a warm start reads a few hundred kilobytes).
//!
//! One file per (kernel file, architecture, key) in [`dir`]:
//! `<stem>-<arch>-<key>.mpck`, where the key hashes everything that goes
//! into the compile. A file is written atomically (a temporary file renamed
//! over it), so a crash never leaves a torn entry; one that does not decode
//! is compiled again and rewritten. The cache is only an optimisation: a
//! directory that cannot be written is passed over silently.

use std::path::{Path, PathBuf};

use super::gpu::GpuError;
use super::nvrtc::{self, Module, Toolchain, HEADERS, OPTIONS, SOURCES};
use crate::exec::rng::fnv1a;

/// The environment variable naming the cache directory; `off` (or empty)
/// turns the cache off.
pub const CACHE_ENV: &str = "MPC_KERNEL_CACHE";

const MAGIC: &[u8; 8] = b"MPCK\x01\0\0\0";

/// The cache directory: `$MPC_KERNEL_CACHE`, else `$XDG_CACHE_HOME/mpc/kernels`,
/// else `$HOME/.cache/mpc/kernels`; None when turned off or no home is known.
pub fn dir() -> Option<PathBuf> {
    let env = |k| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(v) = std::env::var_os(CACHE_ENV) {
        return (!v.is_empty() && v != "off").then(|| PathBuf::from(v));
    }
    env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("mpc").join("kernels"))
}

/// The key of one compile: every input that changes its output.
pub fn key(tc: &Toolchain, file: &str, src: &str, arch: &str) -> u64 {
    let mut text = format!("nvrtc {}.{}\0arch {arch}\0options {}\0", tc.version.0, tc.version.1, OPTIONS.join(" "));
    for part in [file, src].into_iter().chain(HEADERS.iter().flat_map(|h| [h.0, h.1])) {
        text.push_str(&format!("{}\0{part}\0", part.len()));
    }
    fnv1a(&text)
}

/// The entry's file name.
pub fn entry_name(file: &str, arch: &str, key: u64) -> String {
    let stem = file.strip_suffix(".cu").unwrap_or(file);
    format!("{stem}-{arch}-{key:016x}.mpck")
}

/// An entry's bytes: magic, PTX length (u64 LE), PTX, CUBIN.
pub fn encode(m: &Module) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + m.ptx.len() + m.cubin.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(m.ptx.len() as u64).to_le_bytes());
    out.extend_from_slice(m.ptx.as_bytes());
    out.extend_from_slice(&m.cubin);
    out
}

/// The module of an entry, or None when the bytes are not a whole entry.
pub fn decode(file: &'static str, arch: &str, bytes: &[u8]) -> Option<Module> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (len, rest) = rest.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    if len > rest.len() {
        return None;
    }
    let (ptx, cubin) = rest.split_at(len);
    let ptx = std::str::from_utf8(ptx).ok()?.to_string();
    // A PTX without kernels is no module of ours (e.g. a truncated file).
    if nvrtc::entries(&ptx).is_empty() {
        return None;
    }
    Some(Module { file, arch: arch.to_string(), ptx, cubin: cubin.to_vec(), log: String::new() })
}

/// What a [`compile_all`] found in the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub hits: usize,
    pub misses: usize,
}

/// Every file of [`SOURCES`] for `arch`, from the cache in `dir` where an
/// entry is there and whole, else compiled (in parallel) and stored.
pub fn compile_all(tc: &Toolchain, arch: &str, dir: Option<&Path>) -> Result<(Vec<Module>, Stats), GpuError> {
    let mut stats = Stats::default();
    let cached: Vec<Option<Module>> = SOURCES
        .iter()
        .map(|&(file, src)| {
            let path = dir?.join(entry_name(file, arch, key(tc, file, src, arch)));
            decode(file, arch, &std::fs::read(path).ok()?)
        })
        .collect();
    let compiled: Vec<Result<Module, GpuError>> = std::thread::scope(|s| {
        let jobs: Vec<_> = SOURCES
            .iter()
            .zip(&cached)
            .filter(|(_, c)| c.is_none())
            .map(|(&(file, src), _)| s.spawn(move || nvrtc::compile_file(tc, file, src, arch, &[])))
            .collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap_or_else(|_| Err(GpuError("an NVRTC compile thread panicked".into()))))
            .collect()
    });
    let mut compiled = compiled.into_iter();
    let mut out = Vec::with_capacity(SOURCES.len());
    for (&(file, src), c) in SOURCES.iter().zip(cached) {
        match c {
            Some(m) => {
                stats.hits += 1;
                out.push(m);
            }
            None => {
                let m = compiled.next().unwrap_or_else(|| Err(GpuError("a compile result is missing".into())))?;
                stats.misses += 1;
                if let Some(d) = dir {
                    let path = d.join(entry_name(file, arch, key(tc, file, src, arch)));
                    // Only an optimisation: a read-only or full disk costs a compile next time.
                    let _ = std::fs::create_dir_all(d).and_then(|_| crate::io::write_atomic(&path, &encode(&m)));
                }
                out.push(m);
            }
        }
    }
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module() -> Module {
        Module {
            file: "cast.cu",
            arch: "sm_90".into(),
            ptx: ".version 9.0\n.visible .entry cast_f32_f16(\n)\n{\n}\n".into(),
            cubin: vec![0x7f, b'E', b'L', b'F', 0, 1, 2],
            log: "ptxas info".into(),
        }
    }

    #[test]
    fn entries_round_trip_and_torn_ones_are_refused() {
        let m = module();
        let bytes = encode(&m);
        let back = decode("cast.cu", "sm_90", &bytes).unwrap();
        assert_eq!((back.ptx.as_str(), back.cubin.as_slice()), (m.ptx.as_str(), m.cubin.as_slice()));
        assert_eq!(back.kernels(), vec!["cast_f32_f16"]);
        // Every truncation inside the header or the PTX is refused.
        for cut in 0..16 + m.ptx.len() - 1 {
            assert!(decode("cast.cu", "sm_90", &bytes[..cut]).is_none(), "cut at {cut}");
        }
        assert!(decode("cast.cu", "sm_90", b"MPCK\x02\0\0\0whatever").is_none());
    }

    #[test]
    fn the_key_changes_with_every_input() {
        let tc = Toolchain { version: (13, 0), include_dir: "/x".into() };
        let k = key(&tc, "cast.cu", "src", "sm_90");
        assert_eq!(k, key(&tc, "cast.cu", "src", "sm_90"));
        assert_ne!(k, key(&tc, "cast.cu", "src2", "sm_90"));
        assert_ne!(k, key(&tc, "cast.cu", "src", "sm_80"));
        assert_ne!(k, key(&tc, "reduce.cu", "src", "sm_90"));
        let newer = Toolchain { version: (13, 1), ..tc.clone() };
        assert_ne!(k, key(&newer, "cast.cu", "src", "sm_90"));
        // The include directory does not matter: the same headers anywhere.
        let moved = Toolchain { include_dir: "/y".into(), ..tc };
        assert_eq!(k, key(&moved, "cast.cu", "src", "sm_90"));
        assert_eq!(entry_name("cast.cu", "sm_90", 0xab), "cast-sm_90-00000000000000ab.mpck");
    }
}
