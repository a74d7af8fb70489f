//! The burn side of the fused kernels: a backend extension (`#[backend_extension]`, burn's mechanism
//! for custom ops on the 0.22 `Dispatch` design) implemented for `Flex` (forward only) and for
//! `Autodiff<Flex, C>`, where each op registers one hand-written `Backward` node instead of the
//! chain of primitive ops (and their saved tensors) burn would record.
//!
//! burn sources this follows: `burn-backend-extension-0.22.1/src/lib.rs` (`backend_extension`: the
//! macro routes `Dispatch` calls to the impl of the tensor's backend, `Autodiff` routes to our
//! `Autodiff<B, C>` impl, and it generates no backward itself), `burn-0.22.1/tests/
//! backend_extension_runtime.rs` (`autodiff_gradients`: a custom `Backward` over an extension op),
//! `burn-autodiff-0.22.1/src/ops/backward.rs` (`Backward::prepare` → `OpsKind::Tracked` /
//! `UnTracked`).

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::tensor::{Shape, TensorData};

use super::cpu::{self, AttnShape};

/// The fused ops. Every tensor is f32; shapes as in the `kernels` module functions.
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// LayerNorm over the last dimension with weight and bias.
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
    /// `gelu(x + bias)` (erf GELU), `bias` over the last dimension.
    fn fused_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `silu(z1) · z2` with `[z1 | z2] = x + bias` split on the last dimension.
    fn fused_bias_swiglu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Softmax over the last dimension.
    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Multi-head attention from `qkv` `[B, N, 3·D]` to `[B, N, D]` (heads merged).
    fn fused_qkv_attention(qkv: FloatTensor<Self>, heads: usize, scale: f64) -> FloatTensor<Self>;
    /// Soft cross-entropy per row, `−Σ_k t[k] · log_softmax(s · inv_temp)[k]`, of logits `s`
    /// `[..., K]` against targets `t` (same shape) → `[...]`. No gradient reaches `t`.
    fn fused_soft_cross_entropy(
        s: FloatTensor<Self>,
        t: FloatTensor<Self>,
        inv_temp: f64,
    ) -> FloatTensor<Self>;
}

// ------------------------------------------------------------------------------------------------
// Flex tensor plumbing

/// A contiguous f32 tensor (copies only if the input is a strided view).
fn dense(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

fn data(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("fused kernels take contiguous f32 tensors (checked by the kernels module)")
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().iter().copied().collect()
}

fn tensor(v: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, Shape::from(shape)))
}

fn last_dim(t: &FlexTensor) -> usize {
    *t.layout()
        .shape()
        .last()
        .expect("fused kernels need rank ≥ 1")
}

fn attn_shape(qkv: &FlexTensor, heads: usize) -> AttnShape {
    let s = dims(qkv);
    assert!(
        s.len() == 3 && s[2].is_multiple_of(3 * heads),
        "qkv {s:?} is not [B, N, 3·D] for {heads} heads"
    );
    AttnShape {
        batch: s[0],
        seq: s[1],
        heads,
        head_dim: s[2] / (3 * heads),
    }
}

// ------------------------------------------------------------------------------------------------
// Forward computations shared by both impls (they return what the backward needs).

fn ln_forward(
    x: &FlexTensor,
    g: &FlexTensor,
    b: &FlexTensor,
    eps: f64,
) -> (FlexTensor, Vec<f32>, Vec<f32>) {
    let d = last_dim(x);
    let xs = data(x);
    let rows = xs.len() / d.max(1);
    let mut y = vec![0f32; xs.len()];
    let (mut mean, mut rstd) = (vec![0f32; rows], vec![0f32; rows]);
    cpu::layer_norm_fwd(
        xs,
        data(g),
        data(b),
        eps as f32,
        &mut y,
        &mut mean,
        &mut rstd,
    );
    (tensor(y, dims(x)), mean, rstd)
}

fn gelu_forward(x: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let mut y = vec![0f32; data(x).len()];
    cpu::bias_gelu_fwd(data(x), data(b), &mut y);
    tensor(y, dims(x))
}

fn swiglu_forward(x: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let mut shape = dims(x);
    let last = shape.len() - 1;
    shape[last] /= 2;
    let mut y = vec![0f32; data(x).len() / 2];
    cpu::bias_swiglu_fwd(data(x), data(b), &mut y);
    tensor(y, shape)
}

fn softmax_forward(x: &FlexTensor) -> FlexTensor {
    let mut y = vec![0f32; data(x).len()];
    cpu::softmax_fwd(data(x), last_dim(x), &mut y);
    tensor(y, dims(x))
}

fn attention_forward(qkv: &FlexTensor, heads: usize, scale: f64) -> (FlexTensor, Vec<f32>) {
    let s = attn_shape(qkv, heads);
    let mut out = vec![0f32; s.batch * s.seq * s.heads * s.head_dim];
    let mut lse = vec![0f32; s.batch * s.heads * s.seq];
    cpu::attention_fwd(data(qkv), s, scale as f32, &mut out, &mut lse);
    (tensor(out, vec![s.batch, s.seq, s.heads * s.head_dim]), lse)
}

/// The per-row losses (shape = `s` without its last dimension) and the `(lse, tsum)` rows the
/// backward needs.
fn soft_ce_forward(s: &FlexTensor, t: &FlexTensor, inv_temp: f64) -> (FlexTensor, CeStats) {
    let (sd, td) = (dims(s), dims(t));
    assert_eq!(
        sd, td,
        "soft cross-entropy: logits {sd:?} vs targets {td:?}"
    );
    let k = last_dim(s);
    let rows = data(s).len() / k.max(1);
    let (mut loss, mut lse, mut tsum) = (vec![0f32; rows], vec![0f32; rows], vec![0f32; rows]);
    cpu::soft_ce_fwd(
        data(s),
        data(t),
        k,
        inv_temp as f32,
        &mut loss,
        &mut lse,
        &mut tsum,
    );
    (
        tensor(loss, sd[..sd.len() - 1].to_vec()),
        Arc::new((lse, tsum)),
    )
}

/// Per row: log-sum-exp of the scaled logits and the target mass.
type CeStats = Arc<(Vec<f32>, Vec<f32>)>;

impl FusedOps for Flex {
    fn fused_layer_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        eps: f64,
    ) -> FlexTensor {
        ln_forward(&dense(x), &dense(gamma), &dense(beta), eps).0
    }

    fn fused_bias_gelu(x: FlexTensor, bias: FlexTensor) -> FlexTensor {
        gelu_forward(&dense(x), &dense(bias))
    }

    fn fused_bias_swiglu(x: FlexTensor, bias: FlexTensor) -> FlexTensor {
        swiglu_forward(&dense(x), &dense(bias))
    }

    fn fused_softmax(x: FlexTensor) -> FlexTensor {
        softmax_forward(&dense(x))
    }

    fn fused_qkv_attention(qkv: FlexTensor, heads: usize, scale: f64) -> FlexTensor {
        attention_forward(&dense(qkv), heads, scale).0
    }

    fn fused_soft_cross_entropy(s: FlexTensor, t: FlexTensor, inv_temp: f64) -> FlexTensor {
        soft_ce_forward(&dense(s), &dense(t), inv_temp).0
    }
}

// ------------------------------------------------------------------------------------------------
// Backward nodes

/// Reduces a `[d]` gradient back to the parameter's shape (it is `[d]` already; kept as a tensor).
fn vec_tensor(v: Vec<f32>) -> FlexTensor {
    let n = v.len();
    tensor(v, vec![n])
}

#[derive(Debug)]
struct LayerNormBackward;

#[derive(Clone, Debug)]
struct LayerNormState {
    x: FlexTensor,
    gamma: FlexTensor,
    stats: Arc<(Vec<f32>, Vec<f32>)>,
}

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, ng, nb] = ops.parents;
        let dy = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        let mut dx = vec![0f32; data(&st.x).len()];
        let (dg, db) = cpu::layer_norm_bwd(
            data(&st.x),
            data(&st.gamma),
            &st.stats.0,
            &st.stats.1,
            data(&dy),
            &mut dx,
        );
        if let Some(n) = nx {
            grads.register::<Flex>(n.id, tensor(dx, dims(&st.x)));
        }
        if let Some(n) = ng {
            grads.register::<Flex>(n.id, vec_tensor(dg));
        }
        if let Some(n) = nb {
            grads.register::<Flex>(n.id, vec_tensor(db));
        }
    }
}

/// Backward of `f(x + bias)` for the elementwise-with-bias ops: state = (x, bias).
#[derive(Debug)]
struct BiasActBackward {
    swiglu: bool,
}

impl Backward<Flex, 2> for BiasActBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx, nb] = ops.parents;
        let dy = dense(grads.consume::<Flex>(&ops.node));
        let (x, b) = ops.state;
        let mut dx = vec![0f32; data(&x).len()];
        let db = if self.swiglu {
            cpu::bias_swiglu_bwd(data(&x), data(&b), data(&dy), &mut dx)
        } else {
            cpu::bias_gelu_bwd(data(&x), data(&b), data(&dy), &mut dx)
        };
        if let Some(n) = nx {
            grads.register::<Flex>(n.id, tensor(dx, dims(&x)));
        }
        if let Some(n) = nb {
            grads.register::<Flex>(n.id, vec_tensor(db));
        }
    }
}

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    /// The softmax output.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nx] = ops.parents;
        let dy = dense(grads.consume::<Flex>(&ops.node));
        let y = ops.state;
        if let Some(n) = nx {
            let mut dx = vec![0f32; data(&y).len()];
            cpu::softmax_bwd(data(&y), data(&dy), last_dim(&y), &mut dx);
            grads.register::<Flex>(n.id, tensor(dx, dims(&y)));
        }
    }
}

#[derive(Debug)]
struct AttentionBackward;

#[derive(Clone, Debug)]
struct AttentionState {
    qkv: FlexTensor,
    out: FlexTensor,
    lse: Arc<Vec<f32>>,
    heads: usize,
    scale: f64,
}

impl Backward<Flex, 1> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [nq] = ops.parents;
        let dout = dense(grads.consume::<Flex>(&ops.node));
        let st = ops.state;
        if let Some(n) = nq {
            let s = attn_shape(&st.qkv, st.heads);
            let mut dqkv = vec![0f32; data(&st.qkv).len()];
            cpu::attention_bwd(
                data(&st.qkv),
                s,
                st.scale as f32,
                data(&st.out),
                &st.lse,
                data(&dout),
                &mut dqkv,
            );
            grads.register::<Flex>(n.id, tensor(dqkv, dims(&st.qkv)));
        }
    }
}

#[derive(Debug)]
struct SoftCeBackward;

#[derive(Clone, Debug)]
struct SoftCeState {
    s: FlexTensor,
    t: FlexTensor,
    stats: CeStats,
    inv_temp: f64,
}

impl Backward<Flex, 1> for SoftCeBackward {
    type State = SoftCeState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [ns] = ops.parents;
        let dloss = dense(grads.consume::<Flex>(&ops.node));
        let mut st = ops.state;
        if let Some(n) = ns {
            let (k, shape) = (last_dim(&st.s), dims(&st.s));
            let (lse, tsum) = (&st.stats.0, &st.stats.1);
            let inv_temp = st.inv_temp as f32;
            let len = data(&st.s).len();
            // The state owns the logits and nothing reads them after this node: when no other
            // tensor shares their buffer (row slices of one head output do) and they span it
            // exactly, the gradient overwrites them in place instead of a fresh `[rows, K]` buffer.
            let in_place = st.s.is_unique() && st.s.bytes().len() == len * 4;
            if in_place && let Some(s_ds) = st.s.try_storage_mut::<f32>() {
                cpu::soft_ce_bwd_inplace(s_ds, data(&st.t), k, inv_temp, lse, tsum, data(&dloss));
                grads.register::<Flex>(n.id, st.s);
            } else {
                let mut ds = vec![0f32; len];
                cpu::soft_ce_bwd(
                    data(&st.s),
                    data(&st.t),
                    k,
                    inv_temp,
                    lse,
                    tsum,
                    data(&dloss),
                    &mut ds,
                );
                grads.register::<Flex>(n.id, tensor(ds, shape));
            }
        }
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn fused_layer_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        let prep = LayerNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (xp, gp, bp) = (
            dense(x.into_primitive()),
            dense(gamma.into_primitive()),
            dense(beta.into_primitive()),
        );
        match prep {
            OpsKind::Tracked(prep) => {
                let (y, mean, rstd) = ln_forward(&xp, &gp, &bp, eps);
                let state = LayerNormState {
                    x: xp,
                    gamma: gp,
                    stats: Arc::new((mean, rstd)),
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(ln_forward(&xp, &gp, &bp, eps).0),
        }
    }

    fn fused_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        bias_act::<C>(x, bias, false)
    }

    fn fused_bias_swiglu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        bias_act::<C>(x, bias, true)
    }

    fn fused_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let y = softmax_forward(&dense(x.into_primitive()));
        match prep {
            OpsKind::Tracked(prep) => prep.finish(y.clone(), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    fn fused_qkv_attention(qkv: FloatTensor<Self>, heads: usize, scale: f64) -> FloatTensor<Self> {
        let prep = AttentionBackward
            .prepare::<C>([qkv.node()])
            .compute_bound()
            .stateful();
        let qp = dense(qkv.into_primitive());
        let (out, lse) = attention_forward(&qp, heads, scale);
        match prep {
            OpsKind::Tracked(prep) => {
                let state = AttentionState {
                    qkv: qp,
                    out: out.clone(),
                    lse: Arc::new(lse),
                    heads,
                    scale,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fused_soft_cross_entropy(
        s: FloatTensor<Self>,
        t: FloatTensor<Self>,
        inv_temp: f64,
    ) -> FloatTensor<Self> {
        // Only the logits are a parent: the targets are constants of the loss (teacher output).
        let prep = SoftCeBackward
            .prepare::<C>([s.node()])
            .compute_bound()
            .stateful();
        let (sp, tp) = (dense(s.into_primitive()), dense(t.into_primitive()));
        let (loss, stats) = soft_ce_forward(&sp, &tp, inv_temp);
        match prep {
            OpsKind::Tracked(prep) => prep.finish(
                SoftCeState {
                    s: sp,
                    t: tp,
                    stats,
                    inv_temp,
                },
                loss,
            ),
            OpsKind::UnTracked(prep) => prep.finish(loss),
        }
    }
}

fn bias_act<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    bias: FloatTensor<Autodiff<Flex, C>>,
    swiglu: bool,
) -> FloatTensor<Autodiff<Flex, C>> {
    let prep = BiasActBackward { swiglu }
        .prepare::<C>([x.node(), bias.node()])
        .compute_bound()
        .stateful();
    let (xp, bp) = (dense(x.into_primitive()), dense(bias.into_primitive()));
    let y = if swiglu {
        swiglu_forward(&xp, &bp)
    } else {
        gelu_forward(&xp, &bp)
    };
    match prep {
        OpsKind::Tracked(prep) => prep.finish((xp, bp), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}
