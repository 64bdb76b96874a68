// IoU family: box geometry shared by csrc/cpu/box_iou.cpp and csrc/cuda/box_iou.cu.
//
// Every quantity is written once, as templates over a "number" type N:
//   * a lane type T (float / double on CUDA and in CPU tails, at::vec::Vectorized<float|double>
//     in the CPU vector loops) for values only, or
//   * Dual<T, S>: a value plus its 4 partial derivatives with respect to the 4 coordinates
//     of one box (the prediction, in the user's box format).  Running the same geometry on
//     Dual inputs is forward-mode differentiation: every operation applies its analytic
//     derivative (chain rule), so the backward is exact (no finite differences, no tape) and
//     can never drift from the forward.  4 directions = one box's 4 coordinates: the paired
//     losses' gradient w.r.t. pred, and each of the two deterministic backward passes of the
//     pairwise matrices (w.r.t. boxes1, then w.r.t. boxes2).
//
// The math of every kind (with arXiv ids) is in fastloss/reference/box_iou.py; this header
// mirrors it.  Derivative conventions at kinks (the float64 reference uses the same):
//   relu'(0) = 0, |x|'(0) = 0, sqrt'(0) = 0, (x^p)'(0) = 0, atan2'(0, 0) = 0, and min/max
//   ties take the first argument (the prediction / boxes1), which gets the whole gradient.
// CIoU's trade-off weight alpha is a constant in the backward (torchvision, ultralytics).
#pragma once

#include "fastloss/common.h"

#if !defined(__CUDACC__) && !defined(__HIPCC__)
#include <ATen/cpu/vec/vec.h>
#endif

// Everything here is forced inline on the CPU: the Dual lanes (5 AVX registers each) must
// stay in registers across the whole loss, which GCC's inliner otherwise gives up on.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define BX_INLINE __forceinline__
#elif defined(__GNUC__)
#define BX_INLINE inline __attribute__((always_inline))
#else
#define BX_INLINE inline
#endif

namespace fastloss {
namespace box {

// ------------------------------------------------------------------ lane math (scalars)
FL_HOST_DEVICE BX_INLINE float sqrt_(float x) { return ::sqrtf(x); }
FL_HOST_DEVICE BX_INLINE double sqrt_(double x) { return ::sqrt(x); }
FL_HOST_DEVICE BX_INLINE float exp_(float x) { return ::expf(x); }
FL_HOST_DEVICE BX_INLINE double exp_(double x) { return ::exp(x); }
FL_HOST_DEVICE BX_INLINE float log_(float x) { return ::logf(x); }
FL_HOST_DEVICE BX_INLINE double log_(double x) { return ::log(x); }
FL_HOST_DEVICE BX_INLINE float pow_(float x, float p) { return ::powf(x, p); }
FL_HOST_DEVICE BX_INLINE double pow_(double x, double p) { return ::pow(x, p); }
FL_HOST_DEVICE BX_INLINE float atan2_(float y, float x) { return ::atan2f(y, x); }
FL_HOST_DEVICE BX_INLINE double atan2_(double y, double x) { return ::atan2(y, x); }
template <typename T>
FL_HOST_DEVICE BX_INLINE T sel(bool c, T a, T b) { return c ? a : b; }
// NaN-propagating min/max: a NaN in `a` wins (callers put the prediction first).
template <typename T>
FL_HOST_DEVICE BX_INLINE T min_(T a, T b) { return b < a ? b : a; }
template <typename T>
FL_HOST_DEVICE BX_INLINE T max_(T a, T b) { return b > a ? b : a; }

#if !defined(__CUDACC__) && !defined(__HIPCC__)
// ------------------------------------------------------------------ lane math (CPU vectors)
template <typename S>
using Vec = at::vec::Vectorized<S>;
template <typename S>
BX_INLINE Vec<S> sqrt_(const Vec<S>& x) { return x.sqrt(); }
template <typename S>
BX_INLINE Vec<S> exp_(const Vec<S>& x) { return x.exp(); }
template <typename S>
BX_INLINE Vec<S> log_(const Vec<S>& x) { return x.log(); }
template <typename S>
BX_INLINE Vec<S> pow_(const Vec<S>& x, S p) { return x.pow(Vec<S>(p)); }
template <typename S>
BX_INLINE Vec<S> atan2_(const Vec<S>& y, const Vec<S>& x) { return y.atan2(x); }
template <typename S>
BX_INLINE Vec<S> sel(const Vec<S>& m, const Vec<S>& a, const Vec<S>& b) { return Vec<S>::blendv(b, a, m); }
template <typename S>
BX_INLINE Vec<S> min_(const Vec<S>& a, const Vec<S>& b) { return sel(b < a, b, a); }
template <typename S>
BX_INLINE Vec<S> max_(const Vec<S>& a, const Vec<S>& b) { return sel(b > a, b, a); }
#endif

// ------------------------------------------------------------------ dual numbers
template <typename T, typename S>
struct Dual {
  T v;
  T d[4];
  FL_HOST_DEVICE BX_INLINE Dual() {}
  FL_HOST_DEVICE BX_INLINE Dual(const T& x) : v(x) {
#pragma unroll
    for (int k = 0; k < 4; ++k) d[k] = T(S(0));
  }
  // the k-th input coordinate (seeded: d/dcoord_k = 1)
  FL_HOST_DEVICE BX_INLINE static Dual seed(const T& x, int k) {
    Dual r(x);
    r.d[k] = T(S(1));
    return r;
  }
  // r = f(v), r.d = f'(v) * d
  FL_HOST_DEVICE BX_INLINE Dual chain(const T& fv, const T& dfv) const {
    Dual r;
    r.v = fv;
#pragma unroll
    for (int k = 0; k < 4; ++k) r.d[k] = dfv * d[k];
    return r;
  }

  FL_HOST_DEVICE BX_INLINE friend Dual operator+(const Dual& a, const Dual& b) {
    Dual r;
    r.v = a.v + b.v;
#pragma unroll
    for (int k = 0; k < 4; ++k) r.d[k] = a.d[k] + b.d[k];
    return r;
  }
  FL_HOST_DEVICE BX_INLINE friend Dual operator-(const Dual& a, const Dual& b) {
    Dual r;
    r.v = a.v - b.v;
#pragma unroll
    for (int k = 0; k < 4; ++k) r.d[k] = a.d[k] - b.d[k];
    return r;
  }
  FL_HOST_DEVICE BX_INLINE friend Dual operator*(const Dual& a, const Dual& b) {
    Dual r;
    r.v = a.v * b.v;
#pragma unroll
    for (int k = 0; k < 4; ++k) r.d[k] = a.d[k] * b.v + a.v * b.d[k];
    return r;
  }
  FL_HOST_DEVICE BX_INLINE friend Dual operator/(const Dual& a, const Dual& b) {
    const T inv = T(S(1)) / b.v;
    Dual r;
    r.v = a.v * inv;
#pragma unroll
    for (int k = 0; k < 4; ++k) r.d[k] = (a.d[k] - r.v * b.d[k]) * inv;
    return r;
  }
  // mixed with a plain lane value (no partials)
  FL_HOST_DEVICE BX_INLINE friend Dual operator+(const Dual& a, const T& b) { return a.chain(a.v + b, T(S(1))); }
  FL_HOST_DEVICE BX_INLINE friend Dual operator+(const T& b, const Dual& a) { return a.chain(b + a.v, T(S(1))); }
  FL_HOST_DEVICE BX_INLINE friend Dual operator-(const Dual& a, const T& b) {
    Dual r = a;
    r.v = a.v - b;
    return r;
  }
  FL_HOST_DEVICE BX_INLINE friend Dual operator-(const T& b, const Dual& a) { return a.chain(b - a.v, T(S(-1))); }
  FL_HOST_DEVICE BX_INLINE friend Dual operator*(const Dual& a, const T& b) { return a.chain(a.v * b, b); }
  FL_HOST_DEVICE BX_INLINE friend Dual operator*(const T& b, const Dual& a) { return a.chain(b * a.v, b); }
  FL_HOST_DEVICE BX_INLINE friend Dual operator/(const Dual& a, const T& b) {
    const T inv = T(S(1)) / b;
    return a.chain(a.v * inv, inv);
  }
  FL_HOST_DEVICE BX_INLINE friend Dual operator/(const T& b, const Dual& a) {
    const T r = b / a.v;
    return a.chain(r, T(S(0)) - r / a.v);
  }
};

// value of a number (plain lanes are their own value)
template <typename T>
FL_HOST_DEVICE BX_INLINE const T& val(const T& x) { return x; }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE const T& val(const Dual<T, S>& x) { return x.v; }

template <typename M, typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> seld(const M& m, const Dual<T, S>& a, const Dual<T, S>& b) {
  Dual<T, S> r;
  r.v = sel(m, a.v, b.v);
#pragma unroll
  for (int k = 0; k < 4; ++k) r.d[k] = sel(m, a.d[k], b.d[k]);
  return r;
}

// ------------------------------------------------------------------ functions of one number
// relu (NaN propagates), derivative 0 at 0
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T relu_(const T& x) { return sel(x < T(S(0)), T(S(0)), x); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> relu_(const Dual<T, S>& x) {
  const T zero(S(0));
  return x.chain(sel(x.v < zero, zero, x.v), sel(x.v > zero, T(S(1)), zero));
}
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T abs_(const T& x) { return sel(x < T(S(0)), T(S(0)) - x, x); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> abs_(const Dual<T, S>& x) {
  const T zero(S(0));
  return x.chain(sel(x.v < zero, zero - x.v, x.v), sel(x.v > zero, T(S(1)), sel(x.v < zero, T(S(-1)), zero)));
}
// sqrt of x >= 0, derivative 0 at 0
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T sqrt0(const T& x) { return sqrt_(x); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> sqrt0(const Dual<T, S>& x) {
  const T r = sqrt_(x.v);
  const T zero(S(0));
  return x.chain(r, sel(r > zero, T(S(0.5)) / sel(r > zero, r, T(S(1))), zero));
}
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T expn(const T& x) { return exp_(x); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> expn(const Dual<T, S>& x) {
  const T e = exp_(x.v);
  return x.chain(e, e);
}
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T logn(const T& x) { return log_(x); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> logn(const Dual<T, S>& x) { return x.chain(log_(x.v), T(S(1)) / x.v); }
// x^p for x >= 0 (negative x is clamped to 0), derivative p x^(p-1), 0 at x = 0.
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T powp(const T& x, S p) {
  const T c = relu_<T, S>(x);
  return pow_(c, p);
}
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> powp(const Dual<T, S>& x, S p) {
  const T zero(S(0));
  const T c = relu_<T, S>(x.v);
  const T r = pow_(c, p);
  return x.chain(r, sel(c > zero, T(p) * r / sel(c > zero, c, T(S(1))), zero));
}
template <typename T, typename S, typename N>
FL_HOST_DEVICE BX_INLINE N powp1(const N& x, S p) { return p == S(1) ? x : powp<T, S>(x, p); }

// atan2(y, x) for y, x >= 0 (box widths and heights): finite everywhere, 0 at (0, 0)
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T atan2n(const T& y, const T& x) { return atan2_(y, x); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> atan2n(const Dual<T, S>& y, const Dual<T, S>& x) {
  const T zero(S(0));
  const T r2 = y.v * y.v + x.v * x.v;
  const auto pos = r2 > zero;
  const T inv = sel(pos, T(S(1)) / sel(pos, r2, T(S(1))), zero);
  Dual<T, S> r;
  r.v = atan2_(y.v, x.v);
#pragma unroll
  for (int k = 0; k < 4; ++k) r.d[k] = (x.v * y.d[k] - y.v * x.d[k]) * inv;
  return r;
}

// min / max of two numbers of possibly different kinds (the result is a Dual if either is)
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T minn(const T& a, const T& b) { return min_(a, b); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE T maxn(const T& a, const T& b) { return max_(a, b); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> minn(const Dual<T, S>& a, const Dual<T, S>& b) { return seld(b.v < a.v, b, a); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> maxn(const Dual<T, S>& a, const Dual<T, S>& b) { return seld(b.v > a.v, b, a); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> minn(const Dual<T, S>& a, const T& b) { return seld(b < a.v, Dual<T, S>(b), a); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> maxn(const Dual<T, S>& a, const T& b) { return seld(b > a.v, Dual<T, S>(b), a); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> minn(const T& a, const Dual<T, S>& b) { return seld(b.v < a, b, Dual<T, S>(a)); }
template <typename T, typename S>
FL_HOST_DEVICE BX_INLINE Dual<T, S> maxn(const T& a, const Dual<T, S>& b) { return seld(b.v > a, b, Dual<T, S>(a)); }

// ------------------------------------------------------------------ kinds, formats, parameters
enum Fmt : int { kXYXY = 0, kXYWH = 1, kCXCYWH = 2 };
// paired losses
enum LossKind : int { kIoU = 0, kLogIoU = 1, kGIoU = 2, kDIoU = 3, kCIoU = 4, kEIoU = 5, kFocalEIoU = 6, kSIoU = 7, kCDIoU = 8 };
// pairwise / aligned metrics
enum MetricKind : int { kMIoU = 0, kMIoF = 1, kMGIoU = 2, kMDIoU = 3, kMCIoU = 4 };

template <typename S>
struct Params {
  int kind;
  int fmt;
  S eps;
  S power;  // alpha-IoU exponent (1: plain)
  S gamma;  // focal-EIoU exponent
};

template <typename N>
FL_HOST_DEVICE BX_INLINE N sq(const N& x) { return x * x; }

// Box in xyxy from the user's format (linear: derivatives follow through the Dual ops).
template <typename T, typename S, typename N>
FL_HOST_DEVICE BX_INLINE void to_xyxy(const N b[4], int fmt, N o[4]) {
  if (fmt == kXYWH) {
    o[0] = b[0];
    o[1] = b[1];
    o[2] = b[0] + b[2];
    o[3] = b[1] + b[3];
  } else if (fmt == kCXCYWH) {
    const T half(S(0.5));
    o[0] = b[0] - b[2] * half;
    o[1] = b[1] - b[3] * half;
    o[2] = b[0] + b[2] * half;
    o[3] = b[1] + b[3] * half;
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) o[k] = b[k];
  }
}

// The geometry of a pair of xyxy boxes a (numbers A) and b (numbers B); R is a Dual if either is.
template <typename T, typename S, typename A, typename B>
struct Geometry {
  using R = decltype(A() + B());
  A aw, ah;   // widths / heights, inverted boxes clamped to 0
  B bw, bh;
  R inter, uni, iou;
  A area_a;

  FL_HOST_DEVICE BX_INLINE Geometry(const A a[4], const B b[4], S eps) {
    aw = relu_<T, S>(a[2] - a[0]);
    ah = relu_<T, S>(a[3] - a[1]);
    bw = relu_<T, S>(b[2] - b[0]);
    bh = relu_<T, S>(b[3] - b[1]);
    const R iw = relu_<T, S>(minn<T, S>(a[2], b[2]) - maxn<T, S>(a[0], b[0]));
    const R ih = relu_<T, S>(minn<T, S>(a[3], b[3]) - maxn<T, S>(a[1], b[1]));
    inter = iw * ih;
    area_a = aw * ah;
    uni = area_a + bw * bh - inter;
    iou = inter / (uni + T(eps));
  }
};

// width / height of the smallest box enclosing both
template <typename T, typename S, typename A, typename B>
FL_HOST_DEVICE BX_INLINE void enclosing(const A a[4], const B b[4], decltype(A() + B())& cw, decltype(A() + B())& ch) {
  cw = relu_<T, S>(maxn<T, S>(a[2], b[2]) - minn<T, S>(a[0], b[0]));
  ch = relu_<T, S>(maxn<T, S>(a[3], b[3]) - minn<T, S>(a[1], b[1]));
}

// squared distance of the centres
template <typename T, typename S, typename A, typename B>
FL_HOST_DEVICE BX_INLINE decltype(A() + B()) centre_dist2(const A a[4], const B b[4]) {
  return (sq((a[0] + a[2]) - (b[0] + b[2])) + sq((a[1] + a[3]) - (b[1] + b[3]))) * T(S(0.25));
}

// CIoU's aspect term v = 4/pi^2 (atan(wb/hb) - atan(wa/ha))^2 (atan2: finite for w = h = 0)
template <typename T, typename S, typename A, typename B>
FL_HOST_DEVICE BX_INLINE decltype(A() + B()) aspect_v(const A& aw, const A& ah, const B& bw, const B& bh) {
  return T(S(0.40528473456935108578)) * sq(atan2n<T, S>(bw, bh) - atan2n<T, S>(aw, ah));
}

// Paired loss of prediction p (numbers A, user format) against target t (numbers B).
template <typename T, typename S, typename A, typename B>
FL_HOST_DEVICE BX_INLINE decltype(A() + B()) paired_loss(const A p_in[4], const B t_in[4], const Params<S>& prm) {
  using R = decltype(A() + B());
  A p[4];
  B t[4];
  to_xyxy<T, S>(p_in, prm.fmt, p);
  to_xyxy<T, S>(t_in, prm.fmt, t);
  const T one(S(1)), eps(prm.eps);
  const S pw = prm.power;
  const Geometry<T, S, A, B> g(p, t, prm.eps);
  if (prm.kind == kLogIoU) return T(S(-pw)) * logn<T, S>(maxn<T, S>(g.iou, eps));
  const R iou_p = powp1<T, S>(g.iou, pw);
  if (prm.kind == kIoU) return one - iou_p;
  R cw, ch;
  enclosing<T, S>(p, t, cw, ch);
  if (prm.kind == kGIoU) {
    const R c = cw * ch;
    return one - iou_p + powp1<T, S>((c - g.uni) / (c + eps), pw);
  }
  if (prm.kind == kCDIoU) {
    const R e0 = sqrt0<T, S>(sq(p[0] - t[0]) + sq(p[1] - t[1]));
    const R e1 = sqrt0<T, S>(sq(p[2] - t[2]) + sq(p[1] - t[1]));
    const R e2 = sqrt0<T, S>(sq(p[2] - t[2]) + sq(p[3] - t[3]));
    const R e3 = sqrt0<T, S>(sq(p[0] - t[0]) + sq(p[3] - t[3]));
    const R diag = sqrt0<T, S>(cw * cw + ch * ch + eps);
    return one - iou_p + powp1<T, S>((e0 + e1 + e2 + e3) / (diag * T(S(4))), pw);
  }
  if (prm.kind == kSIoU) {
    const R dx = ((t[0] + t[2]) - (p[0] + p[2])) * T(S(0.5));
    const R dy = ((t[1] + t[3]) - (p[1] + p[3])) * T(S(0.5));
    const R lam = T(S(2)) * abs_<T, S>(dx) * abs_<T, S>(dy) / (dx * dx + dy * dy + eps);  // sin(2 theta)
    const R gam = T(S(2)) - lam;
    const R rx = dx * dx / (cw * cw + eps);
    const R ry = dy * dy / (ch * ch + eps);
    const R dist = T(S(2)) - expn<T, S>(T(S(0)) - gam * rx) - expn<T, S>(T(S(0)) - gam * ry);
    const R ow = abs_<T, S>(g.aw - g.bw) / (maxn<T, S>(g.aw, g.bw) + eps);
    const R oh = abs_<T, S>(g.ah - g.bh) / (maxn<T, S>(g.ah, g.bh) + eps);
    const R sw = one - expn<T, S>(T(S(0)) - ow);
    const R sh = one - expn<T, S>(T(S(0)) - oh);
    const R shape = sq(sq(sw)) + sq(sq(sh));
    return one - iou_p + powp1<T, S>((dist + shape) * T(S(0.5)), pw);
  }
  const R c2 = cw * cw + ch * ch + eps;
  const R diou = one - iou_p + powp1<T, S>(centre_dist2<T, S>(p, t) / c2, pw);
  if (prm.kind == kDIoU) return diou;
  if (prm.kind == kCIoU) {
    const R v = aspect_v<T, S>(g.aw, g.ah, g.bw, g.bh);
    const T alpha = val(v) / (one - val(g.iou) + val(v) + eps);  // a constant in the backward
    return diou + powp1<T, S>(alpha * v, pw);
  }
  // EIoU and Focal-EIoU
  const R eiou = diou + powp1<T, S>(sq(g.aw - g.bw) / (cw * cw + eps), pw) + powp1<T, S>(sq(g.ah - g.bh) / (ch * ch + eps), pw);
  if (prm.kind == kEIoU) return eiou;
  return powp<T, S>(g.iou, prm.gamma) * eiou;
}

// Pairwise / aligned metric of box a (numbers A) and box b (numbers B), both in the user format.
template <typename T, typename S, typename A, typename B>
FL_HOST_DEVICE BX_INLINE decltype(A() + B()) pair_metric(const A a_in[4], const B b_in[4], int kind, int fmt, S eps_s) {
  using R = decltype(A() + B());
  A a[4];
  B b[4];
  to_xyxy<T, S>(a_in, fmt, a);
  to_xyxy<T, S>(b_in, fmt, b);
  const T one(S(1)), eps(eps_s);
  const Geometry<T, S, A, B> g(a, b, eps_s);
  if (kind == kMIoU) return g.iou;
  if (kind == kMIoF) return g.inter / (g.area_a + eps);
  R cw, ch;
  enclosing<T, S>(a, b, cw, ch);
  if (kind == kMGIoU) {
    const R c = cw * ch;
    return g.iou - (c - g.uni) / (c + eps);
  }
  const R diou = g.iou - centre_dist2<T, S>(a, b) / (cw * cw + ch * ch + eps);
  if (kind == kMDIoU) return diou;
  const R v = aspect_v<T, S>(g.aw, g.ah, g.bw, g.bh);
  const T alpha = val(v) / (one - val(g.iou) + val(v) + eps);
  return diou - alpha * v;
}

}  // namespace box
}  // namespace fastloss
