//! Device selection: the global `--device cpu|cuda|cuda:N` flag.
//!
//! `cpu` is burn's Flex backend (the fused CPU kernels of `webssl_models::kernels` apply there);
//! `cuda` is burn's CubeCL CUDA runtime, where the model uses burn's own ops. CUDA is behind the crate
//! feature `cuda` (`cargo build --release -p webssl-cli --features cuda`); a binary built without it
//! refuses `--device cuda` with a message naming the feature instead of failing later.
//!
//! What the CUDA build needs (burn 0.22.1 → cubecl-cuda 0.11.3, vendored without its LLVM backend,
//! vendor/README.md): nothing beyond the package registries — no CUDA toolkit, no network at build
//! time. At run time kernels are compiled as CUDA C++ through NVRTC, so a GPU machine needs the NVIDIA
//! driver, NVRTC with the CUDA headers and, for several GPU ranks, NCCL: from a system CUDA or NVIDIA's
//! pip wheels, found as `webssl_train::cuda_libs` documents (`WEBSSL_CUDA_LIBS` overrides). Each is
//! checked before burn first touches the GPU, so a missing one is an error naming it and its install
//! command, never a panic in CubeCL's device thread.
//!
//! `cuda` without an index drives the GPU of this process's local rank, read from the launcher's
//! environment by the same rules as the data-parallel trainer (`webssl_train::dist::LaunchEnv`:
//! `OMPI_COMM_WORLD_LOCAL_RANK` under `mpirun` / `webssl launch`, `MPI_LOCALRANKID` under Hydra,
//! `SLURM_LOCALID` under `srun`, `LOCAL_RANK` under torchrun; a bare `LOCAL_RANK` also counts), 0 for
//! a single process: N ranks on one machine take GPUs 0..N. Where the scheduler already narrowed each
//! process to one GPU (`CUDA_VISIBLE_DEVICES` listing one device, e.g. Slurm `--gpus-per-task=1`),
//! that one visible GPU is index 0 whatever the local rank is; a local rank beyond the visible devices
//! is a clear error rather than a CUDA "invalid device" deep inside the first kernel launch.
//!
//! burn API used (burn-tensor-0.22.1/src/device.rs): `Device::flex()`, `Device::cuda(index)`.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use burn::tensor::Device;

/// What the user asked for on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// burn-flex on the CPU.
    #[default]
    Cpu,
    /// A CUDA GPU: `Some(n)` for `cuda:n`, `None` for "my local rank's GPU".
    Cuda(Option<usize>),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(None)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(|n| Self::Cuda(Some(n)))
                    .map_err(|_| format!("`{s}`: expected cuda:N with N a GPU index (0, 1, ...)")),
                None => Err(format!("`{s}`: expected cpu, cuda or cuda:N")),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(None) => write!(f, "cuda"),
            Self::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

/// The global flag, flattened into the top-level CLI (`global = true`: it may be given before or
/// after the subcommand, `webssl --device cuda embed ...` = `webssl embed ... --device cuda`).
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceFlag {
    /// Compute device: `cpu` (default), `cuda` (the GPU of the launcher's local rank, else 0) or
    /// `cuda:N`. CUDA needs a binary built with `--features cuda`.
    #[arg(long = "device", global = true, default_value = "cpu")]
    pub device: DeviceSpec,
}

static SELECTED: OnceLock<DeviceSpec> = OnceLock::new();

/// Records the flag for [`selected`]; called once by `main` after parsing. Later calls are ignored
/// (the first parse wins), so tests and nested calls cannot change the device under a running command.
pub fn init(flag: &DeviceFlag) {
    let _ = SELECTED.set(flag.device);
}

/// The device the command should compute on (the `--device` flag; CPU when never set).
pub fn selected() -> anyhow::Result<Device> {
    let (spec, local_rank, visible) = selected_inputs()?;
    resolve(spec, local_rank, visible.as_deref())
}

/// The CUDA ordinal of [`selected`] (`None`: the CPU), for the data-parallel engine.
pub fn selected_cuda_index() -> anyhow::Result<Option<usize>> {
    let (spec, local_rank, visible) = selected_inputs()?;
    cuda_index(spec, local_rank, visible.as_deref())
}

/// The flag, the launcher's local rank (read only for `cuda` without an index) and `CUDA_VISIBLE_DEVICES`.
fn selected_inputs() -> anyhow::Result<(DeviceSpec, Option<usize>, Option<String>)> {
    let spec = selected_spec();
    let local_rank = match spec {
        DeviceSpec::Cuda(None) => launcher_local_rank(|k| std::env::var(k).ok())?,
        _ => None,
    };
    Ok((spec, local_rank, std::env::var("CUDA_VISIBLE_DEVICES").ok()))
}

/// This process's local rank as the launcher set it (`None`: a single process). `get` is the
/// environment, or a map in tests.
pub fn launcher_local_rank(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<usize>> {
    let env = webssl_train::dist::LaunchEnv::from_lookup(&get)
        .context("reading the launcher's rank variables to pick the GPU")?;
    if env.source != "none" {
        return Ok(Some(env.local_rank));
    }
    match get("LOCAL_RANK").as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(r) => r.parse().map(Some).with_context(|| {
            format!("LOCAL_RANK={r:?} is not a non-negative integer (set by the launcher)")
        }),
    }
}

/// The spec given on the command line (for log lines and result files).
pub fn selected_spec() -> DeviceSpec {
    SELECTED.get().copied().unwrap_or_default()
}

/// The CUDA ordinal for `spec` given the local rank and `CUDA_VISIBLE_DEVICES`; `None` for the CPU.
/// Pure, so the rules are unit-tested.
pub fn cuda_index(
    spec: DeviceSpec,
    local_rank: Option<usize>,
    visible: Option<&str>,
) -> anyhow::Result<Option<usize>> {
    let explicit = match spec {
        DeviceSpec::Cpu => return Ok(None),
        DeviceSpec::Cuda(n) => n,
    };
    // An empty CUDA_VISIBLE_DEVICES hides every GPU: no index can work.
    let n_visible = visible.map(|v| v.split(',').filter(|s| !s.trim().is_empty()).count());
    if n_visible == Some(0) {
        bail!("--device {spec}: CUDA_VISIBLE_DEVICES is empty, no GPU is visible to this process");
    }
    let index = match explicit {
        Some(n) => n,
        None => match local_rank {
            None => 0,
            // One visible GPU per process: it is this process's GPU whatever its local rank.
            Some(_) if n_visible == Some(1) => 0,
            Some(rank) => rank,
        },
    };
    if let Some(n) = n_visible
        && index >= n
    {
        bail!(
            "--device {spec}: GPU index {index} but CUDA_VISIBLE_DEVICES={:?} makes only {n} visible",
            visible.unwrap_or_default()
        );
    }
    Ok(Some(index))
}

/// The burn device for `spec` in the given environment.
pub fn resolve(
    spec: DeviceSpec,
    local_rank: Option<usize>,
    visible: Option<&str>,
) -> anyhow::Result<Device> {
    match cuda_index(spec, local_rank, visible)? {
        None => Ok(Device::flex()),
        Some(index) => cuda(index, spec),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize, spec: DeviceSpec) -> anyhow::Result<Device> {
    let name = webssl_train::cuda_libs::check_device(index)
        .map_err(|e| anyhow::anyhow!("--device {spec}: {e}"))?;
    tracing::info!(index, "compute device: CUDA GPU {index} ({name})");
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize, spec: DeviceSpec) -> anyhow::Result<Device> {
    bail!(
        "--device {spec}: this webssl binary was built without CUDA support; rebuild it with the \
         `cuda` feature: `cargo build --release -p webssl-cli --features cuda` (no CUDA toolkit is needed \
         to build; running needs the NVIDIA driver and NVRTC, see docs/usage.md)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spellings() {
        assert_eq!("cpu".parse::<DeviceSpec>(), Ok(DeviceSpec::Cpu));
        assert_eq!("CUDA".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(None)));
        assert_eq!(
            "cuda:3".parse::<DeviceSpec>(),
            Ok(DeviceSpec::Cuda(Some(3)))
        );
        for bad in ["cuda:", "cuda:-1", "cuda:x", "tpu", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad:?} accepted");
        }
        for s in ["cpu", "cuda", "cuda:7"] {
            assert_eq!(s.parse::<DeviceSpec>().map(|d| d.to_string()), Ok(s.into()));
        }
    }

    #[test]
    fn cuda_index_follows_local_rank_and_visibility() {
        let cuda = DeviceSpec::Cuda(None);
        assert_eq!(cuda_index(DeviceSpec::Cpu, Some(3), None).ok(), Some(None));
        assert_eq!(cuda_index(cuda, None, None).ok(), Some(Some(0)));
        assert_eq!(cuda_index(cuda, Some(2), None).ok(), Some(Some(2)));
        assert_eq!(
            cuda_index(cuda, Some(2), Some("0,1,2,3")).ok(),
            Some(Some(2))
        );
        // One GPU per process (Slurm --gpus-per-task=1): the visible one, whatever the rank.
        assert_eq!(cuda_index(cuda, Some(5), Some("5")).ok(), Some(Some(0)));
        // An explicit index wins over the local rank.
        assert_eq!(
            cuda_index(DeviceSpec::Cuda(Some(1)), Some(0), None).ok(),
            Some(Some(1))
        );
        let err = |r, v| format!("{:#}", cuda_index(cuda, r, v).unwrap_err());
        assert!(err(Some(2), Some("0,1")).contains("only 2 visible"));
        assert!(err(None, Some("")).contains("no GPU is visible"));
    }

    #[test]
    fn local_rank_comes_from_the_launcher_conventions() {
        let env = |pairs: &[(&str, &str)]| {
            let m: std::collections::HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            launcher_local_rank(move |k| m.get(k).cloned())
        };
        assert_eq!(env(&[]).ok(), Some(None));
        // mpirun (what `webssl launch` wraps): Open MPI's local rank, not a torchrun variable.
        let ompi = [
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ];
        assert_eq!(env(&ompi).ok(), Some(Some(1)));
        let slurm = [
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "1"),
        ];
        assert_eq!(env(&slurm).ok(), Some(Some(1)));
        let torchrun = [("RANK", "2"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "2")];
        assert_eq!(env(&torchrun).ok(), Some(Some(2)));
        // A bare LOCAL_RANK (set by hand) counts too; junk in it is an error naming it.
        assert_eq!(env(&[("LOCAL_RANK", "1")]).ok(), Some(Some(1)));
        let e = format!("{:#}", env(&[("LOCAL_RANK", "two")]).unwrap_err());
        assert!(e.contains("LOCAL_RANK"), "{e}");
        let e = format!(
            "{:#}",
            env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "x")]).unwrap_err()
        );
        assert!(e.contains("LOCAL_RANK"), "{e}");
    }

    #[test]
    fn cpu_is_flex() {
        let d = resolve(DeviceSpec::Cpu, Some(1), None).unwrap();
        assert_eq!(d, Device::flex());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_names_the_feature() {
        let e = format!(
            "{:#}",
            resolve(DeviceSpec::Cuda(None), None, None).unwrap_err()
        );
        assert!(e.contains("--features cuda"), "{e}");
        assert!(e.contains("--device cuda"), "{e}");
    }

    #[test]
    fn flag_parses_before_and_after_a_subcommand() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            device: DeviceFlag,
            #[command(subcommand)]
            cmd: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            Embed,
        }
        let d = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.device.device);
        assert_eq!(d(&["webssl", "embed"]).ok(), Some(DeviceSpec::Cpu));
        assert_eq!(
            d(&["webssl", "--device", "cuda:1", "embed"]).ok(),
            Some(DeviceSpec::Cuda(Some(1)))
        );
        assert_eq!(
            d(&["webssl", "embed", "--device", "cuda"]).ok(),
            Some(DeviceSpec::Cuda(None))
        );
        assert!(d(&["webssl", "embed", "--device", "npu"]).is_err());
    }
}
