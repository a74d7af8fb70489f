//! `webssl._webssl.Loader`: the training loader (`webssl_data::loader::Loader`) over a shard
//! directory with a named recipe (`webssl_data::recipe`), yielding dicts of NumPy arrays.
//!
//! Zero-copy: each batch's buffers (`Vec<f32>` views, masks) become the NumPy arrays' memory as
//! they are ([`Buffer`]). So the loader's buffer recycling (`Loader::recycle`) is not used: Python
//! owns every batch it was given.
//!
//! Resume: `state_dict()` holds the loader cursor (sampler position after the last batch returned)
//! and the settings that determine the stream; `load_state_dict()` checks the settings and restarts
//! the pipeline at the cursor, so the next batch is the one an uninterrupted loader would give.

use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::json;
use webssl_data::decode::DEFAULT_MAX_PIXELS;
use webssl_data::loader::{Loader as Inner, LoaderConfig, LoaderCursor, TarShards};
use webssl_data::recipe::{LoaderRecipe, RecipeKind, batch_arrays};
use webssl_data::sampler::SamplerConfig;

use crate::buffer::Buffer;
use crate::{data_err, to_py};

/// Everything that fixes the stream of batches (what a state dict must agree on).
#[derive(Clone)]
struct Settings {
    shards: PathBuf,
    recipe: LoaderRecipe,
    batch_size: usize,
    sampler: SamplerConfig,
    max_pixels: u64,
}

impl Settings {
    fn to_json(&self) -> serde_json::Value {
        let (r, s) = (&self.recipe, &self.sampler);
        json!({
            "recipe": r.kind.name(),
            "size": r.size,
            "local_size": r.local_size,
            "n_local": r.n_local,
            "patch_size": r.patch,
            "mask_ratio": r.mask_ratio,
            "batch_size": self.batch_size,
            "seed": s.seed,
            "rank": s.rank,
            "world_size": s.world_size,
            "num_workers": s.num_workers,
            "shuffle_buffer": s.shuffle_buffer,
            "shuffle_shards": s.shuffle_shards,
            "max_pixels": self.max_pixels,
        })
    }
}

/// A view group as Python sees it: `(name, count, (C, H, W))`.
type ViewSpec = (String, usize, (usize, usize, usize));

/// The state-dict format version.
const STATE_VERSION: u64 = 1;

#[pyclass(module = "webssl._webssl")]
pub struct Loader {
    settings: Settings,
    source: Arc<TarShards>,
    /// Decode threads and prefetch: do not change the output, so not in the state dict.
    decode_threads: usize,
    prefetch_batches: usize,
    /// `None` once closed.
    inner: Option<Inner>,
}

impl Loader {
    fn start(&self, resume: Option<&LoaderCursor>) -> PyResult<Inner> {
        let s = &self.settings;
        let (transform, masks) = s
            .recipe
            .build()
            .map_err(|e| data_err(&format!("recipe {}", s.recipe.kind.name()), e))?;
        let mut cfg = LoaderConfig::new(s.batch_size);
        cfg.decode_threads = self.decode_threads;
        cfg.prefetch_samples = self.prefetch_batches.max(1) * s.batch_size.max(1);
        cfg.decode = webssl_data::loader::pil_decoder(s.max_pixels);
        Inner::new(
            self.source.clone(),
            s.sampler.clone(),
            transform,
            masks,
            cfg,
            resume,
        )
        .map_err(|e| {
            data_err(
                &format!("starting the loader over {}", s.shards.display()),
                e,
            )
        })
    }

    fn inner(&mut self) -> PyResult<&mut Inner> {
        self.inner
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the loader is closed"))
    }
}

#[pymethods]
impl Loader {
    #[new]
    #[pyo3(signature = (
        shards, recipe = "dino", batch_size = 32, *, size = 224, local_size = 98, n_local = 8,
        patch_size = 14, mask_ratio = 0.75, rank = 0, world_size = 1, seed = 0, num_workers = 1,
        shuffle_buffer = 1000, shuffle_shards = true, decode_threads = None, prefetch_batches = 4,
        max_pixels = DEFAULT_MAX_PIXELS
    ))]
    fn new(
        py: Python<'_>,
        shards: PathBuf,
        recipe: &str,
        batch_size: usize,
        size: u32,
        local_size: u32,
        n_local: usize,
        patch_size: usize,
        mask_ratio: f64,
        rank: usize,
        world_size: usize,
        seed: u64,
        num_workers: usize,
        shuffle_buffer: usize,
        shuffle_shards: bool,
        decode_threads: Option<usize>,
        prefetch_batches: usize,
        max_pixels: u64,
    ) -> PyResult<Self> {
        let kind: RecipeKind = recipe.parse().map_err(|e| data_err("", e))?;
        let source = py
            .detach(|| TarShards::open(&shards))
            .map_err(|e| data_err(&format!("opening shards in {}", shards.display()), e))?;
        let settings = Settings {
            shards,
            recipe: LoaderRecipe {
                size,
                local_size,
                n_local,
                patch: patch_size,
                mask_ratio,
                ..LoaderRecipe::new(kind)
            },
            batch_size,
            sampler: SamplerConfig {
                seed,
                rank,
                world_size,
                num_workers,
                shuffle_buffer,
                shuffle_shards,
            },
            max_pixels,
        };
        let mut this = Loader {
            settings,
            source: Arc::new(source),
            decode_threads: decode_threads
                .unwrap_or_else(|| LoaderConfig::new(batch_size).decode_threads),
            prefetch_batches,
            inner: None,
        };
        this.inner = Some(this.start(None)?);
        Ok(this)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next batch (blocks with the GIL released while the pipeline works).
    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let inner = self.inner()?;
        let batch = py
            .detach(|| inner.next_batch())
            .map_err(|e| data_err("", e))?;
        let out = PyDict::new(py);
        out.set_item("index", batch.index)?;
        out.set_item("keys", PyList::new(py, &batch.keys)?)?;
        out.set_item("captions", PyList::new(py, &batch.captions)?)?;
        let numpy = py.import("numpy")?;
        for a in batch_arrays(batch) {
            let array = Buffer::new(a.data, &a.shape)?.into_numpy(py, &numpy)?;
            out.set_item(a.name, array)?;
        }
        Ok(out)
    }

    /// The position after the last batch returned and the settings that fix the stream.
    fn state_dict<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let cursor = self.inner()?.cursor();
        to_py(
            py,
            &json!({
                "version": STATE_VERSION,
                "settings": self.settings.to_json(),
                "cursor": cursor,
            }),
        )
    }

    /// Continues from `state` (a `state_dict()` of a loader with the same settings).
    fn load_state_dict(&mut self, py: Python<'_>, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let text: String = py
            .import("json")?
            .call_method1("dumps", (state,))?
            .extract()?;
        let bad = |m: String| PyValueError::new_err(format!("load_state_dict: {m}"));
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let version = value.get("version").and_then(|v| v.as_u64());
        if version != Some(STATE_VERSION) {
            return Err(bad(format!(
                "`version` is {version:?}, this webssl writes {STATE_VERSION}"
            )));
        }
        let mine = self.settings.to_json();
        let theirs = value.get("settings").cloned().unwrap_or_default();
        if let (Some(m), Some(t)) = (mine.as_object(), theirs.as_object()) {
            if let Some((k, v)) = m.iter().find(|(k, v)| t.get(*k) != Some(*v)) {
                return Err(bad(format!(
                    "the state was saved with {k} = {}, this loader has {k} = {v}",
                    t.get(k).map_or("(absent)".to_string(), |x| x.to_string())
                )));
            }
        } else {
            return Err(bad("no `settings` object".into()));
        }
        let cursor: LoaderCursor =
            serde_json::from_value(value.get("cursor").cloned().unwrap_or_default())
                .map_err(|e| bad(format!("`cursor`: {e}")))?;
        // Stop the running pipeline before starting the new one (its threads hold read-ahead).
        self.inner = None;
        self.inner = Some(self.start(Some(&cursor))?);
        Ok(())
    }

    /// Counters: batches, samples read/decoded/skipped, the first skipped `shard:key` with the
    /// reason, the consumer's wait time and fraction, the decode threads' busy time.
    fn stats<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stats = self.inner()?.stats();
        let d = to_py(py, &stats)?;
        d.set_item("wait_fraction", stats.wait_fraction())?;
        Ok(d)
    }

    /// Stops the loader's threads (also done when the object is collected).
    fn close(&mut self, py: Python<'_>) {
        let inner = self.inner.take();
        py.detach(|| drop(inner));
    }

    /// The view groups of a batch: `[(name, count, (C, H, W))]`.
    #[getter]
    fn views(&self) -> PyResult<Vec<ViewSpec>> {
        let (t, _) = self
            .settings
            .recipe
            .build()
            .map_err(|e| data_err("recipe", e))?;
        Ok(t.groups()
            .iter()
            .map(|g| {
                let s = g.shape;
                (g.name.clone(), g.count, (s.channels, s.height, s.width))
            })
            .collect())
    }

    #[getter]
    fn batch_size(&self) -> usize {
        self.settings.batch_size
    }

    fn __repr__(&self) -> String {
        let s = &self.settings;
        format!(
            "Loader({:?}, recipe={:?}, batch_size={}, rank={}, world_size={}, seed={})",
            s.shards.display().to_string(),
            s.recipe.kind.name(),
            s.batch_size,
            s.sampler.rank,
            s.sampler.world_size,
            s.sampler.seed
        )
    }
}
