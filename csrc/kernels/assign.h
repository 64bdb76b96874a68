// Label assigners (family `assign`; spec: fastloss/reference/assign.py, design:
// ../shared/assigners.md): per-element math shared by csrc/cpu and csrc/cuda.
//
// Max-IoU assignment (mmdetection's MaxIoUAssigner) needs the IoU in mmdetection's arithmetic
// (``bbox_overlaps``), bit for bit, because its rules compare IoUs for equality (a gt's best IoU
// shared by every prior that ties it) and against thresholds:
//   w = max(min(x2, x2') - max(x1, x1'), 0)   (h alike),   I = w h
//   area = (x2 - x1) (y2 - y1)   (signed: no clamp)
//   IoU = I / max((area_gt + area_prior) - I, 1e-6)
// Every product must be rounded before the sum that uses it: an FMA-contracted
// (area + area') - w h differs in the last bit (fastloss's box kernels once did, on 0.4 % of
// pairs).  The CPU build compiles with -ffp-contract=off; CUDA device code rounds each product
// explicitly (rn_mul / rn_sub).
#pragma once

#include <cmath>
#include <cstdint>
#include <tuple>

#include "fastloss/common.h"

namespace fastloss {
namespace assign {

constexpr double kOverlapsEps = 1e-6;  // mmdetection's bbox_overlaps default eps

// a * b, a - b, a + b rounded on their own (never fused with a neighbouring operation)
#if defined(__CUDA_ARCH__)
FL_HOST_DEVICE FL_INLINE float rn_mul(float a, float b) { return __fmul_rn(a, b); }
FL_HOST_DEVICE FL_INLINE double rn_mul(double a, double b) { return __dmul_rn(a, b); }
FL_HOST_DEVICE FL_INLINE float rn_add(float a, float b) { return __fadd_rn(a, b); }
FL_HOST_DEVICE FL_INLINE double rn_add(double a, double b) { return __dadd_rn(a, b); }
FL_HOST_DEVICE FL_INLINE float rn_sub(float a, float b) { return __fsub_rn(a, b); }
FL_HOST_DEVICE FL_INLINE double rn_sub(double a, double b) { return __dsub_rn(a, b); }
#else
template <typename T>
FL_HOST_DEVICE FL_INLINE T rn_mul(const T& a, const T& b) { return a * b; }
template <typename T>
FL_HOST_DEVICE FL_INLINE T rn_add(const T& a, const T& b) { return a + b; }
template <typename T>
FL_HOST_DEVICE FL_INLINE T rn_sub(const T& a, const T& b) { return a - b; }
#endif

// mmdetection's box area, (x2 - x1) (y2 - y1), signed.
template <typename T>
FL_HOST_DEVICE FL_INLINE T area(const T& x1, const T& y1, const T& x2, const T& y2) {
  return rn_mul(rn_sub(x2, x1), rn_sub(y2, y1));
}

// IoU of a gt box (g*, area ga) and a prior (p*, area pa) in mmdetection's arithmetic.  T: a
// float type or a vector of them (ATen's Vectorized); `mx` / `mn`: elementwise max / min as
// torch.max / torch.min compute them.
template <typename T, typename Max, typename Min>
FL_HOST_DEVICE FL_INLINE T iou(const T& gx1, const T& gy1, const T& gx2, const T& gy2, const T& ga, const T& px1, const T& py1,
                               const T& px2, const T& py2, const T& pa, const T& eps, const T& zero, Max mx, Min mn) {
  const T w = mx(rn_sub(mn(gx2, px2), mx(gx1, px1)), zero);
  const T h = mx(rn_sub(mn(gy2, py2), mx(gy1, py1)), zero);
  const T inter = rn_mul(w, h);
  const T uni = rn_sub(rn_add(ga, pa), inter);
  return inter / mx(uni, eps);
}

// mmdetection's MaxIoUAssigner rules for one prior, in its order: -1 (ignore); 0 if its best IoU
// v lies in [lo, hi); best gt + 1 if v >= pos; then a low-quality match (last > 0: the last
// qualifying gt + 1) overrides.
template <typename T>
FL_HOST_DEVICE FL_INLINE int64_t max_iou_rule(T v, int64_t best_g, int64_t last, T pos, T lo, T hi) {
  int64_t r = -1;
  if (v >= lo && v < hi) r = 0;
  if (v >= pos) r = best_g + 1;
  if (last > 0) r = last;
  return r;
}

// ------------------------------------------------------------------ task-aligned (ultralytics)
// ultralytics' bbox_iou(gt, pred, xywh=False, CIoU=True) (metrics.py, 8.4.190), the same float
// operations in the same order, clamped at 0 -- not fastloss's ciou: heights carry eps, the
// union eps, atan(w / h).  Scalar (float / double).  at_g = atan(w1 / h1) of the gt and at_p of
// the prediction come from the caller, computed by torch's own atan (its CPU kernel is a
// vector arctangent chosen at run time -- AVX2 or AVX-512 -- that neither the C library nor an
// AVX2 build reproduces bit for bit).
template <typename T>
FL_HOST_DEVICE FL_INLINE T ciou_ultralytics(const T g[4], const T p[4], T at_g, T at_p) {
  const T eps = T(1e-7);
  const T w1 = rn_sub(g[2], g[0]), h1 = rn_add(rn_sub(g[3], g[1]), eps);
  const T w2 = rn_sub(p[2], p[0]), h2 = rn_add(rn_sub(p[3], p[1]), eps);
  auto mx = [](T x, T y) { return x > y || x != x ? x : y; };
  auto mn = [](T x, T y) { return x < y || x != x ? x : y; };
  const T iw = mx(rn_sub(mn(g[2], p[2]), mx(g[0], p[0])), T(0)), ih = mx(rn_sub(mn(g[3], p[3]), mx(g[1], p[1])), T(0));
  const T inter = rn_mul(iw, ih);
  const T uni = rn_add(rn_sub(rn_add(rn_mul(w1, h1), rn_mul(w2, h2)), inter), eps);
  const T iou = inter / uni;
  const T cw = rn_sub(mx(g[2], p[2]), mn(g[0], p[0])), ch = rn_sub(mx(g[3], p[3]), mn(g[1], p[1]));  // the enclosing box
  const T c2 = rn_add(rn_add(rn_mul(cw, cw), rn_mul(ch, ch)), eps);
  const T dx = rn_sub(rn_sub(rn_add(p[0], p[2]), g[0]), g[2]), dy = rn_sub(rn_sub(rn_add(p[1], p[3]), g[1]), g[3]);
  const T rho2 = rn_add(rn_mul(dx, dx), rn_mul(dy, dy)) / T(4);  // squared centre distance
  const T da = rn_sub(at_p, at_g);
  const T v = rn_mul(T(4.0 / (M_PI * M_PI)), rn_mul(da, da));  // aspect-ratio consistency; 4 / pi^2 rounded to T first
  const T alpha = v / rn_add(rn_add(rn_sub(T(1), iou), v), eps);
  const T ciou = rn_sub(iou, rn_add(rho2 / c2, rn_mul(v, alpha)));
  return mx(ciou, T(0));
}

// ------------------------------------------------------------------ ATSS (mmdetection)
// mmdetection's ATSSAssigner (3.3.0; Zhang et al., CVPR 2020): per gt the topk nearest priors of
// each level by centre distance, the threshold mean + unbiased std of their IoU, positives at or
// above it with the centre inside the gt by more than 0.01.  Its arithmetic, each operation
// rounded on its own:
//   centre c = (x1 + x2) / 2,   d = sqrt((cx - cx')^2 + (cy - cy')^2)   (1e8 for ignored priors),
//   sqrt as torch computes it on the device (CUDA: correctly rounded; CPU: torch's own kernel)
//   IoU(prior, gt) = iou() above (the union's sum is commutative: the same bits either way)

constexpr double kAtssInf = 1e8;      // mmdetection's INF
constexpr double kAtssInside = 0.01;  // the centre-inside margin

#if defined(__CUDA_ARCH__)
FL_HOST_DEVICE FL_INLINE float rn_sqrt(float a) { return __fsqrt_rn(a); }  // correctly rounded, as torch's CUDA sqrt
FL_HOST_DEVICE FL_INLINE double rn_sqrt(double a) { return __dsqrt_rn(a); }
#else
template <typename T>
FL_HOST_DEVICE FL_INLINE T rn_sqrt(const T& a) { return std::sqrt(a); }  // nvcc's host pass over the device code
#endif

// (x1 + x2) / 2 (halving is exact)
template <typename T>
FL_HOST_DEVICE FL_INLINE T centre(T lo, T hi) { return rn_add(lo, hi) / T(2); }

// the squared centre distance of mmdetection's bbox_center_distance, (p - g)^2 summed over x, y;
// its distance is torch's sqrt of it (on the CPU torch's own, not the correctly rounded one).
// T: a float type or a vector of them.
template <typename T>
FL_HOST_DEVICE FL_INLINE T centre_distance2(const T& pcx, const T& pcy, const T& gcx, const T& gcy) {
  const T dx = rn_sub(pcx, gcx), dy = rn_sub(pcy, gcy);
  return rn_add(rn_mul(dx, dx), rn_mul(dy, dy));
}

// the prior centre (cx, cy) inside gt g by more than 0.01 on every side: min(l, t, r, b) > 0.01
// (torch's min: NaN propagates, and fails the test)
template <typename T>
FL_HOST_DEVICE FL_INLINE bool atss_inside(T cx, T cy, const T g[4]) {
  auto mn = [](T x, T y) { return x < y || x != x ? x : y; };
  const T m = mn(mn(mn(rn_sub(cx, g[0]), rn_sub(cy, g[1])), rn_sub(g[2], cx)), rn_sub(g[3], cy));
  return m > static_cast<T>(kAtssInside);
}

// The ATSS threshold of n candidate IoUs v[0..n): mean + unbiased std, in a fixed order (the spec's,
// fastloss/reference/assign.py atss_threshold).  atss_moments: the mean, a sequential sum in T over
// n, and the variance by torch's Welford recurrence in double (delta = x - mean, mean += delta / i,
// m2 += delta (x - mean)), m2 / (n - 1) -- NaN for n <= 1 (mmdetection: a NaN std, so no
// positives).  The caller takes the square root as torch's sqrt does on its device (torch's CPU
// sqrt is not the correctly rounded one on every machine), then atss_threshold adds.
template <typename T>
FL_HOST_DEVICE FL_INLINE T atss_moments(const T* v, int64_t n, double& var) {
  T s = T(0);
  double mean = 0.0, m2 = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    s = rn_add(s, v[j]);
    const double x = static_cast<double>(v[j]);
    const double delta = rn_sub(x, mean);
    mean = rn_add(mean, delta / static_cast<double>(j + 1));
    m2 = rn_add(m2, rn_mul(delta, rn_sub(x, mean)));
  }
  var = n > 1 ? m2 / static_cast<double>(n - 1) : static_cast<double>(NAN);
  return n > 0 ? s / static_cast<T>(n) : static_cast<T>(NAN);
}

// mean + std, the std (double) rounded to T first
template <typename T>
FL_HOST_DEVICE FL_INLINE T atss_threshold(T mean, double sd) { return rn_add(mean, static_cast<T>(sd)); }

}  // namespace assign
}  // namespace fastloss

#include <ATen/core/Tensor.h>

namespace fastloss {
namespace assign {

// The max-IoU op's shapes (calling convention: csrc/fastloss.cpp), checked on the host by both
// kernels; returns (B, A, M).
inline std::tuple<int64_t, int64_t, int64_t> check_max_iou_args(const at::Tensor& priors, const at::Tensor& gt_bboxes, const at::Tensor& gt_valid,
                                                                const at::Tensor& ignored) {
  TORCH_CHECK(priors.dim() == 3 && priors.size(2) == 4 && priors.is_contiguous(), "fastloss max_iou_assign: priors must be contiguous (B or 1, A, 4)");
  TORCH_CHECK(gt_bboxes.dim() == 3 && gt_bboxes.size(2) == 4 && gt_bboxes.is_contiguous() && gt_bboxes.scalar_type() == priors.scalar_type(),
              "fastloss max_iou_assign: gt_bboxes must be contiguous (B, M, 4) of priors' dtype");
  const int64_t B = gt_bboxes.size(0), M = gt_bboxes.size(1), A = priors.size(1);
  TORCH_CHECK(priors.size(0) == B || priors.size(0) == 1, "fastloss max_iou_assign: priors must have 1 or B images");
  TORCH_CHECK(gt_valid.scalar_type() == at::kBool && gt_valid.is_contiguous() && gt_valid.sizes() == at::IntArrayRef({B, M}),
              "fastloss max_iou_assign: gt_valid must be contiguous bool (B, M)");
  TORCH_CHECK(ignored.scalar_type() == at::kBool && ignored.is_contiguous() && ignored.sizes() == at::IntArrayRef({B, A}),
              "fastloss max_iou_assign: ignored must be contiguous bool (B, A)");
  TORCH_CHECK(A < (int64_t(1) << 24) && M < (int64_t(1) << 24), "fastloss max_iou_assign: at most 2^24 priors and gts (indices ride in float lanes)");
  return {B, A, M};
}

// The ATSS op's shapes (the max-IoU op's plus the levels), checked on the host by both kernels;
// returns (B, A, M, Lk): Lk = sum over levels of min(topk, n_level), the candidates per gt.
inline std::tuple<int64_t, int64_t, int64_t, int64_t> check_atss_args(const at::Tensor& priors, at::IntArrayRef levels, const at::Tensor& gt_bboxes,
                                                                      const at::Tensor& gt_valid, const at::Tensor& ignored, int64_t topk) {
  int64_t B, A, M;
  std::tie(B, A, M) = check_max_iou_args(priors, gt_bboxes, gt_valid, ignored);
  TORCH_CHECK(topk >= 1, "fastloss atss_assign: topk must be >= 1");
  int64_t total = 0, lk = 0;
  for (const int64_t n : levels) {
    TORCH_CHECK(n >= 0, "fastloss atss_assign: num_level_priors must be >= 0");
    total += n;
    lk += n < topk ? n : topk;
  }
  TORCH_CHECK(total == A, "fastloss atss_assign: num_level_priors must sum to A");
  return {B, A, M, lk};
}

}  // namespace assign
}  // namespace fastloss
