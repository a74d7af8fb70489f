//! Loader: determinism across thread counts, view-major collation, exact resume, exactly-once per
//! epoch across ranks × workers, skip-and-count of bad input, back-pressure, masks.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use rand_core::Rng;
use webssl_data::loader::{
    Batch, Loader, LoaderConfig, LoaderCursor, MaskSpec, MemoryShard, MemorySource, RawSample,
    SampleTransform, ViewGroup, ViewShape,
};
use webssl_data::masks::{IbotMaskConfig, MaskingGenerator};
use webssl_data::sampler::{SampleAddr, SamplerConfig};
use webssl_data::{DataError, Result};

mod support;

/// A 6×6 PNG whose pixel (0, 0) encodes `id` (so a view can say which image it came from).
fn png(id: u8) -> Vec<u8> {
    let img = RgbImage::from_fn(6, 6, |x, y| {
        image::Rgb([id, (x * 10) as u8, (y * 10) as u8])
    });
    support::png(&img)
}

fn sample(id: u8) -> RawSample {
    RawSample {
        key: format!("k{id:03}"),
        image: Some(png(id)),
        caption: Some(format!("caption {id}")),
        label: Some(i64::from(id) % 7),
    }
}

/// `n_shards` shards of `per_shard` good samples (ids 0..); `bad` adds corrupt members, broken images,
/// a sample without an image and a truncated shard.
fn source(n_shards: usize, per_shard: usize, bad: bool) -> MemorySource {
    let mut id = 0u8;
    let mut shards = Vec::new();
    for s in 0..n_shards {
        let mut members = Vec::new();
        for _ in 0..per_shard {
            members.push(Ok(sample(id)));
            id += 1;
        }
        let mut len = per_shard as u64;
        if bad && s == 1 {
            members.insert(2, Err("tar header checksum mismatch".to_string()));
            members.insert(
                4,
                Ok(RawSample {
                    key: "broken".into(),
                    image: Some(b"not an image".to_vec()),
                    ..RawSample::default()
                }),
            );
            members.insert(
                5,
                Ok(RawSample {
                    key: "textonly".into(),
                    caption: Some("no image".into()),
                    ..RawSample::default()
                }),
            );
            len += 3;
        }
        if bad && s == 2 {
            len += 2; // the index claims two members the tar does not have
        }
        shards.push(MemoryShard {
            name: format!("shard-{s:02}"),
            len,
            members,
        });
    }
    MemorySource { shards }
}

/// Two 3×4×4 "global" and three 3×2×2 "local" views; view `v` of image `id` holds `id·100 + v`
/// plus a per-sample random fraction from the sample's own stream.
struct Fake {
    groups: Vec<ViewGroup>,
    panic_on: Option<u8>,
}

impl Fake {
    fn new() -> Self {
        Self {
            groups: vec![
                ViewGroup {
                    name: "global".into(),
                    count: 2,
                    shape: ViewShape::new(3, 4, 4),
                },
                ViewGroup {
                    name: "local".into(),
                    count: 3,
                    shape: ViewShape::new(3, 2, 2),
                },
            ],
            panic_on: None,
        }
    }
}

impl SampleTransform for Fake {
    fn groups(&self) -> &[ViewGroup] {
        &self.groups
    }
    fn apply(&self, image: &RgbImage, rng: &mut ChaCha8Rng, out: &mut [&mut [f32]]) -> Result<()> {
        let id = image.get_pixel(0, 0)[0];
        if Some(id) == self.panic_on {
            panic!("fake transform bug");
        }
        for (v, view) in out.iter_mut().enumerate() {
            let jitter = (rng.next_u32() % 1000) as f32 / 10_000.0;
            view.fill(f32::from(id) * 100.0 + v as f32 + jitter);
        }
        Ok(())
    }
}

fn sampler_cfg(rank: usize, world: usize, workers: usize, buffer: usize) -> SamplerConfig {
    SamplerConfig {
        seed: 17,
        rank,
        world_size: world,
        num_workers: workers,
        shuffle_buffer: buffer,
        shuffle_shards: true,
    }
}

fn loader_cfg(batch: usize, threads: usize) -> LoaderConfig {
    let mut c = LoaderConfig::new(batch);
    c.decode_threads = threads;
    c.prefetch_samples = 3 * batch;
    c.reader_queue = 4;
    c
}

fn ibot() -> MaskSpec {
    let mut generator = MaskingGenerator::new(4, 4).unwrap();
    generator.max_num_patches = 8.0;
    MaskSpec::Ibot {
        generator,
        config: IbotMaskConfig::default(),
        group: 0,
    }
}

fn start(
    src: &MemorySource,
    scfg: SamplerConfig,
    lcfg: LoaderConfig,
    masks: MaskSpec,
    resume: Option<&LoaderCursor>,
) -> Loader {
    Loader::new(
        Arc::new(src.clone()),
        scfg,
        Arc::new(Fake::new()),
        masks,
        lcfg,
        resume,
    )
    .unwrap()
}

fn take(loader: &mut Loader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| loader.next_batch().unwrap()).collect()
}

#[test]
fn batches_are_identical_for_any_decode_thread_count() {
    let src = source(5, 9, true);
    let one = take(
        &mut start(
            &src,
            sampler_cfg(0, 1, 2, 6),
            loader_cfg(4, 1),
            ibot(),
            None,
        ),
        8,
    );
    let many = take(
        &mut start(
            &src,
            sampler_cfg(0, 1, 2, 6),
            loader_cfg(4, 6),
            ibot(),
            None,
        ),
        8,
    );
    assert_eq!(one, many);
}

#[test]
fn views_are_collated_view_major_like_dinov2() {
    let src = source(3, 8, false);
    let mut loader = start(
        &src,
        sampler_cfg(0, 1, 1, 0),
        loader_cfg(3, 2),
        MaskSpec::None,
        None,
    );
    let batch = loader.next_batch().unwrap();
    assert_eq!(batch.views.len(), 2);
    assert_eq!(batch.views[0].len(), 2 * 3 * 48, "[2·B, 3, 4, 4]");
    assert_eq!(batch.views[1].len(), 3 * 3 * 12, "[3·B, 3, 2, 2]");
    let ids: Vec<f32> = batch
        .keys
        .iter()
        .map(|k| k[1..].parse::<f32>().unwrap())
        .collect();
    for (g, (count, len, first_view)) in [(2usize, 48usize, 0usize), (3, 12, 2)]
        .into_iter()
        .enumerate()
    {
        for v in 0..count {
            for (i, id) in ids.iter().enumerate() {
                let row = &batch.views[g][(v * 3 + i) * len..(v * 3 + i + 1) * len];
                let want = id * 100.0 + (first_view + v) as f32;
                assert!(
                    row.iter().all(|&x| (x - want).abs() < 0.1),
                    "group {g} view {v} image {i}: {} vs {want}",
                    row[0]
                );
            }
        }
    }
    assert_eq!(
        batch.captions[0].as_deref(),
        Some(format!("caption {}", ids[0] as u32).as_str())
    );
    assert_eq!(batch.labels[1], Some(ids[1] as i64 % 7));
}

#[test]
fn resume_after_batch_k_yields_batch_k_plus_1() {
    // Small batches and every k, so some boundaries fall right after skipped members and inside
    // the shuffle-buffer warm-up and epoch ends (6 shards ≈ 47 addresses over 2 ranks).
    let src = source(6, 7, true);
    let scfg = sampler_cfg(1, 2, 2, 5);
    let n = 16;
    let reference = take(
        &mut start(&src, scfg.clone(), loader_cfg(2, 3), ibot(), None),
        n,
    );
    for k in 1..n {
        let mut a = start(&src, scfg.clone(), loader_cfg(2, 2), ibot(), None);
        take(&mut a, k);
        let json = serde_json::to_string(&a.cursor()).unwrap();
        drop(a);
        let cursor: LoaderCursor = serde_json::from_str(&json).unwrap();
        assert_eq!(cursor.batches, k as u64);
        let mut b = start(&src, scfg.clone(), loader_cfg(2, 4), ibot(), Some(&cursor));
        let resumed = take(&mut b, n - k);
        assert_eq!(&resumed[..], &reference[k..], "resume after batch {k}");
    }
}

#[test]
fn every_good_sample_once_per_epoch_across_ranks_and_workers() {
    let src = source(7, 6, true);
    let (world, workers, batch) = (2usize, 2usize, 4usize);
    let total: u64 = src.shards.iter().map(|s| s.len).sum();
    let mut seen = Vec::new();
    for rank in 0..world {
        let mut loader = start(
            &src,
            sampler_cfg(rank, world, workers, 4),
            loader_cfg(batch, 2),
            MaskSpec::None,
            None,
        );
        for b in take(&mut loader, total as usize / batch + 2) {
            seen.extend(b.addrs.iter().filter(|a| a.epoch == 0).map(|a| a.addr));
        }
        let stats = loader.stats();
        // Shard 1 has 3 bad members, shard 2 two missing ones: 5 skips in epoch 0 over both ranks.
        assert!(stats.samples_skipped <= 10);
    }
    let good: usize = src
        .shards
        .iter()
        .map(|s| {
            s.members
                .iter()
                .filter(|m| m.as_ref().is_ok_and(|r| r.key.starts_with('k')))
                .count()
        })
        .sum();
    let unique: BTreeSet<SampleAddr> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no sample twice in epoch 0");
    assert_eq!(seen.len(), good, "every good sample once in epoch 0");
}

#[test]
fn bad_members_are_skipped_counted_and_named() {
    let src = source(3, 5, true);
    // One worker, no shuffles would still permute shards; read the whole epoch (15 good + 5 bad).
    let mut loader = start(
        &src,
        sampler_cfg(0, 1, 1, 0),
        loader_cfg(5, 2),
        MaskSpec::None,
        None,
    );
    // 4 batches: past the end of epoch 0 (15 good + 5 bad) whatever the shard order.
    take(&mut loader, 4);
    let stats = loader.stats();
    assert_eq!(stats.samples_decoded, 20);
    assert!(
        (5..=10).contains(&stats.samples_skipped),
        "{:?}",
        stats.skipped
    );
    let names: BTreeSet<&str> = stats.skipped.iter().map(|s| s.what.as_str()).collect();
    for want in [
        "shard-01:#2",
        "shard-01:broken",
        "shard-01:textonly",
        "shard-02:#5",
        "shard-02:#6",
    ] {
        assert!(names.contains(want), "{want} not in {names:?}");
    }
    let reasons: Vec<&str> = stats.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("checksum")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("no image")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("index lists 7")),
        "{reasons:?}"
    );
    assert!(stats.wait_fraction() >= 0.0 && stats.wait_fraction() <= 1.0);
    assert!(stats.total_secs >= stats.wait_secs * 0.999);
    assert!(
        stats.busy_secs > 0.0,
        "decode threads report their busy time"
    );
}

#[test]
fn a_slow_consumer_bounds_the_read_ahead() {
    let src = source(4, 50, false);
    let mut cfg = loader_cfg(4, 2);
    cfg.prefetch_samples = 6;
    cfg.reader_queue = 3;
    let mut loader = start(&src, sampler_cfg(0, 1, 1, 0), cfg, MaskSpec::None, None);
    take(&mut loader, 2);
    std::thread::sleep(Duration::from_millis(200));
    let read = loader.stats().samples_read;
    // consumed 8 + tickets 6 + reader queue 3 + one in the reader's hand.
    assert!(
        read <= 8 + 6 + 3 + 1,
        "read {read} samples ahead of a stalled consumer"
    );
    assert!(read >= 8);
}

#[test]
fn masks_come_with_the_batch() {
    let src = source(3, 8, false);
    let mut loader = start(
        &src,
        sampler_cfg(0, 1, 1, 0),
        loader_cfg(4, 2),
        ibot(),
        None,
    );
    let b = loader.next_batch().unwrap();
    let m = b.ibot.as_ref().unwrap();
    assert_eq!(
        (m.n_crops, m.n_tokens),
        (8, 16),
        "2·B global crops of a 4×4 grid"
    );
    assert_eq!(
        m.counts().iter().filter(|&&c| c > 0).count(),
        4,
        "int(8 · 0.5) crops masked"
    );
    assert!(m.n_masked_patches <= m.upperbound);
    assert_ne!(
        loader.next_batch().unwrap().ibot,
        b.ibot,
        "a fresh draw per batch"
    );

    let mut mae = start(
        &src,
        sampler_cfg(0, 1, 1, 0),
        loader_cfg(4, 2),
        MaskSpec::Mae {
            n_tokens: 16,
            mask_ratio: 0.75,
        },
        None,
    );
    let b = mae.next_batch().unwrap();
    let m = b.mae.unwrap();
    assert_eq!((m.n, m.length, m.len_keep), (4, 16, 4));
    assert_eq!(m.mask.iter().filter(|&&x| x == 1.0).count(), 4 * 12);
}

#[test]
fn a_transform_panic_is_an_error_not_a_hang() {
    let src = source(2, 6, false);
    let mut fake = Fake::new();
    fake.panic_on = Some(3);
    let mut loader = Loader::new(
        Arc::new(src),
        sampler_cfg(0, 1, 1, 0),
        Arc::new(fake),
        MaskSpec::None,
        loader_cfg(4, 2),
        None,
    )
    .unwrap();
    let err = (0..3)
        .find_map(|_| loader.next_batch().err())
        .expect("the panic surfaces");
    assert!(matches!(err, DataError::Loader { .. }), "{err}");
    assert!(err.to_string().contains("fake transform bug"), "{err}");
}

#[test]
fn cursor_for_another_layout_is_rejected() {
    let src = source(4, 5, false);
    let mut a = start(
        &src,
        sampler_cfg(0, 1, 2, 3),
        loader_cfg(2, 1),
        MaskSpec::None,
        None,
    );
    take(&mut a, 2);
    let cursor = a.cursor();
    let err = Loader::new(
        Arc::new(src),
        sampler_cfg(0, 1, 3, 3),
        Arc::new(Fake::new()),
        MaskSpec::None,
        loader_cfg(2, 1),
        Some(&cursor),
    )
    .err()
    .expect("mismatch");
    assert!(err.to_string().contains("num_workers"), "{err}");
}

#[test]
fn real_tar_shards_with_the_dino_and_mae_augmentations() {
    use webssl_data::augment::{DinoAugConfig, DinoAugment, SingleViewTransform};
    use webssl_data::loader::{DinoViews, SingleView, TarShards};
    use webssl_data::shards::Sample;

    let dir = tempfile::tempdir().unwrap();
    let samples = (0..23u8).flat_map(|id| {
        let s = Sample::new(format!("s{id:03}"))
            .with("png", png(id))
            .with("txt", format!("caption {id}"))
            .with("cls", format!("{}", id % 3));
        let corrupt = (id == 11).then(|| {
            Sample::new("corrupt").with("jpg", b"\xff\xd8\xff\xe0 not really a jpeg".to_vec())
        });
        std::iter::once(s).chain(corrupt)
    });
    support::write_shards(dir.path(), "train", support::per_shard(5), samples);
    let src = Arc::new(TarShards::open(dir.path()).unwrap());
    assert_eq!(src.index().total_samples(), 24);

    let aug = DinoAugConfig {
        global_size: 16,
        local_size: 8,
        n_local: 2,
        ..DinoAugConfig::default()
    };
    let dino = Arc::new(DinoViews::new(DinoAugment::new(aug).unwrap()));
    let masks = MaskSpec::Ibot {
        generator: MaskingGenerator::dinov2(16, 4).unwrap(),
        config: IbotMaskConfig::default(),
        group: 0,
    };
    let run = |threads: usize, n: usize| {
        let mut l = Loader::new(
            src.clone(),
            sampler_cfg(0, 1, 2, 4),
            dino.clone(),
            masks.clone(),
            loader_cfg(4, threads),
            None,
        )
        .unwrap();
        let batches = take(&mut l, n);
        (batches, l.stats())
    };
    let (one, stats) = run(1, 6);
    let (three, _) = run(3, 6);
    assert_eq!(one, three, "identical for 1 and 3 decode threads");
    let b = &one[0];
    assert_eq!(b.views[0].len(), 2 * 4 * 3 * 16 * 16);
    assert_eq!(b.views[1].len(), 2 * 4 * 3 * 8 * 8);
    assert!(b.views[0].iter().all(|v| v.is_finite()) && b.views[0].iter().any(|&v| v != 0.0));
    assert_eq!(b.ibot.as_ref().unwrap().n_crops, 8);
    let id: u8 = b.keys[0][1..].parse().unwrap();
    assert_eq!(
        b.captions[0].as_deref(),
        Some(format!("caption {id}").as_str())
    );
    assert_eq!(b.labels[0], Some(i64::from(id % 3)));
    // 6 batches of 4 = the 23 good samples and one more: the corrupt JPEG was met and named.
    assert_eq!(stats.samples_skipped, 1, "{:?}", stats.skipped);
    assert!(
        stats.skipped[0].what.ends_with(".tar:corrupt"),
        "{:?}",
        stats.skipped[0]
    );

    let mae = Arc::new(SingleView::new(SingleViewTransform::mae(16)).unwrap());
    let mut l = Loader::new(
        src.clone(),
        sampler_cfg(0, 1, 1, 0),
        mae,
        MaskSpec::Mae {
            n_tokens: 16,
            mask_ratio: 0.75,
        },
        loader_cfg(5, 2),
        None,
    )
    .unwrap();
    let b = l.next_batch().unwrap();
    assert_eq!(b.views.len(), 1);
    assert_eq!(b.views[0].len(), 5 * 3 * 16 * 16);
    assert_eq!(b.mae.unwrap().len_keep, 4);
}

#[test]
fn the_loader_can_move_to_a_training_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Loader>();
    assert_send::<Batch>();
    let src = source(2, 4, false);
    let loader = start(
        &src,
        sampler_cfg(0, 1, 1, 0),
        loader_cfg(2, 1),
        MaskSpec::None,
        None,
    );
    let keys =
        std::thread::spawn(move || loader.take(3).map(|b| b.unwrap().keys).collect::<Vec<_>>())
            .join()
            .unwrap();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k.len() == 2));
}

#[test]
fn resume_over_real_tar_shards_rereads_only_what_the_buffer_held() {
    use webssl_data::loader::TarShards;
    use webssl_data::shards::Sample;

    let dir = tempfile::tempdir().unwrap();
    let samples = (0..40u8).map(|id| Sample::new(format!("s{id:03}")).with("png", png(id)));
    support::write_shards(dir.path(), "train", support::per_shard(6), samples);
    let src: Arc<TarShards> = Arc::new(TarShards::open(dir.path()).unwrap());
    let scfg = sampler_cfg(0, 1, 2, 7);
    let run = |resume: Option<&LoaderCursor>, n: usize| {
        let mut l = Loader::new(
            src.clone(),
            scfg.clone(),
            Arc::new(Fake::new()),
            MaskSpec::None,
            loader_cfg(3, 2),
            resume,
        )
        .unwrap();
        let batches = take(&mut l, n);
        (batches, l.cursor())
    };
    let (reference, _) = run(None, 20);
    for k in [1usize, 4, 7, 13] {
        let (_, cursor) = run(None, k);
        let (resumed, _) = run(Some(&cursor), 20 - k);
        assert_eq!(&resumed[..], &reference[k..], "resume after batch {k}");
    }
    // 20 batches of 3 = 60 samples: all 40 of epoch 0 and 20 of epoch 1, none twice per epoch.
    let mut epoch0: Vec<_> = reference
        .iter()
        .flat_map(|b| b.addrs.iter().filter(|a| a.epoch == 0).map(|a| a.addr))
        .collect();
    assert_eq!(epoch0.len(), 40);
    epoch0.sort();
    epoch0.dedup();
    assert_eq!(epoch0.len(), 40);
}

/// `n_shards` shards of `per_shard` samples whose image bytes decode as nothing, except the
/// samples whose ids are in `good`.
fn undecodable(n_shards: usize, per_shard: usize, good: &[u8]) -> MemorySource {
    let shards = (0..n_shards)
        .map(|s| MemoryShard {
            name: format!("junk-{s:02}.tar"),
            len: per_shard as u64,
            members: (0..per_shard)
                .map(|i| {
                    let id = (s * per_shard + i) as u8;
                    Ok(if good.contains(&id) {
                        sample(id)
                    } else {
                        RawSample {
                            key: format!("k{id:03}"),
                            image: Some(b"\x89PNG but not really".to_vec()),
                            ..RawSample::default()
                        }
                    })
                })
                .collect(),
        })
        .collect();
    MemorySource { shards }
}

/// Data that nothing decodes: `next_batch` ends with an error naming the shards after a whole
/// pass (here well before the consecutive-skip limit), on every layout of ranks and workers,
/// instead of reading forever.
#[test]
fn nothing_decodable_is_an_error_naming_the_shards_not_a_hang() {
    for (world, workers, buffer) in [(1, 1, 0), (1, 2, 4), (2, 2, 3)] {
        for rank in 0..world {
            let src = undecodable(4, 5, &[]);
            let mut loader = start(
                &src,
                sampler_cfg(rank, world, workers, buffer),
                loader_cfg(2, 2),
                MaskSpec::None,
                None,
            );
            let err = loader.next_batch().expect_err("nothing decodes");
            let msg = err.to_string();
            assert!(matches!(err, DataError::Loader { .. }), "{msg}");
            assert!(
                msg.contains("no sample could be used") && msg.contains("whole pass"),
                "{msg}"
            );
            assert!(
                msg.contains("junk-0") && msg.contains("cannot decode"),
                "{msg}"
            );
        }
    }
    // The limit on skips in a row ends it too, whatever the data set's size.
    let src = undecodable(4, 5, &[]);
    let mut cfg = loader_cfg(2, 1);
    cfg.max_consecutive_skips = 7;
    let mut loader = start(&src, sampler_cfg(0, 1, 1, 0), cfg, MaskSpec::None, None);
    let msg = loader.next_batch().unwrap_err().to_string();
    assert!(
        msg.contains("7 samples skipped in a row") && msg.contains("limit"),
        "{msg}"
    );
}

/// One decodable sample among many is enough to keep going: the loader yields batches of it
/// (skipping the rest, counted) through several epochs without giving up.
#[test]
fn a_single_decodable_sample_keeps_the_loader_going() {
    let src = undecodable(4, 5, &[13]);
    let mut loader = start(
        &src,
        sampler_cfg(0, 1, 2, 3),
        loader_cfg(3, 2),
        MaskSpec::None,
        None,
    );
    for batch in take(&mut loader, 4) {
        assert!(batch.keys.iter().all(|k| k == "k013"), "{:?}", batch.keys);
    }
    assert!(loader.stats().samples_skipped >= 19 * 11);
}
