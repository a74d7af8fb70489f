//! Which collective engine a job uses, decided from the launch environment, the device and what the
//! binary was built with — a pure function, so every rule is tested without MPI, NCCL or a GPU.
//!
//! - one process: no engine;
//! - CPU ranks: MPI (`mpi` feature), as before;
//! - GPU ranks: NCCL (`cuda` feature), one GPU per process; the NCCL id travels by MPI broadcast under
//!   an MPI launcher (`mpirun`, `webssl launch`, Hydra), else over the TCP rendezvous at
//!   `MASTER_ADDR` (torchrun; `srun` with `MASTER_ADDR` exported; `srun --mpi=pmix` without it uses MPI).
//!
//! `WEBSSL_DIST_ENGINE=mpi` keeps GPU ranks on MPI (gradients through the host, the path before NCCL);
//! `nccl` insists on NCCL; `auto` (the default) is the rule above.

use super::LaunchEnv;
use super::rendezvous::RendezvousEnv;
use crate::{Result, TrainError};

/// How the NCCL unique id reaches the ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdVia {
    Mpi,
    Tcp(RendezvousEnv),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Single,
    Mpi,
    Nccl(IdVia),
}

/// What this binary can do.
#[derive(Debug, Clone, Copy)]
pub struct Built {
    pub mpi: bool,
    pub cuda: bool,
}

impl Built {
    pub const THIS: Built = Built {
        mpi: cfg!(feature = "mpi"),
        cuda: cfg!(feature = "cuda"),
    };
}

/// The engine for `env` on a GPU (`gpu`) or the CPU; `get` reads the environment.
pub fn choose(
    env: &LaunchEnv,
    gpu: bool,
    built: Built,
    get: impl Fn(&str) -> Option<String>,
) -> Result<Choice> {
    if env.world_size == 1 {
        return Ok(Choice::Single);
    }
    let key = "WEBSSL_DIST_ENGINE";
    let asked = get(key).map(|v| v.trim().to_ascii_lowercase());
    let nccl = match asked.as_deref() {
        None | Some("") | Some("auto") => gpu,
        Some("mpi") => false,
        Some("nccl") if gpu => true,
        Some("nccl") => {
            return Err(TrainError::config(
                key,
                "WEBSSL_DIST_ENGINE=nccl needs GPU ranks (--device cuda); CPU ranks use MPI",
            ));
        }
        Some(other) => {
            return Err(TrainError::config(
                key,
                format!("{key}=`{other}`: expected auto, mpi or nccl"),
            ));
        }
    };
    if !nccl {
        return Ok(Choice::Mpi);
    }
    if !built.cuda {
        return Err(TrainError::Distributed(
            "NCCL needs a binary built with `--features cuda`".into(),
        ));
    }
    let mpi_launcher = matches!(env.source, "mpirun (Open MPI)" | "MPICH/Intel MPI (Hydra)");
    let has_master = get("MASTER_ADDR").is_some_and(|v| !v.trim().is_empty());
    let via_mpi = built.mpi && (mpi_launcher || (env.source == "srun (Slurm)" && !has_master));
    if via_mpi {
        return Ok(Choice::Nccl(IdVia::Mpi));
    }
    if mpi_launcher {
        return Err(TrainError::Distributed(format!(
            "{} started {} GPU ranks, but this binary was built without the `mpi` feature that would \
             hand them the NCCL id: rebuild with `--features cuda,mpi`, or start the ranks with \
             torchrun (MASTER_ADDR/MASTER_PORT)",
            env.source, env.world_size
        )));
    }
    Ok(Choice::Nccl(IdVia::Tcp(RendezvousEnv::from_lookup(get)?)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::test_env as env;

    const ALL: Built = Built {
        mpi: true,
        cuda: true,
    };

    fn pick(pairs: &[(&str, &str)], gpu: bool, built: Built) -> Result<Choice> {
        let get = env(pairs);
        let launch = LaunchEnv::from_lookup(get.clone()).unwrap();
        choose(&launch, gpu, built, get)
    }

    const TORCHRUN: [(&str, &str); 5] = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "29500"),
    ];
    const MPIRUN: [(&str, &str); 3] = [
        ("OMPI_COMM_WORLD_RANK", "0"),
        ("OMPI_COMM_WORLD_SIZE", "2"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
    ];

    #[test]
    fn one_process_cpu_and_gpu_ranks() {
        assert_eq!(pick(&[], true, ALL).unwrap(), Choice::Single);
        assert_eq!(pick(&MPIRUN, false, ALL).unwrap(), Choice::Mpi);
        assert_eq!(pick(&MPIRUN, true, ALL).unwrap(), Choice::Nccl(IdVia::Mpi));
        let tcp = Choice::Nccl(IdVia::Tcp(RendezvousEnv {
            addr: "127.0.0.1".into(),
            port: 29500,
        }));
        assert_eq!(pick(&TORCHRUN, true, ALL).unwrap(), tcp);
        // Without the mpi feature torchrun still works: the id goes over TCP.
        let cuda_only = Built {
            mpi: false,
            cuda: true,
        };
        assert_eq!(pick(&TORCHRUN, true, cuda_only).unwrap(), tcp);
    }

    #[test]
    fn slurm_uses_tcp_when_master_addr_is_exported_else_mpi() {
        let srun = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
        ];
        assert_eq!(pick(&srun, true, ALL).unwrap(), Choice::Nccl(IdVia::Mpi));
        let mut with_master = srun.to_vec();
        with_master.extend([("MASTER_ADDR", "n1"), ("MASTER_PORT", "6000")]);
        assert!(matches!(
            pick(&with_master, true, ALL).unwrap(),
            Choice::Nccl(IdVia::Tcp(_))
        ));
    }

    #[test]
    fn the_override_and_its_errors() {
        let mut t = TORCHRUN.to_vec();
        t.push(("WEBSSL_DIST_ENGINE", "mpi"));
        assert_eq!(pick(&t, true, ALL).unwrap(), Choice::Mpi);
        t.pop();
        t.push(("WEBSSL_DIST_ENGINE", "nccl"));
        let e = pick(&t, false, ALL).unwrap_err().to_string();
        assert!(e.contains("--device cuda"), "{e}");
        t.pop();
        t.push(("WEBSSL_DIST_ENGINE", "gloo"));
        let e = pick(&t, true, ALL).unwrap_err().to_string();
        assert!(
            e.contains("`gloo`") && e.contains("auto, mpi or nccl"),
            "{e}"
        );
    }

    #[test]
    fn missing_pieces_are_named() {
        let cpu_only = Built {
            mpi: true,
            cuda: false,
        };
        let e = pick(&TORCHRUN, true, cpu_only).unwrap_err().to_string();
        assert!(e.contains("--features cuda"), "{e}");
        let cuda_only = Built {
            mpi: false,
            cuda: true,
        };
        let e = pick(&MPIRUN, true, cuda_only).unwrap_err().to_string();
        assert!(
            e.contains("--features cuda,mpi") && e.contains("torchrun"),
            "{e}"
        );
        // torchrun-style variables without MASTER_ADDR (set by hand, say).
        let e = pick(&[("RANK", "0"), ("WORLD_SIZE", "2")], true, ALL)
            .unwrap_err()
            .to_string();
        assert!(e.contains("MASTER_ADDR is not set"), "{e}");
    }
}
