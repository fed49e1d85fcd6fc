//! Every kernel file compiles with NVRTC for sm_80 and sm_90, and the
//! embedded list of kernel files is the list in kernels/.
//!
//! Needs libnvrtc on LD_LIBRARY_PATH and the CUDA headers (the PyPI wheels
//! nvidia-cuda-nvrtc and nvidia-cuda-runtime are enough; .ci/run installs
//! them). Without them the compile test prints why and passes, unless
//! MPC_REQUIRE_NVRTC=1 (set by CI), where it fails.

use std::collections::BTreeMap;

use mpc::exec::cuda::nvrtc;

const ARCHS: &[&str] = &["sm_80", "sm_90"];

#[test]
fn every_kernel_file_compiles() {
    let required = std::env::var("MPC_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let tc = match nvrtc::probe() {
        Ok(tc) => tc,
        Err(e) if required => panic!("MPC_REQUIRE_NVRTC=1 but NVRTC is not usable: {e}"),
        Err(e) => {
            eprintln!("skipping the NVRTC compile of kernels/*.cu: {e}");
            return;
        }
    };
    eprintln!("NVRTC {}.{}, headers from {}", tc.version.0, tc.version.1, tc.include_dir.display());
    let mut failures = Vec::new();
    for &arch in ARCHS {
        // kernel name -> the file that defines it, to catch a name defined twice.
        let mut owner: BTreeMap<String, &str> = BTreeMap::new();
        for &(file, src) in nvrtc::SOURCES.iter().chain([&nvrtc::SELFTEST]) {
            match nvrtc::compile_file(&tc, file, src, arch, &["-Xptxas=-v"]) {
                Ok(m) => {
                    let names = m.kernels();
                    let usage = nvrtc::ptxas_usage(&m.log);
                    let max_regs = usage.iter().map(|u| u.registers).max().unwrap_or(0);
                    let spilling: Vec<String> = usage
                        .iter()
                        .filter(|u| u.spill_stores + u.spill_loads > 0)
                        .map(|u| format!("{} ({} B stored, {} B loaded)", u.name, u.spill_stores, u.spill_loads))
                        .collect();
                    eprintln!(
                        "ok   {arch} kernels/{file}: {} kernels, PTX {} B, CUBIN {} B, at most {max_regs} registers, {}",
                        names.len(),
                        m.ptx.len(),
                        m.cubin.len(),
                        if spilling.is_empty() { "no spills".to_string() } else { format!("spills: {}", spilling.join(", ")) }
                    );
                    if names.is_empty() {
                        failures.push(format!("kernels/{file} ({arch}) defines no kernel"));
                    }
                    if m.cubin.is_empty() {
                        failures.push(format!("kernels/{file} ({arch}) gave no CUBIN"));
                    }
                    for n in names {
                        if let Some(other) = owner.insert(n.to_string(), file) {
                            failures.push(format!("kernel {n} is defined in kernels/{other} and kernels/{file}"));
                        }
                    }
                }
                Err(e) => {
                    eprintln!("FAIL {arch} kernels/{file}");
                    failures.push(e.to_string());
                }
            }
        }
        eprintln!("{arch}: {} kernels in {} files", owner.len(), nvrtc::SOURCES.len() + 1);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_embedded_sources_are_the_kernel_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cu"))
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = nvrtc::SOURCES.iter().chain([&nvrtc::SELFTEST]).map(|s| s.0.to_string()).collect();
    embedded.sort();
    assert_eq!(embedded, on_disk, "nvrtc::SOURCES and nvrtc::SELFTEST must list every kernels/*.cu file");
    for &(file, src) in nvrtc::SOURCES.iter().chain([&nvrtc::SELFTEST]) {
        let first = src.lines().find(|l| l.starts_with('#'));
        assert_eq!(first, Some("#include \"common.cuh\""), "kernels/{file} must include common.cuh first");
        assert_eq!(std::fs::read_to_string(dir.join(file)).unwrap(), src, "kernels/{file} is embedded as it is");
    }
}

/// The disk cache: a cold start compiles and stores every file, a warm one
/// reads them all back unchanged; a torn entry is compiled again.
#[test]
fn compiled_modules_are_cached_on_disk() {
    use mpc::exec::cuda::kcache;
    let required = std::env::var("MPC_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let tc = match nvrtc::probe() {
        Ok(tc) => tc,
        Err(e) if required => panic!("MPC_REQUIRE_NVRTC=1 but NVRTC is not usable: {e}"),
        Err(e) => {
            eprintln!("skipping the kernel cache test: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let n = nvrtc::SOURCES.len();
    let (cold, stats) = kcache::compile_all(&tc, "sm_80", Some(dir.path())).unwrap();
    assert_eq!(stats, kcache::Stats { hits: 0, misses: n });
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), n);
    let (warm, stats) = kcache::compile_all(&tc, "sm_80", Some(dir.path())).unwrap();
    assert_eq!(stats, kcache::Stats { hits: n, misses: 0 });
    for (a, b) in cold.iter().zip(&warm) {
        assert_eq!((a.file, &a.ptx, &a.cubin), (b.file, &b.ptx, &b.cubin));
    }
    // Truncate one entry: it is compiled again and rewritten whole.
    let (file, src) = nvrtc::SOURCES[0];
    let path = dir.path().join(kcache::entry_name(file, "sm_80", kcache::key(&tc, file, src, "sm_80")));
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::write(&path, &std::fs::read(&path).unwrap()[..100]).unwrap();
    let (_, stats) = kcache::compile_all(&tc, "sm_80", Some(dir.path())).unwrap();
    assert_eq!(stats, kcache::Stats { hits: n - 1, misses: 1 });
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
}

/// The fused kernels of every ir-example (each fusion group of the lowered
/// step, fp16 and bf16, generated from kernels/scalar.cuh) compile, as the
/// one program per plan the CUDA backend loads, for sm_80 and sm_90; those
/// not generated (a cross-entropy pair's) are kernels of kernels/*.cu.
#[test]
fn every_examples_fused_kernels_compile() {
    use mpc::exec::cuda::fused;
    let required = std::env::var("MPC_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let tc = match nvrtc::probe() {
        Ok(tc) => tc,
        Err(e) if required => panic!("MPC_REQUIRE_NVRTC=1 but NVRTC is not usable: {e}"),
        Err(e) => {
            eprintln!("skipping the NVRTC compile of the fused kernels: {e}");
            return;
        }
    };
    let mut total = 0;
    insta::glob!("../ir-examples", "*.json", |path| {
        for low in [mpc::DType::F16, mpc::DType::Bf16] {
            let mut g = mpc::parse_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            mpc::passes::lower(&mut g, &mpc::passes::Options { low, ..Default::default() }).unwrap();
            let plan = mpc::exec::Plan::new(&g, 0).unwrap();
            let kernels: Vec<fused::FusedKernel> =
                plan.fusion_groups().iter().map(|gr| fused::generate(&plan, gr).unwrap()).collect();
            assert!(!kernels.is_empty(), "{}: no group to fuse", path.display());
            let source = fused::module(&kernels);
            for &arch in ARCHS {
                let (ptx, cubin) = nvrtc::compile_generated(&tc, "fused.cu", &source, arch)
                    .unwrap_or_else(|e| panic!("{} {low}: {e}\n{source}", path.display()));
                let entries = nvrtc::entries(&ptx);
                for k in kernels.iter().filter(|k| k.generated()) {
                    assert!(entries.contains(&k.name.as_str()), "{}: {} is not in the PTX", path.display(), k.name);
                }
                // The others are kernel files' (every_kernel_file_compiles),
                // but for the epilogue GEMMs, which are cuBLASLt's.
                let gemm = |k: &&fused::FusedKernel| matches!(k.work, fused::Work::Gemm { .. });
                for k in kernels.iter().filter(|k| !k.generated() && !gemm(k)) {
                    assert!(
                        mpc::exec::cuda::emu::EmuGpu::kernels().any(|n| n == k.name),
                        "{}: {} is in no kernel file",
                        path.display(),
                        k.name
                    );
                }
                assert!(!cubin.is_empty());
            }
            total += kernels.len();
        }
    });
    eprintln!("{total} fused kernels compiled for {ARCHS:?}");
}
