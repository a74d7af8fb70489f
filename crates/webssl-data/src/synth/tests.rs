//! Generator tests: determinism, mix proportions, labels consistent with pixels, captions, meta schema.

use super::*;

fn cfg(seed: u64, size: u32, mix: Mix) -> SynthConfig {
    SynthConfig { size, seed, mix }
}

/// Writes a contact sheet (images, then seg and depth, 2x nearest) for eyeballing:
/// `WEBSSL_SYNTH_DUMP=/tmp/x cargo test -p webssl-data synth::tests::dump -- --ignored`.
#[test]
#[ignore]
fn dump_contact_sheet() {
    let Ok(dir) = std::env::var("WEBSSL_SYNTH_DUMP") else {
        return;
    };
    let size: u32 = std::env::var("WEBSSL_SYNTH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(112);
    let mix = std::env::var("WEBSSL_SYNTH_MIX")
        .ok()
        .map(|m| Mix::parse(&m).unwrap())
        .unwrap_or_else(Mix::full);
    let seed: u64 = std::env::var("WEBSSL_SYNTH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let c = cfg(seed, size, mix);
    let (cols, rows, zoom) = (6u32, 4u32, 2u32);
    for (name, plane) in [("images", 0), ("seg", 1), ("depth", 2)] {
        let mut sheet = image::RgbImage::new(cols * size * zoom, rows * size * zoom);
        for i in 0..cols * rows {
            let s = generate(&c, i as u64);
            let (ox, oy) = ((i % cols) * size * zoom, (i / cols) * size * zoom);
            for y in 0..size * zoom {
                for x in 0..size * zoom {
                    let (sx, sy) = (x / zoom, y / zoom);
                    let p = match plane {
                        0 => *s.image.get_pixel(sx, sy),
                        1 => {
                            let v = s.seg.get_pixel(sx, sy)[0];
                            let k = palette::hsv(
                                v as f32 / 11.0,
                                if v == 0 { 0.0 } else { 0.9 },
                                if v == 0 { 0.1 } else { 0.95 },
                            );
                            image::Rgb(k.map(|c| c as u8))
                        }
                        _ => {
                            let v = s.depth.get_pixel(sx, sy)[0];
                            image::Rgb([v, v, v])
                        }
                    };
                    sheet.put_pixel(ox + x, oy + y, p);
                }
            }
            if plane == 0 {
                println!(
                    "{i}: [{}] {} | {:?}",
                    s.meta.class_name, s.caption, s.meta.labels
                );
            }
        }
        sheet.save(format!("{dir}/{name}.png")).unwrap();
    }
}

fn px(s: &SynthSample, x: f32, y: f32) -> (u32, u32) {
    let m = s.meta.size as f32 - 1.0;
    (x.clamp(0.0, m) as u32, y.clamp(0.0, m) as u32)
}

#[test]
fn same_seed_same_bytes_different_seed_differs() {
    let a = cfg(3, 64, Mix::full());
    for i in [0u64, 1, 7, 123] {
        let x = generate(&a, i).encode().unwrap();
        let y = generate(&a, i).encode().unwrap();
        assert_eq!(x, y, "sample {i} not reproducible");
    }
    let b = cfg(4, 64, Mix::full());
    let differing = (0..8)
        .filter(|&i| generate(&a, i).image != generate(&b, i).image)
        .count();
    assert_eq!(differing, 8, "different seeds must give different images");
    // Parallel generation gives the same samples as sequential generation.
    use rayon::prelude::*;
    let par: Vec<Vec<u8>> = (0..16u64)
        .into_par_iter()
        .map(|i| generate(&a, i).image.into_raw())
        .collect();
    let seq: Vec<Vec<u8>> = (0..16u64)
        .map(|i| generate(&a, i).image.into_raw())
        .collect();
    assert_eq!(par, seq);
}

#[test]
fn mix_proportions_hold_on_small_prefixes() {
    for (mix, n) in [
        (Mix::full(), 200u64),
        (Mix::light(), 150),
        (Mix::heavy(), 100),
        (Mix::parse("scene=1,chart=3").unwrap(), 80),
    ] {
        for seed in [0u64, 1, 99] {
            let c = cfg(seed, 64, mix.clone());
            let mut counts = [0u64; 4];
            for i in 0..n {
                counts[c.category_of(i) as usize] += 1;
            }
            for cat in Category::ALL {
                let share = counts[cat as usize] as f64 / n as f64;
                // low-discrepancy assignment: within 3 percentage points even for 80 samples
                assert!(
                    (share - mix.weight(cat)).abs() < 0.03,
                    "{mix} seed {seed}: {cat} share {share}"
                );
                if mix.weight(cat) == 0.0 {
                    assert_eq!(counts[cat as usize], 0);
                }
            }
        }
    }
    assert!((Mix::full().text_share() - 0.5).abs() < 1e-12);
    assert_eq!(Mix::light().text_share(), 1.0);
    assert_eq!(Mix::heavy().weight(Category::Sign), 0.0);
}

#[test]
fn mix_parsing_and_errors_name_the_field() {
    let m = Mix::parse("scene=2, sign=1,document=1").unwrap();
    assert!((m.weight(Category::Scene) - 0.5).abs() < 1e-12);
    assert_eq!(m.weight(Category::Chart), 0.0);
    assert_eq!("light".parse::<Mix>().unwrap(), Mix::light());
    let err = |s: &str| Mix::parse(s).unwrap_err().to_string();
    assert!(err("scene=x").contains("mix.scene"), "{}", err("scene=x"));
    assert!(err("scene=-1").contains("mix.scene"));
    assert!(err("photo=1").contains("unknown category `photo`"));
    assert!(err("scene").contains("category=weight"));
    assert!(err("scene=1,scene=2").contains("given twice"));
    assert!(err("scene=0,sign=0").contains("sum to 0"));
    assert!(err("").contains("`mix`"));
    let bad = SynthConfig {
        size: 8,
        seed: 0,
        mix: Mix::full(),
    };
    assert!(bad.validate().unwrap_err().to_string().contains("`size`"));
}

#[test]
fn scene_labels_match_pixels() {
    let c = cfg(11, 112, Mix::parse("scene=1").unwrap());
    for i in 0..60 {
        let s = generate(&c, i);
        let m = &s.meta;
        assert_eq!(m.category, Category::Scene);
        assert!(!m.has_text && m.words.is_empty());
        let shape = m.labels.shape.as_deref().unwrap();
        let color = m.labels.color.as_deref().unwrap();
        assert_eq!(scene::SHAPES[m.class_id as usize], shape);
        // The dominant shape is the last object drawn and the largest.
        let dom = m.objects.last().unwrap();
        assert_eq!(dom.kind, shape);
        let side = |o: &ObjectMeta| o.bbox[2] - o.bbox[0];
        assert!(m.objects.iter().all(|o| side(o) <= side(dom)));
        let (x, y) = px(&s, dom.anchor[0], dom.anchor[1]);
        let rgb = s.image.get_pixel(x, y).0;
        assert_eq!(
            palette::COLOR_NAMES[palette::nearest_named(rgb)],
            color,
            "sample {i}: pixel {rgb:?} at anchor"
        );
        assert_eq!(
            s.seg.get_pixel(x, y)[0],
            scene::shape_seg(scene::SHAPES.iter().position(|k| *k == shape).unwrap())
        );
        // Nearer than every background pixel and than every other object.
        let d = s.depth.get_pixel(x, y)[0];
        assert_eq!(d, dom.depth);
        let bg_min = s
            .seg
            .pixels()
            .zip(s.depth.pixels())
            .filter(|(g, _)| g[0] == 0)
            .map(|(_, d)| d[0])
            .min();
        if let Some(bg_min) = bg_min {
            assert!(
                d < bg_min,
                "sample {i}: dominant depth {d} vs background {bg_min}"
            );
        }
        assert!(m.objects.iter().all(|o| o.depth >= dom.depth));
        // The dominant shape covers a substantial area of its class in seg.png.
        let class = dom.seg;
        let area = s.seg.pixels().filter(|p| p[0] == class).count();
        assert!(
            area as f32 > 0.03 * 112.0 * 112.0,
            "sample {i}: {area} px of {shape}"
        );
    }
}

/// Mean luma of the pixels of one segmentation class.
fn mean_luma(s: &SynthSample, class: u8) -> Option<f32> {
    let v: Vec<f32> = s
        .image
        .pixels()
        .zip(s.seg.pixels())
        .filter(|(_, g)| g[0] == class)
        .map(|(p, _)| 0.2126 * p[0] as f32 + 0.7152 * p[1] as f32 + 0.0722 * p[2] as f32)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
}

#[test]
fn text_samples_have_readable_vocabulary_words() {
    let c = cfg(5, 112, Mix::light());
    for i in 0..60 {
        let s = generate(&c, i);
        let m = &s.meta;
        assert!(m.has_text);
        assert!(!m.words.is_empty(), "sample {i} drew no words");
        let text_px = s.seg.pixels().filter(|p| p[0] == seg::TEXT).count();
        assert!(
            text_px >= 40,
            "sample {i} ({}): only {text_px} text pixels",
            m.class_name
        );
        if let Some(w) = &m.labels.word {
            assert!(words::vocab_index(w).is_some(), "{w} not in the vocabulary");
            assert!(m.words.contains(w));
        }
        match m.category {
            Category::Sign => {
                let w = m.labels.word.as_deref().unwrap();
                assert_eq!(&m.words[0], w);
                assert!(s.caption.contains(w), "caption {:?} lacks {w}", s.caption);
                // Legibility: the words are large (caps ≥ 8% of the side at 112 px → many ink pixels) and
                // the ink contrasts with the panel.
                assert!(text_px >= 150, "sample {i}: sign text only {text_px} px");
                let (t, p) = (
                    mean_luma(&s, seg::TEXT).unwrap(),
                    mean_luma(&s, seg::PANEL).unwrap(),
                );
                assert!(
                    (t - p).abs() > 50.0,
                    "sample {i}: text luma {t} vs panel {p}"
                );
            }
            Category::Document => {
                assert!(m.labels.word.is_some() && m.labels.layout.is_some());
                assert_eq!(m.class_id, 7);
                assert!(
                    m.words.len() >= 8,
                    "sample {i}: only {} words",
                    m.words.len()
                );
            }
            Category::Chart => {
                let t = m.labels.chart_type.as_deref().unwrap();
                assert_eq!(chart::CHART_TYPES[m.class_id as usize - 8], t);
            }
            Category::Scene => unreachable!("light mix has no scenes"),
        }
    }
}

#[test]
fn bar_chart_largest_bar_is_tallest_in_pixels() {
    let c = cfg(21, 112, Mix::parse("chart=1").unwrap());
    let mut checked = 0;
    for i in 0..90 {
        let s = generate(&c, i);
        let m = &s.meta;
        if m.labels.chart_type.as_deref() != Some("bar") {
            continue;
        }
        checked += 1;
        let bars: Vec<&ObjectMeta> = m.objects.iter().filter(|o| o.kind == "bar").collect();
        assert_eq!(bars.len() as u32, m.labels.n_bars.unwrap());
        // Count the mark pixels inside each bar's box: the labelled bar must have the most.
        let counts: Vec<usize> = bars
            .iter()
            .map(|b| {
                let (x0, y0) = px(&s, b.bbox[0].ceil(), b.bbox[1].ceil());
                let (x1, y1) = px(&s, b.bbox[2].floor() - 1.0, b.bbox[3].floor() - 1.0);
                (y0..=y1)
                    .flat_map(|y| (x0..=x1).map(move |x| (x, y)))
                    .filter(|&(x, y)| s.seg.get_pixel(x, y)[0] == seg::MARK)
                    .count()
            })
            .collect();
        let best = (0..counts.len()).max_by_key(|&k| counts[k]).unwrap();
        assert_eq!(
            best as u32,
            m.labels.largest_bar.unwrap(),
            "sample {i}: mark pixels per bar {counts:?}"
        );
        assert!(s.caption.contains("bar chart"));
    }
    assert!(checked >= 10, "only {checked} bar charts");
}

#[test]
fn meta_schema_captions_and_members() {
    let c = cfg(2, 64, Mix::full());
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..48 {
        let s = generate(&c, i);
        let files = s.encode().unwrap();
        let keys: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(keys, ["cls", "depth.png", "json", "png", "seg.png", "txt"]);
        let meta: SampleMeta = serde_json::from_slice(&files["json"]).unwrap();
        assert_eq!(meta, s.meta);
        assert_eq!(meta.generator, GENERATOR);
        assert_eq!((meta.seed, meta.index, meta.size), (2, i, 64));
        assert_eq!(meta.has_text, meta.category.has_text());
        assert_eq!(CLASS_NAMES[meta.class_id as usize], meta.class_name);
        assert!(meta.class_name.starts_with(meta.category.name()));
        assert_eq!(
            std::str::from_utf8(&files["cls"]).unwrap(),
            meta.class_id.to_string()
        );
        let caption = std::str::from_utf8(&files["txt"]).unwrap();
        assert!(caption.len() > 10 && caption.is_ascii(), "{caption:?}");
        assert!(
            !caption.contains(" a o") && !caption.contains(" a a"),
            "article: {caption:?}"
        );
        // The members decode to images of the right size and kind.
        let img = image::load_from_memory(&files["png"]).unwrap();
        assert_eq!(
            (img.width(), img.height(), img.color()),
            (64, 64, image::ColorType::Rgb8)
        );
        assert_eq!(img.to_rgb8(), s.image);
        let sg = image::load_from_memory(&files["seg.png"]).unwrap();
        assert_eq!(sg.color(), image::ColorType::L8);
        assert!(
            sg.to_luma8()
                .pixels()
                .all(|p| (p[0] as usize) < SEG_CLASSES.len())
        );
        assert_eq!(
            image::load_from_memory(&files["depth.png"])
                .unwrap()
                .to_luma8(),
            s.depth
        );
        seen.insert(meta.class_id);
    }
    assert!(seen.len() >= 8, "48 samples covered only classes {seen:?}");
}

#[test]
fn extreme_sizes_render() {
    for size in [32u32, 48, 224] {
        let c = cfg(9, size, Mix::full());
        for i in 0..24 {
            let s = generate(&c, i);
            assert_eq!(s.image.dimensions(), (size, size));
            assert!(
                s.meta.has_text == s.seg.pixels().any(|p| p[0] == seg::TEXT) || size < 64,
                "size {size} sample {i}"
            );
        }
    }
}

fn read_dir_bytes(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn read_samples(dir: &std::path::Path) -> Vec<crate::shards::Sample> {
    let index = crate::shards::ShardIndex::load(dir).unwrap();
    index
        .paths(dir)
        .iter()
        .flat_map(|p| {
            crate::shards::ShardReader::open(p)
                .unwrap()
                .map(|r| r.unwrap())
        })
        .collect()
}

#[test]
fn shards_are_byte_identical_and_extend() {
    use crate::shards::ShardLimits;
    let c = cfg(42, 48, Mix::full());
    let limits = ShardLimits {
        max_samples: Some(7),
        max_bytes: None,
    };
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, d, e) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("d"),
        tmp.path().join("e"),
    );
    let mut calls = Vec::new();
    let (sum, index) = write_shards(&a, &c, 20, "train", limits, &mut |n| calls.push(n)).unwrap();
    assert_eq!(*calls.last().unwrap(), 20);
    write_shards(&b, &c, 20, "train", limits, &mut |_| {}).unwrap();
    let (fa, fb) = (read_dir_bytes(&a), read_dir_bytes(&b));
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        [
            "index.json",
            "synth-train.json",
            "train-000000.tar",
            "train-000001.tar",
            "train-000002.tar"
        ]
    );
    assert_eq!(fa, fb, "same arguments must give the same bytes");
    assert_eq!(index.total_samples(), 20);
    assert_eq!((sum.samples, sum.shards), (20, 3));
    assert_eq!(sum.per_category.iter().sum::<u64>(), 20);
    assert_eq!(sum.per_class.iter().sum::<u64>(), 20);
    assert_eq!(
        sum.bytes,
        fa.iter()
            .filter(|(k, _)| k.ends_with(".tar"))
            .map(|(_, v)| v.len() as u64)
            .sum::<u64>()
    );

    // Another seed: different shard bytes.
    write_shards(
        &d,
        &cfg(43, 48, Mix::full()),
        20,
        "train",
        limits,
        &mut |_| {},
    )
    .unwrap();
    assert_ne!(
        read_dir_bytes(&d)["train-000000.tar"],
        fa["train-000000.tar"]
    );

    // 20 + 9 samples: the first 20 samples are the same, member for member.
    write_shards(&e, &c, 29, "train", limits, &mut |_| {}).unwrap();
    let (sa, se) = (read_samples(&a), read_samples(&e));
    assert_eq!(se.len(), 29);
    assert_eq!(sa[..], se[..20]);
    assert_eq!(se[3].key, "train-00000003");
    let meta: SampleMeta = serde_json::from_slice(&se[3].files["json"]).unwrap();
    assert_eq!(meta.index, 3);

    // The record names the vocabularies and repeats the summary.
    let rec: SynthRecord = serde_json::from_slice(&fa["synth-train.json"]).unwrap();
    assert_eq!((rec.seed, rec.size, rec.samples), (42, 48, 20));
    assert_eq!(rec.summary, sum);
    assert_eq!(rec.class_names.len(), CLASS_NAMES.len());
    assert_eq!(rec.vocab.len(), words::VOCAB.len());

    // A held-out split can share the directory: both are indexed.
    let (_, idx) =
        write_shards(&a, &cfg(1, 48, Mix::full()), 5, "val", limits, &mut |_| {}).unwrap();
    assert_eq!(idx.total_samples(), 25);
    assert!(
        validate_split("a.b").is_err()
            && validate_split("").is_err()
            && validate_split("val-2").is_ok()
    );
}

#[test]
fn line_chart_trend_matches_pixels() {
    let c = cfg(8, 112, Mix::parse("chart=1").unwrap());
    let mut checked = 0;
    for i in 0..120 {
        let s = generate(&c, i);
        if s.meta.labels.chart_type.as_deref() != Some("line") || !s.caption.contains("one series")
        {
            continue;
        }
        checked += 1;
        // Mean height of the line's pixels in the leftmost and rightmost fifth of its horizontal extent.
        let marks: Vec<(u32, u32)> = s
            .seg
            .enumerate_pixels()
            .filter(|(_, _, p)| p[0] == seg::MARK)
            .map(|(x, y, _)| (x, y))
            .collect();
        let (lo, hi) = (
            marks.iter().map(|m| m.0).min().unwrap(),
            marks.iter().map(|m| m.0).max().unwrap(),
        );
        let band = (hi - lo) / 5;
        let mean_y = |pred: &dyn Fn(u32) -> bool| {
            let ys: Vec<f32> = marks
                .iter()
                .filter(|m| pred(m.0))
                .map(|m| m.1 as f32)
                .collect();
            ys.iter().sum::<f32>() / ys.len() as f32
        };
        let (left, right) = (mean_y(&|x| x <= lo + band), mean_y(&|x| x >= hi - band));
        let up = right < left; // image y grows downwards
        assert_eq!(
            up,
            s.meta.labels.trend.as_deref() == Some("up"),
            "sample {i}: left {left} right {right}"
        );
    }
    assert!(checked >= 8, "only {checked} single-series line charts");
}
