// Dice / Tversky / Jaccard over (N, C, S) logits: per-element math shared by csrc/cpu and
// csrc/cuda, plus the host-side argument bundle of the compiled ops.
//
// Pass 1 ("sums") reduces, per image n and class c, over the pixels i (m = mask, 0 where the
// target equals ignore_index; g = target; p = softmax over C | sigmoid | identity):
//   I = sum m p g,  P' = sum m p (m p^2 if squared),  G' = sum m g (m g^2 if squared)
// or, in the soft-label form (`soft`; Wang & Blaschko 2023, "Dice Semimetric Losses: Optimizing
// the Dice Score with Soft Labels" -- MONAI's soft_label=True with ord 1, smp >= 0.4's Dice):
//   I = sum m h(p, g),  h = (|p| + |g| - |p - g|) / 2,  P' = sum m |p|,  G' = sum m |g|
// (h = min(p, g) for p, g >= 0; equal to p g for a hard g and p in [0, 1]).  Its derivatives are
// the ones torch's autograd gives that formula, sgn(0) = 0 (so 1/2 at a tie p == g > 0):
//   dh/dp = (sgn p - sgn(p - g)) / 2,  d|p|/dp = sgn p.
// `soft` and `squared` exclude each other (make_args): the squared (ord 2) soft form
// (||p||^2 + ||g||^2 - ||p - g||^2) / 2 is sum p g, the squared sums already.
// and, for the fused Dice + cross entropy, per image
//   softmax: sum_i m ce_i,  ce_i = (sum_c g_c) lse_i - sum_c g_c x_ci,  count = sum_i m
//   sigmoid: sum m bce(x, g) over elements,                          count = sum m
// Pass 2 ("grad") gets a_nc = dL/dI, b_nc = dL/dP' (dL/dG' does not reach the logits) and
// e_n = dL/d(ce sum), and writes
//   d_ci   = m (a g + b (2 p if squared else 1))                  dL/dp
//   soft:  d_ci = m (a (sgn p - sgn(p - g)) / 2 + b sgn p)
//   softmax: dL/dx_k = p_k (d_k - sum_c p_c d_c) + e m ((sum_c g_c) p_k - g_k)
//   sigmoid: dL/dx   = p (1 - p) d + e m (p - g);  identity: dL/dx = d
// (the softmax is recomputed from the logits, never stored).  The CE terms are evaluated
// without the cancellation of p - 1 for a confident pixel of its target class:
//   p - g = (1 - g) p - g sigmoid(-x),  (sum g) p_k - g_k = (sum g - g_k) p_k - g_k (1 - p_k)
// with 1 - p_k = (sum of the other classes' exponentials) / sum for the argmax class.  The softmax
// cross entropy and its gradient are the row-wise engine's (csrc/kernels/rowwise.h: dense_term,
// dense_cross_entropy, cross_entropy_row, grad_elem).  The finalisation (score, log, gamma, class
// weights, reduction) is a few ops on the (N, C, 3) sums in Python.
#pragma once

#include "fastloss/common.h"
#include "kernels/rowwise.h"

namespace fastloss {
namespace dice {

enum Activation : int64_t { kIdentity = 0, kSigmoid = 1, kSoftmax = 2 };

// sigmoid(x) and sigmoid(-x) = 1 - sigmoid(x) without cancellation.
template <typename T>
FL_HOST_DEVICE FL_INLINE void sigmoid2(T x, T& s_pos, T& s_neg) {
  const T one(1);
  const T e = fl::exp(-fl::abs(x));
  const T inv = one / (one + e);
  const auto nonneg = x >= T(0);
  s_pos = fl::select(nonneg, inv, e * inv);
  s_neg = fl::select(nonneg, e * inv, inv);
}

// BCE-with-logits: max(x, 0) - x g + log(1 + exp(-|x|)), with max(x, 0) - x g formed as
// x (1 - g) or -x g by the sign of x (exact for hard targets, no cancellation for soft ones).
template <typename T>
FL_HOST_DEVICE FL_INLINE T bce(T x, T g) {
  const T zero(0);
  const T c = T(1) - g;  // the factors are 0 for hard targets at an infinite logit: 0, not inf * 0
  return fl::select(x >= zero, fl::select(c == zero, zero, x * c), fl::select(g == zero, zero, zero - x * g)) +
         fl::log1p_unit(fl::exp(-fl::abs(x)));
}

// p - g for p = sigmoid(x), s_neg = sigmoid(-x): exact for hard targets (no 1 - 1 + tiny).
template <typename T>
FL_HOST_DEVICE FL_INLINE T p_minus_t(T p, T s_neg, T g) {
  return (T(1) - g) * p - g * s_neg;
}

// sgn x in {-1, 0, 1}, 0 at 0 (and at NaN, as torch.sign): the derivative of |x| torch's autograd uses.
template <typename T>
FL_HOST_DEVICE FL_INLINE T sgn(T x) {
  const T zero(0);
  return fl::select(x > zero, T(1), fl::select(x < zero, T(-1), zero));
}

// The soft-label intersection term h(p, g) = (|p| + |g| - |p - g|) / 2, formed as
// min(|p|, |g|) where p and g have the same strict sign and 0 otherwise (the same number in
// exact arithmetic).  Not as written: |p| + |g| and |p - g| round the smaller operand away, so
// their difference cancels (fp32 p = 1e-8, g = 1 gives 0, not 1e-8); the min is exact.  NaN in
// p or g gives NaN, as the formula does (so does p = -g = +-inf, whose formula is inf - inf).
template <typename T>
FL_HOST_DEVICE FL_INLINE T soft_inter(T p, T g) {
  const T zero(0);
  const T ap = fl::abs(p), ag = fl::abs(g);
  const T mn = fl::select(ag < ap, ag, ap);
  const T h = fl::select(p > zero, fl::select(g > zero, mn, zero), fl::select(p < zero, fl::select(g < zero, mn, zero), zero));
  const T s = p + g;  // NaN iff p or g is NaN, or p = -g = +-inf
  return fl::select(s != s, s, h);
}

// The per-element I, P', G' terms of pass 1 (module comment); m is applied by the caller.
template <typename T>
FL_HOST_DEVICE FL_INLINE T inter_term(T p, T g, bool soft) { return soft ? soft_inter(p, g) : p * g; }
template <typename T>
FL_HOST_DEVICE FL_INLINE T card_term(T v, bool squared, bool soft) { return squared ? v * v : (soft ? fl::abs(v) : v); }

// dL/dp of one element: m (a dI/dp + b dP'/dp).
template <typename T>
FL_HOST_DEVICE FL_INLINE T dloss_dp(T p, T g, T m, T a, T b, bool squared, bool soft) {
  if (soft) {
    const T sp = sgn(p);
    return m * (a * (sp - sgn(p - g)) * T(0.5) + b * sp);  // dh/dp, d|p|/dp
  }
  const T dP = squared ? T(2) * p : T(1);
  return m * (a * g + b * dP);
}

}  // namespace dice
}  // namespace fastloss

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace fastloss {
namespace dice {

// Host-side bundle of the compiled ops' arguments (calling convention: csrc/fastloss.cpp).
struct Args {
  at::Tensor input, target;
  bool labels = false;
  int64_t N = 0, C = 0, S = 0;
  int64_t activation = kSoftmax;
  bool squared = false, soft = false, has_ignore = false;
  int64_t ignore_index = 0;
};

inline Args make_args(const at::Tensor& input, const at::Tensor& target, int64_t activation, bool squared, bool soft,
                      const c10::optional<int64_t>& ignore_index) {
  Args a;
  TORCH_CHECK(input.dim() == 3 && input.is_floating_point() && input.is_contiguous(),
              "fastloss dice: `input` must be a contiguous (N, C, S) floating tensor");
  TORCH_CHECK(target.device() == input.device() && target.is_contiguous(), "fastloss dice: `target` must be contiguous on input's device");
  TORCH_CHECK(activation >= 0 && activation <= 2, "fastloss dice: activation code must be 0, 1 or 2");
  TORCH_CHECK(!(soft && squared), "fastloss dice: `soft` and `squared` exclude each other (the squared sums are the soft form's)");
  a.input = input;
  a.target = target;
  a.N = input.size(0);
  a.C = input.size(1);
  a.S = input.size(2);
  a.activation = activation;
  a.squared = squared;
  a.soft = soft;
  a.has_ignore = ignore_index.has_value();
  a.ignore_index = ignore_index.value_or(0);
  const auto tt = target.scalar_type();
  if (tt == at::kByte || tt == at::kInt || tt == at::kLong) {
    a.labels = true;
    TORCH_CHECK(target.dim() == 2 && target.size(0) == a.N && target.size(1) == a.S,
                "fastloss dice: a label-map `target` must be (N, S) for (N, C, S) input");
  } else {
    TORCH_CHECK(tt == input.scalar_type() && target.sizes() == input.sizes(),
                "fastloss dice: a float `target` must match `input` in dtype and shape");
  }
  return a;
}

}  // namespace dice
}  // namespace fastloss
