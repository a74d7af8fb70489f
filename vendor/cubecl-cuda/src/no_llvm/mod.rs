//! webssl patch: what this crate used from `cubecl-llvm`, without LLVM.
//!
//! Upstream always links the LLVM (pliron) NVPTX backend, whose build script downloads an LLVM
//! bundle from github.com; this copy drops that dependency so the CUDA runtime links offline. The
//! CUDA C++ backend (NVRTC) is the only one that compiles here, and is the default. What remains of
//! the LLVM backend are the types its enum variants name: constructing it is possible (upstream's
//! API is kept) but compiling through it returns an error instead of PTX.

use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::prelude::KernelDefinition;
use cubecl_environment::backtrace::BackTrace;
use cubecl_server::compiler::{CompilationError, Compiler};
use cubecl_server::kernel::BufferIOAttr;

pub mod ptx_version;

/// The path upstream's `cubecl_llvm::nvptx::ptx_version` has.
pub mod nvptx {
    pub use super::ptx_version;
}

use ptx_version::PtxVersion;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    #[default]
    Nvptx,
}

#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    pub target: LlvmTarget,
}

#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    pub arch: Option<()>,
    pub sm_arch: Option<SmArch>,
    pub ptx_version: Option<PtxVersion>,
    pub grid_constants: bool,
}

/// Never built here: the stand-in compiler returns an error before producing one.
#[derive(Clone, Debug)]
pub struct NvptxModule {
    pub ptx: Vec<core::ffi::c_char>,
    pub entrypoint: String,
    pub ir: String,
    pub shared_memory_size: usize,
    pub io: Vec<BufferIOAttr>,
}

pub enum PlironArtifact {
    NvptxCode(NvptxModule),
    /// Upstream's CPU and AMDGPU artifacts, which this runtime never asks for: kept so that the
    /// caller's catch-all arm (upstream code, unchanged) stays reachable.
    #[allow(dead_code)]
    Other,
}

impl core::fmt::Display for PlironArtifact {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PlironArtifact::NvptxCode(module) => f.write_str(&module.ir),
            PlironArtifact::Other => Ok(()),
        }
    }
}

impl Compiler for PlironCompiler {
    type Representation = PlironArtifact;
    type CompilationOptions = PlironOptions;

    fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &Self::CompilationOptions,
    ) -> Result<Self::Representation, CompilationError> {
        Err(CompilationError::Generic {
            reason: "this cubecl-cuda was built without the LLVM backend (webssl's vendored copy); \
                     use CudaBackend::Cpp (NVRTC), the default"
                .to_string(),
            backtrace: BackTrace::capture(),
        })
    }

    fn extension(&self) -> &'static str {
        "ll"
    }

    fn lang_tag(&self) -> &'static str {
        "llvm"
    }
}
