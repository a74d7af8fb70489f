//! The training-only paths of the backbone: stochastic depth, masking, gradients, named assignment.

use burn::module::Module;
use burn::tensor::{Bool, Device, Distribution, Int, Tensor, TensorData};
use webssl_models::checkpoint::{self, export, store::TensorStore};
use webssl_models::{Vit, presets};

fn small() -> webssl_models::VitConfig {
    let mut cfg = presets::preset("web-dino-300m").unwrap();
    cfg.embed_dim = 32;
    cfg.depth = 2;
    cfg.num_heads = 2;
    cfg.img_size = 28;
    cfg.num_register_tokens = 2;
    cfg
}

fn max_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn keeping_every_sample_equals_the_plain_forward() {
    let device = Device::flex();
    let model = Vit::new(&small(), &device);
    let x = Tensor::<4>::random([3, 3, 28, 42], Distribution::Normal(0.0, 1.0), &device);
    let all = || Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2], [3]), &device);
    let plain = model.forward_features(x.clone(), None);
    let dropped = model.forward_features_drop(x, None, &mut |_| Some((all(), all())));
    assert!(max_diff(plain.prenorm, dropped.prenorm) < 1e-5);
}

#[test]
fn a_dropped_sample_skips_the_branch_and_kept_ones_are_rescaled() {
    let device = Device::flex();
    let model = Vit::new(&small(), &device);
    let block = &model.blocks[0];
    let x = Tensor::<3>::random([2, 5, 32], Distribution::Normal(0.0, 1.0), &device);
    let keep = || Tensor::<1, Int>::from_data(TensorData::new(vec![1i64], [1]), &device);
    let y = block.forward_drop(x.clone(), Some(keep()), Some(keep()));
    // Sample 0 skipped both branches: unchanged.
    assert!(max_diff(y.clone().slice(0..1), x.clone().slice(0..1)) == 0.0);
    // Sample 1 got both branches with scale B / kept = 2.
    assert!(max_diff(y.slice(1..2), x.slice(1..2)) > 0.0);
}

#[test]
fn every_parameter_receives_a_gradient() {
    let device = Device::flex().autodiff();
    let model = Vit::new(&small(), &device);
    let x = Tensor::<4>::random([2, 3, 28, 28], Distribution::Normal(0.0, 1.0), &device);
    let masks = Tensor::<2, Bool>::from_data(
        TensorData::new(
            vec![true, false, false, true, false, true, false, false],
            [2, 4],
        ),
        &device,
    );
    let out = model.forward_features(x.clone(), Some(masks));
    // Also a resampled (local-crop) forward so pos-embed interpolation is on the graph.
    let local = model.forward_features(x.slice([0..2, 0..3, 0..14, 0..14]), None);
    let loss = out.cls.powf_scalar(2.0).mean()
        + out.patches.powf_scalar(2.0).mean()
        + out.registers.mean()
        + local.cls.powf_scalar(2.0).mean();
    let grads = loss.backward();
    let mut missing = Vec::new();
    webssl_models::params::visit(&model, |path, param| {
        let ok = param
            .grad(&grads)
            .is_some_and(|g| g.abs().sum().into_scalar::<f32>() > 0.0);
        if !ok {
            missing.push(path.to_owned());
        }
    });
    assert!(missing.is_empty(), "no gradient for {missing:?}");
}

#[test]
fn named_parameters_round_trip_exactly() {
    let device = Device::flex();
    let a = Vit::new(&small(), &device);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    export::write_safetensors(&path, &checkpoint::named_parameters(&a)).unwrap();
    device.seed(123);
    let b = Vit::new(&small(), &device);
    let b =
        checkpoint::assign_named_parameters(b, &TensorStore::open_file(&path).unwrap(), &device)
            .unwrap();
    assert_eq!(
        checkpoint::named_parameters(&a),
        checkpoint::named_parameters(&b)
    );
    // And onto an autodiff model, which must still train.
    let ad = device.clone().autodiff();
    let c = Vit::new(&small(), &ad);
    let c = checkpoint::assign_named_parameters(c, &TensorStore::open_file(&path).unwrap(), &ad)
        .unwrap();
    assert_eq!(
        checkpoint::named_parameters(&a),
        checkpoint::named_parameters(&c.valid())
    );
    let x = Tensor::<4>::ones([1, 3, 28, 28], &ad);
    let grads = c.forward_features(x, None).cls.sum().backward();
    assert!(c.cls_token.val().grad(&grads).is_some());
}

/// An empty batch (issue 16: DINO with `crops.n_local = 0` once sent its empty local-crop batch
/// through the patch embedding) never reaches the backend's GEMM, whose micro-kernel reads out of
/// bounds on empty operands (and burn's `expand` refuses a zero batch): the forward gives empty
/// outputs of the right shapes without running a kernel.
#[test]
fn an_empty_batch_gives_empty_outputs_without_reaching_the_gemm() {
    let device = Device::flex();
    let cfg = small();
    let model = Vit::new(&cfg, &device);
    let out = model.forward_features(Tensor::<4>::zeros([0, 3, 28, 28], &device), None);
    assert_eq!(out.cls.dims(), [0, 32]);
    assert_eq!(out.patches.dims(), [0, 4, 32]);
    assert_eq!(out.prenorm.dims(), [0, 1 + 2 + 4, 32]);
    // The same on the autodiff device, and the MAE encoder and `intermediate_layers` paths.
    let ad = device.clone().autodiff();
    let model = Vit::new(&cfg, &ad);
    let out = model.forward_features(Tensor::<4>::zeros([0, 3, 14, 14], &ad), None);
    assert_eq!(out.patches.dims(), [0, 1, 32]);
    let ids = Tensor::<2, Int>::zeros([0, 3], &ad);
    let visible = model.forward_visible(Tensor::<4>::zeros([0, 3, 28, 28], &ad), ids);
    assert_eq!(visible.dims(), [0, 1 + 2 + 3, 32]);
    let layers = model.intermediate_layers(Tensor::<4>::zeros([0, 3, 28, 28], &ad), 2);
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[1].dims(), [0, 1 + 2 + 4, 32]);
}
