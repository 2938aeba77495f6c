//! Choosing the compute backend at run time.
//!
//! The CPU backend (burn-flex: im2col convolutions on the `gemm` crate) is always built and is deterministic. The CUDA backend is
//! built with the `cuda` feature and loads the driver at run time; we probe for
//! `libcuda.so.1` first so a machine without a driver gets a clear message instead of a panic
//! deep inside the CUDA bindings.

use crate::hyper::BackendKind;

/// The backend a run will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// burn-flex on the CPU.
    Cpu,
    /// burn-cuda on GPU 0.
    Cuda,
}

/// Whether this binary was built with CUDA support.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

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

/// Picks the backend from the request, what was built, and whether a driver is present.
pub fn choose(request: BackendKind, built: bool, driver: bool) -> Result<Chosen, String> {
    match request {
        BackendKind::Cpu => Ok(Chosen::Cpu),
        BackendKind::Auto if built && driver => Ok(Chosen::Cuda),
        BackendKind::Auto => Ok(Chosen::Cpu),
        BackendKind::Cuda if !built => Err("backend=cuda, but this trainer was built without CUDA support (build with `--features cuda`)".into()),
        BackendKind::Cuda if !driver => Err("backend=cuda, but the CUDA driver (libcuda.so.1) is not installed or not visible to this process".into()),
        BackendKind::Cuda => Ok(Chosen::Cuda),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_cpu_and_explicit_cuda_explains_why_not() {
        assert_eq!(choose(BackendKind::Auto, true, true), Ok(Chosen::Cuda));
        assert_eq!(choose(BackendKind::Auto, true, false), Ok(Chosen::Cpu));
        assert_eq!(choose(BackendKind::Auto, false, true), Ok(Chosen::Cpu));
        assert!(choose(BackendKind::Cuda, false, true)
            .unwrap_err()
            .contains("built without"));
        assert!(choose(BackendKind::Cuda, true, false)
            .unwrap_err()
            .contains("libcuda.so.1"));
        assert_eq!(choose(BackendKind::Cpu, true, true), Ok(Chosen::Cpu));
    }
}
