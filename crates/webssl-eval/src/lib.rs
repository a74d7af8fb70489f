//! webssl-eval: frozen-encoder evaluation (kNN, linear and dense probes with burn) and the tensor-free
//! VQA scoring rules and reports.

pub mod dense;
pub mod error;
pub mod features;
pub mod knn;
pub mod linear;
pub mod report;
pub mod results;
pub mod vqa;
