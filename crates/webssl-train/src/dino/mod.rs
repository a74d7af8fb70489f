//! The DINOv2 / Web-DINO trainer. Not yet implemented.
