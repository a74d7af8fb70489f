//! Sampler properties: exactly once per epoch across ranks × workers, exact resume, epoch-varying
//! shard order, determinism.

use std::collections::HashMap;

use proptest::prelude::*;
use webssl_data::sampler::{
    EpochAddr, SampleAddr, Sampler, SamplerConfig, SamplerCursor, WorkerCursor, rng_stream,
};

fn sampler(
    sizes: &[u64],
    seed: u64,
    rank: usize,
    world: usize,
    workers: usize,
    buffer: usize,
) -> Sampler {
    Sampler::new(
        sizes.to_vec(),
        SamplerConfig {
            seed,
            rank,
            world_size: world,
            num_workers: workers,
            shuffle_buffer: buffer,
            shuffle_shards: true,
        },
    )
    .unwrap()
}

/// All addresses of epoch `epoch`, over all ranks and workers, via each worker's infinite stream.
fn epoch_addresses(
    sizes: &[u64],
    seed: u64,
    world: usize,
    workers: usize,
    buffer: usize,
    epoch: u64,
) -> Vec<SampleAddr> {
    let mut all = Vec::new();
    for rank in 0..world {
        let s = sampler(sizes, seed, rank, world, workers, buffer);
        for w in 0..workers {
            let mut stream = s.worker_stream(w, WorkerCursor { epoch, emitted: 0 }, |a| a);
            loop {
                let (e, a) = stream.next_with(|a| a);
                if e != epoch {
                    break;
                }
                all.push(a);
            }
        }
    }
    all
}

fn sizes_strategy() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0u64..25, 1..24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn every_sample_exactly_once_per_epoch(
        sizes in sizes_strategy(), seed in 0u64..1000, world in 1usize..5, workers in 1usize..4,
        buffer in 0usize..12, epoch in 0u64..3,
    ) {
        let total: u64 = sizes.iter().sum();
        prop_assume!(total >= (world * workers) as u64);
        let mut seen = epoch_addresses(&sizes, seed, world, workers, buffer, epoch);
        seen.sort();
        let mut want: Vec<SampleAddr> = sizes.iter().enumerate()
            .flat_map(|(s, &n)| (0..n).map(move |i| SampleAddr { shard: s as u32, index: i }))
            .collect();
        want.sort();
        prop_assert_eq!(seen, want);
        // The coverage simulation agrees with the streams.
        let s = sampler(&sizes, seed, 0, world, workers, buffer);
        prop_assert_eq!(s.simulate_epoch(epoch).iter().sum::<u64>(), total);
        prop_assert!(s.simulate_epoch(epoch).iter().all(|&c| c > 0), "no data worker starves");
    }

    #[test]
    fn resume_at_any_step_yields_the_remaining_sequence(
        sizes in sizes_strategy(), seed in 0u64..1000, world in 1usize..4, workers in 1usize..4,
        buffer in 0usize..12, k in 0usize..200,
    ) {
        let total: u64 = sizes.iter().sum();
        prop_assume!(total >= (world * workers) as u64);
        let rank = seed as usize % world;
        let s = sampler(&sizes, seed, rank, world, workers, buffer);
        // Long enough to cross several epochs for small indices.
        let reference: Vec<EpochAddr> = s.stream().take(k + 120).collect();
        let mut stream = s.stream();
        let head: Vec<EpochAddr> = stream.by_ref().take(k).collect();
        prop_assert_eq!(&head[..], &reference[..k]);
        let json = serde_json::to_string(&stream.cursor()).unwrap();
        let cursor: SamplerCursor = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(cursor.consumed, k as u64);
        let tail: Vec<EpochAddr> = s.resume(&cursor).unwrap().take(120).collect();
        prop_assert_eq!(&tail[..], &reference[k..]);
    }

    #[test]
    fn shard_order_changes_between_epochs_and_is_seeded(
        n in 12usize..40, seed in 0u64..10_000, e in 0u64..100,
    ) {
        let s = sampler(&vec![3; n], seed, 0, 1, 1, 0);
        // 12! ≈ 4.8e8: equal orders for different epochs would be a bug, not bad luck.
        prop_assert_ne!(s.shard_order(e), s.shard_order(e + 1));
        prop_assert_eq!(s.shard_order(e), sampler(&vec![3; n], seed, 0, 1, 1, 0).shard_order(e));
        prop_assert_ne!(s.shard_order(e), sampler(&vec![3; n], seed + 1, 0, 1, 1, 0).shard_order(e));
    }
}

#[test]
fn same_seed_same_stream_other_seed_other_stream() {
    let sizes = vec![10, 7, 0, 13, 5, 9, 11, 4];
    let a: Vec<_> = sampler(&sizes, 3, 1, 2, 2, 8).stream().take(200).collect();
    let b: Vec<_> = sampler(&sizes, 3, 1, 2, 2, 8).stream().take(200).collect();
    let c: Vec<_> = sampler(&sizes, 4, 1, 2, 2, 8).stream().take(200).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn workers_see_different_shards_in_different_epochs() {
    // webdataset PR #73: a worker must not read the same shard subset every epoch.
    let s = sampler(&[5; 32], 0, 0, 2, 2, 0);
    let shards =
        |e: u64| -> Vec<u32> { s.epoch_spans(e, 0, 0).iter().map(|sp| sp.shard).collect() };
    assert_eq!(shards(0).len(), 8, "32 shards over 4 parts");
    assert_ne!(shards(0), shards(1));
    assert!(s.splits_whole_shards());
}

#[test]
fn fewer_shards_than_parts_falls_back_to_striding() {
    // 3 shards, 2 ranks x 4 workers = 8 parts: every part still gets samples, exactly once overall.
    let sizes = [10u64, 3, 7];
    let s = sampler(&sizes, 1, 0, 2, 4, 0);
    assert!(!s.splits_whole_shards());
    let counts = s.simulate_epoch(0);
    assert_eq!(counts.iter().sum::<u64>(), 20);
    assert!(
        counts.iter().all(|&c| c == 2 || c == 3),
        "striding balances parts: {counts:?}"
    );
    let mut seen = epoch_addresses(&sizes, 1, 2, 4, 0, 0);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 20);
}

#[test]
fn shuffle_buffer_mixes_within_a_window_and_zero_buffer_keeps_read_order() {
    let sizes = [100u64];
    let plain: Vec<u64> = sampler(&sizes, 0, 0, 1, 1, 0)
        .stream()
        .take(100)
        .map(|a| a.addr.index)
        .collect();
    assert_eq!(plain, (0..100).collect::<Vec<_>>(), "no buffer: read order");
    let shuffled: Vec<u64> = sampler(&sizes, 0, 0, 1, 1, 16)
        .stream()
        .take(100)
        .map(|a| a.addr.index)
        .collect();
    assert_ne!(shuffled, plain);
    // The first emission happens once the buffer is full: item k comes from the first k + 16 reads.
    for (k, &i) in shuffled.iter().enumerate() {
        assert!(
            i < (k + 16).min(100) as u64,
            "position {k} emitted index {i}"
        );
    }
}

#[test]
fn cursor_mismatch_is_rejected_with_the_field() {
    let s = sampler(&[4, 4, 4, 4], 0, 0, 2, 1, 4);
    let mut stream = s.stream();
    stream.nth(5);
    let cursor = stream.cursor();
    let other = sampler(&[4, 4, 4, 4], 0, 0, 2, 2, 4);
    let err = other.resume(&cursor).unwrap_err().to_string();
    assert!(err.contains("num_workers"), "{err}");
    let other_index = sampler(&[4, 4, 4, 5], 0, 0, 2, 1, 4);
    assert!(
        other_index
            .resume(&cursor)
            .unwrap_err()
            .to_string()
            .contains("total_samples")
    );
    let bad: Result<SamplerCursor, _> = serde_json::from_str(r#"{"version":1}"#);
    assert!(bad.is_err());
}

#[test]
fn config_errors_name_the_field() {
    let cfg = |rank, world, workers| SamplerConfig {
        rank,
        world_size: world,
        num_workers: workers,
        ..SamplerConfig::default()
    };
    assert!(
        Sampler::new(vec![10], cfg(2, 2, 1))
            .unwrap_err()
            .to_string()
            .contains("rank")
    );
    assert!(
        Sampler::new(vec![10], cfg(0, 0, 1))
            .unwrap_err()
            .to_string()
            .contains("world_size")
    );
    assert!(
        Sampler::new(vec![10], cfg(0, 1, 0))
            .unwrap_err()
            .to_string()
            .contains("num_workers")
    );
    assert!(
        Sampler::new(vec![1, 0, 1], cfg(0, 2, 2))
            .unwrap_err()
            .to_string()
            .contains("shards")
    );
}

#[test]
fn rng_streams_are_distinct_and_stable() {
    use rand_core::Rng;
    let mut first = HashMap::new();
    for purpose in ["shards", "shuffle", "augment"] {
        for ids in [
            &[][..],
            &[0][..],
            &[0, 0][..],
            &[1][..],
            &[0, 1][..],
            &[1, 0][..],
        ] {
            let v = rng_stream(42, purpose, ids).next_u64();
            assert!(
                first.insert(v, (purpose, ids.to_vec())).is_none(),
                "stream collision"
            );
            assert_eq!(v, rng_stream(42, purpose, ids).next_u64());
        }
    }
}

#[test]
fn a_new_layout_restarts_at_the_next_epoch() {
    let sizes = vec![9u64, 4, 11, 6, 8, 5, 7, 10];
    let old = sampler(&sizes, 5, 0, 2, 2, 4);
    let mut stream = old.stream();
    stream.nth(30);
    let cursor = stream.cursor();
    let furthest = cursor.workers.iter().map(|w| w.epoch).max().unwrap();
    // 3 ranks x 1 worker now: every new rank restarts from the same old cursor.
    let mut seen = Vec::new();
    for rank in 0..3 {
        let new = sampler(&sizes, 5, rank, 3, 1, 4);
        assert!(
            new.resume(&cursor).is_err(),
            "exact resume needs the same layout"
        );
        let restart = new.restart_after(&cursor).unwrap();
        let mut s = new.resume(&restart).unwrap();
        let first = s.next().unwrap();
        assert_eq!(first.epoch, furthest + 1);
        seen.push(first.addr);
        seen.extend(s.take_while(|a| a.epoch == furthest + 1).map(|a| a.addr));
    }
    let n = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(n, seen.len(), "nothing twice");
    assert_eq!(
        seen.len() as u64,
        sizes.iter().sum::<u64>(),
        "the new epoch is complete and exactly once"
    );
    let other_seed = sampler(&sizes, 6, 0, 3, 1, 4);
    assert!(other_seed.restart_after(&cursor).is_err());
}
