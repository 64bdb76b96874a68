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

}  // namespace assign
}  // namespace fastloss
