//! With the `tch` feature, embeds libtorch's library directory as an rpath so that `train` runs
//! without `LD_LIBRARY_PATH` (torch-sys reports the directory it linked against as
//! `DEP_TCH_LIBTORCH_LIB` to crates that depend on it directly).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
