//! Data-parallel training across processes: who this process is (rank, world size, local rank) and the
//! collectives the trainers need (all-reduce, broadcast, all-gather, reduce to rank 0, barrier).
//!
//! **One code path for 1 and N.** [`Dist::single`] (world size 1) makes every collective the identity
//! without touching the tensors, so a one-process run does exactly what it did before this module
//! existed. With N > 1 the collectives go through **MPI** (Open MPI or MPICH through the `mpi` crate,
//! cargo feature `mpi`): burn 0.22's own distributed ops only orchestrate several devices inside one
//! process, and it has no multi-process CPU collective (docs/design.md, issue #9). GPU ranks use
//! **NCCL** instead (`dist::nccl`, cargo feature `cuda`; which engine when: [`select`]), its id handed out
//! by MPI or by the small TCP rendezvous of [`rendezvous`] (torchrun's `MASTER_ADDR`/`MASTER_PORT`).
//!
//! **Who am I** comes from the environment, in the conventions launchers already use
//! (docs/reference/ecosystem-and-style.md P2), checked against each other at start-up
//! ([`LaunchEnv::from_env`]): Open MPI's `mpirun` (`OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK}`), MPICH/Intel
//! MPI's Hydra (`PMI_RANK`/`PMI_SIZE`, `MPI_LOCALRANKID`), Slurm's `srun` (`SLURM_PROCID`/`SLURM_NTASKS`/
//! `SLURM_LOCALID`) and torchrun (`RANK`/`WORLD_SIZE`/`LOCAL_RANK`). The MPI runtime wires the ranks
//! together itself (`mpirun`, `srun --mpi=pmix`, or `webssl launch`); CPU processes started by torchrun
//! alone cannot form an MPI world, and that case is a clear error instead of N runs that silently train
//! alone. GPU ranks started by torchrun meet at `MASTER_ADDR` ([`rendezvous`]).
//!
//! **A rank that dies or hangs.** When a rank dies, `mpirun`/`srun` end the whole job. A hang (a rank
//! stuck outside a collective) would leave the others blocked for ever inside one; a watchdog thread
//! therefore aborts this process with a message naming the collective once a single call has waited
//! longer than [`Dist::timeout`] (env `WEBSSL_COLLECTIVE_TIMEOUT`, seconds, default 600 — torch's NCCL
//! default), and the launcher then ends the job. Waits that may legitimately be long (rank 0 preparing
//! the data) use [`Dist::barrier_untimed`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::{Tensor, TensorData};

use crate::{Result, TrainError};

#[cfg(feature = "cuda")]
mod nccl;
pub mod rendezvous;
pub mod select;

/// Reduction of an all-reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// Rank, world size and local rank as the launcher set them, before any collective engine starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// Which convention supplied them (`"mpirun (Open MPI)"`, `"torchrun"`, …; `"none"` for one process).
    pub source: &'static str,
}

/// The launcher conventions, most authoritative first: an MPI launcher's own variables are what the
/// MPI world will be; Slurm's describe the job step; torchrun's are set by hand or by torchrun.
const CONVENTIONS: [(&str, &str, &str, &str); 4] = [
    (
        "mpirun (Open MPI)",
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
    ),
    (
        "MPICH/Intel MPI (Hydra)",
        "PMI_RANK",
        "PMI_SIZE",
        "MPI_LOCALRANKID",
    ),
    (
        "srun (Slurm)",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_LOCALID",
    ),
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
];

impl LaunchEnv {
    /// Reads the process environment (see the module docs).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Parses rank/world from `get` (the environment, or a map in tests). Every convention that is
    /// present must agree with the first one on rank and world size: a mismatch (say `WORLD_SIZE=4`
    /// under an `mpirun -np 2`) is an error naming both variables.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let num = |key: &str| -> Result<Option<usize>> {
            match get(key) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                    TrainError::config(key, format!("`{v}` is not a non-negative integer"))
                }),
            }
        };
        let mut found: Option<(LaunchEnv, &str, &str)> = None;
        for (source, rank_key, world_key, local_key) in CONVENTIONS {
            // Slurm exports SLURM_NTASKS for the whole allocation even in the batch script; only
            // inside a task (srun) is SLURM_PROCID set, so both are required.
            let (Some(rank), Some(world)) = (num(rank_key)?, num(world_key)?) else {
                continue;
            };
            if world == 0 || rank >= world {
                return Err(TrainError::config(
                    rank_key,
                    format!("{rank_key}={rank} is not a rank of a world of {world_key}={world}"),
                ));
            }
            match &found {
                None => {
                    let local_rank = num(local_key)?.unwrap_or(rank);
                    found = Some((
                        LaunchEnv {
                            rank,
                            world_size: world,
                            local_rank,
                            source,
                        },
                        rank_key,
                        world_key,
                    ));
                }
                Some((first, first_rank, first_world)) => {
                    if first.rank != rank || first.world_size != world {
                        return Err(TrainError::config(
                            world_key,
                            format!(
                                "the launch environment disagrees with itself: {first_rank}={} {first_world}={} \
                                 ({}) but {rank_key}={rank} {world_key}={world} ({source})",
                                first.rank, first.world_size, first.source
                            ),
                        ));
                    }
                }
            }
        }
        Ok(found.map(|(env, _, _)| env).unwrap_or(LaunchEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            source: "none",
        }))
    }
}

/// What the watchdog watches: the collective in flight and when it started.
#[derive(Default)]
#[cfg_attr(not(any(feature = "mpi", feature = "cuda")), allow(dead_code))]
struct InFlight {
    what: Option<(&'static str, Instant)>,
}

/// This process's place in the job and its collective engine.
pub struct Dist {
    rank: usize,
    world_size: usize,
    local_rank: usize,
    timeout: Duration,
    #[cfg_attr(not(any(feature = "mpi", feature = "cuda")), allow(dead_code))]
    in_flight: Arc<Mutex<InFlight>>,
    engine: Engine,
}

enum Engine {
    /// World size 1: every collective is the identity.
    Single,
    #[cfg(feature = "mpi")]
    Mpi(mpi_engine::MpiWorld),
    /// GPU ranks. The MPI world that handed out the NCCL id, if one did, lives as long as NCCL.
    #[cfg(feature = "cuda")]
    Nccl {
        world: nccl::NcclWorld,
        _id_world: Option<IdWorld>,
    },
}

/// The MPI world kept alive beside NCCL (a unit type without the `mpi` feature).
#[cfg(all(feature = "cuda", feature = "mpi"))]
type IdWorld = mpi_engine::MpiWorld;
#[cfg(all(feature = "cuda", not(feature = "mpi")))]
type IdWorld = ();

impl std::fmt::Debug for Dist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dist")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("local_rank", &self.local_rank)
            .finish()
    }
}

/// The default collective timeout (torch's NCCL default).
const DEFAULT_TIMEOUT_S: f64 = 600.0;

impl Dist {
    /// One process, no collective engine.
    pub fn single() -> Self {
        Dist {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            timeout: Duration::from_secs_f64(DEFAULT_TIMEOUT_S),
            in_flight: Arc::default(),
            engine: Engine::Single,
        }
    }

    /// Joins the job the environment describes for CPU ranks: [`Dist::single`] when it describes one
    /// process, the MPI world otherwise (which must match the environment's rank and size).
    pub fn from_env() -> Result<Self> {
        Self::from_env_on(None)
    }

    /// [`Dist::from_env`] for ranks computing on CUDA device `gpu` (`None`: the CPU): GPU ranks get the
    /// NCCL engine unless `WEBSSL_DIST_ENGINE` says otherwise ([`select`]).
    pub fn from_env_on(gpu: Option<usize>) -> Result<Self> {
        let env = LaunchEnv::from_env()?;
        let choice = select::choose(&env, gpu.is_some(), select::Built::THIS, |k| {
            std::env::var(k).ok()
        })?;
        if choice == select::Choice::Single {
            return Ok(Self::single());
        }
        let timeout = match std::env::var("WEBSSL_COLLECTIVE_TIMEOUT") {
            Err(_) => DEFAULT_TIMEOUT_S,
            Ok(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| {
                    TrainError::config(
                        "WEBSSL_COLLECTIVE_TIMEOUT",
                        format!("`{v}` is not a positive number of seconds"),
                    )
                })?,
        };
        let timeout = Duration::from_secs_f64(timeout);
        match (choice, gpu) {
            #[cfg(feature = "cuda")]
            (select::Choice::Nccl(via), Some(ordinal)) => {
                Self::join_nccl(env, timeout, ordinal, via)
            }
            _ => Self::join(env, timeout),
        }
    }

    /// GPU ranks: rank 0 mints the NCCL id, the launcher's means carry it to the others, all join.
    #[cfg(feature = "cuda")]
    fn join_nccl(
        env: LaunchEnv,
        timeout: Duration,
        ordinal: usize,
        via: select::IdVia,
    ) -> Result<Self> {
        let mint = || {
            if env.rank == 0 {
                nccl::NcclWorld::new_id()
            } else {
                Ok(Vec::new())
            }
        };
        let (id, id_world): (Vec<u8>, Option<IdWorld>) = match via {
            select::IdVia::Tcp(rdzv) => (
                rendezvous::exchange(&rdzv, env.rank, env.world_size, timeout, mint)?,
                None,
            ),
            #[cfg(feature = "mpi")]
            select::IdVia::Mpi => {
                let world = Self::mpi_world(&env)?;
                // Rank 0's id, or its error, reaches every rank: an empty id is the failure signal.
                let minted = mint();
                let mut id = minted.as_ref().map_or_else(|_| Vec::new(), Clone::clone);
                world.broadcast_bytes(&mut id, 0);
                if id.is_empty() {
                    return Err(minted.err().unwrap_or_else(|| {
                        TrainError::Distributed(
                            "rank 0 could not mint the NCCL id (see its error)".into(),
                        )
                    }));
                }
                (id, Some(world))
            }
            #[cfg(not(feature = "mpi"))]
            select::IdVia::Mpi => unreachable!("select::choose picks MPI only in an mpi build"),
        };
        let world = nccl::NcclWorld::join(ordinal, env.rank, env.world_size, &id)?;
        tracing::info!(
            "rank {} of {}: NCCL on CUDA device {ordinal} ({})",
            env.rank,
            env.world_size,
            env.source
        );
        Ok(Self::started(Dist {
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            timeout,
            in_flight: Arc::default(),
            engine: Engine::Nccl {
                world,
                _id_world: id_world,
            },
        }))
    }

    #[cfg(not(feature = "mpi"))]
    fn join(env: LaunchEnv, _timeout: Duration) -> Result<Self> {
        Err(TrainError::Distributed(format!(
            "{} describes a world of {} processes, but this binary was built without the `mpi` \
             feature, its multi-process collective engine: rebuild with `--features mpi` (needs Open MPI, \
             e.g. `apt install libopenmpi-dev openmpi-bin libclang-dev`)",
            env.source, env.world_size
        )))
    }

    #[cfg(feature = "mpi")]
    fn join(env: LaunchEnv, timeout: Duration) -> Result<Self> {
        let world = Self::mpi_world(&env)?;
        Ok(Self::started(Dist {
            rank: world.rank(),
            world_size: world.size(),
            local_rank: env.local_rank,
            timeout,
            in_flight: Arc::default(),
            engine: Engine::Mpi(world),
        }))
    }

    /// The MPI world, which must be the one the environment describes.
    #[cfg(feature = "mpi")]
    fn mpi_world(env: &LaunchEnv) -> Result<mpi_engine::MpiWorld> {
        let world = mpi_engine::MpiWorld::init()?;
        let (rank, size) = (world.rank(), world.size());
        if size != env.world_size || rank != env.rank {
            let master = std::env::var("MASTER_ADDR")
                .map(|a| format!(" (MASTER_ADDR={a} is not used: MPI wires the ranks itself)"))
                .unwrap_or_default();
            return Err(TrainError::Distributed(format!(
                "{} says rank {} of {}, but MPI sees rank {rank} of {size}: the processes were not \
                 started by an MPI launcher{master}. Start them with `webssl launch --nproc {} -- …`, \
                 `mpirun -np {} webssl …` or `srun --mpi=pmix webssl …`",
                env.source, env.rank, env.world_size, env.world_size, env.world_size
            )));
        }
        Ok(world)
    }

    /// A joined multi-process `dist`, with its watchdog and its panic policy.
    #[cfg(any(feature = "mpi", feature = "cuda"))]
    fn started(dist: Dist) -> Dist {
        let (rank, size) = (dist.rank, dist.world_size);
        dist.spawn_watchdog();
        // A panic must end this rank at once: unwinding would run MPI_Finalize, which waits for the
        // other ranks while they wait for this one in a collective.
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            report(info);
            eprintln!(
                "error: rank {rank} of {size} panicked; ending it so that the launcher stops the job"
            );
            // SAFETY: ends the process without running destructors or atexit handlers.
            unsafe { libc::_exit(101) };
        }));
        dist
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Rank among the processes of this machine (which GPU to use).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// Rank 0 writes checkpoints, logs and exports.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Ends this rank on a training error. One process: hands the error back. Several: prints it and
    /// exits at once with status 1 — a normal return would run `MPI_Finalize`, which waits for the
    /// other ranks, themselves waiting in a collective for this one; the launcher instead sees the
    /// failed rank and ends the job.
    pub fn fail<T>(&self, err: TrainError) -> Result<T> {
        if self.world_size == 1 {
            return Err(err);
        }
        eprintln!("error: rank {} of {}: {err}", self.rank, self.world_size);
        use std::io::Write;
        let _ = std::io::stderr().flush();
        let _ = std::io::stdout().flush();
        // SAFETY: ends the process without running destructors or atexit handlers.
        unsafe { libc::_exit(1) }
    }

    /// The longest a single collective may wait before this process aborts.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    #[cfg_attr(not(any(feature = "mpi", feature = "cuda")), allow(dead_code))]
    fn spawn_watchdog(&self) {
        let in_flight = Arc::clone(&self.in_flight);
        let (rank, timeout) = (self.rank, self.timeout);
        let tick = (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        std::thread::Builder::new()
            .name("webssl-collective-watchdog".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    let stuck = in_flight
                        .lock()
                        .map(|f| f.what.filter(|(_, since)| since.elapsed() > timeout))
                        .unwrap_or(None);
                    if let Some((what, since)) = stuck {
                        eprintln!(
                            "error: rank {rank}: collective `{what}` has waited {:.0} s (limit {:.0} s, \
                             WEBSSL_COLLECTIVE_TIMEOUT): another rank died or hangs; aborting this rank",
                            since.elapsed().as_secs_f64(),
                            timeout.as_secs_f64()
                        );
                        // _exit: no atexit handlers, no MPI_Finalize (which would wait for the
                        // missing rank too). The launcher sees the failure and ends the job.
                        unsafe { libc::_exit(70) };
                    }
                }
            })
            .expect("spawning the collective watchdog thread");
    }

    /// Runs `f` (a blocking collective) under the watchdog.
    #[cfg_attr(not(any(feature = "mpi", feature = "cuda")), allow(dead_code))]
    fn watched<T>(&self, what: &'static str, f: impl FnOnce() -> T) -> T {
        if let Ok(mut g) = self.in_flight.lock() {
            g.what = Some((what, Instant::now()));
        }
        let out = f();
        if let Ok(mut g) = self.in_flight.lock() {
            g.what = None;
        }
        out
    }

    /// Element-wise reduction of `buf` over all ranks, in place; every rank gets the result.
    pub fn all_reduce_f32(&self, what: &'static str, buf: &mut [f32], op: ReduceOp) {
        match &self.engine {
            Engine::Single => {}
            #[cfg(feature = "mpi")]
            Engine::Mpi(w) => self.watched(what, || w.all_reduce_f32(buf, op)),
            #[cfg(feature = "cuda")]
            Engine::Nccl { world: w, .. } => self.watched(what, || w.all_reduce_f32(buf, op)),
        }
        let _ = (what, buf, op);
    }

    /// [`Dist::all_reduce_f32`] in f64 (loss values, counts, norms).
    pub fn all_reduce_f64(&self, what: &'static str, buf: &mut [f64], op: ReduceOp) {
        match &self.engine {
            Engine::Single => {}
            #[cfg(feature = "mpi")]
            Engine::Mpi(w) => self.watched(what, || w.all_reduce_f64(buf, op)),
            #[cfg(feature = "cuda")]
            Engine::Nccl { world: w, .. } => self.watched(what, || w.all_reduce_f64(buf, op)),
        }
        let _ = (what, buf, op);
    }

    /// Rank `root`'s `buf` on every rank.
    pub fn broadcast_f32(&self, what: &'static str, buf: &mut [f32], root: usize) {
        match &self.engine {
            Engine::Single => {}
            #[cfg(feature = "mpi")]
            Engine::Mpi(w) => self.watched(what, || w.broadcast_f32(buf, root)),
            #[cfg(feature = "cuda")]
            Engine::Nccl { world: w, .. } => self.watched(what, || w.broadcast_f32(buf, root)),
        }
        let _ = (what, buf, root);
    }

    /// Rank `root`'s bytes on every rank (any length; the others' `buf` is replaced).
    pub fn broadcast_bytes(&self, what: &'static str, buf: &mut Vec<u8>, root: usize) {
        match &self.engine {
            Engine::Single => {}
            #[cfg(feature = "mpi")]
            Engine::Mpi(w) => self.watched(what, || w.broadcast_bytes(buf, root)),
            #[cfg(feature = "cuda")]
            Engine::Nccl { world: w, .. } => self.watched(what, || w.broadcast_bytes(buf, root)),
        }
        let _ = (what, buf, root);
    }

    /// Every rank's bytes (any lengths), in rank order, on every rank: one broadcast per rank, for
    /// small rare payloads (loader cursors at a checkpoint).
    pub fn all_gather_bytes(&self, what: &'static str, local: &[u8]) -> Vec<Vec<u8>> {
        (0..self.world_size)
            .map(|r| {
                let mut buf = if r == self.rank {
                    local.to_vec()
                } else {
                    Vec::new()
                };
                self.broadcast_bytes(what, &mut buf, r);
                buf
            })
            .collect()
    }

    /// Every rank's bytes, in rank order, on rank 0 only (`None` elsewhere): point-to-point sends
    /// to rank 0, so only rank 0 ever holds them all (optimizer state at a checkpoint).
    pub fn gather_bytes_to_main(&self, what: &'static str, local: &[u8]) -> Option<Vec<Vec<u8>>> {
        let _ = what;
        match &self.engine {
            Engine::Single => Some(vec![local.to_vec()]),
            #[cfg(feature = "mpi")]
            Engine::Mpi(w) => self.watched(what, || w.gather_bytes_to_root(local)),
            #[cfg(feature = "cuda")]
            Engine::Nccl { world: w, .. } => self.watched(what, || w.gather_bytes_to_root(local)),
        }
    }

    /// Every rank's `local` (equal lengths), concatenated in rank order.
    pub fn all_gather_f32(&self, what: &'static str, local: &[f32]) -> Vec<f32> {
        let _ = what;
        match &self.engine {
            Engine::Single => local.to_vec(),
            #[cfg(feature = "mpi")]
            Engine::Mpi(w) => self.watched(what, || w.all_gather_f32(local)),
            #[cfg(feature = "cuda")]
            Engine::Nccl { world: w, .. } => self.watched(what, || w.all_gather_f32(local)),
        }
    }

    /// Sum of `buf` over all ranks, delivered to rank 0 only (others' `buf` is left as it was).
    pub fn reduce_sum_to_main_f32(&self, what: &'static str, buf: &mut [f32]) {
        match &self.engine {
            Engine::Single => {}
            #[cfg(feature = "mpi")]
            Engine::Mpi(w) => self.watched(what, || w.reduce_sum_to_root_f32(buf)),
            #[cfg(feature = "cuda")]
            Engine::Nccl { world: w, .. } => self.watched(what, || w.reduce_sum_to_root_f32(buf)),
        }
        let _ = (what, buf);
    }

    /// Waits for every rank, under the watchdog.
    pub fn barrier(&self, what: &'static str) {
        match &self.engine {
            Engine::Single => {}
            #[cfg(feature = "mpi")]
            Engine::Mpi(w) => self.watched(what, || w.barrier()),
            #[cfg(feature = "cuda")]
            Engine::Nccl { world: w, .. } => self.watched(what, || w.barrier()),
        }
        let _ = what;
    }

    /// Waits for every rank with no time limit: for waits whose length is legitimately unbounded, such
    /// as rank 0 generating or checking the training data.
    pub fn barrier_untimed(&self) {
        match &self.engine {
            Engine::Single => {}
            #[cfg(feature = "mpi")]
            Engine::Mpi(w) => w.barrier(),
            #[cfg(feature = "cuda")]
            Engine::Nccl { world: w, .. } => w.barrier(),
        }
    }

    /// Runs `f` on rank 0 alone; then every rank learns whether it worked, so a failure there does
    /// not leave the others waiting in their next collective. Rank 0 gets `f`'s result, the others
    /// `Ok(None)` — or, when rank 0 failed, an error saying it could not `what`. With `untimed`, the
    /// others wait without the collective time limit (for work that may legitimately take long).
    pub fn on_main<T>(
        &self,
        what: &str,
        untimed: bool,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<Option<T>> {
        let out = self.is_main().then(f);
        if self.world_size == 1 {
            return out.transpose();
        }
        if untimed {
            self.barrier_untimed();
        }
        let mut ok = [f64::from(u8::from(out.as_ref().is_none_or(|r| r.is_ok())))];
        self.all_reduce_f64("rank 0's outcome", &mut ok, ReduceOp::Sum);
        match out {
            Some(r) => r.map(Some),
            None if ok[0] as usize == self.world_size => Ok(None),
            None => Err(TrainError::Distributed(format!(
                "rank 0 could not {what} (see its error)"
            ))),
        }
    }

    /// Stops every rank unless all of them pass the same `bytes` (a config, a recipe hash): returns an
    /// error naming `what` and the ranks that differ from rank 0.
    pub fn check_same(&self, what: &'static str, bytes: &[u8]) -> Result<()> {
        if self.world_size == 1 {
            return Ok(());
        }
        let h = webssl_data::sampler::fnv1a64(bytes);
        // Each rank fills its own row of a zero table and a sum all-reduce gathers them; the hash goes
        // as two 32-bit halves, exact in f64.
        let mut table = vec![0f64; 2 * self.world_size];
        table[2 * self.rank] = (h >> 32) as f64;
        table[2 * self.rank + 1] = (h & 0xffff_ffff) as f64;
        self.all_reduce_f64(what, &mut table, ReduceOp::Sum);
        let differ: Vec<usize> = (1..self.world_size)
            .filter(|&r| table[2 * r..2 * r + 2] != table[0..2])
            .collect();
        if differ.is_empty() {
            Ok(())
        } else {
            Err(TrainError::Distributed(format!(
                "{what} differs between ranks: rank(s) {differ:?} do not match rank 0 (every rank must \
                 run the same command line and config)"
            )))
        }
    }

    // ---- tensor helpers: identity at world size 1 (no host round trip) ----

    /// `t` reduced over all ranks (through the host).
    pub fn all_reduce_tensor<const D: usize>(
        &self,
        what: &'static str,
        t: Tensor<D>,
        op: ReduceOp,
    ) -> Tensor<D> {
        if self.world_size == 1 {
            return t;
        }
        let (shape, device) = (t.shape(), t.device());
        let mut v = webssl_models::params::to_host(t);
        self.all_reduce_f32(what, &mut v, op);
        Tensor::from_data(TensorData::new(v, shape), &device)
    }

    /// Every rank's `t` (same shape) concatenated along dim 0 in rank order.
    pub fn all_gather_tensor<const D: usize>(&self, what: &'static str, t: Tensor<D>) -> Tensor<D> {
        if self.world_size == 1 {
            return t;
        }
        let (mut dims, device) = (t.dims(), t.device());
        let v = self.all_gather_f32(what, &webssl_models::params::to_host(t));
        dims[0] *= self.world_size;
        Tensor::from_data(TensorData::new(v, dims), &device)
    }
}

#[cfg(feature = "mpi")]
mod mpi_engine {
    //! The MPI side, kept to the calls the trainers need. Only the main thread calls MPI
    //! (`MPI_THREAD_FUNNELED`): loader threads never do, the watchdog only `_exit`s.

    use mpi::Threading;
    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::environment::Universe;
    use mpi::point_to_point::{Destination, Source};
    use mpi::topology::{Communicator, SimpleCommunicator};

    use super::ReduceOp;
    use crate::{Result, TrainError};

    pub struct MpiWorld {
        // Finalizes MPI on drop; the communicator is only valid while it lives.
        _universe: Universe,
        world: SimpleCommunicator,
    }

    fn op(op: ReduceOp) -> SystemOperation {
        match op {
            ReduceOp::Sum => SystemOperation::sum(),
            ReduceOp::Max => SystemOperation::max(),
        }
    }

    impl MpiWorld {
        pub fn init() -> Result<Self> {
            let (universe, _level) = mpi::initialize_with_threading(Threading::Funneled)
                .ok_or_else(|| {
                    TrainError::Distributed("MPI was already initialized in this process".into())
                })?;
            let world = universe.world();
            Ok(MpiWorld {
                _universe: universe,
                world,
            })
        }

        pub fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        pub fn size(&self) -> usize {
            self.world.size() as usize
        }

        pub fn all_reduce_f32(&self, buf: &mut [f32], o: ReduceOp) {
            let send = buf.to_vec();
            self.world.all_reduce_into(&send[..], buf, op(o));
        }

        pub fn all_reduce_f64(&self, buf: &mut [f64], o: ReduceOp) {
            let send = buf.to_vec();
            self.world.all_reduce_into(&send[..], buf, op(o));
        }

        pub fn broadcast_f32(&self, buf: &mut [f32], root: usize) {
            self.world.process_at_rank(root as i32).broadcast_into(buf);
        }

        pub fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) {
            let proc = self.world.process_at_rank(root as i32);
            let mut len = buf.len() as u64;
            proc.broadcast_into(&mut len);
            buf.resize(len as usize, 0);
            proc.broadcast_into(&mut buf[..]);
        }

        pub fn all_gather_f32(&self, local: &[f32]) -> Vec<f32> {
            let mut out = vec![0f32; local.len() * self.size()];
            self.world.all_gather_into(local, &mut out[..]);
            out
        }

        pub fn reduce_sum_to_root_f32(&self, buf: &mut [f32]) {
            let root = self.world.process_at_rank(0);
            let send = buf.to_vec();
            if self.rank() == 0 {
                root.reduce_into_root(&send[..], buf, SystemOperation::sum());
            } else {
                root.reduce_into(&send[..], SystemOperation::sum());
            }
        }

        pub fn barrier(&self) {
            self.world.barrier();
        }

        /// Sizes first, then the bytes in chunks under MPI's `int` count limit.
        pub fn gather_bytes_to_root(&self, local: &[u8]) -> Option<Vec<Vec<u8>>> {
            const CHUNK: usize = 1 << 30;
            let root = self.world.process_at_rank(0);
            if self.rank() != 0 {
                root.send(&(local.len() as u64));
                for c in local.chunks(CHUNK) {
                    root.send(c);
                }
                return None;
            }
            let mut all = vec![local.to_vec()];
            for r in 1..self.size() {
                let from = self.world.process_at_rank(r as i32);
                let (len, _) = from.receive::<u64>();
                let mut buf = Vec::with_capacity(len as usize);
                while buf.len() < len as usize {
                    let (chunk, _) = from.receive_vec::<u8>();
                    buf.extend_from_slice(&chunk);
                }
                all.push(buf);
            }
            Some(all)
        }
    }
}

/// An environment lookup over `pairs`, for the tests of the launch, rendezvous and library rules.
#[cfg(test)]
pub(crate) fn test_env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Clone + use<> {
    let m: std::collections::HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

#[cfg(test)]
mod tests {
    use super::test_env as env;
    use super::*;

    #[test]
    fn no_launcher_is_one_process() {
        let e = LaunchEnv::from_lookup(env(&[])).unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.source),
            (0, 1, 0, "none")
        );
    }

    #[test]
    fn torchrun_slurm_and_mpirun_conventions() {
        let e = LaunchEnv::from_lookup(env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
        ]))
        .unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.source),
            (3, 8, 1, "torchrun")
        );
        let e = LaunchEnv::from_lookup(env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
        ]))
        .unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank), (5, 16, 1));
        // Open MPI wins and a consistent torchrun set is accepted alongside it.
        let e = LaunchEnv::from_lookup(env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
        ]))
        .unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.source),
            (1, 2, "mpirun (Open MPI)")
        );
        // Slurm's allocation size without a task id (the batch script itself) is not a launch.
        let e = LaunchEnv::from_lookup(env(&[("SLURM_NTASKS", "4")])).unwrap();
        assert_eq!(e.world_size, 1);
        // No LOCAL_RANK: the rank stands in (one node).
        let e = LaunchEnv::from_lookup(env(&[("RANK", "1"), ("WORLD_SIZE", "2")])).unwrap();
        assert_eq!(e.local_rank, 1);
    }

    #[test]
    fn bad_and_inconsistent_environments_are_named() {
        let err = LaunchEnv::from_lookup(env(&[("RANK", "x"), ("WORLD_SIZE", "2")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("RANK") && err.contains("`x`"), "{err}");
        let err = LaunchEnv::from_lookup(env(&[("RANK", "2"), ("WORLD_SIZE", "2")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("RANK=2") && err.contains("WORLD_SIZE=2"),
            "{err}"
        );
        let err = LaunchEnv::from_lookup(env(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("WORLD_SIZE", "4"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("OMPI_COMM_WORLD_SIZE=2") && err.contains("WORLD_SIZE=4"),
            "{err}"
        );
    }

    #[test]
    fn single_collectives_are_the_identity() {
        let d = Dist::single();
        let mut v = vec![1.0f32, -2.0];
        d.all_reduce_f32("t", &mut v, ReduceOp::Sum);
        assert_eq!(v, [1.0, -2.0]);
        assert_eq!(d.all_gather_f32("t", &v), v);
        d.check_same("config", b"abc").unwrap();
        assert!(d.is_main() && d.world_size() == 1);
    }
}
