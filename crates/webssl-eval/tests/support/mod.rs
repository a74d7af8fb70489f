//! What the probe tests share: the parity fixture of `fixtures/probes` (made by
//! `make_probes.py` from the dinov2 transcriptions) and a seeded generator for synthetic data.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use webssl_eval::features::Matrix;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/probes")
}

/// `probes.safetensors` (inputs and reference outputs) and `probes.json` (configs, scalars).
pub struct Fixture {
    bytes: Vec<u8>,
    pub json: serde_json::Value,
}

impl Fixture {
    pub fn load() -> Self {
        let dir = fixture_dir();
        Fixture {
            bytes: std::fs::read(dir.join("probes.safetensors")).unwrap(),
            json: serde_json::from_str(&std::fs::read_to_string(dir.join("probes.json")).unwrap())
                .unwrap(),
        }
    }

    pub fn tensor(&self, name: &str) -> (Vec<usize>, Vec<f64>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture has no {name}"));
        let d = t.data();
        let v: Vec<f64> = match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            Dtype::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("{name}: {other:?}"),
        };
        (t.shape().to_vec(), v)
    }

    pub fn matrix(&self, name: &str) -> Matrix {
        let (s, v) = self.tensor(name);
        Matrix::new(s[0], s[1], v.into_iter().map(|x| x as f32).collect()).unwrap()
    }

    pub fn labels(&self, name: &str) -> Vec<usize> {
        self.tensor(name)
            .1
            .into_iter()
            .map(|x| x as usize)
            .collect()
    }
}

/// Tiny deterministic generator (SplitMix64) for test data.
pub struct Mix(pub u64);
impl Mix {
    pub fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.next().max(1e-300), self.next());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}
