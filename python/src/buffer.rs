//! Rust `Vec`s handed to NumPy without a copy, through the buffer protocol (PEP 3118).
//!
//! A [`Buffer`] takes over a `Vec`'s allocation and exports it as a C-contiguous N-d buffer of
//! `float32` / `int64` / `bool`; `numpy.asarray(buffer)` then views that memory (the array keeps
//! the buffer alive through its `base`), and `torch.from_numpy` views the same memory again. The
//! allocation is freed when the last view is gone.
//!
//! Why not the `numpy` crate: it turns on `num-complex/std`, which sits under `gemm` and so under
//! burn, and would rebuild the whole workspace; the buffer protocol needs nothing but the stable
//! ABI of CPython 3.11+.

use std::ffi::{CStr, c_int, c_void};
use std::mem::ManuallyDrop;
use std::ptr;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use webssl_data::recipe::ArrayData;

#[derive(Clone, Copy)]
enum Kind {
    F32,
    I64,
    Bool,
}

impl Kind {
    /// `struct`-module format and item size.
    fn format(self) -> (&'static CStr, usize) {
        match self {
            Kind::F32 => (c"f", 4),
            Kind::I64 => (c"q", 8),
            Kind::Bool => (c"?", 1),
        }
    }
}

/// A `Vec`'s allocation exported as an N-d buffer (see the module docs).
#[pyclass(module = "webssl._webssl", frozen)]
pub struct Buffer {
    kind: Kind,
    /// The `Vec`'s raw parts (rebuilt and dropped in `Drop`).
    ptr: *mut c_void,
    len: usize,
    cap: usize,
    shape: Vec<ffi::Py_ssize_t>,
    strides: Vec<ffi::Py_ssize_t>,
}

// SAFETY: `Buffer` owns its allocation like the `Vec` it came from (which is Send + Sync for these
// element types). Rust never reads or writes the memory after construction; Python writes to it only
// through exported views, whose synchronisation is the caller's business as for any NumPy array.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

fn raw<T>(v: Vec<T>) -> (*mut c_void, usize, usize) {
    let mut v = ManuallyDrop::new(v);
    (v.as_mut_ptr().cast(), v.len(), v.capacity())
}

impl Buffer {
    /// Takes `data` as a C-order array of `shape` (whose product must be its length).
    pub fn new(data: ArrayData, shape: &[usize]) -> PyResult<Self> {
        let ((ptr, len, cap), kind) = match data {
            ArrayData::F32(v) => (raw(v), Kind::F32),
            ArrayData::I64(v) => (raw(v), Kind::I64),
            ArrayData::Bool(v) => (raw(v), Kind::Bool),
        };
        let buffer = Buffer {
            kind,
            ptr,
            len,
            cap,
            shape: shape.iter().map(|&d| d as ffi::Py_ssize_t).collect(),
            strides: c_strides(shape, kind.format().1),
        };
        if shape.iter().product::<usize>() != len {
            // `buffer` is dropped here, freeing the allocation.
            return Err(PyBufferError::new_err(format!(
                "{len} values do not fill the shape {shape:?}"
            )));
        }
        Ok(buffer)
    }

    /// The values as a NumPy array viewing this buffer's memory.
    pub fn into_numpy<'py>(
        self,
        py: Python<'py>,
        numpy: &Bound<'py, PyModule>,
    ) -> PyResult<Bound<'py, PyAny>> {
        numpy.call_method1("asarray", (Bound::new(py, self)?,))
    }
}

fn c_strides(shape: &[usize], itemsize: usize) -> Vec<ffi::Py_ssize_t> {
    let mut strides = vec![0; shape.len()];
    let mut step = itemsize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = step as ffi::Py_ssize_t;
        step *= d.max(1);
    }
    strides
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: the parts came from a `Vec` of this element type in `new` and are used once.
        unsafe {
            match self.kind {
                Kind::F32 => drop(Vec::from_raw_parts(
                    self.ptr.cast::<f32>(),
                    self.len,
                    self.cap,
                )),
                Kind::I64 => drop(Vec::from_raw_parts(
                    self.ptr.cast::<i64>(),
                    self.len,
                    self.cap,
                )),
                Kind::Bool => drop(Vec::from_raw_parts(
                    self.ptr.cast::<bool>(),
                    self.len,
                    self.cap,
                )),
            }
        }
    }
}

#[pymethods]
impl Buffer {
    /// PEP 3118 export: the whole allocation, writable, C-contiguous.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no Py_buffer to fill"));
        }
        let me = slf.get();
        let (format, itemsize) = me.kind.format();
        // SAFETY: `view` is the non-null Py_buffer CPython asks us to fill; `shape`, `strides` and
        // `format` live as long as `self`, which the view keeps alive through `obj`.
        unsafe {
            (*view).buf = me.ptr;
            (*view).len = (me.len * itemsize) as ffi::Py_ssize_t;
            (*view).itemsize = itemsize as ffi::Py_ssize_t;
            (*view).readonly = 0;
            (*view).format = if flags & ffi::PyBUF_FORMAT != 0 {
                format.as_ptr().cast_mut()
            } else {
                ptr::null_mut()
            };
            (*view).ndim = me.shape.len() as c_int;
            (*view).shape = if flags & ffi::PyBUF_ND != 0 {
                me.shape.as_ptr().cast_mut()
            } else {
                ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                me.strides.as_ptr().cast_mut()
            } else {
                ptr::null_mut()
            };
            (*view).suboffsets = ptr::null_mut();
            (*view).internal = ptr::null_mut();
            (*view).obj = slf.into_any().into_ptr();
        }
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {}
}
