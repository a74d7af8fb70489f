//! End to end: `webssl embed` on a folder of real photos with an HF checkpoint made by
//! fixtures/backbones/make_backbones.py gives the same CLS features as `transformers` (preprocessing
//! included) — and within bf16's error with `--precision bf16` — skips and lists bad files, and fails
//! clearly on bad arguments. On the JPEG corpus of fixtures/decode (every chroma layout, progressive,
//! restart markers, grayscale, CMYK/YCCK) `embed` matches transformers with both of its image-processor
//! backends (`--preprocess pil|torchvision`), which needs Pillow's decoded pixels exactly.

mod support;

use std::path::{Path, PathBuf};

use support::webssl;
use webssl_models::checkpoint::store::TensorStore;

fn fixtures() -> PathBuf {
    support::fixtures("backbones")
}

#[test]
fn embeds_a_folder_like_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for name in ["astronaut", "chelsea", "coffee"] {
        std::fs::copy(
            fixtures().join(format!("images/{name}.png")),
            imgs.join(format!("{name}.png")),
        )
        .unwrap();
    }
    std::fs::write(imgs.join("broken.jpg"), b"\xff\xd8\xff\xe0 not really").unwrap();
    std::fs::write(imgs.join("empty.png"), b"").unwrap();
    let out = tmp.path().join("feats.safetensors");
    // f32 as transformers to 1e-4; `--precision bf16` (bf16 matrix products) within bf16's error.
    let runs = [
        ("dinov2-reg4", "f32", 1e-4f32),
        ("vit-p16", "f32", 1e-4),
        ("dinov2-reg4", "bf16", 2e-2),
    ];
    for (model, precision, tol) in runs {
        let status = webssl()
            .args(["embed", "--model"])
            .arg(fixtures().join(model))
            .arg("--input")
            .arg(&imgs)
            .arg("--output")
            .arg(&out)
            .args(["--features", "cls,patch-tokens", "--batch-size", "2"])
            .args(["--precision", precision])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&status.stdout);
        assert!(
            status.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&status.stderr)
        );
        assert!(stdout.contains("embedded 3 images (2 skipped)"), "{stdout}");
        assert!(
            stdout.contains("broken.jpg") && stdout.contains("empty.png"),
            "{stdout}"
        );

        let feats = TensorStore::open_file(&out).unwrap();
        let reference =
            TensorStore::open_file(&fixtures().join(model).join("reference.safetensors")).unwrap();
        let (cls_shape, cls) = feats.read_f32("cls").unwrap();
        let (tok_shape, tokens) = feats.read_f32("patch_tokens").unwrap();
        let d = cls_shape[1];
        assert_eq!(cls_shape[0], 3);
        // Sorted folder order: astronaut, chelsea, coffee.
        for (i, name) in ["astronaut", "chelsea", "coffee"].iter().enumerate() {
            let (shape, hidden) = reference
                .read_f32(&format!("{name}.native.hidden"))
                .unwrap();
            let seq = shape[1];
            let regs = seq - 1 - tok_shape[1];
            let want_cls = &hidden[..d];
            let want_tokens = &hidden[(1 + regs) * d..];
            let got_tokens = &tokens[i * tok_shape[1] * d..(i + 1) * tok_shape[1] * d];
            let scale = hidden.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = cls[i * d..(i + 1) * d]
                .iter()
                .zip(want_cls)
                .chain(got_tokens.iter().zip(want_tokens))
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err / scale <= tol,
                "{model} {precision} {name}: relative error {}",
                err / scale
            );
        }
    }
}

/// `webssl embed` on the folder of JPEG photos vs `fixtures/backbones/make_jpeg_embed.py`
/// (transformers' `*ImageProcessorPil` and torchvision-backend `*ImageProcessor` on
/// `Image.open(f).convert("RGB")`): CLS and mean patch token within 1e-4 of the largest value.
#[test]
fn embeds_jpeg_photos_like_transformers_with_both_backends() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = support::fixtures("decode").join("jpeg");
    let reference = TensorStore::open_file(&fixtures().join("jpeg_reference.safetensors")).unwrap();
    let out = tmp.path().join("feats.safetensors");
    for model in ["dinov2-swiglu", "dinov2-gelu", "vit-p16"] {
        for backend in ["pil", "torchvision"] {
            let run = webssl()
                .args(["embed", "--model"])
                .arg(fixtures().join(model))
                .arg("--input")
                .arg(&corpus)
                .arg("--output")
                .arg(&out)
                .args(["--preprocess", backend, "--batch-size", "8"])
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{}",
                String::from_utf8_lossy(&run.stderr)
            );
            let feats = webssl_eval::features::FeatureFile::load(&out).unwrap();
            assert!(feats.keys.len() >= 18, "{:?}", feats.keys);
            let mut worst = 0f32;
            for (i, key) in feats.keys.iter().enumerate() {
                for feature in ["cls", "patch_mean"] {
                    let (_, want) = reference
                        .read_f32(&format!("{model}.{backend}.{key}.{feature}"))
                        .unwrap();
                    let got = feats.tensors[feature].row(i);
                    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let err = got
                        .iter()
                        .zip(&want)
                        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    worst = worst.max(err / scale);
                    assert!(
                        err / scale <= 1e-4,
                        "{model} --preprocess {backend} {key} {feature}: relative error {}",
                        err / scale
                    );
                }
            }
            eprintln!("{model} {backend}: worst relative error {worst:.2e}");
        }
    }
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let imgs = fixtures().join("images");
    let run = |args: &[&str]| {
        let out = webssl().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let missing = tmp.path().join("no-such-model");
    let err = run(&[
        "embed",
        "--model",
        missing.to_str().unwrap(),
        "--input",
        imgs.to_str().unwrap(),
        "--output",
        "/tmp/x.safetensors",
    ]);
    assert!(err.contains("no-such-model"), "{err}");
    let model = fixtures().join("dinov2-gelu");
    let err = run(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        imgs.to_str().unwrap(),
        "--output",
        "/nonexistent-dir/x.safetensors",
    ]);
    assert!(err.contains("/nonexistent-dir"), "{err}");
    let err = run(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        imgs.to_str().unwrap(),
        "--output",
        tmp.path().join("x.safetensors").to_str().unwrap(),
        "--resolution",
        "50",
    ]);
    assert!(err.contains("multiple of the patch size 14"), "{err}");
    // The torchvision preprocessing reproduces transformers' processors: a checkpoint without
    // preprocessor_config.json (and no --resolution) has none to reproduce.
    let bare = tmp.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model.join(f), bare.join(f)).unwrap();
    }
    let err = run(&[
        "embed",
        "--model",
        bare.to_str().unwrap(),
        "--input",
        imgs.to_str().unwrap(),
        "--output",
        tmp.path().join("x.safetensors").to_str().unwrap(),
        "--preprocess",
        "torchvision",
    ]);
    assert!(err.contains("no preprocessor_config.json"), "{err}");
}

#[test]
fn npy_output_is_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("feats.npy");
    let status = webssl()
        .args(["embed", "--model"])
        .arg(fixtures().join("dinov2-gelu"))
        .arg("--input")
        .arg(fixtures().join("images"))
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let bytes = std::fs::read(tmp.path().join("feats.cls.npy")).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'shape': (3, 48)"), "{header}");
    assert_eq!((10 + header_len) % 64, 0);
    assert_eq!(bytes.len() - 10 - header_len, 3 * 48 * 4);
    let keys = std::fs::read_to_string(tmp.path().join("feats.keys.txt")).unwrap();
    assert_eq!(keys, "astronaut\nchelsea\ncoffee\n");
}

/// Issue #16 item 8: a single image is an input of its own; keys that cannot be written one per
/// line (control characters) and keys that repeat within a folder (`a.jpg` and `a.png`: one
/// WebDataset key) are skipped and listed, so `keys.txt` has exactly one line per row.
#[test]
fn single_images_and_bad_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let embed = |input: &Path, out: &Path| {
        let o = webssl()
            .args(["embed", "--model"])
            .arg(fixtures().join("dinov2-gelu"))
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(out)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        stdout
    };
    let png = std::fs::read(fixtures().join("images/chelsea.png")).unwrap();

    let stdout = embed(
        &fixtures().join("images/astronaut.png"),
        &tmp.path().join("one.npy"),
    );
    assert!(stdout.contains("embedded 1 images (0 skipped)"), "{stdout}");
    let keys = std::fs::read_to_string(tmp.path().join("one.keys.txt")).unwrap();
    assert_eq!(keys, "astronaut\n");

    let shards = tmp.path().join("shards");
    let mut w = webssl_data::shards::ShardWriter::create(
        &shards,
        "s",
        webssl_data::shards::ShardLimits::default(),
    )
    .unwrap();
    for key in ["a\nb", "c\td", "e\rf", "good"] {
        w.write(&webssl_data::shards::Sample::new(key).with("png", png.clone()))
            .unwrap();
    }
    w.finish().unwrap();
    let stdout = embed(&shards, &tmp.path().join("tar.npy"));
    assert!(stdout.contains("embedded 1 images (3 skipped)"), "{stdout}");
    assert!(stdout.contains("control character"), "{stdout}");
    let keys = std::fs::read_to_string(tmp.path().join("tar.keys.txt")).unwrap();
    assert_eq!(keys, "good\n");

    let folder = tmp.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("a.jpg"), &png).unwrap();
    std::fs::write(folder.join("a.png"), &png).unwrap();
    let stdout = embed(&folder, &tmp.path().join("dup.npy"));
    assert!(stdout.contains("embedded 1 images (1 skipped)"), "{stdout}");
    assert!(stdout.contains("duplicate key `a`"), "{stdout}");
    let keys = std::fs::read_to_string(tmp.path().join("dup.keys.txt")).unwrap();
    assert_eq!(keys, "a\n");
}
