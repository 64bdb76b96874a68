// IoU family: box geometry and its reverse-mode derivatives, shared by csrc/cpu/box_iou.cpp
// and csrc/cuda/box_iou.cu.
//
// Every function is a template over a lane type T: float / double (CUDA threads, CPU tails)
// or at::vec::Vectorized<float|double> (the CPU vector loops).  The math of every kind, with
// arXiv ids, is in fastloss/reference/box_iou.py; this header mirrors it.
//
// Gradients are hand-written reverse mode.  The forward keeps its intermediates (Pair: the
// xyxy corners, widths, intersection, union, IoU, enclosing box), each loss term is a small
// struct with its value and a grad() that adds the term's adjoints (dL/d intermediate) into
// an Adj, and Pair::pullback() carries those adjoints to the corners of both boxes and back
// through the box format.  One evaluation gives dL/d(both boxes): ~2x the forward's work
// (a forward-mode dual number with 4 directions cost ~5x).  The kernels' gradients are
// checked against autograd through the float64 reference.
//
// Derivative conventions at kinks (the float64 reference uses the same; they are the ones
// torch's autograd gives through torchvision's formulas wherever those are finite):
//   * widths / heights and the enclosing box's extents are clamped at 0 (inverted boxes have
//     zero area) with derivative 1 at the bound (as torchvision's unclamped x2 - x1), 0 below
//     it -- so a collapsed prediction (zero width or height) still gets the gradient that
//     grows it back;
//   * the intersection is relu(iw) relu(ih) with relu'(0) = 0: no gradient through it unless
//     the boxes overlap with positive area (torchvision's mask);
//   * min / max ties split the gradient in halves between the arguments (torch.minimum /
//     torch.maximum); a NaN in either argument propagates;
//   * |x|'(0) = 0, sqrt'(0) = 0, (x^p)'(0) = 0, atan2'(0, 0) = 0: finite limits where
//     torchvision's formulas give NaN (CIoU of a zero-height or point box).
// Kink weights multiply the adjoints (never select them away), so a NaN reaches every
// gradient component it touches.
// CIoU's trade-off weight alpha is a constant in the backward (torchvision, ultralytics).
//
// Conventions (Convention below): where the peers place eps.  The formulas of each, with the
// peer's source it reproduces, are in fastloss/reference/box_iou.py ("Conventions"); in short,
// with S = w h + w' h' - I the union and C the enclosing area:
//   kConvFastloss     IoU = I / (S + eps), GIoU (C - S) / (C + eps), c2 + eps,
//                     alpha = v / (1 - IoU + v + eps)                          (torchvision's losses)
//   kConvUltralytics  as fastloss, every height h + eps (areas and v)    (ultralytics bbox_iou xyxy)
//   kConvMMDet        iou / log_iou / giou / iof: U = max(S, eps), C -> max(C, eps), iof's
//                     area max(area, eps) (bbox_overlaps); diou as fastloss; ciou: v of heights
//                     h + eps, alpha = [IoU > 0.5] v / (1 - IoU + v), CIoU clamped to [-1, 1]
//                     (gradient 0 outside)                                 (mmdetection ciou_loss)
//                     siou: mmdetection's own form (SIoUMMDetTerm), clamped as ciou   (siou_loss)
//   kConvTorchvision  matrices: IoU = I / S, GIoU (C - S) / C (0 where the denominator is 0),
//                     c2 + eps, alpha = v / (1 - IoU + v + eps)        (torchvision's box matrices)
// The union mode (UnionMode) is what differs in I / U and in GIoU's penalty; it follows from the
// convention and the kind (union_of_loss, union_of_metric).
//
// 3-D boxes (x1, y1, z1, x2, y2, z2), paired losses iou / giou / diou: PairND and paired_loss_nd
// below (the kernels' loops are templates over the coordinate count, paired_loss_coords).
// Bounded IoU's 4 terms apart (mmdetection's per-coordinate loss): bounded_iou_terms.
#pragma once

#include "fastloss/common.h"
#if !defined(__CUDACC__) && !defined(__HIPCC__)
#include "fastloss/cpu_vec.h"
#endif

// Forced inline on the CPU: a whole loss and its gradient must stay in vector registers,
// which GCC's inliner otherwise gives up on.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define BX_INLINE __forceinline__
#elif defined(__GNUC__)
#define BX_INLINE inline __attribute__((always_inline))
#else
#define BX_INLINE inline
#endif

namespace fastloss {
namespace box {

// ------------------------------------------------------------------ lane math
// fl:: (common.h, cpu_vec.h) has the functions of one lane; the helpers below add masks,
// NaN-propagating min / max and the kinks' derivative conventions.

// m ? x : 0 and m ? 0 : x (m a bool or a lane mask)
template <typename T, typename M>
FL_HOST_DEVICE BX_INLINE T take(const M& m, const T& x) { return fl::select(m, x, T(0)); }
template <typename T, typename M>
FL_HOST_DEVICE BX_INLINE T drop(const M& m, const T& x) { return fl::select(m, T(0), x); }
// NaN-propagating min / max (torch.minimum / torch.maximum): a NaN in either argument wins
template <typename T>
FL_HOST_DEVICE BX_INLINE T min_(const T& a, const T& b) { return fl::select((b < a) | (b != b), b, a); }
template <typename T>
FL_HOST_DEVICE BX_INLINE T max_(const T& a, const T& b) { return fl::select((b > a) | (b != b), b, a); }
// a's share of the gradient of min(a, b) / max(a, b): 1 where a wins, 0 where b wins, 1/2 at a
// tie (torch's rule); b's share is 1 - that
template <typename T>
FL_HOST_DEVICE BX_INLINE T share_min(const T& a, const T& b) { return fl::select(a < b, T(1), fl::select(b < a, T(0), T(0.5))); }
template <typename T>
FL_HOST_DEVICE BX_INLINE T share_max(const T& a, const T& b) { return fl::select(a > b, T(1), fl::select(b > a, T(0), T(0.5))); }
// kink weights: relu'(x) (0 at 0) and clamp'(x) at the bound 0 (1 at 0)
template <typename T>
FL_HOST_DEVICE BX_INLINE T step_pos(const T& x) { return fl::select(x > T(0), T(1), T(0)); }
template <typename T>
FL_HOST_DEVICE BX_INLINE T step_nonneg(const T& x) { return fl::select(x < T(0), T(0), T(1)); }
// NaN policy: a NaN value (loss or metric) reaches every gradient component of the pair,
// whatever the kink weights did with it (value * 0 is 0 for finite values)
template <typename T>
FL_HOST_DEVICE BX_INLINE void nan_reaches(const T& value, T g[4]) {
  const T carrier = value * T(0);
#pragma unroll
  for (int k = 0; k < 4; ++k) g[k] = g[k] + carrier;
}
// adds g * s to da and g * (1 - s) to db (a multiplication: a NaN in g reaches both)
template <typename T>
FL_HOST_DEVICE BX_INLINE void split(const T& g, const T& s, T& da, T& db) {
  da = da + g * s;
  db = db + g * (T(1) - s);
}
// |x|' = sign(x), 0 at 0
template <typename T>
FL_HOST_DEVICE BX_INLINE T sign_(const T& x) { return fl::select(x > T(0), T(1), fl::select(x < T(0), T(-1), T(0))); }
// 1 / x for x > 0, else 0 (the derivative of sqrt(r^2) = r is x / r: 0 at r = 0 by convention)
template <typename T>
FL_HOST_DEVICE BX_INLINE T inv_pos(const T& x) {
  const auto pos = x > T(0);
  return take(pos, T(1) / fl::select(pos, x, T(1)));
}
template <typename T>
FL_HOST_DEVICE BX_INLINE T sq(const T& x) { return x * x; }
// x^p for x >= 0 (negative x clamped to 0) and its derivative p x^(p-1) in d (0 at x <= 0)
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T powd(const T& x, S p, T& d) {
  const T c = fl::relu(x);
  const auto pos = c > T(0);
  const T r = fl::pow(c, p);
  d = take(pos, T(p) * r / fl::select(pos, c, T(1)));
  return r;
}
// alpha-IoU's x^power: the identity (derivative 1, no clamp) when power == 1
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T powd1(const T& x, S p, T& d) {
  if (p == S(1)) {
    d = T(1);
    return x;
  }
  return powd(x, p, d);
}

// ------------------------------------------------------------------ kinds, formats, parameters
enum Fmt : int { kXYXY = 0, kXYWH = 1, kCXCYWH = 2 };
// paired losses
// kExtIoU: Extended-IoU (IEEE 9429909; mmdetection's EIoULoss, not Efficient-IoU kEIoU)
// kBoundedIoU: Bounded IoU (arXiv 1711.00164; mmdetection's BoundedIoULoss), the sum of its 4 terms
enum LossKind : int { kIoU = 0, kLogIoU = 1, kGIoU = 2, kDIoU = 3, kCIoU = 4, kEIoU = 5, kFocalEIoU = 6, kSIoU = 7, kCDIoU = 8, kExtIoU = 9,
                      kBoundedIoU = 10 };
// pairwise / aligned metrics
enum MetricKind : int { kMIoU = 0, kMIoF = 1, kMGIoU = 2, kMDIoU = 3, kMCIoU = 4 };

template <typename S>
struct Params {
  int kind;
  int fmt;
  S eps;
  S power;  // alpha-IoU exponent (1: plain)
  S gamma;  // the kind's extra parameter: focal-EIoU's exponent; mmdet SIoU: neg_gamma (1) or not
            // (0); Extended-IoU: smooth_point; Bounded IoU: beta
  int conv;  // Convention
};

// Where the peers place eps (see the header comment); codes of fastloss/ops/box_iou.py.
enum Convention : int { kConvFastloss = 0, kConvUltralytics = 1, kConvMMDet = 2, kConvTorchvision = 3 };
// The IoU's union U and denominator: S + eps | max(S, eps) (also C -> max(C, eps)) | S (0 / 0 = 0)
enum UnionMode : int { kUnionPlusEps = 0, kUnionMaxEps = 1, kUnionExact = 2 };

FL_HOST_DEVICE BX_INLINE int union_of_loss(int conv, int kind) {
  return conv == kConvMMDet && (kind == kIoU || kind == kLogIoU || kind == kGIoU) ? kUnionMaxEps : kUnionPlusEps;
}
// Whether a paired loss needs Pair's runtime-convention instantiation (kGeneric): not for
// convention fastloss, nor for extended_iou / bounded_iou, which are the same under every
// convention defining them (so those run one instantiation: the same bits under each).
FL_HOST_DEVICE BX_INLINE bool loss_is_generic(int conv, int kind) { return conv != kConvFastloss && kind != kExtIoU && kind != kBoundedIoU; }
FL_HOST_DEVICE BX_INLINE int union_of_metric(int conv, int kind) {
  if (conv == kConvTorchvision) return kUnionExact;
  return conv == kConvMMDet && (kind == kMIoU || kind == kMIoF || kind == kMGIoU) ? kUnionMaxEps : kUnionPlusEps;
}

// Box in xyxy from the user's format.
template <typename T>
FL_HOST_DEVICE BX_INLINE void to_xyxy(const T b[4], int fmt, T o[4]) {
  if (fmt == kXYWH) {
    o[0] = b[0];
    o[1] = b[1];
    o[2] = b[0] + b[2];
    o[3] = b[1] + b[3];
  } else if (fmt == kCXCYWH) {
    const T half(0.5);
    o[0] = b[0] - b[2] * half;
    o[1] = b[1] - b[3] * half;
    o[2] = b[0] + b[2] * half;
    o[3] = b[1] + b[3] * half;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) o[k] = b[k];
  }
}

// The transpose of to_xyxy: gradient w.r.t. the xyxy corners -> w.r.t. the user's format.
template <typename T>
FL_HOST_DEVICE BX_INLINE void from_xyxy_grad(const T g[4], int fmt, T o[4]) {
  if (fmt == kXYXY) {
#pragma unroll
    for (int k = 0; k < 4; ++k) o[k] = g[k];
    return;
  }
  o[0] = g[0] + g[2];
  o[1] = g[1] + g[3];
  if (fmt == kXYWH) {
    o[2] = g[2];
    o[3] = g[3];
  } else {
    const T half(0.5);
    o[2] = (g[2] - g[0]) * half;
    o[3] = (g[3] - g[1]) * half;
  }
}

// ------------------------------------------------------------------ geometry of a pair of boxes
// Adjoints dL/d(intermediate) that the loss terms accumulate; Pair::pullback turns them into
// dL/d(corners).  `a`, `b`: direct adjoints of the xyxy corners (CDIoU uses the corners).
template <typename T>
struct Adj {
  T iou, inter, uni, um, aw, ah, bw, bh, cw, ch, dxc, dyc;
  T a[4], b[4];
  FL_HOST_DEVICE BX_INLINE Adj() {
    iou = inter = uni = um = aw = ah = bw = bh = cw = ch = dxc = dyc = T(0);
#pragma unroll
    for (int k = 0; k < 4; ++k) a[k] = b[k] = T(0);
  }
  // every adjoint times s (Focal-EIoU scales the whole EIoU by IoU^gamma)
  FL_HOST_DEVICE BX_INLINE void scale(const T& s) {
    iou = iou * s, inter = inter * s, uni = uni * s, um = um * s, aw = aw * s, ah = ah * s, bw = bw * s, bh = bh * s;
    cw = cw * s, ch = ch * s, dxc = dxc * s, dyc = dyc * s;
#pragma unroll
    for (int k = 0; k < 4; ++k) a[k] = a[k] * s, b[k] = b[k] * s;
  }
};

// Boxes a and b (user format in, xyxy kept) and everything the IoU kinds are built from.
// kGeneric: the convention and union mode are the runtime ones; false: convention "fastloss"
// known at compile time (its code is then exactly the expressions it had before conventions
// existed: the same contractions into FMAs, the same bits).
template <typename T, typename S, bool kGeneric = true>
struct Pair {
  T a[4], b[4];        // xyxy corners
  T aw, ah, bw, bh;    // widths / heights, inverted boxes clamped to 0 (ultralytics: heights + eps)
  T iw, ih;            // intersection width / height
  T inter, uni;        // intersection, area sum S = aw ah + bw bh - inter
  T um, den, iou;      // union U (S or max(S, eps)), IoU's denominator (U + eps or U), inter / den
  T cw, ch;            // enclosing box width / height (after enclose())
  S eps;
  int conv_, umode_;   // Convention, UnionMode (through convention() / mode())

  FL_HOST_DEVICE BX_INLINE int convention() const { return kGeneric ? conv_ : int(kConvFastloss); }
  FL_HOST_DEVICE BX_INLINE int mode() const { return kGeneric ? umode_ : int(kUnionPlusEps); }

  FL_HOST_DEVICE BX_INLINE Pair(const T a_in[4], const T b_in[4], int fmt, S eps_, int conv, int umode) : eps(eps_), conv_(conv), umode_(umode) {
    to_xyxy(a_in, fmt, a);
    to_xyxy(b_in, fmt, b);
    aw = fl::relu(a[2] - a[0]);
    ah = fl::relu(a[3] - a[1]);
    bw = fl::relu(b[2] - b[0]);
    bh = fl::relu(b[3] - b[1]);
    if (convention() == kConvUltralytics) {  // h = y2 - y1 + eps
      ah = ah + T(eps);
      bh = bh + T(eps);
    }
    iw = fl::relu(min_(a[2], b[2]) - max_(a[0], b[0]));
    ih = fl::relu(min_(a[3], b[3]) - max_(a[1], b[1]));
    inter = iw * ih;
    uni = aw * ah + bw * bh - inter;
    if (mode() == kUnionPlusEps) {
      um = uni;
      den = uni + T(eps);
      iou = inter / den;
    } else {
      um = mode() == kUnionMaxEps ? max_(uni, T(eps)) : uni;  // den >= eps > 0, or S (then 0 / 0 = 0; a NaN passes: NaN != 0)
      den = um;
      const auto zero = den == T(0);
      iou = drop(zero, inter / fl::select(zero, T(1), den));
    }
  }
  // 1 / den (0 where den = 0: the finite limit of the eps-free IoU)
  FL_HOST_DEVICE BX_INLINE T inv_den() const { return mode() == kUnionExact ? inv_pos(den) : T(1) / den; }
  FL_HOST_DEVICE BX_INLINE void enclose() {
    cw = fl::relu(max_(a[2], b[2]) - min_(a[0], b[0]));
    ch = fl::relu(max_(a[3], b[3]) - min_(a[1], b[1]));
  }
  // differences of the doubled centres, a - b
  FL_HOST_DEVICE BX_INLINE T dxc() const { return (a[0] + a[2]) - (b[0] + b[2]); }
  FL_HOST_DEVICE BX_INLINE T dyc() const { return (a[1] + a[3]) - (b[1] + b[3]); }

  // d -> dL/d(a) and dL/d(b) in the user's format.  `enclosed`: whether enclose() ran (and
  // d.cw / d.ch may be nonzero).
  FL_HOST_DEVICE BX_INLINE void pullback(Adj<T>& d, int fmt, bool enclosed, T ga[4], T gb[4]) const {
    // iou = inter / den, den = um (+ eps), um = uni or max(uni, eps) (ties split); with U + eps
    // (um = uni) the union's adjoint accumulates in d.uni directly
    const T inv = inv_den();
    d.inter = d.inter + d.iou * inv;
    if (mode() == kUnionPlusEps) {
      d.uni = d.uni - d.iou * iou * inv;
    } else {
      d.um = d.um - d.iou * iou * inv;
      d.uni = d.uni + (mode() == kUnionMaxEps ? d.um * share_max(uni, T(eps)) : d.um);
    }
    // uni = aw ah + bw bh - inter
    d.aw = d.aw + d.uni * ah;
    d.ah = d.ah + d.uni * aw;
    d.bw = d.bw + d.uni * bh;
    d.bh = d.bh + d.uni * bw;
    d.inter = d.inter - d.uni;
    // inter = relu(min(a2, b2) - max(a0, b0)) relu(min(a3, b3) - max(a1, b1)), relu'(0) = 0;
    // each min / max passes the gradient to its winner (ties: halves)
    const T giw = d.inter * ih * step_pos(iw), gih = d.inter * iw * step_pos(ih);
    split(giw, share_min(a[2], b[2]), d.a[2], d.b[2]);
    split(T(0) - giw, share_max(a[0], b[0]), d.a[0], d.b[0]);
    split(gih, share_min(a[3], b[3]), d.a[3], d.b[3]);
    split(T(0) - gih, share_max(a[1], b[1]), d.a[1], d.b[1]);
    // enclosing box: clamp(max(a2, b2) - min(a0, b0), 0), ... (clamp'(0) = 1)
    if (enclosed) {
      const T gcw = d.cw * step_nonneg(max_(a[2], b[2]) - min_(a[0], b[0]));
      const T gch = d.ch * step_nonneg(max_(a[3], b[3]) - min_(a[1], b[1]));
      split(gcw, share_max(a[2], b[2]), d.a[2], d.b[2]);
      split(T(0) - gcw, share_min(a[0], b[0]), d.a[0], d.b[0]);
      split(gch, share_max(a[3], b[3]), d.a[3], d.b[3]);
      split(T(0) - gch, share_min(a[1], b[1]), d.a[1], d.b[1]);
    }
    // widths / heights: clamp(x2 - x0, 0) (clamp'(0) = 1: a collapsed box can grow back)
    const T gaw = d.aw * step_nonneg(a[2] - a[0]), gah = d.ah * step_nonneg(a[3] - a[1]);
    const T gbw = d.bw * step_nonneg(b[2] - b[0]), gbh = d.bh * step_nonneg(b[3] - b[1]);
    // ... and the centre differences (a0 + a2) - (b0 + b2)
    d.a[0] = d.a[0] - gaw + d.dxc, d.a[2] = d.a[2] + gaw + d.dxc;
    d.a[1] = d.a[1] - gah + d.dyc, d.a[3] = d.a[3] + gah + d.dyc;
    d.b[0] = d.b[0] - gbw - d.dxc, d.b[2] = d.b[2] + gbw - d.dxc;
    d.b[1] = d.b[1] - gbh - d.dyc, d.b[3] = d.b[3] + gbh - d.dyc;
    from_xyxy_grad(d.a, fmt, ga);
    from_xyxy_grad(d.b, fmt, gb);
  }
};

// ------------------------------------------------------------------ terms of the losses
// Each term: its value, and grad(up, d) adding up * d(value)/d(intermediates) into d.

// GIoU's penalty (C - U) / (C + eps), C the enclosing area (arXiv 1902.09630); with the union
// modes: (max(C, eps) - U) / max(C, eps) (mmdetection) and (C - U) / C, 0 at C = 0 (torchvision)
template <typename T, typename S>
struct GIoUTerm {
  T c, inv, value;
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE explicit GIoUTerm(const Pair<T, S, kG>& g) {
    c = g.cw * g.ch;
    if (g.mode() == kUnionPlusEps) {
      inv = T(1) / (c + T(g.eps));
      value = (c - g.uni) * inv;
    } else {
      const T cm = g.mode() == kUnionMaxEps ? max_(c, T(g.eps)) : c;
      inv = g.mode() == kUnionMaxEps ? T(1) / cm : inv_pos(cm);
      value = (cm - g.um) * inv;
    }
  }
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE void grad(const Pair<T, S, kG>& g, const T& up, Adj<T>& d) const {
    // d value / dC = den / denominator^2: (U + eps) / (C + eps)^2, U / max(C, eps)^2 (times
    // max's share), U / C^2
    if (g.mode() == kUnionPlusEps) {
      const T gc = up * (g.uni + T(g.eps)) * inv * inv;
      d.cw = d.cw + gc * g.ch;
      d.ch = d.ch + gc * g.cw;
      d.uni = d.uni - up * inv;
      return;
    }
    T gc = up * g.den * inv * inv;
    if (g.mode() == kUnionMaxEps) gc = gc * share_max(c, T(g.eps));
    d.cw = d.cw + gc * g.ch;
    d.ch = d.ch + gc * g.cw;
    d.um = d.um - up * inv;
  }
};

// DIoU's penalty rho^2 / c^2: squared centre distance over the enclosing diagonal squared
// (+ eps) (arXiv 1911.08287)
template <typename T, typename S>
struct DIoUTerm {
  T dx, dy, inv, value;
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE explicit DIoUTerm(const Pair<T, S, kG>& g) {
    dx = g.dxc();
    dy = g.dyc();
    inv = T(1) / (g.cw * g.cw + g.ch * g.ch + T(g.eps));
    value = (dx * dx + dy * dy) * T(0.25) * inv;  // dxc is twice the centre distance
  }
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE void grad(const Pair<T, S, kG>& g, const T& up, Adj<T>& d) const {
    const T gr = up * inv * T(0.5);                // d value / d dxc = dxc / 2 * inv
    const T gc2 = T(0) - up * value * inv * T(2);  // d value / d cw = -value * inv * 2 cw
    d.dxc = d.dxc + gr * dx;
    d.dyc = d.dyc + gr * dy;
    d.cw = d.cw + gc2 * g.cw;
    d.ch = d.ch + gc2 * g.ch;
  }
};

// CIoU's aspect term alpha v, v = 4/pi^2 (atan(wb/hb) - atan(wa/ha))^2 (atan2: finite for
// w = h = 0), alpha = v / (1 - IoU + v + eps) held constant in the backward.  mmdetection:
// heights h + eps in v (not in the areas), alpha = [IoU > 0.5] v / (1 - IoU + v).
template <typename T, typename S>
struct CIoUTerm {
  T ha, hb, dl, alpha, value;
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE CIoUTerm(const Pair<T, S, kG>& g, int conv) {
    const bool mm = conv == kConvMMDet;
    ha = mm ? g.ah + T(g.eps) : g.ah;
    hb = mm ? g.bh + T(g.eps) : g.bh;
    dl = fl::atan2(g.bw, hb) - fl::atan2(g.aw, ha);
    const T v = T(0.40528473456935108578) * dl * dl;
    if (mm) {
      const T den = T(1) - g.iou + v;  // 0 only for IoU = 1, v = 0: alpha 0 (mmdetection: NaN)
      alpha = take(g.iou > T(0.5), v / fl::select(den > T(0), den, T(1)));
    } else {
      alpha = v / (T(1) - g.iou + v + T(g.eps));
    }
    value = alpha * v;
  }
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE void grad(const Pair<T, S, kG>& g, const T& up, Adj<T>& d) const {
    const T gdl = up * alpha * T(2 * 0.40528473456935108578) * dl;
    // d atan2(y, x) = (x dy - y dx) / (x^2 + y^2), 0 at (0, 0)
    const T ra = gdl * inv_pos(g.aw * g.aw + ha * ha), rb = gdl * inv_pos(g.bw * g.bw + hb * hb);
    d.aw = d.aw - ra * ha;
    d.ah = d.ah + ra * g.aw;
    d.bw = d.bw + rb * hb;
    d.bh = d.bh - rb * g.bw;
  }
};

// clamp(x, lo, hi) with torch.clamp's derivative (0 strictly outside: every adjoint so far
// is scaled by it); a NaN passes.  mmdetection's CIoU loss 1 - clamp(CIoU, -1, 1) is the loss
// clamped to [0, 2].
template <typename T>
FL_HOST_DEVICE BX_INLINE T clamp_scaled(const T& x, double lo, double hi, Adj<T>& d, bool grad) {
  const auto above = x > T(hi), below = x < T(lo);
  if (grad) d.scale(drop(above | below, T(1)));
  return fl::select(above, T(hi), fl::select(below, T(lo), x));
}

// EIoU's width (or height) term (wa - wb)^2 / (cw^2 + eps) (arXiv 2101.08158)
template <typename T, typename S>
struct SideTerm {
  T diff, inv, value;
  FL_HOST_DEVICE BX_INLINE SideTerm(const T& wa, const T& wb, const T& cw, S eps) {
    diff = wa - wb;
    inv = T(1) / (cw * cw + T(eps));
    value = diff * diff * inv;
  }
  // adds to the adjoints of wa, wb, cw
  FL_HOST_DEVICE BX_INLINE void grad(const T& cw, const T& up, T& dwa, T& dwb, T& dcw) const {
    const T gd = up * T(2) * diff * inv;
    dwa = dwa + gd;
    dwb = dwb - gd;
    dcw = dcw - up * value * inv * T(2) * cw;
  }
};

// SIoU's (distance + shape) / 2 with the angle folded into the distance cost (arXiv 2205.12740):
//   d = centre offset t - p;  Lambda = sin(2 theta) = 2 |dx| |dy| / (dx^2 + dy^2 + eps);
//   gamma = 2 - Lambda;  distance = sum over x, y of 1 - exp(-gamma dx^2 / (cw^2 + eps));
//   shape = sum over w, h of (1 - exp(-|wa - wb| / (max(wa, wb) + eps)))^4
template <typename T, typename S>
struct SIoUTerm {
  T dx, dy, den, lam, gam, ix, iy, rx, ry, ex, ey;  // angle and distance costs
  T ow, oh, imw, imh, ew, eh;                       // shape cost
  T value;
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE explicit SIoUTerm(const Pair<T, S, kG>& g) {
    const T eps(g.eps);
    dx = g.dxc() * T(-0.5);
    dy = g.dyc() * T(-0.5);
    den = T(1) / (dx * dx + dy * dy + eps);
    lam = T(2) * fl::abs(dx) * fl::abs(dy) * den;
    gam = T(2) - lam;
    ix = T(1) / (g.cw * g.cw + eps);
    iy = T(1) / (g.ch * g.ch + eps);
    rx = dx * dx * ix;
    ry = dy * dy * iy;
    ex = fl::exp(T(0) - gam * rx);
    ey = fl::exp(T(0) - gam * ry);
    imw = T(1) / (max_(g.aw, g.bw) + eps);
    imh = T(1) / (max_(g.ah, g.bh) + eps);
    ow = fl::abs(g.aw - g.bw) * imw;
    oh = fl::abs(g.ah - g.bh) * imh;
    ew = fl::exp(T(0) - ow);
    eh = fl::exp(T(0) - oh);
    const T sw = T(1) - ew, sh = T(1) - eh;
    value = ((T(2) - ex - ey) + (sq(sq(sw)) + sq(sq(sh)))) * T(0.5);
  }
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE void grad(const Pair<T, S, kG>& g, const T& up, Adj<T>& d) const {
    const T gs = up * T(0.5);  // d value / d distance = d value / d shape
    // distance: exp(-gamma r) depends on gamma (through Lambda) and on r
    const T glam = T(0) - gs * (rx * ex + ry * ey);
    const T grx = gs * gam * ex, gry = gs * gam * ey;
    const T gden = T(0) - glam * lam * den;  // Lambda = 2 |dx| |dy| * den, den = 1 / (...)
    const T gdx = glam * T(2) * fl::abs(dy) * den * sign_(dx) + (gden + grx * ix) * T(2) * dx;
    const T gdy = glam * T(2) * fl::abs(dx) * den * sign_(dy) + (gden + gry * iy) * T(2) * dy;
    d.dxc = d.dxc - gdx * T(0.5);
    d.dyc = d.dyc - gdy * T(0.5);
    d.cw = d.cw - grx * rx * ix * T(2) * g.cw;
    d.ch = d.ch - gry * ry * iy * T(2) * g.ch;
    // shape: (1 - exp(-o))^4, o = |wa - wb| / (max(wa, wb) + eps); max ties split
    side(g.aw, g.bw, ow, imw, ew, gs, d.aw, d.bw);
    side(g.ah, g.bh, oh, imh, eh, gs, d.ah, d.bh);
  }
  FL_HOST_DEVICE BX_INLINE static void side(const T& wa, const T& wb, const T& o, const T& im, const T& e, const T& gs, T& dwa, T& dwb) {
    const T s = T(1) - e;
    const T go = gs * T(4) * s * s * s * e;
    const T gnum = go * im * sign_(wa - wb);
    const T gm = T(0) - go * o * im;
    dwa = dwa + gnum;
    dwb = dwb - gnum;
    split(gm, share_max(wa, wb), dwa, dwb);
  }
};

// mmdetection 3.3's SIoU (siou_loss; arXiv 2205.12740 with its own eps placement): with
//   sx, sy = target centre - prediction centre + eps;  sigma^2 = sx^2 + sy^2;
//   angle = cos(2 asin(sin_alpha) - pi/2) = 2 |sx| |sy| / sigma^2  (mmdetection's branch on
//           sin_alpha > sqrt(2)/2 picks the same value; 0 at sigma = 0, mmdetection NaN);
//   gamma = s (2 - angle), s = -1 with neg_gamma (the paper's sign), +1 without;
//   distance = 2 - exp(gamma (sx / cw')^2) - exp(gamma (sy / ch')^2), cw' = max(cw, eps) (clamp:
//           derivative 1 at the bound);
//   shape = sum over w, h of (1 - exp(-|wa - wb| / max(wa, wb)))^4, heights h + eps (0 / 0 = 0
//           for two zero widths, mmdetection NaN);
// value = (distance + shape) / 2 (the loss 1 - IoU + value is then clamped to [0, 2]).
template <typename T, typename S>
struct SIoUMMDetTerm {
  T sx, sy, q, ang, sgn, gam, cwm, chm, icw, ich, rx, ry, ex, ey;  // angle and distance costs
  T ha, hb, ow, oh, imw, imh, ew, eh;                             // shape cost
  T value;
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE SIoUMMDetTerm(const Pair<T, S, kG>& g, S neg) {
    const T eps(g.eps);
    sx = g.dxc() * T(-0.5) + eps;
    sy = g.dyc() * T(-0.5) + eps;
    q = inv_pos(sx * sx + sy * sy);
    ang = T(2) * fl::abs(sx) * fl::abs(sy) * q;
    sgn = T(neg != S(0) ? -1 : 1);
    gam = sgn * (T(2) - ang);
    cwm = fl::select(g.cw < eps, eps, g.cw);  // a NaN passes
    chm = fl::select(g.ch < eps, eps, g.ch);
    icw = T(1) / cwm;
    ich = T(1) / chm;
    rx = sq(sx * icw);
    ry = sq(sy * ich);
    ex = fl::exp(gam * rx);
    ey = fl::exp(gam * ry);
    ha = g.ah + eps;
    hb = g.bh + eps;
    imw = inv_pos(max_(g.aw, g.bw));
    imh = inv_pos(max_(ha, hb));
    ow = fl::abs(g.aw - g.bw) * imw;
    oh = fl::abs(ha - hb) * imh;
    ew = fl::exp(T(0) - ow);
    eh = fl::exp(T(0) - oh);
    const T sw = T(1) - ew, sh = T(1) - eh;
    value = ((T(2) - ex - ey) + (sq(sq(sw)) + sq(sq(sh)))) * T(0.5);
  }
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE void grad(const Pair<T, S, kG>& g, const T& up, Adj<T>& d) const {
    const T gs = up * T(0.5);  // d value / d distance = d value / d shape
    // distance = 2 - exp(gamma rx) - exp(gamma ry)
    const T ggam = T(0) - gs * (ex * rx + ey * ry);
    const T grx = T(0) - gs * ex * gam, gry = T(0) - gs * ey * gam;
    const T gang = T(0) - ggam * sgn;
    // angle = 2 |sx| |sy| q, q = 1 / (sx^2 + sy^2); rx = sx^2 / cw'^2
    const T gsx = gang * T(2) * (sign_(sx) * fl::abs(sy) - ang * sx) * q + grx * T(2) * sx * icw * icw;
    const T gsy = gang * T(2) * (sign_(sy) * fl::abs(sx) - ang * sy) * q + gry * T(2) * sy * ich * ich;
    d.dxc = d.dxc - gsx * T(0.5);
    d.dyc = d.dyc - gsy * T(0.5);
    // clamp(cw, eps)' = 1 at and above the bound (torch.clamp), 0 below
    d.cw = d.cw - take(g.cw >= T(g.eps), grx * rx * icw * T(2));
    d.ch = d.ch - take(g.ch >= T(g.eps), gry * ry * ich * T(2));
    SIoUTerm<T, S>::side(g.aw, g.bw, ow, imw, ew, gs, d.aw, d.bw);
    SIoUTerm<T, S>::side(ha, hb, oh, imh, eh, gs, d.ah, d.bh);
  }
};

// Extended-IoU's intersection (IEEE 9429909, mmdetection's eiou_loss): with the corner
// extremes ex1 = min(x1, x1'), ix1 = max(x1, x1'), ix2 = min(x2, x2') (y alike) and
// xmin / xmax = min / max(ix1, ix2),
//   I = (ix2 - ex1)(iy2 - ey1) + (xmin - ex1)(ymin - ey1) - (ix1 - ex1)(ymax - ey1) - (xmax - ex1)(iy1 - ey1),
// the intersection's area where the boxes overlap and a negative extension where they do not.
// The loss: x = 1 - I / (w h + w' h' - I + eps), smoothed 0.5 x^2 / sp below sp = smooth_point,
// x - 0.5 sp from sp on (the branch is not differentiated).  Widths / heights clamped at 0.
template <typename T, typename S>
struct ExtIoU {
  T ex1, ey1, ix1, iy1, ix2, iy2, xmin, ymin, xmax, ymax, inter, inv, x, value;
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE ExtIoU(const Pair<T, S, kG>& g, S sp) {
    ex1 = min_(g.a[0], g.b[0]);
    ey1 = min_(g.a[1], g.b[1]);
    ix1 = max_(g.a[0], g.b[0]);
    iy1 = max_(g.a[1], g.b[1]);
    ix2 = min_(g.a[2], g.b[2]);
    iy2 = min_(g.a[3], g.b[3]);
    xmin = min_(ix1, ix2);
    ymin = min_(iy1, iy2);
    xmax = max_(ix1, ix2);
    ymax = max_(iy1, iy2);
    inter = (ix2 - ex1) * (iy2 - ey1) + (xmin - ex1) * (ymin - ey1) - (ix1 - ex1) * (ymax - ey1) - (xmax - ex1) * (iy1 - ey1);
    inv = T(1) / (g.aw * g.ah + g.bw * g.bh - inter + T(g.eps));
    x = T(1) - inter * inv;
    const auto low = x < T(sp);
    value = fl::select(low, T(0.5) * x * x / T(sp), x - T(0.5 * sp));
  }
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE void grad(const Pair<T, S, kG>& g, S sp, const T& up, Adj<T>& d) const {
    const T gx = up * fl::select(x < T(sp), x / T(sp), T(1));
    // x = 1 - I / U, U = areas - I + eps: dx/dI = -(U + I) / U^2, dx/d(areas) = I / U^2
    const T gu = gx * inter * inv * inv;
    const T gi = T(0) - gx * inv - gu;
    d.aw = d.aw + gu * g.ah;
    d.ah = d.ah + gu * g.aw;
    d.bw = d.bw + gu * g.bh;
    d.bh = d.bh + gu * g.bw;
    // I's partial derivatives
    const T u = ix2 - ex1, v = iy2 - ey1, p = xmin - ex1, q = ymin - ey1, r = ix1 - ex1, s = ymax - ey1, t = xmax - ex1, w = iy1 - ey1;
    T gix2 = gi * v, giy2 = gi * u, gxmin = gi * q, gymin = gi * p;
    T gix1 = T(0) - gi * s, gymax = T(0) - gi * r, gxmax = T(0) - gi * w, giy1 = T(0) - gi * t;
    const T gex1 = T(0) - (gix2 + gxmin + gix1 + gxmax), gey1 = T(0) - (giy2 + gymin + gymax + giy1);
    split(gxmin, share_min(ix1, ix2), gix1, gix2);
    split(gxmax, share_max(ix1, ix2), gix1, gix2);
    split(gymin, share_min(iy1, iy2), giy1, giy2);
    split(gymax, share_max(iy1, iy2), giy1, giy2);
    split(gex1, share_min(g.a[0], g.b[0]), d.a[0], d.b[0]);
    split(gey1, share_min(g.a[1], g.b[1]), d.a[1], d.b[1]);
    split(gix1, share_max(g.a[0], g.b[0]), d.a[0], d.b[0]);
    split(giy1, share_max(g.a[1], g.b[1]), d.a[1], d.b[1]);
    split(gix2, share_min(g.a[2], g.b[2]), d.a[2], d.b[2]);
    split(giy2, share_min(g.a[3], g.b[3]), d.a[3], d.b[3]);
  }
};

// Bounded IoU (arXiv 1711.00164, mmdetection's bounded_iou_loss), per box the sum of 4 terms
// smoothed as smooth-L1 with beta (0.5 l^2 / beta below beta, l - 0.5 beta from beta on):
//   l_x = 1 - max((w_t - 2 |dx|) / (w_t + 2 |dx| + eps), 0),  dx = target - prediction centre x
//   l_w = 1 - min(w_t / (w_p + eps), w_p / (w_t + eps))      (y, h alike; widths clamped at 0)
// max / min ties split the gradient (torch.maximum / torch.minimum).  The terms are also kept
// apart (mmdetection's per-coordinate (n, 4) loss [l_x, l_y, l_w, l_h]: bounded_iou_terms).
template <typename T, typename S>
struct BoundedIoU {
  T term[4], value;    // l_x, l_y, l_w, l_h (smoothed) and their sum
  T gdx, gdy, gw, gh;  // d term / d (target - prediction centre), d term / d w_p, h_p
  FL_HOST_DEVICE BX_INLINE static T smooth(const T& l, S beta, T& d) {
    const auto low = l < T(beta);
    d = fl::select(low, l / T(beta), T(1));
    return fl::select(low, T(0.5) * l * l / T(beta), l - T(0.5 * beta));
  }
  // centre term of offset c against the target extent t; d: d term / d c
  FL_HOST_DEVICE BX_INLINE static T centre(const T& c, const T& t, S eps, S beta, T& d) {
    const T a = T(2) * fl::abs(c);
    const T inv = T(1) / (t + a + T(eps));
    const T r = (t - a) * inv;
    T ds;
    const T v = smooth(T(1) - max_(r, T(0)), beta, ds);
    // dr / da = -((t - a) + (t + a + eps)) / (t + a + eps)^2 = -(r + 1) inv, da / dc = 2 sign(c)
    d = (T(0) - ds) * share_max(r, T(0)) * (T(0) - (r + T(1)) * inv) * T(2) * sign_(c);
    return v;
  }
  // size term of the prediction's extent p against the target's t; d: d term / d p
  FL_HOST_DEVICE BX_INLINE static T size(const T& p, const T& t, S eps, S beta, T& d) {
    const T ip = T(1) / (p + T(eps)), it = T(1) / (t + T(eps));
    const T q1 = t * ip, q2 = p * it;
    T ds;
    const T v = smooth(T(1) - min_(q1, q2), beta, ds);
    const T s = share_min(q1, q2);
    d = (T(0) - ds) * (s * (T(0) - q1 * ip) + (T(1) - s) * it);
    return v;
  }
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE BoundedIoU(const Pair<T, S, kG>& g, S beta) {
    const S eps = g.eps;
    const T dx = g.dxc() * T(-0.5), dy = g.dyc() * T(-0.5);
    term[0] = centre(dx, g.bw, eps, beta, gdx);
    term[1] = centre(dy, g.bh, eps, beta, gdy);
    term[2] = size(g.aw, g.bw, eps, beta, gw);
    term[3] = size(g.ah, g.bh, eps, beta, gh);
    value = ((term[0] + term[1]) + term[2]) + term[3];
  }
  // up[k]: the upstream gradient of term k (all equal for the sum)
  FL_HOST_DEVICE BX_INLINE void grad(const T up[4], Adj<T>& d) const {
    d.dxc = d.dxc - up[0] * gdx * T(0.5);  // dx = -dxc / 2
    d.dyc = d.dyc - up[1] * gdy * T(0.5);
    d.aw = d.aw + up[2] * gw;
    d.ah = d.ah + up[3] * gh;
  }
};

// CDIoU's penalty: mean distance of the 4 corner pairs over the enclosing diagonal
// (arXiv 2103.11696): (sum_k |corner_k(p) - corner_k(t)|) / (4 sqrt(cw^2 + ch^2 + eps))
template <typename T, typename S>
struct CDIoUTerm {
  T dx0, dy1, dx2, dy3, e[4], diag, value;
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE explicit CDIoUTerm(const Pair<T, S, kG>& g) {
    dx0 = g.a[0] - g.b[0], dy1 = g.a[1] - g.b[1], dx2 = g.a[2] - g.b[2], dy3 = g.a[3] - g.b[3];
    e[0] = fl::sqrt(dx0 * dx0 + dy1 * dy1);  // (x1, y1)
    e[1] = fl::sqrt(dx2 * dx2 + dy1 * dy1);  // (x2, y1)
    e[2] = fl::sqrt(dx2 * dx2 + dy3 * dy3);  // (x2, y2)
    e[3] = fl::sqrt(dx0 * dx0 + dy3 * dy3);  // (x1, y2)
    diag = fl::sqrt(g.cw * g.cw + g.ch * g.ch + T(g.eps));
    value = (e[0] + e[1] + e[2] + e[3]) / (diag * T(4));
  }
  template <bool kG>
  FL_HOST_DEVICE BX_INLINE void grad(const Pair<T, S, kG>& g, const T& up, Adj<T>& d) const {
    const T ge = up / (diag * T(4));  // d value / d e_k
    // d value / d diag = -value / diag, d diag / d cw = cw / diag (0 at diag = 0)
    const T gdiag = (T(0) - up * value) * sq(inv_pos(diag));
    d.cw = d.cw + gdiag * g.cw;
    d.ch = d.ch + gdiag * g.ch;
    // d e / d offset = offset / e (0 at e = 0)
    const T r0 = ge * inv_pos(e[0]), r1 = ge * inv_pos(e[1]), r2 = ge * inv_pos(e[2]), r3 = ge * inv_pos(e[3]);
    const T g0 = dx0 * (r0 + r3), g1 = dy1 * (r0 + r1), g2 = dx2 * (r1 + r2), g3 = dy3 * (r2 + r3);
    d.a[0] = d.a[0] + g0, d.a[1] = d.a[1] + g1, d.a[2] = d.a[2] + g2, d.a[3] = d.a[3] + g3;
    d.b[0] = d.b[0] - g0, d.b[1] = d.b[1] - g1, d.b[2] = d.b[2] - g2, d.b[3] = d.b[3] - g3;
  }
};

// ------------------------------------------------------------------ the losses and the metrics
// Paired loss of prediction p against target t (user format).  kGrad: also dL/dp in gp.
template <bool kGrad, bool kGeneric, typename T, typename S>
FL_HOST_DEVICE BX_INLINE T paired_loss_impl(const T p_in[4], const T t_in[4], const Params<S>& prm, T gp[4]) {
  Pair<T, S, kGeneric> g(p_in, t_in, prm.fmt, prm.eps, prm.conv, union_of_loss(prm.conv, prm.kind));
  Adj<T> d;
  const T one(1), eps(prm.eps);
  const S pw = prm.power;
  T loss, dp;  // dp: the derivative of x^power at the current term
  bool enclosed = false;
  if (prm.kind == kBoundedIoU) {
    const BoundedIoU<T, S> b(g, prm.gamma);
    loss = b.value;
    const T ones[4] = {one, one, one, one};
    if (kGrad) b.grad(ones, d);
  } else if (prm.kind == kExtIoU) {
    const ExtIoU<T, S> e(g, prm.gamma);
    loss = e.value;
    if (kGrad) e.grad(g, prm.gamma, one, d);
  } else if (prm.kind == kLogIoU) {
    // -power ln(max(IoU, eps)) (UnitBox, arXiv 1608.01471)
    const auto floor = eps > g.iou;
    loss = T(-pw) * fl::log(fl::select(floor, eps, g.iou));
    if (kGrad) d.iou = drop(floor, T(-pw) / g.iou);
  } else {
    // 1 - IoU^power + the kind's penalty^power (alpha-IoU, arXiv 2110.13675)
    loss = one - powd1(g.iou, pw, dp);
    if (kGrad) d.iou = T(0) - dp;
    if (prm.kind != kIoU) {
      g.enclose();
      enclosed = true;
      if (prm.kind == kGIoU) {
        const GIoUTerm<T, S> term(g);
        loss = loss + powd1(term.value, pw, dp);
        if (kGrad) term.grad(g, dp, d);
      } else if (prm.kind == kCDIoU) {
        const CDIoUTerm<T, S> term(g);
        loss = loss + powd1(term.value, pw, dp);
        if (kGrad) term.grad(g, dp, d);
      } else if (prm.kind == kSIoU && g.convention() == kConvMMDet) {
        // mmdetection: 1 - clamp(IoU - value, -1, 1) (power 1)
        const SIoUMMDetTerm<T, S> term(g, prm.gamma);
        loss = loss + term.value;
        if (kGrad) term.grad(g, one, d);
        loss = clamp_scaled(loss, 0.0, 2.0, d, kGrad);
      } else if (prm.kind == kSIoU) {
        const SIoUTerm<T, S> term(g);
        loss = loss + powd1(term.value, pw, dp);
        if (kGrad) term.grad(g, dp, d);
      } else {
        const DIoUTerm<T, S> term(g);
        loss = loss + powd1(term.value, pw, dp);
        if (kGrad) term.grad(g, dp, d);
        if (prm.kind == kCIoU) {
          const CIoUTerm<T, S> aspect(g, g.convention());
          loss = loss + powd1(aspect.value, pw, dp);
          if (kGrad) aspect.grad(g, dp, d);
          if (g.convention() == kConvMMDet) loss = clamp_scaled(loss, 0.0, 2.0, d, kGrad);
        } else if (prm.kind == kEIoU || prm.kind == kFocalEIoU) {
          const SideTerm<T, S> w(g.aw, g.bw, g.cw, prm.eps), h(g.ah, g.bh, g.ch, prm.eps);
          loss = loss + powd1(w.value, pw, dp);
          if (kGrad) w.grad(g.cw, dp, d.aw, d.bw, d.cw);
          loss = loss + powd1(h.value, pw, dp);
          if (kGrad) h.grad(g.ch, dp, d.ah, d.bh, d.ch);
          if (prm.kind == kFocalEIoU) {
            // IoU^gamma * L_EIoU
            const T f = powd(g.iou, prm.gamma, dp);
            if (kGrad) {
              d.scale(f);
              d.iou = d.iou + dp * loss;
            }
            loss = f * loss;
          }
        }
      }
    }
  }
  if (kGrad) {
    T gt[4];
    g.pullback(d, prm.fmt, enclosed, gp, gt);
    nan_reaches(loss, gp);
  }
  return loss;
}

template <bool kGrad, typename T, typename S>
FL_HOST_DEVICE BX_INLINE T paired_loss(const T p_in[4], const T t_in[4], const Params<S>& prm, T gp[4]) {
  if (prm.conv == kConvFastloss) return paired_loss_impl<kGrad, false>(p_in, t_in, prm, gp);
  return paired_loss_impl<kGrad, true>(p_in, t_in, prm, gp);
}

// ------------------------------------------------------------------ boxes in D dimensions
// Paired losses of D-dimensional boxes stored as the lower corner, then the upper one:
// (x1, y1, x2, y2) for D = 2, (x1, y1, z1, x2, y2, z2) for D = 3 (MONAI's StandardMode).  Used
// for D = 3 (2-D boxes keep Pair above: the conventions, the formats and every other kind are
// written for it).  Format xyxy, convention "fastloss", kinds iou / giou / diou and alpha-IoU's
// power (paired_nd_supported; the Python layer raises ValueError for anything else):
//   e_k = max(hi_k - lo_k, 0) (extents; inverted boxes have zero volume),  V = prod_k e_k,
//   I = prod_k relu(min(hi_k, hi'_k) - max(lo_k, lo'_k)),  U = V + V' - I,  IoU = I / (U + eps),
//   c_k = max(max(hi_k, hi'_k) - min(lo_k, lo'_k), 0) (enclosing box),  C = prod_k c_k,
//   GIoU's penalty (C - U) / (C + eps) (arXiv 1902.09630; MONAI's box_pair_giou),
//   DIoU's penalty sum_k (centre_k - centre'_k)^2 / (sum_k c_k^2 + eps) (arXiv 1911.08287, one
//   term per axis).
// The kink conventions are Pair's: extents and enclosing extents clamp'(0) = 1, the
// intersection's relu'(0) = 0, min / max ties split, (x^p)'(0) = 0.
FL_HOST_DEVICE BX_INLINE bool paired_nd_supported(int kind, int fmt, int conv) {
  return (kind == kIoU || kind == kGIoU || kind == kDIoU) && fmt == kXYXY && conv == kConvFastloss;
}

template <typename T, typename S, int D>
struct PairND {
  const T* a;  // prediction (lo..., hi...)
  const T* b;  // target
  T ea[D], eb[D], ei[D], c[D];  // extents of a, b, the intersection, the enclosing box
  T dc[D];                      // differences of the doubled centres, a - b
  T va, vb, inter, uni, den, iou;
  S eps;

  // the product of e over the axes other than `skip` (d prod / d e_skip)
  FL_HOST_DEVICE BX_INLINE static T prod_except(const T e[D], int skip) {
    T r(1);
#pragma unroll
    for (int k = 0; k < D; ++k)
      if (k != skip) r = r * e[k];
    return r;
  }
  FL_HOST_DEVICE BX_INLINE static T prod(const T e[D]) { return prod_except(e, -1); }

  FL_HOST_DEVICE BX_INLINE PairND(const T* a_in, const T* b_in, S eps_) : a(a_in), b(b_in), eps(eps_) {
#pragma unroll
    for (int k = 0; k < D; ++k) {
      ea[k] = fl::relu(a[D + k] - a[k]);
      eb[k] = fl::relu(b[D + k] - b[k]);
      ei[k] = fl::relu(min_(a[D + k], b[D + k]) - max_(a[k], b[k]));
      c[k] = fl::relu(max_(a[D + k], b[D + k]) - min_(a[k], b[k]));
      dc[k] = (a[k] + a[D + k]) - (b[k] + b[D + k]);
    }
    va = prod(ea);
    vb = prod(eb);
    inter = prod(ei);
    uni = va + vb - inter;
    den = uni + T(eps);
    iou = inter / den;
  }

  // adjoints of IoU, U, the enclosing extents and the centre differences -> dL/d(a) (the
  // prediction; the paired losses give no target gradient)
  FL_HOST_DEVICE BX_INLINE void pullback(const T& d_iou, T d_uni, const T d_c[D], const T d_dc[D], T ga[2 * D]) const {
    // IoU = I / (U + eps), U = V_a + V_b - I
    d_uni = d_uni - d_iou * iou / den;
    const T d_inter = d_iou / den - d_uni;
#pragma unroll
    for (int k = 0; k < D; ++k) {
      T glo(0), ghi(0);
      // V_a = prod e_a: clamp'(0) = 1 (a collapsed prediction grows back)
      const T gea = d_uni * prod_except(ea, k) * step_nonneg(a[D + k] - a[k]);
      glo = glo - gea;
      ghi = ghi + gea;
      // I = prod relu(min(hi, hi') - max(lo, lo')): relu'(0) = 0, the winner of min / max takes it
      const T gei = d_inter * prod_except(ei, k) * step_pos(ei[k]);
      ghi = ghi + gei * share_min(a[D + k], b[D + k]);
      glo = glo - gei * share_max(a[k], b[k]);
      // c = clamp(max(hi, hi') - min(lo, lo'), 0), clamp'(0) = 1
      const T gc = d_c[k] * step_nonneg(max_(a[D + k], b[D + k]) - min_(a[k], b[k]));
      ghi = ghi + gc * share_max(a[D + k], b[D + k]);
      glo = glo - gc * share_min(a[k], b[k]);
      // dc = (lo + hi) - (lo' + hi')
      ga[k] = glo + d_dc[k];
      ga[D + k] = ghi + d_dc[k];
    }
  }
};

// Paired loss of D-dimensional boxes p against t (lo..., hi...): 1 - IoU^power, plus GIoU's or
// DIoU's penalty^power (formulas above PairND).  kGrad: also dL/dp in gp (2 D components).
template <bool kGrad, int D, typename T, typename S>
FL_HOST_DEVICE BX_INLINE T paired_loss_nd(const T* p, const T* t, const Params<S>& prm, T* gp) {
  const PairND<T, S, D> g(p, t, prm.eps);
  T dp;
  T loss = T(1) - powd1(g.iou, prm.power, dp);
  T d_iou = T(0) - dp, d_uni(0), d_c[D], d_dc[D];
#pragma unroll
  for (int k = 0; k < D; ++k) d_c[k] = d_dc[k] = T(0);
  if (prm.kind == kGIoU) {
    // (C - U) / (C + eps): d/dC = (U + eps) / (C + eps)^2, d/dU = -1 / (C + eps)
    const T cv = PairND<T, S, D>::prod(g.c);
    const T inv = T(1) / (cv + T(prm.eps));
    loss = loss + powd1((cv - g.uni) * inv, prm.power, dp);
    if (kGrad) {
      const T gcv = dp * g.den * inv * inv;
#pragma unroll
      for (int k = 0; k < D; ++k) d_c[k] = gcv * PairND<T, S, D>::prod_except(g.c, k);
      d_uni = T(0) - dp * inv;
    }
  } else if (prm.kind == kDIoU) {
    // rho^2 / c^2 = (sum dc_k^2 / 4) / (sum c_k^2 + eps)  (dc: doubled centre differences)
    T rho(0), diag(T(prm.eps));
#pragma unroll
    for (int k = 0; k < D; ++k) {
      rho = rho + g.dc[k] * g.dc[k];
      diag = diag + g.c[k] * g.c[k];
    }
    const T inv = T(1) / diag;
    const T value = rho * T(0.25) * inv;
    loss = loss + powd1(value, prm.power, dp);
    if (kGrad) {
      const T gr = dp * inv * T(0.5), gc2 = T(0) - dp * value * inv * T(2);
#pragma unroll
      for (int k = 0; k < D; ++k) {
        d_dc[k] = gr * g.dc[k];
        d_c[k] = gc2 * g.c[k];
      }
    }
  }
  if (kGrad) {
    g.pullback(d_iou, d_uni, d_c, d_dc, gp);
    const T carrier = loss * T(0);  // NaN policy: a NaN loss reaches every gradient component
#pragma unroll
    for (int k = 0; k < 2 * D; ++k) gp[k] = gp[k] + carrier;
  }
  return loss;
}

// The paired loss of boxes with NC coordinates: 2-D (4, every kind / format / convention) or
// 3-D (6, paired_nd_supported).  The kernels' loops are templates over NC.
template <bool kGrad, bool kGeneric, int NC, typename T, typename S>
FL_HOST_DEVICE BX_INLINE T paired_loss_coords(const T* p, const T* t, const Params<S>& prm, T* gp) {
  static_assert(NC == 4 || NC == 6, "boxes have 4 (2-D) or 6 (3-D) coordinates");
  if constexpr (NC == 4) {
    return paired_loss_impl<kGrad, kGeneric>(p, t, prm, gp);
  } else {
    static_assert(!kGeneric, "3-D boxes: convention fastloss only");
    return paired_loss_nd<kGrad, NC / 2>(p, t, prm, gp);
  }
}

// Bounded IoU's 4 terms of prediction p against target t (user format) apart: terms[k] = l_x, l_y,
// l_w, l_h (mmdetection's per-coordinate loss; the kind's paired loss is their sum).  kGrad: also
// dL/dp in gp for L = sum_k up[k] terms[k].  Conventions fastloss and mmdet agree for this kind.
template <bool kGrad, typename T, typename S>
FL_HOST_DEVICE BX_INLINE void bounded_iou_terms(const T p_in[4], const T t_in[4], const Params<S>& prm, const T up[4], T terms[4], T gp[4]) {
  const Pair<T, S, false> g(p_in, t_in, prm.fmt, prm.eps, kConvFastloss, kUnionPlusEps);
  const BoundedIoU<T, S> b(g, prm.gamma);
#pragma unroll
  for (int k = 0; k < 4; ++k) terms[k] = b.term[k];
  if (kGrad) {
    Adj<T> d;
    b.grad(up, d);
    T gt[4];
    g.pullback(d, prm.fmt, false, gp, gt);
    nan_reaches(b.value, gp);  // a NaN term reaches every component
  }
}

// Pairwise / aligned metric of box a against box b, both in the user format.
// kGrad: also d metric / d a in ga and d metric / d b in gb.
template <bool kGrad, bool kGeneric, typename T, typename S>
FL_HOST_DEVICE BX_INLINE T pair_metric_impl(const T a_in[4], const T b_in[4], int kind, int fmt, int conv, S eps, T ga[4], T gb[4]) {
  Pair<T, S, kGeneric> g(a_in, b_in, fmt, eps, conv, union_of_metric(conv, kind));
  const int umode = g.mode();
  Adj<T> d;
  T m;
  bool enclosed = false;
  if (kind == kMIoF) {
    // intersection over a's area (mmcv's "iof"): I / (area + eps), mmdetection I / max(area, eps)
    const T area = g.aw * g.ah;
    const T den = umode == kUnionMaxEps ? max_(area, T(eps)) : area + T(eps);
    const T inv = T(1) / den;
    m = g.inter / den;  // a division, as the peers' I / area (I times 1 / area differs in the last bit)
    if (kGrad) {
      d.inter = inv;
      T garea = T(0) - m * inv;
      if (umode == kUnionMaxEps) garea = garea * share_max(area, T(eps));
      d.aw = garea * g.ah;
      d.ah = garea * g.aw;
    }
  } else {
    m = g.iou;
    if (kGrad) d.iou = T(1);
    if (kind != kMIoU) {
      g.enclose();
      enclosed = true;
      if (kind == kMGIoU) {
        const GIoUTerm<T, S> term(g);
        m = m - term.value;
        if (kGrad) term.grad(g, T(-1), d);
      } else {
        const DIoUTerm<T, S> term(g);
        m = m - term.value;
        if (kGrad) term.grad(g, T(-1), d);
        if (kind == kMCIoU) {
          const CIoUTerm<T, S> aspect(g, g.convention());
          m = m - aspect.value;
          if (kGrad) aspect.grad(g, T(-1), d);
          if (g.convention() == kConvMMDet) m = clamp_scaled(m, -1.0, 1.0, d, kGrad);
        }
      }
    }
  }
  if (kGrad) {
    g.pullback(d, fmt, enclosed, ga, gb);
    nan_reaches(m, ga);
    nan_reaches(m, gb);
  }
  return m;
}

template <bool kGrad, typename T, typename S>
FL_HOST_DEVICE BX_INLINE T pair_metric(const T a_in[4], const T b_in[4], int kind, int fmt, int conv, S eps, T ga[4], T gb[4]) {
  if (conv == kConvFastloss) return pair_metric_impl<kGrad, false>(a_in, b_in, kind, fmt, conv, eps, ga, gb);
  return pair_metric_impl<kGrad, true>(a_in, b_in, kind, fmt, conv, eps, ga, gb);
}

// forward only
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T pair_metric(const T a_in[4], const T b_in[4], int kind, int fmt, int conv, S eps) {
  return pair_metric<false>(a_in, b_in, kind, fmt, conv, eps, static_cast<T*>(nullptr), static_cast<T*>(nullptr));
}
// forward only, the instantiation chosen by the caller (kGeneric == (conv != kConvFastloss)):
// kernels hoist that choice out of their loops
template <bool kGeneric, typename T, typename S>
FL_HOST_DEVICE BX_INLINE T metric_value(const T a_in[4], const T b_in[4], int kind, int fmt, int conv, S eps) {
  return pair_metric_impl<false, kGeneric>(a_in, b_in, kind, fmt, conv, eps, static_cast<T*>(nullptr), static_cast<T*>(nullptr));
}

}  // namespace box
}  // namespace fastloss
