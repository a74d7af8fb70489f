//! Finding the CUDA libraries a `--device cuda` run loads at run time, or naming the missing one.
//!
//! The CUDA binary links none of them (cudarc loads every library with `dlopen` on first use), so it
//! starts on any machine, and without this a missing library surfaces as a panic deep inside CubeCL's
//! device thread. Which libraries:
//! - `libcuda.so.1`, the NVIDIA driver: comes with the driver, never from pip.
//! - `libnvrtc.so.{13,12}`, the run-time CUDA C++ compiler the GPU kernels are compiled with
//!   (vendor/README.md: webssl's cubecl-cuda uses NVRTC, not LLVM), plus the CUDA headers NVRTC
//!   includes (`cuda_fp16.h`, …), which CubeCL looks for under `$CUDA_PATH/include`.
//! - `libnccl.so.2`, only for multi-process GPU training (the NCCL engine of [`crate::dist`]).
//!
//! **Search order** (first hit wins), for each library:
//! 1. the directories in `WEBSSL_CUDA_LIBS` (`:`-separated) — the override;
//! 2. the system loader: `LD_LIBRARY_PATH`, then the `ldconfig` cache (a system CUDA or NCCL);
//! 3. a CUDA toolkit: `$CUDA_PATH`, `$CUDA_HOME`, `/usr/local/cuda`, `/opt/cuda` (`lib64`, `lib`);
//! 4. NVIDIA's Python wheels (`nvidia-cuda-nvrtc-cu12`/`nvidia-cuda-nvrtc` for CUDA 13,
//!    `nvidia-cuda-runtime-*` for the headers, `nvidia-nccl-cu12`/`-cu13`) in the `site-packages` or
//!    `dist-packages` of `$VIRTUAL_ENV`, `$CONDA_PREFIX`, `~/.local`, `/usr/local` and `/usr`.
//!
//! A library found in 1, 3 or 4 is opened by its full path with `RTLD_GLOBAL` before cudarc asks for
//! it by name: the dynamic loader then hands cudarc the already-loaded copy (it matches a requested
//! name against the `SONAME`s of loaded objects), so no `LD_LIBRARY_PATH` has to be set before the
//! process starts. Not found anywhere: an error naming the library and the pip and apt packages.

use std::path::{Path, PathBuf};

/// One run-time library and how to install it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaLib {
    /// What it is, for messages.
    pub what: &'static str,
    /// File names, preferred first (CUDA 13 first: cudarc is built for CUDA 13 unless
    /// `CUDARC_CUDA_VERSION` says otherwise at build time).
    pub files: &'static [&'static str],
    /// Directories below a wheel's `site-packages` that hold it.
    pub wheel_dirs: &'static [&'static str],
    /// How to get it.
    pub install: &'static str,
}

pub const DRIVER: CudaLib = CudaLib {
    what: "the NVIDIA driver library",
    files: &["libcuda.so.1", "libcuda.so"],
    wheel_dirs: &[],
    install: "install the NVIDIA driver (it ships libcuda.so.1; pip cannot provide it); a machine without \
              an NVIDIA GPU cannot run --device cuda, use --device cpu",
};

pub const NVRTC: CudaLib = CudaLib {
    what: "NVRTC, the CUDA run-time compiler the GPU kernels are compiled with",
    files: &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
    wheel_dirs: &["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"],
    install: "`pip install nvidia-cuda-nvrtc nvidia-cuda-runtime` (CUDA 13; `-cu12` suffixes for a CUDA 12 \
              driver) or `apt install cuda-nvrtc-13-0 cuda-cudart-dev-13-0`, or point WEBSSL_CUDA_LIBS at \
              the directory holding libnvrtc.so.*",
};

pub const NCCL: CudaLib = CudaLib {
    what: "NCCL, the GPU collectives library of multi-process GPU training",
    files: &["libnccl.so.2", "libnccl.so"],
    wheel_dirs: &["nvidia/nccl/lib", "nvidia/cu13/lib"],
    install: "`pip install nvidia-nccl-cu13` (`nvidia-nccl-cu12` for a CUDA 12 driver) or `apt install \
              libnccl2`, or point WEBSSL_CUDA_LIBS at the directory holding libnccl.so.2",
};

/// Directories below a wheel's `site-packages` that hold the CUDA headers (`include/cuda_fp16.h`).
const WHEEL_CUDA_HOMES: &[&str] = &["nvidia/cu13", "nvidia/cuda_runtime"];

/// Where to look, in the module docs' order (step 2, the system loader, is `dlopen` by name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchPath {
    /// Step 1: `WEBSSL_CUDA_LIBS`.
    pub overrides: Vec<PathBuf>,
    /// Steps 3 and 4: toolkit and wheel library directories.
    pub lib_dirs: Vec<PathBuf>,
    /// Directories that may hold `include/` with the CUDA headers, in the same order.
    pub homes: Vec<PathBuf>,
}

impl SearchPath {
    /// From the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From the environment `get` (a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let overrides: Vec<PathBuf> = get("WEBSSL_CUDA_LIBS")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let mut homes: Vec<PathBuf> = ["CUDA_PATH", "CUDA_HOME"]
            .iter()
            .filter_map(|k| get(k).filter(|v| !v.is_empty()).map(PathBuf::from))
            .collect();
        homes.extend(["/usr/local/cuda", "/opt/cuda"].map(PathBuf::from));
        let mut lib_dirs: Vec<PathBuf> = homes
            .iter()
            .flat_map(|h| [h.join("lib64"), h.join("lib")])
            .collect();
        // Python prefixes, most specific first; each `lib/python3.*/{site,dist}-packages`.
        let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
            .iter()
            .filter_map(|k| get(k).filter(|v| !v.is_empty()).map(PathBuf::from))
            .collect();
        if let Some(home) = get("HOME").filter(|v| !v.is_empty()) {
            prefixes.push(Path::new(&home).join(".local"));
        }
        prefixes.extend(["/usr/local", "/usr"].map(PathBuf::from));
        for sp in prefixes.iter().flat_map(|p| python_site_dirs(p)) {
            for d in NVRTC.wheel_dirs.iter().chain(NCCL.wheel_dirs) {
                let dir = sp.join(d);
                if !lib_dirs.contains(&dir) {
                    lib_dirs.push(dir);
                }
            }
            homes.extend(WHEEL_CUDA_HOMES.iter().map(|h| sp.join(h)));
        }
        SearchPath {
            overrides,
            lib_dirs,
            homes,
        }
    }
}

/// `prefix/lib/python3.*/{site,dist}-packages` that exist, plus Debian's `prefix/lib/python3/dist-packages`.
fn python_site_dirs(prefix: &Path) -> Vec<PathBuf> {
    let lib = prefix.join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    pythons.sort();
    pythons
        .iter()
        .flat_map(|p| [p.join("site-packages"), p.join("dist-packages")])
        .filter(|p| p.is_dir())
        .collect()
}

/// The first of `lib`'s files in `dirs` (directory order first, then file-name preference).
pub fn find_in(lib: &CudaLib, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter()
        .flat_map(|d| lib.files.iter().map(move |f| d.join(f)))
        .find(|p| p.is_file())
}

/// The first CUDA home with the headers NVRTC needs.
pub fn find_cuda_home(homes: &[PathBuf]) -> Option<PathBuf> {
    homes
        .iter()
        .find(|h| h.join("include").join("cuda_fp16.h").is_file())
        .cloned()
}

/// Where a library was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Opened by name through the system loader (`LD_LIBRARY_PATH`, ldconfig).
    System(&'static str),
    /// Opened by this full path.
    Path(PathBuf),
}

/// Makes `lib` loadable for cudarc (module docs), or says what is missing and how to install it.
pub fn load(lib: &CudaLib) -> Result<Found, String> {
    load_from(lib, &SearchPath::from_env())
}

/// [`load`] over a given search path.
pub fn load_from(lib: &CudaLib, search: &SearchPath) -> Result<Found, String> {
    let mut errors = Vec::new();
    let try_dirs = |dirs: &[PathBuf], errors: &mut Vec<String>| {
        let candidates = dirs
            .iter()
            .flat_map(|d| lib.files.iter().map(move |f| d.join(f)));
        for p in candidates.filter(|p| p.is_file()) {
            match dlopen_global(&p) {
                Ok(()) => return Some(p),
                Err(e) => errors.push(e),
            }
        }
        None
    };
    // The override before the system loader: it must win over a system copy.
    if let Some(p) = try_dirs(&search.overrides, &mut errors) {
        return Ok(Found::Path(p));
    }
    if let Some(name) = lib
        .files
        .iter()
        .find(|f| dlopen_global(Path::new(f)).is_ok())
    {
        return Ok(Found::System(name));
    }
    match try_dirs(&search.lib_dirs, &mut errors) {
        Some(p) => Ok(Found::Path(p)),
        None => Err(missing_message(lib, &errors)),
    }
}

/// The error for a library not found (or found but not loadable: `errors` from `dlerror`).
pub fn missing_message(lib: &CudaLib, errors: &[String]) -> String {
    let mut m = format!(
        "{} ({}) was not found: searched WEBSSL_CUDA_LIBS, the system loader (LD_LIBRARY_PATH, \
         ldconfig), $CUDA_PATH/$CUDA_HOME, /usr/local/cuda, /opt/cuda and NVIDIA's Python wheels. To \
         fix: {}",
        lib.what, lib.files[0], lib.install
    );
    for e in errors {
        m.push_str(&format!("\n  (found but could not load: {e})"));
    }
    m
}

/// Everything a CUDA kernel compile needs, checked before CubeCL first compiles one: NVRTC loadable and
/// `CUDA_PATH` naming a directory with the CUDA headers. Sets `CUDA_PATH` when it was unset and the
/// headers came from a wheel or a default location. Call before any thread that reads the environment
/// exists (the start of the command).
pub fn prepare_nvrtc() -> Result<Found, String> {
    let search = SearchPath::from_env();
    let found = load_from(&NVRTC, &search)?;
    match find_cuda_home(&search.homes) {
        Some(home) => {
            if std::env::var_os("CUDA_PATH").is_none_or(|v| Path::new(&v) != home) {
                // SAFETY: called when a command selects its device, before the GPU, loader and
                // collective threads exist; the only other threads then (rayon's workers, if its
                // pool was built) do not touch the environment.
                unsafe { std::env::set_var("CUDA_PATH", &home) };
            }
            Ok(found)
        }
        None => Err(
            "the CUDA headers NVRTC compiles the GPU kernels against (include/cuda_fp16.h) were not \
             found under $CUDA_PATH, $CUDA_HOME, /usr/local/cuda, /opt/cuda or NVIDIA's Python wheels. \
             To fix: `pip install nvidia-cuda-runtime` (CUDA 13; `nvidia-cuda-runtime-cu12` for CUDA 12) \
             or `apt install cuda-cudart-dev-13-0`, or set CUDA_PATH to a directory holding include/"
                .into(),
        ),
    }
}

/// Checks, before burn first touches the GPU, that CUDA device `index` exists and that the kernels can
/// be compiled for it (NVRTC and the headers, [`prepare_nvrtc`]); returns the device's name. Each
/// failure is a sentence naming what is missing — without this a machine with no GPU or no NVRTC meets
/// a panic in CubeCL's device thread.
#[cfg(feature = "cuda")]
pub fn check_device(index: usize) -> Result<String, String> {
    use cudarc::driver::result;
    load(&DRIVER)?;
    result::init().map_err(|e| {
        format!(
            "the NVIDIA driver is installed but did not start (cuInit: {e:?}): no usable GPU on this              machine, or the driver does not match the kernel module (`nvidia-smi` says which)"
        )
    })?;
    let n = result::device::get_count()
        .map_err(|e| format!("counting the CUDA devices failed: {e:?}"))?;
    if n <= 0 {
        return Err("the NVIDIA driver sees no GPU on this machine".into());
    }
    if index >= n as usize {
        return Err(format!(
            "CUDA device {index} does not exist: the driver sees {n} GPU(s), 0..{}",
            n - 1
        ));
    }
    let name = result::device::get(index as i32)
        .and_then(result::device::get_name)
        .unwrap_or_else(|_| "unknown".into());
    prepare_nvrtc()?;
    Ok(name)
}

/// `dlopen(path, RTLD_NOW | RTLD_GLOBAL)`, kept open for the life of the process (cudarc's later
/// `dlopen` by name then finds this copy).
fn dlopen_global(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: NUL byte in the path", path.display()))?;
    // SAFETY: `c` is a valid NUL-terminated string; the handle is deliberately never closed.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string describing the last dl* failure, or null.
        let msg = unsafe { libc::dlerror() };
        let msg = if msg.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null dlerror results are NUL-terminated strings.
            unsafe { std::ffi::CStr::from_ptr(msg) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(format!("{}: {msg}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::test_env as env;

    #[test]
    fn the_override_comes_first_then_toolkits_then_wheels() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        let sp = venv.join("lib/python3.12/site-packages");
        std::fs::create_dir_all(sp.join("nvidia/nccl/lib")).unwrap();
        let s = SearchPath::from_lookup(env(&[
            ("WEBSSL_CUDA_LIBS", "/a:/b"),
            ("CUDA_PATH", "/cuda-x"),
            ("VIRTUAL_ENV", venv.to_str().unwrap()),
        ]));
        assert_eq!(s.overrides, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(s.lib_dirs[0], PathBuf::from("/cuda-x/lib64"));
        let pos = |p: &Path| s.lib_dirs.iter().position(|d| d == p).unwrap();
        assert!(pos(Path::new("/usr/local/cuda/lib64")) < pos(&sp.join("nvidia/nccl/lib")));
        assert_eq!(s.homes[0], PathBuf::from("/cuda-x"));
        assert!(s.homes.contains(&sp.join("nvidia/cu13")));
    }

    #[test]
    fn a_wheel_layout_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        let sp = venv.join("lib/python3.11/site-packages");
        let lib = sp.join("nvidia/nccl/lib");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libnccl.so.2"), b"").unwrap();
        let cu13 = sp.join("nvidia/cu13");
        std::fs::create_dir_all(cu13.join("include")).unwrap();
        std::fs::write(cu13.join("include/cuda_fp16.h"), b"").unwrap();
        let s = SearchPath::from_lookup(env(&[("VIRTUAL_ENV", venv.to_str().unwrap())]));
        assert_eq!(find_in(&NCCL, &s.lib_dirs), Some(lib.join("libnccl.so.2")));
        assert_eq!(find_cuda_home(&s.homes), Some(cu13));
        assert_eq!(find_in(&NVRTC, &s.overrides), None);
    }

    #[test]
    fn a_missing_library_names_itself_and_the_install_commands() {
        let m = missing_message(&NCCL, &["x: wrong ELF class".into()]);
        assert!(m.contains("libnccl.so.2"), "{m}");
        assert!(m.contains("pip install nvidia-nccl-cu13"), "{m}");
        assert!(m.contains("apt install libnccl2"), "{m}");
        assert!(m.contains("WEBSSL_CUDA_LIBS"), "{m}");
        assert!(m.contains("wrong ELF class"), "{m}");
        let m = missing_message(&NVRTC, &[]);
        assert!(
            m.contains("libnvrtc.so.13") && m.contains("pip install nvidia-cuda-nvrtc"),
            "{m}"
        );
    }

    #[test]
    fn a_file_that_is_no_library_is_reported_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("libnccl.so.2");
        std::fs::write(&bogus, b"not an ELF file").unwrap();
        let e = dlopen_global(&bogus).unwrap_err();
        assert!(e.contains("libnccl.so.2"), "{e}");
        // Through the override, the loader's complaint is part of the error unless a real NCCL is
        // installed on this machine (then the system copy is found and loaded, which is fine too).
        let search = SearchPath {
            overrides: vec![dir.path().to_path_buf()],
            ..SearchPath::default()
        };
        if let Err(m) = load_from(&NCCL, &search) {
            assert!(
                m.contains("could not load") && m.contains("pip install"),
                "{m}"
            );
        }
    }
}
