// The row-wise (softmax) engine, CUDA kernels and launchers.  The math is csrc/kernels/rowwise.h
// (shared with the C++ CPU kernels of csrc/cpu/rowwise.cpp); the calling convention is in
// csrc/fastloss.cpp, the float64 spec in fastloss/reference/rowwise.py.
//
// One kernel template (forward / backward) over the rows of the (B, C, S) view, read in place
// with its strides; its two shapes are one runtime parameter, the lanes per row G:
//   G = 1     class axis strided (contiguous NCHW, (N, C, d1, ...)): one thread per row;
//             adjacent threads own adjacent pixels, so every class step is a coalesced load.
//   G = 2-32  class axis contiguous ((N, C), channels_last): the next power of two >= C, at
//             most a warp; lane j owns classes j, j + G, j + 2G, ... (a warp load covers G
//             adjacent classes of 32 / G rows).  Long class axes are plain loops (C up to 2^24: the op checks).
// Each lane runs an online softmax over its classes (more than kSumBlock of them: in blocks whose
// states are merged as the lanes' are, below), loading kUnroll classes before using them
// (memory-level parallelism): running max m and first argmax, rest = the sum of the other
// exponentials (rescaled by exp(m_old - m_new) on a max change), and the dense-target sums of
// the header (dsum shifted by dmass (m_new - m_old)).  The G states of a row are merged by xor
// shuffles with the header's merge rule (on a tie of the max the lower class index keeps the
// argmax); the rule is symmetric in its two operands, so every lane ends with the same bits.
// finish_row() gives the row's loss and its U, E, F; the gradient pass then re-reads the row
// (just read by the same threads: mostly L1/L2 hits) and writes g_k.
//
// Bytes per element of x (class labels; probs / teacher targets add the same per target element):
//   forward (reduced or per row): read x once -- NLL reads only x at the label;
//   backward (recompute: fastloss/_backend.py STORE_GRAD_IN_FORWARD is False on GPUs): read x
//   twice, write g in input's dtype; forward with_grad: read x twice, write g in the
//   accumulation dtype.  Per row: the label (or bins value, sample weight, upstream gradient).
// Ignored rows (label == ignore_index, < 0 or >= C: CUDA labels are not checked, that would
// take a host sync) read no logits, add exactly 0 to the sums and get a gradient of exactly 0.
// Bins targets are clamped to [0, min(bins_hi, C - 1)] before they pick classes.
// Deterministic: each thread adds its rows' losses in a fixed order, block_sum() (fixed-order
// shuffles) gives one partial per block, and one at::sum in double adds the partials -- their
// count depends on the problem (shape and class stride: G) only, not the GPU; no float atomics.  The backward's scalar upstream
// gradient is read on the device (no host sync).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>

#include "fastloss/cuda_reduce.cuh"
#include "kernels/rowwise.h"

namespace fastloss {
namespace {

using rowwise::Args;
using rowwise::View;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;            // classes a lane loads before it uses them
// A lane with more than kSumBlock classes sums them in blocks, each in a state of its own merged
// into the lane's (the kernel's kBlocked instances): with G = 1 one thread walks the whole class
// axis, and a sequential fp32 sum over C = 1e5 classes is off by ~7e-6 relative in the loss;
// blocks keep the error at ~(kSumBlock + C / (G kSumBlock)) ulp, as the CPU kernels' blocks do
// (csrc/cpu/rowwise.cpp kSumBlock).  Only there: the second live state costs registers (ptxas,
// fp32 / fp16 / bf16: 80 registers and 44-72 B of spills on sm_90; the plain instances keep
// 74-80 registers and no spills, as before the blocks).  A multiple of kUnroll.
constexpr int64_t kSumBlock = 256;
constexpr int kWarp = 32;
constexpr int64_t kMaxBlocks = 8192;  // fixed cap (not SM-dependent): the partial count depends on the problem, not the GPU

// The kernel's pointers (nullptr where absent).
template <typename scalar_t, typename label_t>
struct Ptrs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  const scalar_t* t;       // per-class target: probabilities or teacher logits
  const label_t* labels;   // (B S) class labels
  const acc_t* bins;       // (B S) bins target
  const acc_t* w;          // (C) class weights
  const acc_t* alpha;      // (C) focal alpha per class
  const acc_t* sw;         // (B S) sample weights
  const acc_t* up_scalar;  // backward of the sums: the 0-d upstream gradient (device memory)
  const scalar_t* up_row;  // backward per row: (B S) upstream gradients
  scalar_t* out_row;       // forward, reduction 0: (B S) losses
  acc_t* partial;          // forward, reduced: (blocks, 3) sums
  acc_t* grad_acc;         // forward with_grad: dL/dx in the accumulation dtype
  scalar_t* grad_in;       // backward: dL/dx in input's dtype
};

// The launch's uniform facts (every branch on them is taken by the whole grid alike).
struct Dims {
  View x, t, g;         // strides of input, of a per-class target, of the gradient
  int64_t S, C, rows;   // rows = B S
  int lanes;            // G, a power of two <= 32
  int loss, kind;
  bool label_dense;     // labels with the dense sums (smoothing or Poly-1)
  bool with_uni;        // labels: a_c has the smoothing term (s r / C) w_c
  bool has_ignore;
  int64_t ignore_index;
};

// A row's per-row data (the CPU's RowData).
template <typename acc_t>
struct RowIn {
  bool valid;      // false: ignored, or a slot past the last row
  int64_t label;   // the label as an index (-1: none)
  acc_t y;         // label (labels) or left bin (bins) as acc_t; -1: none
  acc_t wy, ay;    // class weight and focal alpha at the label
  acc_t r;         // sample weight, 0 where invalid
  acc_t wl, wr;    // the bins' weights
};

template <typename scalar_t, typename label_t, typename acc_t>
__device__ __forceinline__ RowIn<acc_t> row_in(const Ptrs<scalar_t, label_t>& p, const Dims& d, const rowwise::Params<acc_t>& prm,
                                               acc_t bins_hi, int64_t row, bool active) {
  RowIn<acc_t> in{active, -1, acc_t(-1), acc_t(1), prm.alpha, acc_t(0), acc_t(0), acc_t(0)};
  if (!active) return in;
  if (d.kind == rowwise::kLabels) {
    const int64_t l = static_cast<int64_t>(p.labels[row]);
    in.valid = !(d.has_ignore && l == d.ignore_index) && l >= 0 && l < d.C;
    if (in.valid) {
      in.label = l;
      in.y = static_cast<acc_t>(l);
      if (p.w != nullptr) in.wy = p.w[l];
      if (p.alpha != nullptr) in.ay = p.alpha[l];
    }
  } else if (d.kind == rowwise::kBins) {
    rowwise::bins_of(p.bins[row], bins_hi, in.y, in.wl, in.wr);
  }
  if (in.valid) in.r = p.sw != nullptr ? p.sw[row] : acc_t(1);
  return in;
}

// A lane's online state over its classes (the header's Stats, relative to the running maxima):
// x at the label / bins is 0 in the lanes that do not own those classes (merged by addition);
// amax / amaxz start at the lane's first class, so no two lanes' states ever tie on (m, amax).
template <typename acc_t>
struct State {
  acc_t m, rest, dsum, dmass, dexp, ent, xa, xb;
  acc_t mz, restz, ez;  // teacher logits
  int64_t amax, amaxz;
};

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() {
  return -std::numeric_limits<acc_t>::infinity();
}

// The state of no classes yet; `first`: the first class it will see (its argmax until a finite max).
template <typename acc_t>
__device__ __forceinline__ State<acc_t> empty_state(int64_t first) {
  return State<acc_t>{neg_inf<acc_t>(), acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0), acc_t(0),
                      neg_inf<acc_t>(), acc_t(0), acc_t(0), first, first};
}

// x_c (class c) joins the state (rowwise::softmax_push); returns exp(x_c - m) for the updated max
// m.  A new max rescales dexp by exp(m_old - m_new) and moves dsum to the new reference point.
template <typename acc_t>
__device__ __forceinline__ acc_t push_x(State<acc_t>& s, int64_t c, acc_t x) {
  const acc_t m_old = s.m;
  acc_t sc;
  const acc_t e = rowwise::softmax_push(s.m, s.rest, s.amax, c, x, sc);
  if (x > m_old) {
    s.dexp = s.dexp * sc;
    // the dense terms so far are relative to the old max; at m_old = -inf every one of them was
    // a -inf (or NaN) logit, whose term is already +inf (NaN), or 0 without target mass
    if (s.dmass != acc_t(0) && m_old != neg_inf<acc_t>()) s.dsum = s.dsum + s.dmass * (x - m_old);
  }
  return e;
}

// The dense target d of a class joins the sums (after push_x, e = exp(x - m)).  A -inf logit's
// term d (m - x) is +inf with mass whatever m is; it is taken against 0, as m may still be -inf.
template <typename acc_t>
__device__ __forceinline__ void push_dense(State<acc_t>& s, acc_t d, acc_t x, acc_t e) {
  s.dsum = s.dsum + rowwise::dense_term(d, x == neg_inf<acc_t>() ? acc_t(0) : s.m, x);
  s.dmass = s.dmass + d;
  s.dexp = s.dexp + d * e;
}

// A teacher logit z_c (with the student's x_c) joins the teacher sums, as push_x does for x;
// ez takes exp(z - mz) (z - x) as the spec does (0 for a masked class z = -inf).  A rescale
// factor that underflowed to 0 drops the old ez outright: a masked student class (x = -inf)
// makes it +inf, and inf * 0 would be NaN where the spec (final max first) has 0.
template <typename acc_t>
__device__ __forceinline__ void push_z(State<acc_t>& s, int64_t c, acc_t z, acc_t x) {
  acc_t sc;
  const acc_t e = rowwise::softmax_push(s.mz, s.restz, s.amaxz, c, z, sc);
  s.ez = sc == acc_t(0) ? acc_t(0) : s.ez * sc;  // sc = 1 (exact) unless the max changed
  s.ez = s.ez + rowwise::dense_term(e, z, x);    // 0 for a masked teacher class (z = -inf: e = 0), not 0 * -inf
}

// The header's merge rule for two lanes' states.  Which one is "hi" (the larger max; on a tie
// the lower argmax class) does not depend on the operands' order and every sum is formed from
// (hi, lo), so both lanes of a shuffle pair compute the same bits.  A state whose max is -inf
// (no classes, or only -inf / NaN logits) has nothing to rescale: its rest and dexp are 0 (or
// NaN), its dense terms already +inf (or NaN).
template <typename acc_t>
__device__ __forceinline__ State<acc_t> merge(const State<acc_t>& a, const State<acc_t>& b, bool teacher) {
  State<acc_t> o;
  const bool b_hi = b.m > a.m || (b.m == a.m && b.amax < a.amax);
  const State<acc_t>& hi = b_hi ? b : a;
  const State<acc_t>& lo = b_hi ? a : b;
  const acc_t e = lo.m == neg_inf<acc_t>() ? acc_t(0) : fl::exp(lo.m - hi.m);
  o.m = hi.m;
  o.amax = hi.amax;
  o.rest = hi.rest + (lo.rest + acc_t(1)) * e;  // lo's own max joins the others
  o.dexp = hi.dexp + lo.dexp * e;
  const bool shift = lo.dmass != acc_t(0) && lo.m != neg_inf<acc_t>();
  o.dsum = (hi.dsum + lo.dsum) + (shift ? lo.dmass * (hi.m - lo.m) : acc_t(0));
  o.dmass = hi.dmass + lo.dmass;
  o.ent = hi.ent + lo.ent;
  o.xa = hi.xa + lo.xa;
  o.xb = hi.xb + lo.xb;
  o.mz = a.mz;
  o.restz = a.restz;
  o.ez = a.ez;
  o.amaxz = a.amaxz;
  if (teacher) {
    const bool bz_hi = b.mz > a.mz || (b.mz == a.mz && b.amaxz < a.amaxz);
    const State<acc_t>& hz = bz_hi ? b : a;
    const State<acc_t>& lz = bz_hi ? a : b;
    const acc_t ez = lz.mz == neg_inf<acc_t>() ? acc_t(0) : fl::exp(lz.mz - hz.mz);
    o.mz = hz.mz;
    o.amaxz = hz.amaxz;
    o.restz = hz.restz + (lz.restz + acc_t(1)) * ez;
    o.ez = hz.ez + (ez == acc_t(0) ? acc_t(0) : lz.ez * ez);  // as push_z: an underflowed scale drops the term
  }
  return o;
}

template <typename V>
__device__ __forceinline__ V xor_lane(V v, int o) {
  return __shfl_xor_sync(0xffffffffu, v, o);
}

// The class loop of rowwise_kernel's forward sweep: lane classes FROM, FROM + G, ... below TO
// join the State ACC.  A macro, not a lambda: with the loop in a lambda, or in a one-pass outer
// loop, ptxas moved some plain (kBlocked false) instances from ~78 registers without spills to
// 64 registers with 40-72 B of spills; with the macro they keep the old allocation.
#define FL_ROWWISE_CLASS_LOOP(ACC, FROM, TO) \
  for (int64_t c0 = (FROM); c0 < (TO); c0 += step) {                                  \
    acc_t xs[kUnroll], ts[kUnroll];                                                   \
    _Pragma("unroll")                                                                 \
    for (int k = 0; k < kUnroll; ++k) {  /* all loads first */                        \
      const int64_t c = c0 + static_cast<int64_t>(k) * G;                             \
      const bool ok = c < d.C;                                                        \
      xs[k] = ok ? static_cast<acc_t>(xr[c * d.x.sc]) * prm.in_scale : acc_t(0);      \
      ts[k] = (ok && tr != nullptr) ? static_cast<acc_t>(tr[c * d.t.sc]) : acc_t(0);  \
    }                                                                                 \
    _Pragma("unroll")                                                                 \
    for (int k = 0; k < kUnroll; ++k) {                                               \
      const int64_t c = c0 + static_cast<int64_t>(k) * G;                             \
      if (c >= d.C) break;                                                            \
      const acc_t x = xs[k];                                                          \
      if (labels || bins) {                                                           \
        const acc_t cf = static_cast<acc_t>(c);                                       \
        if (cf == in.y) (ACC).xa = x;                                                 \
        if (bins && cf == in.y + acc_t(1)) (ACC).xb = x;                              \
      }                                                                               \
      const acc_t e = push_x((ACC), c, x);                                            \
      if (d.label_dense) {                                                            \
        push_dense((ACC), p.w != nullptr ? p.w[c] : acc_t(1), x, e);                  \
      } else if (probs) {                                                             \
        const acc_t t = ts[k];                                                        \
        acc_t dc = t;  /* KL: d = t */                                                \
        if (kl) {                                                                     \
          (ACC).ent = (ACC).ent + rowwise::xlogx(t);                                  \
        } else {                                                                      \
          dc = t * prm.keep + prm.uniform;                                            \
          if (p.w != nullptr) dc = dc * p.w[c];                                       \
        }                                                                             \
        push_dense((ACC), dc, x, e);                                                  \
      } else if (teacher) {                                                           \
        push_z((ACC), c, ts[k] * prm.in_scale, x);                                    \
      }                                                                               \
    }                                                                                 \
  }

template <typename scalar_t, typename label_t, bool kBackward, bool kBlocked>
__global__ void __launch_bounds__(kThreads) rowwise_kernel(Ptrs<scalar_t, label_t> p, Dims d, rowwise::Params<at::opmath_type<scalar_t>> prm) {
  using acc_t = at::opmath_type<scalar_t>;
  const int G = d.lanes;
  const int lane = static_cast<int>(threadIdx.x) % G;
  const int64_t per_block = kThreads / G;  // rows per block and pass
  const int64_t step = static_cast<int64_t>(G) * kUnroll;
  const bool softmax = d.loss != rowwise::kNLL;
  const bool labels = d.kind == rowwise::kLabels, probs = d.kind == rowwise::kProbs, bins = d.kind == rowwise::kBins,
             teacher = d.kind == rowwise::kTeacher;
  const bool kl = d.loss == rowwise::kKLDiv;
  const bool dense = d.label_dense || probs;
  const acc_t last = static_cast<acc_t>(d.C - 1);
  const acc_t bins_hi = last < prm.bins_hi ? last : prm.bins_hi;  // never past the last bin
  const acc_t up_scalar = (kBackward && p.up_scalar != nullptr) ? *p.up_scalar : acc_t(1);
  const acc_t grad_scale = prm.in_scale * prm.out_scale;
  const bool write_grad = kBackward || p.grad_acc != nullptr;
  acc_t sum_loss = acc_t(0), sum_w = acc_t(0), sum_n = acc_t(0);
  // the slot base is uniform over the block: every thread takes every pass (shuffles, block_sum)
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * per_block; base < d.rows; base += static_cast<int64_t>(gridDim.x) * per_block) {
    const int64_t row = base + static_cast<int64_t>(threadIdx.x) / G;
    const bool active = row < d.rows;
    const RowIn<acc_t> in = row_in(p, d, prm, bins_hi, row, active);
    const int64_t b = active ? row / d.S : 0;
    const int64_t s = active ? row - b * d.S : 0;
    const scalar_t* xr = p.x + b * d.x.sb + s * d.x.ss;
    const scalar_t* tr = p.t != nullptr ? p.t + b * d.t.sb + s * d.t.ss : nullptr;
    State<acc_t> st = empty_state<acc_t>(lane);
    if (softmax) {
      if constexpr (kBlocked) {
        // a lane with more than kSumBlock classes: blocks of kSumBlock, each summed in a state of
        // its own and merged into st (the merge rule keeps the first argmax: st holds the lower classes)
        const int64_t blk = step * (kSumBlock / kUnroll);
        for (int64_t c_blk = in.valid ? lane : d.C; c_blk < d.C; c_blk += blk) {
          State<acc_t> bs = empty_state<acc_t>(c_blk);
          const int64_t c_to = c_blk + blk < d.C ? c_blk + blk : d.C;
          FL_ROWWISE_CLASS_LOOP(bs, c_blk, c_to)
          st = c_blk == lane ? bs : merge(st, bs, teacher);
        }
      } else {
        FL_ROWWISE_CLASS_LOOP(st, in.valid ? lane : d.C, d.C)
      }
      for (int o = 1; o < G; o <<= 1) {  // butterfly over the row's lanes (G is uniform)
        State<acc_t> other = st;
        other.m = xor_lane(st.m, o);
        other.rest = xor_lane(st.rest, o);
        other.amax = xor_lane(st.amax, o);
        if (labels || bins) other.xa = xor_lane(st.xa, o);
        if (bins) other.xb = xor_lane(st.xb, o);
        if (dense) {
          other.dsum = xor_lane(st.dsum, o);
          other.dmass = xor_lane(st.dmass, o);
          other.dexp = xor_lane(st.dexp, o);
        }
        if (kl) other.ent = xor_lane(st.ent, o);
        if (teacher) {
          other.mz = xor_lane(st.mz, o);
          other.restz = xor_lane(st.restz, o);
          other.ez = xor_lane(st.ez, o);
          other.amaxz = xor_lane(st.amaxz, o);
        }
        st = merge(st, other, teacher);
      }
      // every logit -inf: the spec's exp(x - m) is NaN for each class but the argmax (CPU alike)
      if (in.valid && st.m == neg_inf<acc_t>() && d.C > 1) st.rest = std::numeric_limits<acc_t>::quiet_NaN();
    } else if (in.valid) {
      st.xa = static_cast<acc_t>(xr[in.label * d.x.sc]) * prm.in_scale;  // NLL: x at the label only
    }
    rowwise::Stats<acc_t> stats;
    stats.m = st.m;
    stats.rest = st.rest;
    stats.amax = static_cast<acc_t>(st.amax);
    stats.xa = st.xa;
    stats.xb = st.xb;
    stats.dsum = st.dsum;
    stats.dmass = st.dmass;
    stats.dexp = st.dexp;
    stats.ent = st.ent;
    stats.mz = st.mz;
    stats.restz = st.restz;
    stats.ez = st.ez;
    const rowwise::Row<acc_t> o = rowwise::finish_row(d.loss, d.kind, prm, stats, in.valid, in.r, in.y, in.wy, in.ay, in.wl, in.wr);
    if (!kBackward && active && lane == 0) {
      if (p.out_row != nullptr) {
        p.out_row[row] = static_cast<scalar_t>(o.loss);
      } else {
        sum_loss += o.loss;  // exactly 0 for an ignored row
        sum_w += in.valid ? in.wy : acc_t(0);
        sum_n += in.valid ? acc_t(1) : acc_t(0);
      }
    }
    if (!write_grad) continue;
    // the gradient pass: g_k = (U - (E + F) a_k) p_k - F a_k q_k (NLL: -a_k), times the scales
    acc_t scale = grad_scale * up_scalar;
    if (p.up_row != nullptr && in.valid) scale = scale * static_cast<acc_t>(p.up_row[row]);
    const acc_t hard = prm.keep * in.wy * in.r;  // keep = 1 for the focal loss and NLL
    const acc_t uni = prm.uniform * in.r;
    const acc_t rest_z = st.rest * o.inv_z;  // q of the argmax class, without cancellation
    const acc_t teacher_scale = in.r / (acc_t(1) + st.restz);
    const int64_t gb = b * d.g.sb + s * d.g.ss;
    for (int64_t c0 = active ? lane : d.C; c0 < d.C; c0 += step) {
      acc_t xs[kUnroll], ts[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {  // an ignored row loads nothing and stores zeros
        const int64_t c = c0 + static_cast<int64_t>(k) * G;
        const bool ok = in.valid && c < d.C;
        xs[k] = (ok && softmax) ? static_cast<acc_t>(xr[c * d.x.sc]) * prm.in_scale : acc_t(0);
        ts[k] = (ok && tr != nullptr) ? static_cast<acc_t>(tr[c * d.t.sc]) : acc_t(0);
      }
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        const int64_t c = c0 + static_cast<int64_t>(k) * G;
        if (c >= d.C) break;
        acc_t g = acc_t(0);
        if (in.valid) {
          const acc_t cf = static_cast<acc_t>(c);
          acc_t coef;
          if (labels) {
            coef = rowwise::label_coef(cf, in.y, hard, d.with_uni ? uni * (p.w != nullptr ? p.w[c] : acc_t(1)) : acc_t(0));
          } else if (probs) {
            acc_t dc = ts[k];
            if (!kl) {
              dc = ts[k] * prm.keep + prm.uniform;
              if (p.w != nullptr) dc = dc * p.w[c];
            }
            coef = in.r * dc;
          } else if (bins) {
            coef = rowwise::bins_coef(cf, in.y, in.r * in.wl, in.r * in.wr);
          } else {
            coef = teacher_scale * fl::exp(ts[k] * prm.in_scale - st.mz);
          }
          if (softmax) {
            const acc_t pk = fl::exp(xs[k] - st.m) * o.inv_z;
            const acc_t qk = c == st.amax ? rest_z : acc_t(1) - pk;
            // dense labels (smoothing, Poly-1): the label class's coefficient from finish_row (Cy)
            g = labels && d.label_dense ? rowwise::label_grad_elem(o, cf, in.y, pk, qk, coef) : rowwise::grad_elem(o, pk, qk, coef);
          } else {
            g = acc_t(0) - coef;
          }
          g = g * scale;
        }
        if constexpr (kBackward) {
          p.grad_in[gb + c * d.g.sc] = static_cast<scalar_t>(g);
        } else {
          p.grad_acc[gb + c * d.g.sc] = g;
        }
      }
    }
  }
  if (!kBackward && p.partial != nullptr) {
    sum_loss = block_sum<kThreads>(sum_loss);
    sum_w = block_sum<kThreads>(sum_w);
    sum_n = block_sum<kThreads>(sum_n);
    if (threadIdx.x == 0) {
      acc_t* out = p.partial + static_cast<int64_t>(blockIdx.x) * 3;
      out[0] = sum_loss;
      out[1] = sum_w;
      out[2] = sum_n;
    }
  }
}

#undef FL_ROWWISE_CLASS_LOOP

// Lanes per row and grid size of a call (from shapes and strides only).
struct Launch {
  int lanes;
  int64_t blocks;
};

Launch launch_of(const Args& a) {
  int g = 1;
  if (a.x.sc == 1) {
    while (g < kWarp && g < a.C) g *= 2;
  }
  const int64_t per_block = kThreads / g;
  const int64_t rows = a.B * a.S;
  return {g, std::max<int64_t>(1, std::min(kMaxBlocks, (rows + per_block - 1) / per_block))};
}

// Forward (kBackward = false): per-row losses into `out` (reduction 0) or the (blocks, 3)
// partial sums, and dL/dx of the summed loss into `grad` if defined.  Backward: dL/dx times the
// upstream gradient (0-d, or one per row) into `grad`.
template <typename scalar_t, typename label_t, bool kBackward>
void run(const Args& a, const Launch& l, const at::Tensor& upstream, const at::Tensor& out, const at::Tensor& grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const rowwise::Params<acc_t> prm = rowwise::params_from<acc_t>(a.params);
  Ptrs<scalar_t, label_t> p{};
  p.x = a.input.const_data_ptr<scalar_t>();
  if (a.target_kind == rowwise::kProbs || a.target_kind == rowwise::kTeacher) p.t = a.target.const_data_ptr<scalar_t>();
  if (a.target_kind == rowwise::kLabels) p.labels = a.target.const_data_ptr<label_t>();
  if (a.target_kind == rowwise::kBins) p.bins = a.target.const_data_ptr<acc_t>();
  if (a.class_weight.defined()) p.w = a.class_weight.const_data_ptr<acc_t>();
  if (a.class_alpha.defined()) p.alpha = a.class_alpha.const_data_ptr<acc_t>();
  if (a.sample_weight.defined()) p.sw = a.sample_weight.const_data_ptr<acc_t>();
  if constexpr (kBackward) {
    if (a.reduced) {
      p.up_scalar = upstream.const_data_ptr<acc_t>();
    } else {
      p.up_row = upstream.const_data_ptr<scalar_t>();
    }
    p.grad_in = grad.mutable_data_ptr<scalar_t>();
  } else {
    if (a.reduced) {
      p.partial = out.mutable_data_ptr<acc_t>();
    } else {
      p.out_row = out.mutable_data_ptr<scalar_t>();
    }
    if (grad.defined()) p.grad_acc = grad.mutable_data_ptr<acc_t>();
  }
  Dims d;
  d.x = a.x;
  d.t = a.t;
  d.g = grad.defined() ? rowwise::view_of(grad, a.fold) : View{};
  d.S = a.S;
  d.C = a.C;
  d.rows = a.B * a.S;
  d.lanes = l.lanes;
  d.loss = a.loss;
  d.kind = a.target_kind;
  // the dense sums of smoothed labels / Poly-1 (as the CPU kernels decide them)
  d.label_dense = a.target_kind == rowwise::kLabels && a.loss != rowwise::kNLL && a.loss != rowwise::kSoftmaxFocal &&
                  (prm.uniform != acc_t(0) || a.loss == rowwise::kPoly1CrossEntropy);
  d.with_uni = d.label_dense && prm.uniform != acc_t(0);
  d.has_ignore = a.has_ignore;
  d.ignore_index = a.ignore_index;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // blocked sums only where a lane walks more than kSumBlock classes (G = 1 with a long strided
  // class axis): every other call runs the kernel without the second state's registers
  if ((d.C + d.lanes - 1) / d.lanes > kSumBlock) {
    rowwise_kernel<scalar_t, label_t, kBackward, true><<<static_cast<unsigned>(l.blocks), kThreads, 0, stream>>>(p, d, prm);
  } else {
    rowwise_kernel<scalar_t, label_t, kBackward, false><<<static_cast<unsigned>(l.blocks), kThreads, 0, stream>>>(p, d, prm);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename F>
void dispatch_labels(const Args& a, const F& f) {
  if (a.target_kind != rowwise::kLabels) return f(static_cast<int64_t*>(nullptr));
  switch (a.target.scalar_type()) {
    case at::kByte: return f(static_cast<uint8_t*>(nullptr));
    case at::kInt: return f(static_cast<int32_t*>(nullptr));
    default: return f(static_cast<int64_t*>(nullptr));
  }
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& class_weight,
                                                const c10::optional<at::Tensor>& class_alpha, const c10::optional<at::Tensor>& sample_weight,
                                                int64_t loss, int64_t target_kind, c10::ArrayRef<double> params,
                                                c10::optional<int64_t> ignore_index, int64_t reduction, bool with_grad) {
  const c10::cuda::CUDAGuard guard(input.device());
  const Args a = rowwise::make_args(input, target, class_weight, class_alpha, sample_weight, loss, target_kind, params, ignore_index, reduction);
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_opt = input.options().dtype(acc);
  const Launch l = launch_of(a);
  at::Tensor out = a.reduced ? at::empty({l.blocks, 3}, acc_opt) : at::empty({input.size(0), input.size(2)}, input.options());
  at::Tensor grad = with_grad ? at::empty_like(input, acc_opt) : at::Tensor();
  const bool any_rows = a.B * a.S > 0;
  if (any_rows) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "rowwise_forward_cuda", [&] {
      dispatch_labels(a, [&](auto* tag) {
        using label_t = std::remove_pointer_t<decltype(tag)>;
        run<scalar_t, label_t, false>(a, l, at::Tensor(), out, grad);
      });
    });
  }
  if (!with_grad) grad = at::empty({0}, acc_opt);
  if (!a.reduced) return {out, grad};
  if (!any_rows) out.zero_();
  // the partials added in double (exact counts past 2^24 rows), then the accumulation dtype
  return {at::sum(out, {0}, /*keepdim=*/false, at::kDouble).to(acc), grad};
}

at::Tensor backward_cuda(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& class_weight,
                         const c10::optional<at::Tensor>& class_alpha, const c10::optional<at::Tensor>& sample_weight, int64_t loss,
                         int64_t target_kind, c10::ArrayRef<double> params, c10::optional<int64_t> ignore_index, int64_t reduction) {
  const c10::cuda::CUDAGuard guard(input.device());
  const Args a = rowwise::make_args(input, target, class_weight, class_alpha, sample_weight, loss, target_kind, params, ignore_index, reduction);
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (a.reduced) {
    TORCH_CHECK(grad.numel() == 1 && grad.scalar_type() == acc && grad.device() == input.device(),
                "fastloss rowwise: the upstream gradient of the sums must be a scalar in the accumulation dtype on input's device");
  } else {
    TORCH_CHECK(grad.is_contiguous() && grad.numel() == a.B * a.S && grad.scalar_type() == input.scalar_type() && grad.device() == input.device(),
                "fastloss rowwise: the upstream gradient must be one contiguous value per row in input's dtype, on input's device");
  }
  at::Tensor out = at::empty_like(input);
  if (out.numel() == 0) return out;
  const Launch l = launch_of(a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "rowwise_backward_cuda", [&] {
    dispatch_labels(a, [&](auto* tag) {
      using label_t = std::remove_pointer_t<decltype(tag)>;
      run<scalar_t, label_t, true>(a, l, grad, at::Tensor(), out);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("rowwise_forward_native", &forward_cuda);
  m.impl("rowwise_backward_native", &backward_cuda);
}

}  // namespace fastloss
