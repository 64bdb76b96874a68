// Sigmoid focal loss: per-element math shared by csrc/cpu and csrc/cuda.
//
// Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (arXiv 1708.02002):
//   p   = sigmoid(x)
//   ce  = BCEWithLogits(x, t) = max(x, 0) - x t + log(1 + exp(-|x|))
//   q   = 1 - p_t = t (1 - p) + (1 - t) p              (the "modulating" base)
//   a_t = alpha t + (1 - alpha)(1 - t)  if alpha >= 0 else 1
//   L   = a_t * q^gamma * ce
// Derivative with respect to the logit x:
//   dce/dx = p - t,  dq/dx = (1 - 2t) p (1 - p)
//   dL/dx  = a_t q^gamma [ (p - t) + gamma ce r ],  r = (dq/dx) / q
// No cancellation: p - t is evaluated as (1 - t) p - t (1 - p) with 1 - p = sigmoid(-x)
// computed directly (exact for hard labels: a confident positive x = 20 gets -2.06e-9, not 0),
// max(x, 0) - x t as x (1 - t) or -x t by the sign of x (exact for t = 1, and no cancellation
// of x - x t for soft t), and 1 - alpha is formed in double on the host (Params).
// r is computed as a ratio of bounded terms (|r| <= 1 for t in [0, 1]) instead of
// q^(gamma - 1), which overflows for q -> 0 and gamma < 1; q == 0 only happens when the
// sigmoid saturates, where dq/dx == 0 too, so r := 0 there is the exact limit.
#pragma once

#include "fastloss/common.h"

namespace fastloss {
namespace focal {

// Uniform parameters of one call.
template <typename S>
struct Params {
  S alpha;            // < 0 disables the alpha weighting (torchvision)
  S one_minus_alpha;  // 1 - alpha, formed in double before the cast to S (alpha = 0.99999 in fp32)
  S gamma;            // >= 0
};

// q^gamma with the common exponents exact and cheap (gamma is uniform: no divergence).
template <typename T, typename S>
FL_HOST_DEVICE FL_INLINE T pow_gamma(T q, S gamma) {
  if (gamma == S(2)) return q * q;
  if (gamma == S(1)) return q;
  if (gamma == S(0)) return T(S(1));
  return fl::pow(q, gamma);
}

// Loss and dL/dx for logit x and target t (both T lanes).  Either output may be ignored;
// the compiler drops the unused half.
template <typename T, typename S>
FL_HOST_DEVICE FL_INLINE void loss_and_grad(T x, T t, const Params<S>& p, T& loss, T& grad) {
  const T one(S(1)), zero(S(0));
  const T e = fl::exp(-fl::abs(x));                 // exp(-|x|) in (0, 1]: never overflows
  const T inv = one / (one + e);
  const auto nonneg = x >= zero;
  const T s_pos = fl::select(nonneg, inv, e * inv);  // sigmoid(x)
  const T s_neg = fl::select(nonneg, e * inv, inv);  // sigmoid(-x) = 1 - p, without cancellation
  const T ce = fl::select(nonneg, x * (one - t), zero - x * t) + fl::log1p(e);  // max(x, 0) - x t, no cancellation
  const T q = t * s_neg + (one - t) * s_pos;
  const T qg = pow_gamma(q, p.gamma);
  const T dq = (one - T(S(2)) * t) * s_pos * s_neg;
  const T r = fl::select(q > zero, dq / q, zero);
  T a_t = one;
  if (p.alpha >= S(0)) a_t = T(p.alpha) * t + T(p.one_minus_alpha) * (one - t);
  loss = a_t * qg * ce;
  const T p_minus_t = (one - t) * s_pos - t * s_neg;  // p - t without cancellation
  grad = a_t * qg * (p_minus_t + T(p.gamma) * ce * r);
}

}  // namespace focal
}  // namespace fastloss
