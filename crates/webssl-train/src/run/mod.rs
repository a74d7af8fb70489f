//! Run directory: config, metrics, TensorBoard events, checkpoints. Not yet implemented.
