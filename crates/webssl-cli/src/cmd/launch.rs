//! `webssl launch --nproc N -- <webssl command>`: N ranks of one command on this machine.
//!
//! A convenience over the MPI launcher, which starts and wires the ranks (the collective engine is
//! MPI, see `webssl_train::dist`): it runs `mpirun -np N <this webssl> <command…>` with the settings
//! a one-machine data-parallel run needs, so that nobody has to remember them:
//! - `--bind-to none`: Open MPI binds each rank to one core by default, which would put all of a
//!   rank's compute threads on that core;
//! - `RAYON_NUM_THREADS` = cores / N per rank, unless already set (N ranks × all cores each would
//!   oversubscribe the machine N-fold);
//! - `--oversubscribe` when N exceeds the cores (a small test on a small machine);
//! - `--allow-run-as-root` when running as root (containers), which Open MPI otherwise refuses.
//!
//! Several machines, Slurm or any other scheduler: start the ranks with that launcher directly
//! (`mpirun -H a,b -np 16 webssl pretrain …`, `srun --mpi=pmix webssl pretrain …`); rank and world
//! size come from its environment. The exit status is the launcher's: non-zero when a rank fails,
//! dies or hangs (a hung collective ends its rank after `WEBSSL_COLLECTIVE_TIMEOUT` seconds).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Number of processes (ranks) to start on this machine.
    #[arg(long)]
    pub nproc: usize,
    /// The MPI launcher to use (default: WEBSSL_MPIRUN, else `mpirun` from PATH).
    #[arg(long)]
    pub mpirun: Option<PathBuf>,
    /// The webssl command every rank runs, after `--` (e.g. `-- pretrain dino --config F`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.nproc == 0 {
        bail!("--nproc must be at least 1");
    }
    let me = std::env::current_exe().context("locating the webssl binary")?;
    let mpirun = args
        .mpirun
        .or_else(|| std::env::var_os("WEBSSL_MPIRUN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("mpirun"));
    let version = Command::new(&mpirun)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "running `{} --version`: `webssl launch` needs an MPI launcher (Open MPI: \
             `apt install openmpi-bin libopenmpi-dev`; then build webssl with `--features mpi`)",
                mpirun.display()
            )
        })?;
    let open_mpi = String::from_utf8_lossy(&version.stdout).contains("Open MPI")
        || String::from_utf8_lossy(&version.stderr).contains("Open MPI");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut cmd = Command::new(&mpirun);
    cmd.arg("-np").arg(args.nproc.to_string());
    if open_mpi {
        cmd.args(["--bind-to", "none"]);
        if args.nproc > cores {
            cmd.arg("--oversubscribe");
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.arg("--allow-run-as-root");
        }
    } else {
        // MPICH / Intel MPI (Hydra).
        cmd.args(["-bind-to", "none"]);
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        cmd.env("RAYON_NUM_THREADS", (cores / args.nproc).max(1).to_string());
    }
    cmd.arg(&me).args(&args.command);
    eprintln!(
        "launching {} ranks: {} -np {} {} {}",
        args.nproc,
        mpirun.display(),
        args.nproc,
        me.display(),
        args.command
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", mpirun.display()))?;
    if !status.success() {
        bail!(
            "the job failed ({status}): a rank exited with an error, died or hung — see the messages above"
        );
    }
    Ok(())
}
