//! Choosing the compute backend at run time, and the record of what computed a checkpoint.
//!
//! The CPU backend (burn-flex: im2col convolutions on the `gemm` crate) is always built and is
//! deterministic. The CUDA backend is built with the `cuda` feature and loads the driver at run
//! time; we probe for `libcuda.so.1` first so a machine without a driver gets a clear message
//! instead of a panic deep inside the CUDA bindings. The libtorch backend (`tch` feature) runs
//! PyTorch's own kernels, on GPU 0 when libtorch sees CUDA, else on the CPU.

use serde::{Deserialize, Serialize};

use crate::hyper::BackendKind;

/// The backend a run will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// burn-flex on the CPU.
    Cpu,
    /// burn-cuda on GPU 0.
    Cuda,
    /// libtorch (device picked at start: GPU 0 when CUDA is usable).
    Torch,
}

/// Which optional backends this binary was built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Built {
    /// The `cuda` feature.
    pub cuda: bool,
    /// The `tch` feature.
    pub torch: bool,
}

/// What this binary was built with.
pub const BUILT: Built = Built {
    cuda: cfg!(feature = "cuda"),
    torch: cfg!(feature = "tch"),
};

/// Whether the CUDA driver library can be loaded.
pub fn cuda_driver_present() -> bool {
    // SAFETY: dlopen with a constant, NUL-terminated name; the handle is closed at once.
    unsafe {
        let handle = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if handle.is_null() {
            return false;
        }
        libc::dlclose(handle);
        true
    }
}

/// Picks the backend from the request, what was built, and whether a CUDA driver is present.
/// `auto` prefers libtorch when built (PyTorch's kernels are the fastest we have on CPU and GPU).
pub fn choose(request: BackendKind, built: Built, driver: bool) -> Result<Chosen, String> {
    match request {
        BackendKind::Cpu => Ok(Chosen::Cpu),
        BackendKind::Auto if built.torch => Ok(Chosen::Torch),
        BackendKind::Auto if built.cuda && driver => Ok(Chosen::Cuda),
        BackendKind::Auto => Ok(Chosen::Cpu),
        BackendKind::Cuda if !built.cuda => Err("backend=cuda, but this trainer was built without CUDA support (build with `--features cuda`)".into()),
        BackendKind::Cuda if !driver => Err("backend=cuda, but the CUDA driver (libcuda.so.1) is not installed or not visible to this process".into()),
        BackendKind::Cuda => Ok(Chosen::Cuda),
        BackendKind::Torch if !built.torch => Err("backend=torch, but this trainer was built without libtorch (build with scripts/trainer-tch.sh, or `--features tch` against libtorch 2.9.0)".into()),
        BackendKind::Torch => Ok(Chosen::Torch),
    }
}

/// What computed a run's numbers, saved in `trainer_state.json`: bit-exact continuation holds
/// only while all of it stays the same (kernels, their thread split and SIMD paths differ in
/// rounding).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Compute {
    /// `cpu` (burn-flex), `cuda` (burn-cuda) or `torch` (libtorch).
    pub backend: String,
    /// `cpu` or `cuda:0`.
    pub device: String,
    /// Worker threads of the CPU kernels.
    pub threads: usize,
    /// The x86-64 SIMD extensions the CPU offers (kernels dispatch on them at run time).
    pub cpu_features: Vec<String>,
}

impl Compute {
    /// The record for a backend on a device with this many kernel threads, on this CPU.
    pub fn on(backend: &str, device: &str, threads: usize) -> Self {
        Self {
            backend: backend.into(),
            device: device.into(),
            threads,
            cpu_features: cpu_features(),
        }
    }

    /// Whether tensors live in host memory, so a checkpoint's copy can be left to the
    /// persister (see [`crate::snapshot::Handover`]).
    pub fn host_memory(&self) -> bool {
        self.device == "cpu"
    }
}

/// The thread count burn-flex's rayon pool will use.
pub fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The x86-64 extensions that change which kernel paths run.
pub fn cpu_features() -> Vec<String> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut found = Vec::new();
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    found.push($f.to_string());
                }
            )*};
        }
        probe!(
            "sse4.2",
            "avx",
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vnni"
        );
        found
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        vec![std::env::consts::ARCH.to_string()]
    }
}

/// Human-readable differences between the compute that wrote a checkpoint and this run's; empty
/// when a resume can be bit-exact on that account. A checkpoint from before this record existed
/// (`None`) is reported as unknown.
pub fn compute_changes(saved: Option<&Compute>, now: &Compute) -> Vec<String> {
    let Some(saved) = saved else {
        return vec!["the checkpoint does not record what computed it".into()];
    };
    let mut changes = Vec::new();
    if saved.backend != now.backend {
        changes.push(format!("backend {} -> {}", saved.backend, now.backend));
    }
    if saved.device != now.device {
        changes.push(format!("device {} -> {}", saved.device, now.device));
    }
    if saved.threads != now.threads {
        changes.push(format!("threads {} -> {}", saved.threads, now.threads));
    }
    if saved.cpu_features != now.cpu_features {
        changes.push(format!(
            "CPU features [{}] -> [{}]",
            saved.cpu_features.join(" "),
            now.cpu_features.join(" ")
        ));
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Built = Built {
        cuda: false,
        torch: false,
    };
    const CUDA: Built = Built {
        cuda: true,
        torch: false,
    };
    const TORCH: Built = Built {
        cuda: false,
        torch: true,
    };

    #[test]
    fn auto_prefers_libtorch_then_cuda_then_cpu_and_explicit_requests_explain_why_not() {
        assert_eq!(choose(BackendKind::Auto, CUDA, true), Ok(Chosen::Cuda));
        assert_eq!(choose(BackendKind::Auto, CUDA, false), Ok(Chosen::Cpu));
        assert_eq!(choose(BackendKind::Auto, NONE, true), Ok(Chosen::Cpu));
        assert_eq!(choose(BackendKind::Auto, TORCH, false), Ok(Chosen::Torch));
        let both = Built {
            cuda: true,
            torch: true,
        };
        assert_eq!(choose(BackendKind::Auto, both, true), Ok(Chosen::Torch));
        assert!(choose(BackendKind::Cuda, NONE, true)
            .unwrap_err()
            .contains("built without"));
        assert!(choose(BackendKind::Cuda, CUDA, false)
            .unwrap_err()
            .contains("libcuda.so.1"));
        assert!(choose(BackendKind::Torch, CUDA, true)
            .unwrap_err()
            .contains("without libtorch"));
        assert_eq!(choose(BackendKind::Torch, TORCH, false), Ok(Chosen::Torch));
        assert_eq!(choose(BackendKind::Cpu, both, true), Ok(Chosen::Cpu));
    }

    #[test]
    fn compute_changes_name_each_difference_and_an_unknown_writer() {
        let a = Compute {
            cpu_features: vec!["avx2".into(), "fma".into()],
            ..Compute::on("cpu", "cpu", 2)
        };
        assert!(compute_changes(Some(&a), &a).is_empty());
        let b = Compute {
            backend: "torch".into(),
            threads: 4,
            cpu_features: vec!["avx2".into()],
            ..a.clone()
        };
        let c = compute_changes(Some(&a), &b);
        assert_eq!(c.len(), 3, "{c:?}");
        assert!(c[0].contains("cpu -> torch"));
        assert!(c[1].contains("2 -> 4"));
        assert!(c[2].contains("[avx2 fma] -> [avx2]"));
        assert_eq!(compute_changes(None, &a).len(), 1);
    }
}
