// The row-wise (softmax) engine's losses: the math of one row of C logits -- the class axis
// of (N, C, d1, ..., dk) -- shared by csrc/cpu/rowwise.cpp and csrc/cuda/rowwise.cu.  The
// Triton twins are in triton_kernels/rowwise.py, the float64 spec in
// fastloss/reference/rowwise.py.  The Dice family's softmax passes take their cross-entropy
// terms from here (dense_term, dense_cross_entropy, cross_entropy_row, grad_elem).
//
// A row is x_0 .. x_{C-1} (times the input scale s_in = 1 / T: a temperature), its target is
//   labels   one class y per row (uint8 / int32 / int64), ignore_index, class weights w_c
//   probs    class probabilities t_c of input's shape (torch's soft targets)
//   bins     one continuous value per row (the distribution focal loss' two-bin target)
//   teacher  teacher logits z_c of input's shape (distillation: t = softmax(z s_in))
// and every loss is written through the "target vector" a_c of the row (r: the row's sample
// weight, 0 for an ignored row; s: label smoothing):
//   labels   a_c = r [(1 - s) w_y [c = y] + (s / C) w_c]
//   probs    a_c = r w_c ((1 - s) t_c + s / C)          (KL: a_c = r t_c)
//   bins     a_c = r [(yl + 1 - v) [c = yl] + (v - yl) [c = yl + 1]],  yl = floor(v)
//   teacher  a_c = r softmax(z s_in)_c
//
// Row statistics -- one sweep over the classes (online on GPUs: running max, rescaled sums;
// two sweeps over registers on the CPU), with d_c the "dense" part of a_c (w_c for smoothed
// labels, w_c ((1 - s) t_c + s / C) for probs, t_c for KL):
//   m = max_c x_c, amax its first index, rest = sum_{c != amax} exp(x_c - m)
//   (Z = 1 + rest, log Z = log1p(rest): 1 - p_amax = rest / Z without cancellation)
//   xa, xb  = x at the label (or the two bins)
//   dsum  = sum_c d_c (m - x_c) (terms with d_c = 0 skipped: 0, also for a masked -inf logit)
//   dmass = sum_c d_c,  dexp = sum_c d_c exp(x_c - m) (Poly-1),  ent = sum_c t_c log t_c (KL)
//   teacher: mz, restz as m, rest over z; ez = sum_c exp(z_c - mz) (z_c - x_c)
// Merging two partial states (GPU chunks): m = max(m1, m2); the state of the smaller max is
// rescaled by exp(m_small - m): rest += (1 + rest_small) e, dexp += dexp_small e,
// dsum += dsum_small + dmass_small (m - m_small); on a tie the earlier chunk keeps amax.
//
// finish_row() turns the statistics into the row's loss and three scalars U, E, F with which
// every gradient element is (d loss / d x_k, before the scales s_in, s_out and the upstream
// gradient)
//   g_k = (U - (E + F) a_k) p_k - F a_k q_k,   p_k = exp(x_k - m) / Z,  q_k = 1 - p_k
// (q_amax = rest / Z) -- any loss of log p has g_k = A' p_k - a'_k with a'_c = -dL/dlog p_c;
// this split keeps g free of cancellation where p_k -> 1.  Losses (per row, then times s_out):
//   cross entropy (torch's definition, smoothing and weights included):
//     L = sum_c a_c (lse - x_c) = sum_c a_c (m - x_c) + A log Z,  A = sum_c a_c
//     U = A, E = 0, F = 1
//   Poly-1 cross entropy (PolyLoss, Leng et al., arXiv 2204.12511):
//     L = CE + eps sum_c a_c (1 - p_c)  (eps (1 - p_y) for an unweighted hard label)
//     U = A + eps P, E = eps, F = 1,  P = sum_c a_c p_c
//   softmax focal (Lin et al., arXiv 1708.02002; mmcv's softmax_focal_loss) and its Poly-1 form:
//     L = r w_y [alpha_y q^gamma (-log p) + eps q^(gamma + 1)],  p = p_y, q = 1 - p
//     g = -p dL/dp / (r w_y) = alpha_y q^gamma (1 - gamma p log(p) / q) + eps (gamma + 1) q^gamma p
//     (log(p) / q -> -1 as q -> 0: finite for any gamma >= 0); U = r w_y g, E = 0, F = g
//     (its a_c = r w_y [c = y]: the labels form with s = 0)
//   NLL over log-probabilities x (torch's nll_loss): L = -sum_c a_c x_c, g_k = -a_k (no softmax)
//   distribution focal (Li et al., arXiv 2006.04388): cross entropy against the bins target
//   KL divergence (distillation): L = sum_c t_c (log t_c - log p_c) = CE + ent (probs), or
//     sum_c t_c (z_c - x_c) + (m + log Z) - (mz + log Zz) (teacher logits); g as CE
// Ignored rows (label = ignore_index; negative labels for the focal loss, as mmcv; a label
// outside [0, C) on an unchecked CUDA call) contribute exactly 0 to the loss, the normalisers
// and the gradient.  NaN in a row's logits propagates to its loss and gradient.
#pragma once

#include <limits>

#include "fastloss/common.h"
#include "kernels/pointwise.h"  // pow_q

namespace fastloss {
namespace rowwise {

// Codes shared with fastloss/ops/rowwise.py and triton_kernels/rowwise.py.
enum Loss : int { kCrossEntropy = 0, kNLL = 1, kSoftmaxFocal = 2, kPoly1CrossEntropy = 3, kKLDiv = 4, kNumLosses = 5 };
enum Target : int { kLabels = 0, kProbs = 1, kBins = 2, kTeacher = 3, kNumTargets = 4 };

constexpr int kNumParams = 8;

// The scalar parameters of one call, formed in double on the host (fastloss/ops/rowwise.py):
template <typename S>
struct Params {
  S keep;       // 1 - s (label smoothing s)
  S uniform;    // s / C
  S epsilon;    // Poly-1 epsilon
  S gamma;      // focal gamma
  S alpha;      // focal alpha (when no per-class alpha is given)
  S in_scale;   // 1 / T: the logits (and teacher logits) are x * in_scale
  S out_scale;  // the loss is times this (T^2 for distillation, else 1)
  S bins_hi;    // the bins target is clamped to [0, bins_hi] (ultralytics' DFLoss: C - 1.01)
};

template <typename S>
FL_HOST_DEVICE FL_INLINE Params<S> params_from(const double* p) {
  return Params<S>{static_cast<S>(p[0]), static_cast<S>(p[1]), static_cast<S>(p[2]), static_cast<S>(p[3]),
                   static_cast<S>(p[4]), static_cast<S>(p[5]), static_cast<S>(p[6]), static_cast<S>(p[7])};
}

// The statistics of one row (see the header comment); T is a lane type (scalar or Vectorized).
template <typename T>
struct Stats {
  T m, rest, amax;      // max, sum of the other exponentials, first argmax (as T)
  T xa, xb;             // x at the label / at the two bins
  T dsum, dmass, dexp;  // dense-target sums
  T ent;                // sum t log t (KL over probabilities)
  T mz, restz, ez;      // teacher logits
};

// What the gradient pass needs of a row, and its loss.
template <typename T>
struct Row {
  T loss;      // the row's loss, times s_out (exactly 0 for an ignored row)
  T U, E, F;   // g_k = (U - (E + F) a_k) p_k - F a_k q_k
  T inv_z;     // 1 / Z
  T Cy;        // labels: U - (E + F) a_y of the label class, formed without cancellation (label_grad_elem)
};

// d (m - x) for the dense sums: 0 where d = 0 (even for x = -inf, a masked logit)
template <typename T>
FL_HOST_DEVICE FL_INLINE T dense_term(const T& d, const T& m, const T& x) {
  const T zero(0);
  return fl::select(d == zero, zero, d * (m - x));
}

// The online softmax step of the GPU kernels -- their one softmax: this engine's CUDA rows
// (csrc/cuda/rowwise.cu, logits and teacher logits) and the Dice family's CUDA pixels
// (csrc/cuda/dice_kernels.cuh) run on it.  x (class c) joins the running max m, its first argmax
// amax and rest = sum_{c != amax} exp(x_c - m); returns exp(x - m) for the updated m, and
// `scale` = exp(m_old - m_new), the factor of sums kept relative to the old max (1 when m is
// unchanged, 0 at the first finite logit: m_old = -inf).  On a new max the old one joins rest.
// A masked -inf logit adds 0 (exp(-inf - m) with m = -inf would be NaN); NaN never becomes the
// max and makes rest NaN.  (The CPU kernels take the max in a sweep of its own first:
// csrc/cpu/rowwise.cpp, csrc/cpu/dice.cpp.)
template <typename T, typename I>
FL_HOST_DEVICE FL_INLINE T softmax_push(T& m, T& rest, I& amax, I c, T x, T& scale) {
  if (x > m) {
    scale = fl::exp(m - x);
    rest = (rest + T(1)) * scale;
    m = x;
    amax = c;
    return T(1);
  }
  scale = T(1);
  const T e = x == -std::numeric_limits<T>::infinity() ? T(0) : fl::exp(x - m);
  rest = rest + e;
  return e;
}

// The cross entropy of a row against a dense target vector d, sum_c d_c (lse - x_c), from
// dsum, dmass and log Z = log1p(rest) (no cancellation for a confident row).  With
// cross_entropy_row() and grad_elem() below this is the one softmax cross entropy of the
// project: the Dice family's CE term (csrc/cpu/dice.cpp, csrc/cuda/dice.cu) uses it too.
template <typename T>
FL_HOST_DEVICE FL_INLINE T dense_cross_entropy(const T& dsum, const T& dmass, const T& log_z) {
  return dsum + dmass * log_z;
}

// t log t, 0 at t = 0 (torch's xlogy)
template <typename T>
FL_HOST_DEVICE FL_INLINE T xlogx(const T& t) {
  const T zero(0);
  return fl::select(t == zero, zero, t * fl::log(fl::select(t == zero, T(1), t)));
}

// The bins target of a row: v clamped to [0, hi] (NaN stays NaN), its left bin yl = floor(v)
// (as T) and the weights wl = yl + 1 - v, wr = v - yl of bins yl and yl + 1 (mmdetection's form).
template <typename T>
FL_HOST_DEVICE FL_INLINE void bins_of(const T& v_in, const T& hi, T& yl, T& wl, T& wr) {
  const T v = fl::select(v_in < T(0), T(0), fl::select(v_in > hi, hi, v_in));
  yl = fl::floor(v);
  wl = (yl + T(1)) - v;
  wr = v - yl;
}

// The row's loss and gradient scalars from its statistics.  `valid`: a lane mask (false: an
// ignored row); r: the sample weight (1 without one); y: the label (labels) or left bin (bins)
// as T; wy: the class weight at the label (1 without class weights); ay: the focal alpha at the
// label; wl, wr: the bins' weights.
template <typename T, typename M, typename S>
FL_HOST_DEVICE FL_INLINE Row<T> finish_row(int loss, int target, const Params<S>& p, const Stats<T>& st, const M& valid, const T& r,
                                           const T& y, const T& wy, const T& ay, const T& wl, const T& wr) {
  const T zero(0), one(1);
  Row<T> o;
  // a +inf logit: the softmax and log Z are NaN (+inf - +inf), so are the loss and gradient, on
  // every backend the same and as torch's log_softmax -- not a loss of +inf where the sums left
  // the +inf class out (rest = 0), nor an infinite gradient from an exp of NaN that some vector
  // exps return as +inf
  const auto m_inf = st.m == T(std::numeric_limits<S>::infinity());
  const T nan(std::numeric_limits<S>::quiet_NaN());
  o.inv_z = fl::select(m_inf, nan, one / (one + st.rest));
  const T log_z = fl::select(m_inf, nan, fl::log1p(st.rest));
  const T eps(p.epsilon);
  T L = zero, U = zero, E = zero, F = one, Cy = zero;
  if (loss == kNLL) {  // log-probabilities in: L = -a_y x_y, g_k = -a_k
    L = zero - r * wy * st.xa;
  } else if (target == kLabels) {
    const T lse_y = (st.m - st.xa) + log_z;  // -log p_y without cancellation for a confident row
    const T py = fl::exp(st.xa - st.m) * o.inv_z;
    const T qy = fl::select(y == st.amax, st.rest * o.inv_z, one - py);
    if (loss == kSoftmaxFocal) {
      const T qg = pointwise::pow_q(qy, p.gamma);
      const T ratio = fl::select(qy > zero, (zero - lse_y) / fl::select(qy > zero, qy, one), T(-1));  // log(p) / q
      const T g = ay * qg * (one - T(p.gamma) * py * ratio) + T(p.epsilon * (p.gamma + S(1))) * qg * py;
      const T a = r * wy;
      L = a * (ay * qg * lse_y + eps * qg * qy);
      U = a * g;
      F = g;
    } else {  // cross entropy, Poly-1
      const T hard = T(p.keep) * wy * r, uni = T(p.uniform) * r;
      const T wyu = p.uniform != S(0) ? wy : zero;  // the smoothing's w_y (a_y = hard + uni w_y)
      L = hard * lse_y;
      U = hard;
      if (p.uniform != S(0)) {
        L = L + uni * dense_cross_entropy(st.dsum, st.dmass, log_z);
        U = U + uni * st.dmass;
        Cy = uni * (st.dmass - wyu);  // U - a_y: hard - hard cancels exactly here, not in rounding
      }
      if (loss == kPoly1CrossEntropy) {
        const T P = hard * py + uni * st.dexp * o.inv_z;
        const T a_minus_p = hard * qy + uni * (st.dmass - st.dexp * o.inv_z);  // sum_c a_c (1 - p_c)
        L = L + eps * a_minus_p;
        U = U + eps * P;
        E = eps;
        // + eps (P - a_y), with P - hard = -hard q_y + uni dexp / Z (p_y - 1 = -q_y: no cancellation
        // for a confident row, where U - (E + F) a_y would lose it all)
        Cy = Cy + eps * ((uni * st.dexp * o.inv_z - hard * qy) - uni * wyu);
      }
    }
  } else if (target == kProbs) {
    L = r * dense_cross_entropy(st.dsum, st.dmass, log_z);
    U = r * st.dmass;
    if (loss == kKLDiv) L = L + r * st.ent;
    if (loss == kPoly1CrossEntropy) {
      L = L + eps * r * (st.dmass - st.dexp * o.inv_z);
      U = U + eps * r * st.dexp * o.inv_z;
      E = eps;
    }
  } else if (target == kBins) {
    const T right = fl::select(wr == zero, zero, wr * ((st.m - st.xb) + log_z));  // wr = 0: bin yl + 1 may not exist
    L = r * (wl * ((st.m - st.xa) + log_z) + right);
    U = r * (wl + wr);
  } else {  // teacher logits: sum_c t_c (z_c - x_c) + (m + log Z) - (mz + log Zz)
    L = r * (st.ez / (one + st.restz) + (st.m - st.mz) + (log_z - fl::log1p(st.restz)));
    // an all-masked teacher row (every z = -inf) has no distribution: NaN, as the spec
    L = fl::select(st.mz == T(-std::numeric_limits<S>::infinity()), T(std::numeric_limits<S>::quiet_NaN()), L);
    U = r;
  }
  o.loss = fl::select(valid, L * T(p.out_scale), zero);
  o.U = fl::select(valid, U, zero);
  o.E = fl::select(valid, E, zero);
  o.F = fl::select(valid, F, zero);
  o.Cy = fl::select(valid, Cy, zero);
  return o;
}

// The target vector a_k of class k (as T) in the gradient pass.
//   labels: hard = (1 - s) w_y r at k = y, plus uni w_k (uni = s r / C; w_k = 1 without weights)
template <typename T>
FL_HOST_DEVICE FL_INLINE T label_coef(const T& k, const T& y, const T& hard, const T& uni_wk) {
  return fl::select(k == y, hard, T(0)) + uni_wk;
}
//   bins: r wl at k = yl, r wr at k = yl + 1
template <typename T>
FL_HOST_DEVICE FL_INLINE T bins_coef(const T& k, const T& yl, const T& rwl, const T& rwr) {
  return fl::select(k == yl, rwl, fl::select(k == yl + T(1), rwr, T(0)));
}

// The gradient scalars of dense_cross_entropy() against a target of mass A = sum_c d_c:
// U = A, E = 0, F = 1 (grad_elem() is then (A - d_k) p_k - d_k q_k).
template <typename T>
FL_HOST_DEVICE FL_INLINE Row<T> cross_entropy_row(const T& mass) {
  Row<T> o;
  o.loss = T(0);
  o.U = mass;
  o.E = T(0);
  o.F = T(1);
  o.inv_z = T(0);
  o.Cy = T(0);
  return o;
}

// d loss / d x_k before the scales: (U - (E + F) a) p - F a q, with q = 1 - p formed by the
// caller (rest / Z for the argmax class).
template <typename T>
FL_HOST_DEVICE FL_INLINE T grad_elem(const Row<T>& o, const T& p, const T& q, const T& a) {
  return (o.U - (o.E + o.F) * a) * p - o.F * a * q;
}

// grad_elem() of a labels row: the label class k = y takes its coefficient Cy from finish_row().
template <typename T>
FL_HOST_DEVICE FL_INLINE T label_grad_elem(const Row<T>& o, const T& k, const T& y, const T& p, const T& q, const T& a) {
  return fl::select(k == y, o.Cy * p - o.F * a * q, grad_elem(o, p, q, a));
}

}  // namespace rowwise
}  // namespace fastloss

// ---------------------------------------------------------------------- host side
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

namespace fastloss {
namespace rowwise {

// Strides (in elements) of a (B, C, S) tensor as the kernels walk it.
struct View {
  int64_t sb = 0, sc = 0, ss = 0;
};

// The compiled ops' arguments (calling convention: csrc/fastloss.cpp).  A (B, C, 1) input is
// walked as (1, C, B) -- its rows become the S axis, so the CPU vectorises across rows and the
// GPUs tile them -- with the per-row operands (indexed b S + s) unchanged.
struct Args {
  at::Tensor input, target, class_weight, class_alpha, sample_weight;
  int64_t B = 0, C = 0, S = 0;
  View x, t;  // strides of input and of a per-class target (probs / teacher)
  int loss = 0, target_kind = 0;
  double params[kNumParams] = {};
  bool has_ignore = false;
  int64_t ignore_index = 0;
  bool reduced = true;  // reduction code 1 (the three sums) or 0 (a loss per row)
  bool fold = false;    // S == 1: walked as (1, C, B)
};

// The walk's view of a (B, C, S) tensor (rows folded into S when S == 1).
inline View view_of(const at::Tensor& t, bool fold) {
  View v{t.stride(0), t.stride(1), t.stride(2)};
  if (fold) v = View{0, t.stride(1), t.stride(0)};
  return v;
}

inline Args make_args(const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& class_weight,
                      const c10::optional<at::Tensor>& class_alpha, const c10::optional<at::Tensor>& sample_weight, int64_t loss,
                      int64_t target_kind, c10::ArrayRef<double> params, c10::optional<int64_t> ignore_index, int64_t reduction) {
  Args a;
  TORCH_CHECK(input.dim() == 3 && input.is_floating_point(), "fastloss rowwise: `input` must be a (B, C, S) floating tensor");
  TORCH_CHECK(loss >= 0 && loss < kNumLosses, "fastloss rowwise: unknown loss code ", loss);
  TORCH_CHECK(target_kind >= 0 && target_kind < kNumTargets, "fastloss rowwise: unknown target kind ", target_kind);
  TORCH_CHECK(static_cast<int64_t>(params.size()) == kNumParams, "fastloss rowwise: expected ", kNumParams, " parameters");
  TORCH_CHECK(reduction == 0 || reduction == 1, "fastloss rowwise: reduction code must be 0 (per row) or 1 (sums)");
  TORCH_CHECK(target.device() == input.device(), "fastloss rowwise: `target` must be on input's device");
  const auto acc = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  a.input = input;
  a.target = target;
  a.B = input.size(0);
  a.C = input.size(1);
  a.S = input.size(2);
  a.loss = static_cast<int>(loss);
  a.target_kind = static_cast<int>(target_kind);
  for (int i = 0; i < kNumParams; ++i) a.params[i] = params[i];
  a.has_ignore = ignore_index.has_value();
  a.ignore_index = ignore_index.value_or(0);
  a.reduced = reduction == 1;
  if (target_kind == kLabels) {
    const auto tt = target.scalar_type();
    TORCH_CHECK(tt == at::kByte || tt == at::kInt || tt == at::kLong, "fastloss rowwise: labels must be uint8, int32 or int64");
    TORCH_CHECK(target.is_contiguous() && target.numel() == a.B * a.S, "fastloss rowwise: labels must be a contiguous (B, S) tensor");
  } else if (target_kind == kBins) {
    TORCH_CHECK(target.scalar_type() == acc && target.is_contiguous() && target.numel() == a.B * a.S,
                "fastloss rowwise: a bins target must be a contiguous (B, S) tensor in the accumulation dtype");
  } else {
    TORCH_CHECK(target.scalar_type() == input.scalar_type() && target.sizes() == input.sizes(),
                "fastloss rowwise: a per-class target must match input in dtype and shape");
  }
  TORCH_CHECK(loss != kNLL || target_kind == kLabels, "fastloss rowwise: nll takes class labels");
  auto vec = [&](const c10::optional<at::Tensor>& v, int64_t n, const char* name) {
    if (!v.has_value() || !v->defined()) return at::Tensor();
    TORCH_CHECK(v->device() == input.device() && v->is_contiguous() && v->scalar_type() == acc && v->numel() == n, "fastloss rowwise: `", name,
                "` must be contiguous, on input's device, in the accumulation dtype, with ", n, " values");
    return *v;
  };
  a.class_weight = vec(class_weight, a.C, "class_weight");
  a.class_alpha = vec(class_alpha, a.C, "class_alpha");
  a.sample_weight = vec(sample_weight, a.B * a.S, "sample_weight");
  a.fold = a.S == 1;
  a.x = view_of(input, a.fold);
  if (target_kind == kProbs || target_kind == kTeacher) a.t = view_of(target, a.fold);
  if (a.fold) {
    a.S = a.B;
    a.B = 1;
  }
  return a;
}

}  // namespace rowwise
}  // namespace fastloss
