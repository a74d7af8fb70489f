//! Throughput of the sampler, the mask generators and the loader with the real DINOv2 multi-crop.
//!
//! `cargo run --release -p webssl-data --example loader_throughput [images] [batches]`
//!
//! In-memory JPEGs (500×375, a typical web image) so the numbers are CPU-bound decode + augment, not
//! disk. Prints addresses/s, cursor-replay time, iBOT/MAE mask cost per batch, and the loader's
//! images/s, per-image thread time and the consumer's wait fraction.

use std::sync::Arc;
use std::time::Instant;

use image::{ImageEncoder, RgbImage};
use webssl_data::augment::{DinoAugConfig, DinoAugment};
use webssl_data::loader::{
    DinoViews, Loader, LoaderConfig, MaskSpec, MemoryShard, MemorySource, RawSample,
};
use webssl_data::masks::{IbotMaskConfig, MaskingGenerator, collate_ibot_masks, mae_random_mask};
use webssl_data::sampler::{Sampler, SamplerConfig, rng_stream};

fn jpeg(id: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(500, 375, |x, y| {
        let v = (x * 7 + y * 3 + id * 31) ^ (x * y / 17);
        image::Rgb([
            (v % 256) as u8,
            ((x + id) % 256) as u8,
            ((y * 2 + id) % 256) as u8,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(img.as_raw(), 500, 375, image::ExtendedColorType::Rgb8)
        .expect("encode jpeg");
    out
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_images = args.first().copied().unwrap_or(256);
    let n_batches = args.get(1).copied().unwrap_or(8);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Sampler: 2,000 shards x 10,000 samples (20M), 8 ranks x 8 workers, buffer 1000.
    let sizes = vec![10_000u64; 2_000];
    let cfg = SamplerConfig {
        seed: 0,
        rank: 3,
        world_size: 8,
        num_workers: 8,
        shuffle_buffer: 1000,
        shuffle_shards: true,
    };
    let sampler = Sampler::new(sizes, cfg).expect("sampler");
    let t = Instant::now();
    let mut stream = sampler.stream();
    let n = 2_000_000;
    for _ in 0..n {
        stream.next();
    }
    let dt = t.elapsed().as_secs_f64();
    println!("sampler: {:.1} M addresses/s", n as f64 / dt / 1e6);
    let cursor = stream.cursor();
    let t = Instant::now();
    let _resumed = sampler.resume(&cursor).expect("resume");
    println!(
        "sampler: resume replay at {} samples into the epoch took {:.1} ms",
        n,
        t.elapsed().as_secs_f64() * 1e3
    );

    // Masks for a batch of 64 images (128 global crops, 16x16 grid) and MAE for 64 x 196 tokens.
    let generator = MaskingGenerator::dinov2(224, 14).expect("generator");
    let t = Instant::now();
    for step in 0..100 {
        collate_ibot_masks(
            &generator,
            128,
            &IbotMaskConfig::default(),
            &mut rng_stream(0, "ibot", &[step]),
        );
    }
    println!(
        "ibot masks: {:.3} ms per batch of 64 images",
        t.elapsed().as_secs_f64() * 10.0
    );
    let t = Instant::now();
    for s in 0..6400u64 {
        mae_random_mask(196, 0.75, &mut rng_stream(0, "mae", &[s]));
    }
    println!(
        "mae masks: {:.3} ms per batch of 64 images",
        t.elapsed().as_secs_f64() * 10.0
    );

    // Loader with the DINOv2 multi-crop (2 x 224 + 8 x 98).
    let per_shard = 64;
    let shards = (0..n_images.div_ceil(per_shard))
        .map(|s| {
            let members: Vec<_> = (s * per_shard..((s + 1) * per_shard).min(n_images))
                .map(|i| {
                    Ok(RawSample {
                        key: format!("img{i:06}"),
                        image: Some(jpeg(i as u32)),
                        caption: None,
                        label: None,
                    })
                })
                .collect();
            MemoryShard {
                name: format!("shard-{s:04}"),
                len: members.len() as u64,
                members,
            }
        })
        .collect();
    let source = Arc::new(MemorySource { shards });
    let dino = Arc::new(DinoViews::new(
        DinoAugment::new(DinoAugConfig::default()).expect("dino"),
    ));
    let mut lcfg = LoaderConfig::new(32);
    lcfg.decode_threads = threads;
    let scfg = SamplerConfig {
        shuffle_buffer: 64,
        num_workers: 2,
        ..SamplerConfig::default()
    };
    let masks = MaskSpec::Ibot {
        generator,
        config: IbotMaskConfig::default(),
        group: 0,
    };
    let mut loader = Loader::new(source, scfg, dino, masks, lcfg, None).expect("loader");
    loader.next_batch().expect("warm-up batch");
    let t = Instant::now();
    for _ in 0..n_batches {
        loader.next_batch().expect("batch");
    }
    let dt = t.elapsed().as_secs_f64();
    let stats = loader.stats();
    println!(
        "loader (DINOv2 multi-crop 2x224 + 8x98, {threads} decode threads): {:.1} images/s, {:.1} ms thread time per image, consumer wait {:.0}%",
        (n_batches * 32) as f64 / dt,
        stats.busy_secs / stats.samples_decoded.max(1) as f64 * 1e3,
        stats.wait_fraction() * 100.0
    );
}
