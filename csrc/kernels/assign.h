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
#include <cstring>
#include <tuple>
#include <type_traits>

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

// The task-aligned kernels' inputs (calling convention: csrc/fastloss.cpp), as raw pointers.
template <typename T>
struct TalArgs {
  const T* scores;        // (B, A, nc)
  const T* pd;            // (B, A, 4)
  const T* anc;           // (A, 2)
  const int64_t* labels;  // (B, M)
  const T* gt;            // (B, M, 4)
  const bool* valid;      // (B, M)
  const T* atan_gt;       // (B, M) atan(w / h) of the gts, torch's (ultralytics' heights + eps)
  const T* atan_pd;       // (B, A) of the predictions
  int64_t B, A, M, nc, k;
  double alpha, beta, stride_val, eps;
  bool cuda_rule;  // torch's CUDA top-k tie rule instead of its CPU one
  bool compact;    // scores (B, A) (the assigned label's) instead of (B, A, nc)
};

// ultralytics' candidate box (select_candidates_in_gts): a valid box's sides below stride_val
// widened to it about the centre, through xyxy -> xywh -> xyxy (its roundings included).
template <typename T>
FL_HOST_DEVICE FL_INLINE void tal_widened(const T* g, bool valid, double stride_val, T out[4]) {
  const T cx = rn_add(g[0], g[2]) / T(2), cy = rn_add(g[1], g[3]) / T(2);
  T w = rn_sub(g[2], g[0]), h = rn_sub(g[3], g[1]);
  const T sv = static_cast<T>(stride_val);
  if (valid && w < sv) w = sv;
  if (valid && h < sv) h = sv;
  const T hw = w / T(2), hh = h / T(2);
  out[0] = rn_sub(cx, hw), out[1] = rn_sub(cy, hh), out[2] = rn_add(cx, hw), out[3] = rn_add(cy, hh);
}

// anchor point pt strictly inside box by more than 1e-9 on every side (ultralytics' four tests)
template <typename T>
FL_HOST_DEVICE FL_INLINE bool tal_inside(const T* pt, const T box[4]) {
  const T e = static_cast<T>(1e-9);
  return rn_sub(pt[0], box[0]) > e && rn_sub(pt[1], box[1]) > e && rn_sub(box[2], pt[0]) > e && rn_sub(box[3], pt[1]) > e;
}

// A foreground anchor's score: t * max_o / (max_t + eps), two roundings in ultralytics' order.
template <typename T>
FL_HOST_DEVICE FL_INLINE T tal_norm(T t, T pos_o, T pos_t, T eps) {
  return rn_mul(t, pos_o) / rn_add(pos_t, eps);
}

#if defined(__CUDACC__)
// torch.pow(x, e) for a Python-number exponent on CUDA, as torch dispatches it (Pow.cpp:
// e = 0 fills 1, e = 1 copies; cuda/PowKernel.cu: 0.5 -> sqrt, -0.5 -> rsqrt, -1 -> reciprocal,
// 2 -> x x, 3 -> x x x, -2 -> 1 / (x x), else pow(x, e) with e rounded to x's type).
template <typename T>
__device__ __forceinline__ T torch_cuda_pow(T x, double e) {
  if (e == 0.0) return T(1);
  if (e == 1.0) return x;
  if (e == 0.5) return ::sqrt(x);
  if (e == -0.5) return ::rsqrt(x);
  if (e == -1.0) return T(1) / x;
  if (e == 2.0) return rn_mul(x, x);
  if (e == 3.0) return rn_mul(rn_mul(x, x), x);
  if (e == -2.0) return T(1) / rn_mul(x, x);
  return ::pow(x, static_cast<T>(e));
}

// ultralytics' alignment metric s^alpha o^beta as torch computes it on CUDA
template <typename T>
__device__ __forceinline__ T tal_metric_cuda(T s, T o, double alpha, double beta) {
  return rn_mul(torch_cuda_pow(s, alpha), torch_cuda_pow(o, beta));
}
#endif

// ---- torch's CUDA top-k rule (TensorTopK.cu: radix-select the k-th value, take everything
// larger, then the lowest-index ties): the k largest of a row under the total order (value
// descending, index ascending).  Non-candidates enter as 0, so a row with fewer than k positive
// metrics is filled with its lowest-index zeros.  The same code runs in the CPU kernel (its
// tie_rule = 1) and in a CUDA block; only the histogram pass differs.
//
// A non-negative float's bit pattern, read as an unsigned integer, orders as the value: the
// k-th largest positive value is found one 8-bit digit at a time, most significant first.
template <typename T>
struct TalKey {
  using type = typename std::conditional<sizeof(T) == 4, uint32_t, unsigned long long>::type;
  static FL_HOST_DEVICE FL_INLINE type of(T v) {
    type u;
    memcpy(&u, &v, sizeof u);  // a bit cast (registers only, on the device)
    return u;
  }
  static FL_HOST_DEVICE FL_INLINE T value(type u) {
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
  }
};

constexpr int kRadixBits = 8, kRadixBins = 1 << kRadixBits;

// Does key agree with prefix on the digits above `shift`?  (digits not yet chosen are free)
template <typename K>
FL_HOST_DEVICE FL_INLINE bool tal_radix_match(K key, K prefix, int shift) {
  const int hi = shift + kRadixBits;
  return hi >= int(8 * sizeof(K)) || (key >> hi) == (prefix >> hi);
}

template <typename K>
FL_HOST_DEVICE FL_INLINE int tal_radix_digit(K key, int shift) {
  return static_cast<int>((key >> shift) & K(kRadixBins - 1));
}

// hist: the digit at `shift` of the counted values (topk_greater(v, 0)) matching prefix.  The digit of the
// remaining-th largest of them joins prefix; remaining drops by the count in larger digits.
template <typename K>
FL_HOST_DEVICE FL_INLINE void tal_radix_step(const int32_t* hist, int shift, K& prefix, int64_t& remaining) {
  for (int d = kRadixBins - 1; d >= 0; --d) {
    if (hist[d] >= remaining) {
      prefix |= K(d) << shift;
      return;
    }
    remaining -= hist[d];
  }
}

// The threshold of a row's top k under the CUDA rule: selected are the values > thr and the
// first `need` values == thr in index order.  hist_pass(shift, prefix) returns the histogram of
// digit `shift` over the row's counted values -- positive or NaN (topk_greater(v, 0)), keyed by
// tal_radix_key -- matching prefix (tal_radix_match).  With fewer
// than k positives, thr = 0 and the zeros fill.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable  // hist_pass is a __device__ lambda in the CUDA kernel, a host one on the CPU
#endif
template <typename T, typename HistPass>
FL_HOST_DEVICE FL_INLINE void tal_cuda_topk_threshold(int64_t k, HistPass&& hist_pass, T& thr, int64_t& need) {
  using K = typename TalKey<T>::type;
  constexpr int kTop = int(8 * sizeof(K)) - kRadixBits;
  K prefix = 0;
  int64_t remaining = k;
  for (int shift = kTop; shift >= 0; shift -= kRadixBits) {
    const int32_t* hist = hist_pass(shift, prefix);
    if (shift == kTop) {  // the first histogram counts every counted value
      int64_t positives = 0;
      for (int d = 0; d < kRadixBins; ++d) positives += hist[d];
      if (positives < k) {
        thr = T(0), need = k - positives;
        return;
      }
    }
    tal_radix_step(hist, shift, prefix, remaining);
  }
  thr = TalKey<T>::value(prefix), need = remaining;
}

// torch.topk's order of values, on both devices: NaN above every number, all NaNs equal.
template <typename T>
FL_HOST_DEVICE FL_INLINE bool topk_greater(T a, T b) {
  return (a != a && b == b) || a > b;
}
template <typename T>
FL_HOST_DEVICE FL_INLINE bool topk_equal(T a, T b) {
  return (a != a && b != b) || a == b;
}

// The key of a metric in the CUDA rule's radix selection (which counts the metrics that
// outrank a zero: topk_greater(v, 0), positive or NaN), every NaN the largest key, as torch's
// radix select does.
template <typename T>
FL_HOST_DEVICE FL_INLINE typename TalKey<T>::type tal_radix_key(T v) {
  return v != v ? ~typename TalKey<T>::type(0) : TalKey<T>::of(v);
}

// Under that threshold: is a value selected, given how many equal values precede it in the row?
template <typename T>
FL_HOST_DEVICE FL_INLINE bool tal_cuda_selected(T v, T thr, int64_t ties_before, int64_t need) {
  return topk_greater(v, thr) || (topk_equal(v, thr) && ties_before < need);
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
  for (const at::Tensor* t : {&gt_bboxes, &gt_valid, &ignored})  // the dispatcher checks no custom op's devices
    TORCH_CHECK(t->device() == priors.device(), "fastloss max_iou_assign: every tensor must be on priors' device");
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


// The task-aligned op's shapes (calling convention: csrc/fastloss.cpp), checked on the host by
// both kernels; returns (B, A, M).
inline std::tuple<int64_t, int64_t, int64_t> check_task_aligned_args(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes,
                                                                     const at::Tensor& anc_points, const at::Tensor& gt_labels,
                                                                     const at::Tensor& gt_bboxes, const at::Tensor& gt_valid, int64_t topk,
                                                                     int64_t num_classes, int64_t tie_rule) {
  for (const at::Tensor* t : {&pd_bboxes, &anc_points, &gt_labels, &gt_bboxes, &gt_valid})  // the dispatcher checks no custom op's devices
    TORCH_CHECK(t->device() == pd_scores.device(), "fastloss task_aligned_assign: every tensor must be on pd_scores' device");
  TORCH_CHECK(pd_scores.dim() == 3 && pd_scores.is_contiguous() && pd_scores.size(2) == num_classes,
              "fastloss task_aligned_assign: pd_scores must be contiguous (B, A, num_classes)");
  const int64_t B = pd_scores.size(0), A = pd_scores.size(1), M = gt_bboxes.size(1);
  const auto dt = pd_scores.scalar_type();
  TORCH_CHECK(pd_bboxes.scalar_type() == dt && pd_bboxes.is_contiguous() && pd_bboxes.sizes() == at::IntArrayRef({B, A, 4}),
              "fastloss task_aligned_assign: pd_bboxes must be contiguous (B, A, 4) of pd_scores' dtype");
  TORCH_CHECK(anc_points.scalar_type() == dt && anc_points.is_contiguous() && anc_points.sizes() == at::IntArrayRef({A, 2}),
              "fastloss task_aligned_assign: anc_points must be contiguous (A, 2) of pd_scores' dtype");
  TORCH_CHECK(gt_bboxes.scalar_type() == dt && gt_bboxes.is_contiguous() && gt_bboxes.dim() == 3 && gt_bboxes.size(0) == B && gt_bboxes.size(2) == 4,
              "fastloss task_aligned_assign: gt_bboxes must be contiguous (B, M, 4) of pd_scores' dtype");
  TORCH_CHECK(gt_labels.scalar_type() == at::kLong && gt_labels.is_contiguous() && gt_labels.sizes() == at::IntArrayRef({B, M}),
              "fastloss task_aligned_assign: gt_labels must be contiguous int64 (B, M)");
  TORCH_CHECK(gt_valid.scalar_type() == at::kBool && gt_valid.is_contiguous() && gt_valid.sizes() == at::IntArrayRef({B, M}),
              "fastloss task_aligned_assign: gt_valid must be contiguous bool (B, M)");
  TORCH_CHECK(topk >= 1 && topk <= A, "fastloss task_aligned_assign: topk must be in [1, A]");
  TORCH_CHECK(M >= 1, "fastloss task_aligned_assign: needs M >= 1 (fastloss.task_aligned_assign returns ultralytics' M = 0 result itself)");
  TORCH_CHECK(tie_rule == 0 || tie_rule == 1, "fastloss task_aligned_assign: tie_rule must be 0 (torch's CPU top-k) or 1 (its CUDA top-k)");
  TORCH_CHECK(A < (int64_t(1) << 31) && M < (int64_t(1) << 31), "fastloss task_aligned_assign: at most 2^31 anchors and gts");
  return {B, A, M};
}

// atan(w / h) of boxes (..., 4) with torch's own ops, as ultralytics' bbox_iou forms it (heights
// + 1e-7; elementwise: the same bits at any position and on the boxes' device)
inline at::Tensor tal_aspect_atan(const at::Tensor& boxes) {
  const at::Tensor w = boxes.select(-1, 2).sub(boxes.select(-1, 0));
  const at::Tensor h = boxes.select(-1, 3).sub(boxes.select(-1, 1)).add(1e-7);
  return w.div(h).atan().contiguous();
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
