# Sourced by the GPU scripts: puts CUDA's libraries on LD_LIBRARY_PATH.
# CUDA's libraries: the driver from the system; NVRTC and cuBLASLt from a
# CUDA install or from the pip wheels that PyTorch brings.
libdirs=()
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d "$d" ] && libdirs+=("$d"); done
py_libs=$(python3 - <<'PY' 2>/dev/null
import os, glob
try:
    import nvidia
    for p in nvidia.__path__:
        for d in sorted(glob.glob(os.path.join(p, "*", "lib"))):
            print(d)
except ImportError:
    pass
PY
)
for d in $py_libs; do libdirs+=("$d"); done
LD_LIBRARY_PATH=$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
