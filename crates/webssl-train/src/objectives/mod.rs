//! DINOv2 objectives: DINO, iBOT, KoLeo, centering and Sinkhorn-Knopp. Not yet implemented.
