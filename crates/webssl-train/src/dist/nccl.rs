//! The NCCL engine of [`super::Dist`] for ranks that train on CUDA GPUs, one GPU per process, through
//! cudarc's NCCL bindings. cudarc opens `libnccl` with `dlopen` on first use, so the binary runs
//! without NCCL; [`crate::cuda_libs::load`] finds it first or names what to install.
//!
//! The communicator is joined with an NCCL unique id minted by rank 0 and handed to the others by the
//! launcher's means: an MPI broadcast under `mpirun`/`webssl launch`, else the TCP rendezvous of
//! [`super::rendezvous`] (torchrun, `srun`). burn 0.22's own NCCL support cannot do this: it keeps the
//! id in a process-local map, so it only joins GPUs of one process (docs/reference/cuda-offline.md).
//!
//! The collectives take host slices, like the MPI engine's, and stage them through device buffers on
//! this engine's stream: the same `Dist` interface for every engine. What moves is therefore the
//! same bytes MPI moves, over NVLink/InfiniBand instead of host sockets.
//!
//! UNVERIFIED: compiled and type-checked only; no GPU has run this module yet (bench/README.md).

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::safe::{Comm, Id, NcclType};

use super::ReduceOp;
use crate::{Result, TrainError};

/// Length of an NCCL unique id (`NCCL_UNIQUE_ID_BYTES`).
pub const ID_BYTES: usize = 128;

pub struct NcclWorld {
    comm: Comm,
    stream: Arc<CudaStream>,
}

fn nccl_op(op: ReduceOp) -> cudarc::nccl::safe::ReduceOp {
    match op {
        ReduceOp::Sum => cudarc::nccl::safe::ReduceOp::Sum,
        ReduceOp::Max => cudarc::nccl::safe::ReduceOp::Max,
    }
}

/// A failed NCCL or CUDA call inside a collective leaves the ranks out of step: nothing can be
/// retried, so the rank ends at once (as `Dist::fail` does) and the launcher stops the job.
fn fatal(what: &str, e: impl std::fmt::Debug) -> ! {
    eprintln!("error: NCCL collective `{what}` failed: {e:?}; ending this rank");
    // SAFETY: ends the process without running destructors (which would wait on the other ranks).
    unsafe { libc::_exit(1) }
}

impl NcclWorld {
    /// Loads NCCL and mints a unique id (rank 0 only).
    pub fn new_id() -> Result<Vec<u8>> {
        crate::cuda_libs::load(&crate::cuda_libs::NCCL).map_err(TrainError::Distributed)?;
        let id = Id::new().map_err(|e| {
            TrainError::Distributed(format!("NCCL could not mint a unique id: {e:?}"))
        })?;
        Ok(id.internal().iter().map(|&c| c as u8).collect())
    }

    /// Joins the communicator `id` names as `rank` of `world` on CUDA device `ordinal`.
    pub fn join(ordinal: usize, rank: usize, world: usize, id: &[u8]) -> Result<Self> {
        crate::cuda_libs::load(&crate::cuda_libs::NCCL).map_err(TrainError::Distributed)?;
        let internal: [std::ffi::c_char; ID_BYTES] = id
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| {
                TrainError::Distributed(format!(
                    "the NCCL id from rank 0 has {} bytes, not {ID_BYTES}",
                    id.len()
                ))
            })?;
        let err = |what: &str, e: &dyn std::fmt::Debug| {
            TrainError::Distributed(format!("NCCL on CUDA device {ordinal}: {what}: {e:?}"))
        };
        let ctx = CudaContext::new(ordinal).map_err(|e| err("opening the device", &e))?;
        let stream = ctx.new_stream().map_err(|e| err("creating a stream", &e))?;
        let comm = Comm::from_rank(stream.clone(), rank, world, Id::uninit(internal))
            .map_err(|e| err(&format!("joining as rank {rank} of {world}"), &e))?;
        Ok(NcclWorld { comm, stream })
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn size(&self) -> usize {
        self.comm.world_size()
    }

    fn upload<T: DeviceRepr>(&self, what: &str, host: &[T]) -> CudaSlice<T> {
        self.stream
            .clone_htod(host)
            .unwrap_or_else(|e| fatal(what, e))
    }

    fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, what: &str, n: usize) -> CudaSlice<T> {
        self.stream
            .alloc_zeros(n)
            .unwrap_or_else(|e| fatal(what, e))
    }

    fn download<T: DeviceRepr>(&self, what: &str, dev: &CudaSlice<T>, host: &mut [T]) {
        self.stream
            .memcpy_dtoh(dev, host)
            .unwrap_or_else(|e| fatal(what, e));
        self.stream.synchronize().unwrap_or_else(|e| fatal(what, e));
    }

    fn all_reduce<T: DeviceRepr + ValidAsZeroBits + NcclType>(&self, buf: &mut [T], op: ReduceOp) {
        let what = "all-reduce";
        if buf.is_empty() {
            return;
        }
        let send = self.upload(what, buf);
        let mut recv = self.zeros::<T>(what, buf.len());
        self.comm
            .all_reduce(&send, &mut recv, &nccl_op(op))
            .unwrap_or_else(|e| fatal(what, e));
        self.download(what, &recv, buf);
    }

    pub fn all_reduce_f32(&self, buf: &mut [f32], op: ReduceOp) {
        self.all_reduce(buf, op)
    }

    pub fn all_reduce_f64(&self, buf: &mut [f64], op: ReduceOp) {
        self.all_reduce(buf, op)
    }

    fn broadcast<T: DeviceRepr + ValidAsZeroBits + NcclType>(&self, buf: &mut [T], root: usize) {
        let what = "broadcast";
        if buf.is_empty() {
            return;
        }
        let mut dev = self.upload(what, buf);
        self.comm
            .broadcast_in_place(&mut dev, root as i32)
            .unwrap_or_else(|e| fatal(what, e));
        self.download(what, &dev, buf);
    }

    pub fn broadcast_f32(&self, buf: &mut [f32], root: usize) {
        self.broadcast(buf, root)
    }

    pub fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) {
        let mut len = [buf.len() as u64];
        self.broadcast(&mut len, root);
        buf.resize(len[0] as usize, 0);
        self.broadcast(&mut buf[..], root);
    }

    pub fn all_gather_f32(&self, local: &[f32]) -> Vec<f32> {
        let what = "all-gather";
        let mut out = vec![0f32; local.len() * self.size()];
        if local.is_empty() {
            return out;
        }
        let send = self.upload(what, local);
        let mut recv = self.zeros::<f32>(what, out.len());
        self.comm
            .all_gather(&send, &mut recv)
            .unwrap_or_else(|e| fatal(what, e));
        self.download(what, &recv, &mut out);
        out
    }

    /// Sum over ranks of `buf` (length a multiple of the world size), this rank's `1/world` share:
    /// for the sharded parameters of the `scale` issue, which adds `Dist`'s reduce-scatter; until then
    /// nothing calls it.
    /// elements `[rank·n/world, (rank+1)·n/world)`.
    #[allow(dead_code)]
    pub fn reduce_scatter_sum_f32(&self, buf: &[f32]) -> Vec<f32> {
        let what = "reduce-scatter";
        let world = self.size();
        assert!(
            buf.len().is_multiple_of(world),
            "reduce-scatter of {} values over {world} ranks",
            buf.len()
        );
        let mut out = vec![0f32; buf.len() / world];
        if out.is_empty() {
            return out;
        }
        let send = self.upload(what, buf);
        let mut recv = self.zeros::<f32>(what, out.len());
        self.comm
            .reduce_scatter(&send, &mut recv, &cudarc::nccl::safe::ReduceOp::Sum)
            .unwrap_or_else(|e| fatal(what, e));
        self.download(what, &recv, &mut out);
        out
    }

    pub fn reduce_sum_to_root_f32(&self, buf: &mut [f32]) {
        let what = "reduce";
        if buf.is_empty() {
            return;
        }
        let send = self.upload(what, buf);
        let sum = &cudarc::nccl::safe::ReduceOp::Sum;
        if self.rank() == 0 {
            let mut recv = self.zeros::<f32>(what, buf.len());
            self.comm
                .reduce(&send, Some(&mut recv), sum, 0)
                .unwrap_or_else(|e| fatal(what, e));
            self.download(what, &recv, buf);
        } else {
            self.comm
                .reduce(&send, None::<&mut CudaSlice<f32>>, sum, 0)
                .unwrap_or_else(|e| fatal(what, e));
            self.stream.synchronize().unwrap_or_else(|e| fatal(what, e));
        }
    }

    /// NCCL has no barrier: a one-element all-reduce is one.
    pub fn barrier(&self) {
        self.all_reduce(&mut [0f32], ReduceOp::Sum);
    }

    /// Lengths by all-gather, then each rank's bytes sent to rank 0 alone.
    pub fn gather_bytes_to_root(&self, local: &[u8]) -> Option<Vec<Vec<u8>>> {
        let what = "gather to rank 0";
        let world = self.size();
        let mut lens = vec![0u64; world];
        lens[self.rank()] = local.len() as u64;
        self.all_reduce(&mut lens, ReduceOp::Sum);
        if self.rank() != 0 {
            if !local.is_empty() {
                let send = self.upload(what, local);
                self.comm.send(&send, 0).unwrap_or_else(|e| fatal(what, e));
                self.stream.synchronize().unwrap_or_else(|e| fatal(what, e));
            }
            return None;
        }
        let mut all = vec![local.to_vec()];
        for (r, &len) in lens.iter().enumerate().skip(1) {
            let mut buf = vec![0u8; len as usize];
            if len > 0 {
                let mut recv = self.zeros::<u8>(what, buf.len());
                self.comm
                    .recv(&mut recv, r as i32)
                    .unwrap_or_else(|e| fatal(what, e));
                self.download(what, &recv, &mut buf);
            }
            all.push(buf);
        }
        Some(all)
    }
}
