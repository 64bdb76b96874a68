// The pointwise engine's losses: one value and one derivative per element, shared by
// csrc/cpu/pointwise.cpp and csrc/cuda/pointwise.cu.  The engine (those two files) owns the
// loops, loads, targets, weights, reductions; a loss here is only its math.
//
// A loss is a functor with
//   template <typename T, typename S>
//   static FL_HOST_DEVICE void eval(const T& x, const T& t, const T& aux, const Params<S>& p, T& loss, T& grad);
// x the input (logit, prediction, probability or log-probability, by loss), t its target (a
// float target, or the engine's expansion of a class label), aux an optional per-element,
// per-row or per-column value (1 when absent; BCE's pos_weight, VFL's positive mask), p the
// loss's scalar parameters formed in double on the host (fastloss/ops/pointwise.py), `loss`
// and `grad` = d loss / d x out.  T is float / double (CUDA, CPU tails) or
// at::vec::Vectorized<float | double> (CPU vector loops): only fl:: functions, + - * / and
// comparisons (masks for fl::select) are used.  The float64 twins of every formula are in
// fastloss/reference/pointwise.py and the Triton ones in triton_kernels/pointwise.py.
//
// Numerical rules (../shared/DESIGN.md): sigmoid(x) and 1 - sigmoid(x) = sigmoid(-x) are
// formed without cancellation; p - t is (1 - t) p - t sigmoid(-x) (exact for hard targets);
// max(x, 0) - x t is x (1 - t) or -x t by the sign of x; derived parameters come from the host
// in double; a NaN input gives a NaN loss and gradient (a zero branch of a select is written
// d * 0, which keeps the NaN).
//
// To add a loss: a functor below, its code in `Loss` and in dispatch_loss(), its Triton
// function and its reference function (see the docstring of fastloss/ops/pointwise.py).
#pragma once

#include "fastloss/common.h"

namespace fastloss {
namespace pointwise {

// Codes shared with fastloss/ops/pointwise.py (LOSSES) and triton_kernels/pointwise.py.
enum Loss : int {
  kSigmoidFocal = 0,
  kL1 = 1,
  kMSE = 2,
  kSmoothL1 = 3,
  kHuber = 4,
  kBalancedL1 = 5,
  kBCEWithLogits = 6,
  kBCE = 7,
  kPoly1BCE = 8,
  kPoly1Focal = 9,
  kQualityFocal = 10,
  kVarifocal = 11,
  kGaussianFocal = 12,
  kHinge = 13,
  kKLDiv = 14,
  kBias = 15,
  kFocalWithProb = 16,
  kQualityFocalWithProb = 17,
  kReducedFocal = 18,
  kFocalTerm = 19,
  kNumLosses = 20
};

constexpr int kNumParams = 7;  // the most any loss uses (balanced L1); Triton passes p0..p6

// The scalar parameters of one call; their meaning is the loss's (see each functor).
template <typename S>
struct Params {
  S p[kNumParams];
};

// ------------------------------------------------------------------ shared pieces

// e = exp(-|x|), s_pos = sigmoid(x), s_neg = sigmoid(-x) = 1 - s_pos, without cancellation.
template <typename T>
FL_HOST_DEVICE FL_INLINE void sigmoid2(const T& x, T& e, T& s_pos, T& s_neg) {
  const T one(1);
  e = fl::exp(T(0) - fl::abs(x));
  const T inv = one / (one + e);
  const auto nonneg = x >= T(0);
  s_pos = fl::select(nonneg, inv, e * inv);
  s_neg = fl::select(nonneg, e * inv, inv);
}

// max(x, 0) - c x for c = t (or pos_weight t): x (1 - c) or -x c by the sign of x -- no
// cancellation for t = 1 or soft t -- and 0 where the factor is 0, also for an infinite x (a
// masked -inf logit with t = 0, +inf with t = 1: inf * 0 would be NaN)
template <typename T>
FL_HOST_DEVICE FL_INLINE T linear_part(const T& x, const T& c_pos, const T& c_neg) {
  const T zero(0);
  return fl::select(x >= zero, fl::select(c_pos == zero, zero, x * c_pos), fl::select(c_neg == zero, zero, zero - x * c_neg));
}

// BCE-with-logits of x against t: max(x, 0) - x t + log(1 + e), e = exp(-|x|).
template <typename T>
FL_HOST_DEVICE FL_INLINE T bce_logits(const T& x, const T& t, const T& e) {
  return linear_part(x, T(1) - t, t) + fl::log1p_unit(e);
}

// p - t for p = sigmoid(x): (1 - t) p - t (1 - p), exact for hard targets.
template <typename T>
FL_HOST_DEVICE FL_INLINE T p_minus_t(const T& t, const T& s_pos, const T& s_neg) {
  return (T(1) - t) * s_pos - t * s_neg;
}

// sign(d): 1 / -1, 0 at 0, NaN for NaN (the zero branch is d * 0)
template <typename T>
FL_HOST_DEVICE FL_INLINE T sign_nan(const T& d) {
  return fl::select(d > T(0), T(1), fl::select(d < T(0), T(-1), d * T(0)));
}

// q^g for q >= 0 with the common exponents exact and cheap (g is uniform: no divergence);
// 0^0 = 1.
template <typename T, typename S>
FL_HOST_DEVICE FL_INLINE T pow_q(const T& q, S g) {
  if (g == S(2)) return q * q;
  if (g == S(1)) return q;
  if (g == S(0)) return T(S(1));
  return fl::select(q > T(0), fl::pow(fl::select(q > T(0), q, T(1)), g), q * T(0));
}

// m^g / d for m = |d| (the derivative factor g m^(g-1) sign(d) without m^(g-1)'s overflow):
// 0 at d = 0 (the convention (x^g)'(0) = 0 of the whole project; NaN stays NaN).
template <typename T>
FL_HOST_DEVICE FL_INLINE T pow_over(const T& mg, const T& d) {
  return fl::select(d != T(0), mg / fl::select(d != T(0), d, T(1)), d * T(0));
}

// ------------------------------------------------------------------ classification over logits

// Sigmoid focal loss (Lin et al., arXiv 1708.02002), torchvision / mmcv:
//   p = sigmoid(x), ce = BCE-with-logits(x, t), q = 1 - p_t = t (1 - p) + (1 - t) p
//   a_t = alpha t + (1 - alpha) (1 - t)  (1 when alpha < 0),  L = a_t q^gamma ce
//   dL/dx = a_t q^gamma [(p - t) + gamma ce r],  r = (dq/dx) / q = (1 - 2t) p (1 - p) / q
// r is a ratio of bounded terms (|r| <= 1), 0 where q = 0 (there dq/dx = 0 too): finite for
// any gamma >= 0, where autograd through q^gamma is NaN at a saturated sigmoid for gamma < 1.
// p: [0] alpha, [1] 1 - alpha, [2] gamma, [3] 1 to use alpha, [4] Poly-1 epsilon (Poly1Focal).
struct SigmoidFocal {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void terms(const T& x, const T& t, const Params<S>& p, T& q, T& qg, T& dq, T& a_t, T& loss, T& grad) {
    const T one(1), zero(0);
    T e, s_pos, s_neg;
    sigmoid2(x, e, s_pos, s_neg);
    const T ce = bce_logits(x, t, e);
    q = t * s_neg + (one - t) * s_pos;
    qg = pow_q(q, p.p[2]);
    dq = (one - T(2) * t) * s_pos * s_neg;
    const T r = fl::select(q > zero, dq / fl::select(q > zero, q, one), zero);
    a_t = one;
    if (p.p[3] != S(0)) a_t = T(p.p[0]) * t + T(p.p[1]) * (one - t);
    loss = a_t * qg * ce;
    grad = a_t * qg * (p_minus_t(t, s_pos, s_neg) + T(p.p[2]) * ce * r);
  }
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    T q, qg, dq, a_t;
    terms(x, t, p, q, qg, dq, a_t, loss, grad);
  }
};

// The reduced focal term (Sergievskiy & Ponamarev, "Reduced Focal Loss", arXiv 1903.01347;
// segmentation_models_pytorch / pytorch-toolbelt's form), over a logit x and hard target t:
//   p_t = t p + (1 - t)(1 - p),  q = 1 - p_t,
//   f = 1 where p_t < cutoff, (q / divisor)^gamma elsewhere
//   df/dx = 0 on the constant branch, gamma f r on the power branch, r = (dq/dx) / q (SigmoidFocal's)
// cutoff = divisor = th gives the paper's term ((1 - p_t) / th)^gamma above th; cutoff 0 and
// divisor 1 give the plain focal term q^gamma (never p_t < 0).  A NaN logit fails p_t < cutoff
// and reaches the power branch, whose q and r keep it.  Also returns e, s_pos, s_neg, ce.
template <typename T, typename S>
FL_HOST_DEVICE FL_INLINE void reduced_focal_term(const T& x, const T& t, S gamma, S cutoff, S divisor, T& s_pos, T& s_neg, T& ce, T& f,
                                                 T& df) {
  const T one(1), zero(0);
  T e;
  sigmoid2(x, e, s_pos, s_neg);
  ce = bce_logits(x, t, e);
  const T q = t * s_neg + (one - t) * s_pos;
  const T p_t = t * s_pos + (one - t) * s_neg;
  const T dq = (one - T(2) * t) * s_pos * s_neg;
  const T r = fl::select(q > zero, dq / fl::select(q > zero, q, one), zero);
  const T fp = pow_q(q / T(divisor), gamma);
  const auto low = p_t < T(cutoff);  // the constant branch
  f = fl::select(low, one, fp);
  df = fl::select(low, zero, T(gamma) * fp * r);
}

// Reduced focal loss (arXiv 1903.01347): L = a_t f ce, f the reduced focal term above,
// a_t = alpha t + (1 - alpha) (1 - t) (1 when alpha is off); dL/dx = a_t [f (p - t) + ce df/dx].
// With cutoff 0 and divisor 1 it is SigmoidFocal (the same value and derivative up to rounding).
// p: [0] alpha, [1] 1 - alpha, [2] gamma, [3] 1 to use alpha, [4] cutoff, [5] divisor.
struct ReducedFocal {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    const T one(1);
    T s_pos, s_neg, ce, f, df;
    reduced_focal_term(x, t, p.p[2], p.p[4], p.p[5], s_pos, s_neg, ce, f, df);
    T a_t = one;
    if (p.p[3] != S(0)) a_t = T(p.p[0]) * t + T(p.p[1]) * (one - t);
    loss = a_t * f * ce;
    grad = a_t * (f * p_minus_t(t, s_pos, s_neg) + ce * df);
  }
};

// The focal term f alone (reduced or plain, see reduced_focal_term) and df/dx: summed, it is the
// normaliser of smp's normalised focal loss, loss / max(sum f, eps), through which smp
// differentiates.  A NaN logit gives NaN (also for gamma = 0, where f would be 1).
// p: [0] gamma, [1] cutoff, [2] divisor.
struct FocalTerm {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    T s_pos, s_neg, ce, f, df;
    reduced_focal_term(x, t, p.p[0], p.p[1], p.p[2], s_pos, s_neg, ce, f, df);
    const auto nan_x = x != x;
    loss = fl::select(nan_x, x, f);
    grad = fl::select(nan_x, x, df);
  }
};

// Poly-1 focal loss (PolyLoss, arXiv 2204.12511): FL + epsilon (1 - p_t)^(gamma + 1)
//   d/dx: dFL/dx + epsilon (gamma + 1) q^gamma dq/dx.   p: SigmoidFocal's, [4] epsilon.
struct Poly1Focal {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    T q, qg, dq, a_t;
    SigmoidFocal::terms(x, t, p, q, qg, dq, a_t, loss, grad);
    loss = loss + T(p.p[4]) * qg * q;
    grad = grad + T(p.p[4] * (p.p[2] + S(1))) * qg * dq;
  }
};

// BCE with logits, torch's pos_weight (aux, per column usually) and binary label smoothing
// t' = t (1 - s) + s / 2 (YOLOv5's smooth_BCE):
//   L = pw t' softplus(-x) + (1 - t') softplus(x) = (1 - t') x + l softplus(-x),  l = pw t' + 1 - t'
//   stable: x (1 - t') or -pw t' x by the sign of x, + l log(1 + exp(-|x|))
//   dL/dx = (1 - t') p - pw t' (1 - p)
// p: [0] 1 - s, [1] s / 2.
struct BCEWithLogits {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t_in, const T& pw, const Params<S>& p, T& loss, T& grad) {
    const T t = t_in * T(p.p[0]) + T(p.p[1]);
    T e, s_pos, s_neg;
    sigmoid2(x, e, s_pos, s_neg);
    const T one(1);
    const T pt = pw * t;
    loss = linear_part(x, one - t, pt) + (pt + one - t) * fl::log1p_unit(e);
    grad = (one - t) * s_pos - pt * s_neg;
  }
};

// Poly-1 BCE (PolyLoss, arXiv 2204.12511): BCE + epsilon (1 - p_t), 1 - p_t = t (1 - p) + (1 - t) p
//   d/dx: (p - t) + epsilon (1 - 2t) p (1 - p).   p: [0] epsilon.
struct Poly1BCE {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    T e, s_pos, s_neg;
    sigmoid2(x, e, s_pos, s_neg);
    const T one(1);
    const T q = t * s_neg + (one - t) * s_pos;
    loss = bce_logits(x, t, e) + T(p.p[0]) * q;
    grad = p_minus_t(t, s_pos, s_neg) + T(p.p[0]) * (one - T(2) * t) * s_pos * s_neg;
  }
};

// Quality focal loss (Generalized Focal Loss, arXiv 2006.04388), mmdetection's form with
// soft quality targets t (the IoU at the label's class, 0 elsewhere):
//   L = BCE(x, t) |p - t|^beta
//   dL/dx = |d|^beta d + beta BCE |d|^beta / d p (1 - p),  d = p - t
// p: [0] beta.
struct QualityFocal {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    T e, s_pos, s_neg;
    sigmoid2(x, e, s_pos, s_neg);
    const T ce = bce_logits(x, t, e);
    const T d = p_minus_t(t, s_pos, s_neg);
    const T mb = pow_q(fl::abs(d), p.p[0]);
    loss = ce * mb;
    grad = mb * d + T(p.p[0]) * ce * pow_over(mb, d) * s_pos * s_neg;
  }
};

// Varifocal loss (VarifocalNet, arXiv 2008.13367), mmdetection's form: positives (t > 0, or
// aux > 0 when a positive mask is given: ultralytics' label) are weighted by t (iou_weighted)
// or 1, negatives by alpha |p - t|^gamma (differentiated, as mmdetection's autograd does):
//   L = BCE(x, t) w;   positives: dL/dx = w (p - t);
//   negatives: dL/dx = alpha (|d|^gamma d + gamma BCE |d|^gamma / d p (1 - p)),  d = p - t
// p: [0] alpha, [1] gamma, [2] 1 for iou_weighted, [3] 1 when aux is the positive mask.
struct Varifocal {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T& aux, const Params<S>& p, T& loss, T& grad) {
    T e, s_pos, s_neg;
    sigmoid2(x, e, s_pos, s_neg);
    const T zero(0);
    const T ce = bce_logits(x, t, e);
    const T d = p_minus_t(t, s_pos, s_neg);
    const T mg = pow_q(fl::abs(d), p.p[1]);
    const T w_pos = p.p[2] != S(0) ? t : T(1);
    const T w_neg = T(p.p[0]) * mg;
    const auto pos = p.p[3] != S(0) ? (aux > zero) : (t > zero);
    loss = ce * fl::select(pos, w_pos, w_neg);
    grad = fl::select(pos, w_pos * d, T(p.p[0]) * (mg * d + T(p.p[1]) * ce * pow_over(mg, d) * s_pos * s_neg));
  }
};

// Gaussian focal loss (CenterNet, arXiv 1904.07850), mmdetection's form over probabilities
// x = p (a sigmoid already applied) and a Gaussian heatmap t in [0, 1]:
//   L = -[t == 1] log(p + eps) (1 - p)^alpha - (1 - t)^gamma log(1 - p + eps) p^alpha
//   dL/dp = [t == 1] (-(1 - p)^alpha / (p + eps) + alpha log(p + eps) (1 - p)^(alpha - 1))
//         + (1 - t)^gamma (p^alpha / (1 - p + eps) - alpha log(1 - p + eps) p^(alpha - 1))
// x^(alpha - 1) at x = 0 is taken as 0 (the project's (x^a)'(0) = 0).
// p: [0] alpha, [1] gamma, [2] eps (1e-12).
struct GaussianFocal {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    const T one(1), zero(0), eps(p.p[2]);
    const S alpha = p.p[0];
    const T u = one - x;
    const T ua = pow_q(u, alpha), xa = pow_q(x, alpha);
    const T lp = fl::log(x + eps), lu = fl::log(u + eps);
    const T wn = pow_q(one - t, p.p[1]);
    const T pos = fl::select(t == one, one, t * zero);  // NaN t stays NaN
    // x^(a - 1) as x^a / x, 0 at x = 0
    const T ua1 = fl::select(u > zero, ua / fl::select(u > zero, u, one), u * zero);
    const T xa1 = fl::select(x > zero, xa / fl::select(x > zero, x, one), x * zero);
    loss = zero - pos * lp * ua - wn * lu * xa;
    grad = pos * (zero - ua / (x + eps) + T(alpha) * lp * ua1) + wn * (xa / (u + eps) - T(alpha) * lu * xa1);
  }
};

// BCE over probabilities x = p, torch's binary_cross_entropy: each log clamped at -100,
//   L = -(t max(log p, -100) + (1 - t) max(log(1 - p), -100))
//   dL/dp = (p - t) / max(p (1 - p), 1e-12)          (torch's backward, clamp included)
// Values outside [0, 1] are rejected by the op (CPU; CUDA in checked mode).
struct BCE {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>&, T& loss, T& grad) {
    const T one(1), floor(-100);
    const T lp = fl::log(x), lq = fl::log1p(T(0) - x);
    const T cp = fl::select(lp < floor, floor, lp), cq = fl::select(lq < floor, floor, lq);
    loss = T(0) - (t * cp + (one - t) * cq);
    const T den = x * (one - x);
    grad = (x - t) / fl::select(den < T(1e-12), T(1e-12), den);
  }
};

// Focal losses over probabilities x = p (a sigmoid already applied: mmdetection's
// ``activated=True``), py_focal_loss_with_prob and quality_focal_loss_with_prob:
//   L = BCE(p, t) a_t m^gamma,  BCE as torch's binary_cross_entropy (logs clamped at -100)
//   focal:   m = 1 - p_t = (1 - p) t + p (1 - t),  a_t = alpha t + (1 - alpha) (1 - t) (1 without alpha)
//   quality: m = |p - t| (GFL's |y - sigma|), a_t = 1
//   dL/dp = a_t [dBCE/dp m^gamma + gamma BCE m^gamma / m dm/dp],
//   dm/dp = 1 - 2t (focal) or sign(p - t) (quality); m^gamma / m is 0 at m = 0 (the project's
//   (x^g)'(0) = 0).  Both factors are differentiated, as mmdetection's autograd does.
// p: [0] alpha, [1] 1 - alpha, [2] gamma, [3] 1 to use alpha, [4] 1 for the quality form.
struct FocalWithProb {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T& aux, const Params<S>& p, T& loss, T& grad) {
    const T one(1), zero(0);
    T ce, dce;
    BCE::eval(x, t, aux, p, ce, dce);
    T m, dm;
    if (p.p[4] != S(0)) {
      const T d = x - t;
      m = fl::abs(d);
      dm = sign_nan(d);
    } else {
      m = (one - x) * t + x * (one - t);
      dm = one - T(2) * t;
    }
    const T mg = pow_q(m, p.p[2]);
    const T mg_over_m = fl::select(m > zero, mg / fl::select(m > zero, m, one), m * zero);
    T a_t = one;
    if (p.p[3] != S(0)) a_t = T(p.p[0]) * t + T(p.p[1]) * (one - t);
    loss = a_t * ce * mg;
    grad = a_t * (dce * mg + T(p.p[2]) * ce * mg_over_m * dm);
  }
};

// Binary hinge loss max(0, m - y x) (squared: its square), y = 1 for t > 0 and -1 otherwise
// (targets in {-1, 1} or {0, 1}); d/dx = -y where m - y x > 0 (0 at the kink), squared:
// -2 y max(0, m - y x).   p: [0] margin, [1] 1 for the squared hinge.
struct Hinge {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    const T zero(0);
    const T y = fl::select(t > zero, T(1), fl::select(t != t, t, T(-1)));
    const T h = fl::relu(T(p.p[0]) - y * x);
    if (p.p[1] != S(0)) {
      loss = h * h;
      grad = T(-2) * y * h;
    } else {
      loss = h;
      grad = fl::select(h > zero, zero - y, h * zero);
    }
  }
};

// KL divergence, torch's pointwise kl_div: x = log q (input log-probabilities), t = target
// probabilities (or log-probabilities with log_target):
//   L = t (log t - x);  log_target: exp(t) (t - x);  dL/dx = -t (-exp(t))
// A target of probability 0 gives 0, also against x = -inf (torch: 0 * inf = NaN there; 0 is
// the limit); a NaN input stays NaN in loss and gradient.   p: [0] 1 for log_target.
struct KLDiv {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    const T zero(0);
    const auto nan_x = x != x;
    const T w = p.p[0] != S(0) ? fl::exp(t) : t;  // the target probability
    const T lt = p.p[0] != S(0) ? t : fl::log(fl::select(t == zero, T(1), t));
    loss = fl::select(w == zero, fl::select(nan_x, x, zero), w * (lt - x));
    grad = fl::select(nan_x, x, zero - w);
  }
};

// ------------------------------------------------------------------ regression

// L1 (MAE): |x - t|, d/dx = sign(x - t) (0 at 0, as torch).
struct L1 {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>&, T& loss, T& grad) {
    const T d = x - t;
    loss = fl::abs(d);
    grad = sign_nan(d);
  }
};

// MSE (L2): (x - t)^2, d/dx = 2 (x - t).
struct MSE {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>&, T& loss, T& grad) {
    const T d = x - t;
    loss = d * d;
    grad = T(2) * d;
  }
};

// Signed error x - t (the mean bias error's element), d/dx = 1 (NaN for NaN).
struct Bias {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>&, T& loss, T& grad) {
    loss = x - t;
    grad = T(1) + loss * T(0);
  }
};

// Smooth L1 (Fast R-CNN, arXiv 1504.08083), torch's definition: |d| < beta ? 0.5 d^2 / beta
// : |d| - 0.5 beta; d/dx = d / beta or sign(d).  beta = 0 is exactly L1 (the first branch
// never holds).   p: [0] beta, [1] 0.5 / beta, [2] 0.5 beta, [3] 1 / beta (0 when beta = 0).
struct SmoothL1 {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    const T d = x - t, a = fl::abs(d);
    const auto quad = a < T(p.p[0]);
    loss = fl::select(quad, T(p.p[1]) * d * d, a - T(p.p[2]));
    grad = fl::select(quad, d * T(p.p[3]), sign_nan(d));
  }
};

// Huber, torch's huber_loss: |d| < delta ? 0.5 d^2 : delta (|d| - 0.5 delta);
// d/dx = d or delta sign(d).   p: [0] delta, [1] 0.5 delta.
struct Huber {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    const T d = x - t, a = fl::abs(d), delta(p.p[0]);
    const auto quad = a < delta;
    loss = fl::select(quad, T(0.5) * d * d, delta * (a - T(p.p[1])));
    grad = fl::select(quad, d, delta * sign_nan(d));
  }
};

// Balanced L1 (Libra R-CNN, arXiv 1904.02701), mmdetection's form, a = |x - t|:
//   a < beta:  alpha / b (b a + 1) ln(b a / beta + 1) - alpha a
//   else:      gamma a + gamma / b - alpha beta,            b = e^(gamma / alpha) - 1
//   d/da = alpha ln(b a / beta + 1) + alpha (b a + 1) / (b a + beta) - alpha,  or gamma;
//   d/dx = sign(x - t) d/da.
// p: [0] alpha, [1] gamma, [2] beta, [3] b, [4] alpha / b, [5] gamma / b - alpha beta, [6] b / beta.
struct BalancedL1 {
  template <typename T, typename S>
  static FL_HOST_DEVICE FL_INLINE void eval(const T& x, const T& t, const T&, const Params<S>& p, T& loss, T& grad) {
    const T d = x - t, a = fl::abs(d), one(1);
    const T alpha(p.p[0]), gamma(p.p[1]), beta(p.p[2]), b(p.p[3]);
    const T ba = b * a;
    const T lg = fl::log1p(T(p.p[6]) * a);  // ln(b a / beta + 1)
    const auto near = a < beta;
    loss = fl::select(near, T(p.p[4]) * (ba + one) * lg - alpha * a, gamma * a + T(p.p[5]));
    grad = sign_nan(d) * fl::select(near, alpha * lg + alpha * (ba + one) / (ba + beta) - alpha, gamma);
  }
};

// Calls f(Functor{}) for the loss code (a runtime code, uniform per call, chosen once outside
// the loops); false for an unknown code.
template <typename F>
inline bool dispatch_loss(int64_t loss, const F& f) {
  switch (loss) {
    case kSigmoidFocal: f(SigmoidFocal{}); return true;
    case kL1: f(L1{}); return true;
    case kMSE: f(MSE{}); return true;
    case kSmoothL1: f(SmoothL1{}); return true;
    case kHuber: f(Huber{}); return true;
    case kBalancedL1: f(BalancedL1{}); return true;
    case kBCEWithLogits: f(BCEWithLogits{}); return true;
    case kBCE: f(BCE{}); return true;
    case kPoly1BCE: f(Poly1BCE{}); return true;
    case kPoly1Focal: f(Poly1Focal{}); return true;
    case kQualityFocal: f(QualityFocal{}); return true;
    case kVarifocal: f(Varifocal{}); return true;
    case kGaussianFocal: f(GaussianFocal{}); return true;
    case kHinge: f(Hinge{}); return true;
    case kKLDiv: f(KLDiv{}); return true;
    case kBias: f(Bias{}); return true;
    case kFocalWithProb:
    case kQualityFocalWithProb: f(FocalWithProb{}); return true;
    case kReducedFocal: f(ReducedFocal{}); return true;
    case kFocalTerm: f(FocalTerm{}); return true;
    default: return false;
  }
}

}  // namespace pointwise
}  // namespace fastloss
