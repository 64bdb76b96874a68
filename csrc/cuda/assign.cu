// Label assigners, CUDA kernels (math: csrc/kernels/assign.h, products rounded on their own so
// the IoU is mmdetection's bit for bit; spec: fastloss/reference/assign.py; calling convention:
// csrc/fastloss.cpp).
//
// Max-IoU assignment without the (M, A) IoU matrix, three launches, no atomics (deterministic):
//   1. one thread per (image, prior): the best IoU over the valid gts and its first gt;
//   2. one block per (image, gt): its best IoU over the priors and the first prior attaining
//      it (a fixed-order tree reduction of (value, index) pairs);
//   3. one thread per (image, prior): the low-quality match (the last qualifying gt whose best
//      IoU it ties, or whose first argmax it is), then mmdetection's threshold rules.
//
// Task-aligned assignment (ultralytics' TaskAlignedAssigner) without its (B, M, A) tensors,
// three launches, no host sync, integer atomics only (deterministic):
//   1. one block per (image, gt) row: the row's top k under torch's CUDA rule (assign.h
//      tal_cuda_topk_threshold: a radix select over the row's metrics, recomputed per pass, then
//      the lowest-index ties), each selected candidate counting a claim of its anchor
//      (atomicAdd) and its gt as claimant (atomicMin; used only when the count is 1);
//   2. one thread per (image, anchor): the gt (its claimant, or for several claims the first
//      argmax of the overlap over all gts), the assigned pair's metric, and each gt's largest
//      metric and overlap over its foreground anchors by atomicMax on the bit patterns of
//      these non-negative floats (order-free);
//   3. one thread per (image, anchor): labels, boxes, the normalised score.
// The metric s^alpha o^beta is torch's CUDA pow (assign.h torch_cuda_pow) of ultralytics' CIoU
// (products rounded on their own), the aspect arctangents come from torch's own CUDA atan.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "kernels/assign.h"

namespace fastloss {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct MaxIoUPtrs {
  const T* priors;  // (Bp, A, 4)
  const T* gt;      // (B, M, 4)
  const bool* valid;
  const bool* ignored;
  int64_t B, A, M, prior_stride;
};

template <typename T>
__device__ __forceinline__ T iou_at(const MaxIoUPtrs<T>& p, int64_t b, int64_t g, int64_t i) {
  const T* q = p.gt + (b * p.M + g) * 4;
  const T* r = p.priors + b * p.prior_stride + i * 4;
  auto mx = [](T x, T y) { return x > y || x != x ? x : y; };  // torch.max: NaN propagates
  auto mn = [](T x, T y) { return x < y || x != x ? x : y; };
  const T ga = assign::area(q[0], q[1], q[2], q[3]), pa = assign::area(r[0], r[1], r[2], r[3]);
  const T v = assign::iou(q[0], q[1], q[2], q[3], ga, r[0], r[1], r[2], r[3], pa, static_cast<T>(assign::kOverlapsEps), T(0), mx, mn);
  return p.ignored[b * p.A + i] ? T(-1) : v;
}

template <typename T>
__global__ void best_gt_kernel(MaxIoUPtrs<T> p, T* best, int64_t* best_g) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < p.B * p.A; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = k / p.A, i = k - b * p.A;
    T m = -std::numeric_limits<T>::infinity();
    int64_t arg = 0;
    for (int64_t g = 0; g < p.M; ++g) {
      if (!p.valid[b * p.M + g]) continue;
      const T v = iou_at(p, b, g, i);
      if (v > m) m = v, arg = g;  // strict: the first gt keeps a tie
    }
    best[k] = m;
    best_g[k] = arg;
  }
}

template <typename T>
__global__ void best_prior_kernel(MaxIoUPtrs<T> p, T* gt_max, int64_t* gt_arg) {
  __shared__ T sv[kThreads];
  __shared__ int64_t si[kThreads];
  const int64_t bg = blockIdx.x, b = bg / p.M, g = bg - b * p.M;
  T m = -std::numeric_limits<T>::infinity();
  int64_t arg = 0;
  if (p.valid[bg]) {
    for (int64_t i = threadIdx.x; i < p.A; i += blockDim.x) {
      const T v = iou_at(p, b, g, i);
      if (v > m) m = v, arg = i;  // a thread's priors in increasing order: strict keeps the first
    }
  }
  sv[threadIdx.x] = m;
  si[threadIdx.x] = arg;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const T v = sv[threadIdx.x + s];
      const int64_t j = si[threadIdx.x + s];
      if (v > sv[threadIdx.x] || (v == sv[threadIdx.x] && j < si[threadIdx.x])) sv[threadIdx.x] = v, si[threadIdx.x] = j;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) gt_max[bg] = sv[0], gt_arg[bg] = si[0];
}

template <typename T>
__global__ void rules_kernel(MaxIoUPtrs<T> p, const T* gt_max, const int64_t* gt_arg, T* best, const int64_t* best_g, int64_t* inds,
                             T pos, T lo, T hi, T min_pos, bool low_quality, bool assign_all) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < p.B * p.A; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = k / p.A, i = k - b * p.A;
    int64_t last = 0;  // the last qualifying g + 1
    bool any = false;
    for (int64_t g = 0; g < p.M; ++g) {
      if (!p.valid[b * p.M + g]) continue;
      any = true;
      const T gm = gt_max[b * p.M + g];
      if (!low_quality || !(gm >= min_pos)) continue;
      if (assign_all ? iou_at(p, b, g, i) == gm : gt_arg[b * p.M + g] == i) last = g + 1;
    }
    if (!any) {  // mmdetection: no gts -> every prior background, overlap 0
      inds[k] = 0, best[k] = T(0);
      continue;
    }
    inds[k] = assign::max_iou_rule(best[k], best_g[k], last, pos, lo, hi);
  }
}

int grid_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535)); }

std::tuple<at::Tensor, at::Tensor> max_iou_assign_cuda(const at::Tensor& priors, const at::Tensor& gt_bboxes, const at::Tensor& gt_valid,
                                                       const at::Tensor& ignored, double pos_iou_thr, double neg_lo, double neg_hi,
                                                       double min_pos_iou, bool match_low_quality, bool gt_max_assign_all) {
  int64_t B, A, M;
  std::tie(B, A, M) = assign::check_max_iou_args(priors, gt_bboxes, gt_valid, ignored);
  const c10::cuda::CUDAGuard guard(priors.device());
  at::Tensor inds = at::empty({B, A}, priors.options().dtype(at::kLong));
  at::Tensor best = at::empty({B, A}, priors.options());
  if (B * A == 0) return {inds, best};
  at::Tensor best_g = at::empty({B, A}, priors.options().dtype(at::kLong));
  at::Tensor gt_max = at::empty({B, M}, priors.options());
  at::Tensor gt_arg = at::empty({B, M}, priors.options().dtype(at::kLong));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(priors.scalar_type(), "max_iou_assign_cuda", [&] {
    const MaxIoUPtrs<scalar_t> p{priors.const_data_ptr<scalar_t>(), gt_bboxes.const_data_ptr<scalar_t>(), gt_valid.const_data_ptr<bool>(),
                                 ignored.const_data_ptr<bool>(), B, A, M, priors.size(0) == 1 ? 0 : A * 4};
    best_gt_kernel<<<grid_for(B * A), kThreads, 0, stream>>>(p, best.mutable_data_ptr<scalar_t>(), best_g.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (B * M > 0) {
      best_prior_kernel<<<static_cast<unsigned>(B * M), kThreads, 0, stream>>>(p, gt_max.mutable_data_ptr<scalar_t>(),
                                                                                 gt_arg.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    rules_kernel<<<grid_for(B * A), kThreads, 0, stream>>>(p, gt_max.const_data_ptr<scalar_t>(), gt_arg.const_data_ptr<int64_t>(),
                                                           best.mutable_data_ptr<scalar_t>(), best_g.const_data_ptr<int64_t>(),
                                                           inds.mutable_data_ptr<int64_t>(), static_cast<scalar_t>(pos_iou_thr),
                                                           static_cast<scalar_t>(neg_lo), static_cast<scalar_t>(neg_hi),
                                                           static_cast<scalar_t>(min_pos_iou), match_low_quality, gt_max_assign_all);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {inds, best};
}


// ------------------------------------------------------------------ task-aligned (ultralytics)

// ultralytics' metric of gt row r = (b, g) and anchor i, 0 unless a candidate (cand)
template <typename T>
__device__ __forceinline__ T tal_pair(const assign::TalArgs<T>& p, int64_t r, int64_t b, int64_t i, const T box[4], bool& cand, T& ov) {
  cand = assign::tal_inside(p.anc + i * 2, box);
  ov = T(0);
  if (!cand) return T(0);
  ov = assign::ciou_ultralytics(p.gt + r * 4, p.pd + (b * p.A + i) * 4, p.atan_gt[r], p.atan_pd[b * p.A + i]);
  const int64_t label = min(max(p.labels[r], int64_t(0)), p.nc - 1);
  return assign::tal_metric_cuda(p.scores[(b * p.A + i) * p.nc + label], ov, p.alpha, p.beta);
}

template <typename T>
__global__ void tal_claim_kernel(assign::TalArgs<T> p, int32_t* count, int32_t* claimant) {
  using Key = assign::TalKey<T>;
  __shared__ int32_t hist[assign::kRadixBins];
  __shared__ int32_t tie_scan[kThreads];
  for (int64_t r = blockIdx.x; r < p.B * p.M; r += gridDim.x) {
    if (!p.valid[r]) continue;  // uniform over the block; a padded row claims nothing
    const int64_t b = r / p.M, g = r - b * p.M;
    T box[4];
    assign::tal_widened(p.gt + r * 4, true, p.stride_val, box);
    auto hist_pass = [&](int shift, typename Key::type prefix) -> const int32_t* {
      __syncthreads();  // every thread is done with the previous histogram
      for (int d = threadIdx.x; d < assign::kRadixBins; d += blockDim.x) hist[d] = 0;
      __syncthreads();
      for (int64_t i = threadIdx.x; i < p.A; i += blockDim.x) {
        bool cand;
        T ov;
        const T v = tal_pair(p, r, b, i, box, cand, ov);
        const auto key = assign::tal_radix_key(v);
        if (assign::topk_greater(v, T(0)) && assign::tal_radix_match(key, prefix, shift)) atomicAdd(&hist[assign::tal_radix_digit(key, shift)], 1);
      }
      __syncthreads();
      return hist;
    };
    T thr;
    int64_t need;
    assign::tal_cuda_topk_threshold<T>(p.k, hist_pass, thr, need);  // every thread, on the same histograms
    // the selection in index order: a tile of blockDim anchors at a time, the ties ranked by a
    // block-wide inclusive scan
    int64_t ties = 0;  // ties in the earlier tiles
    for (int64_t i0 = 0; i0 < p.A; i0 += blockDim.x) {
      const int64_t i = i0 + threadIdx.x;
      bool cand = false;
      T ov, v = T(-1);
      if (i < p.A) v = tal_pair(p, r, b, i, box, cand, ov);
      const int32_t tie = assign::topk_equal(v, thr);
      __syncthreads();  // the previous tile's scan is read
      tie_scan[threadIdx.x] = tie;
      __syncthreads();
      for (int s = 1; s < blockDim.x; s <<= 1) {  // Hillis-Steele inclusive scan
        const int32_t add = threadIdx.x >= s ? tie_scan[threadIdx.x - s] : 0;
        __syncthreads();
        tie_scan[threadIdx.x] += add;
        __syncthreads();
      }
      if (cand && assign::tal_cuda_selected(v, thr, ties + tie_scan[threadIdx.x] - tie, need)) {
        atomicAdd(&count[b * p.A + i], 1);
        atomicMin(&claimant[b * p.A + i], static_cast<int32_t>(g));
      }
      ties += tie_scan[blockDim.x - 1];
    }
  }
}

template <typename K>
__device__ __forceinline__ void atomic_max_key(K* address, K v);
template <>
__device__ __forceinline__ void atomic_max_key<uint32_t>(uint32_t* address, uint32_t v) {
  atomicMax(address, v);
}
template <>
__device__ __forceinline__ void atomic_max_key<unsigned long long>(unsigned long long* address, unsigned long long v) {
  atomicMax(address, v);
}

template <typename T>
__global__ void tal_resolve_kernel(assign::TalArgs<T> p, const int32_t* count, const int32_t* claimant, int64_t* gt_idx, bool* fg, T* t_a,
                                   typename assign::TalKey<T>::type* pos_t, typename assign::TalKey<T>::type* pos_o) {
  using Key = assign::TalKey<T>;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < p.B * p.A; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = k / p.A, i = k - b * p.A;
    const int32_t c = count[k];
    int64_t g = c == 1 ? claimant[k] : 0;
    if (c > 1) {  // the first argmax over ALL gts of the overlap (0 off their candidates)
      T best = -std::numeric_limits<T>::infinity();
      for (int64_t h = 0; h < p.M; ++h) {
        T box[4], ov = T(0);
        if (p.valid[b * p.M + h]) {
          assign::tal_widened(p.gt + (b * p.M + h) * 4, true, p.stride_val, box);
          if (assign::tal_inside(p.anc + i * 2, box))
            ov = assign::ciou_ultralytics(p.gt + (b * p.M + h) * 4, p.pd + k * 4, p.atan_gt[b * p.M + h], p.atan_pd[k]);
        }
        if (assign::topk_greater(ov, best)) best = ov, g = h;  // torch's argmax: the first NaN wins
      }
    }
    gt_idx[k] = g;
    fg[k] = c > 0;
    T t = T(0);
    if (c > 0 && p.valid[b * p.M + g]) {  // the assigned pair's metric and overlap (0 unless a candidate of its gt)
      T box[4], ov;
      bool cand;
      assign::tal_widened(p.gt + (b * p.M + g) * 4, true, p.stride_val, box);
      t = tal_pair(p, b * p.M + g, b, i, box, cand, ov);
      // max(0, .) as the CPU kernel's std::max: only positive values may enter -- the bit
      // patterns order as the values for non-negative floats only (a negative metric, from a
      // negative score, or a NaN would otherwise win)
      if (cand && t > T(0)) atomic_max_key(&pos_t[b * p.M + g], Key::of(t));
      if (cand && ov > T(0)) atomic_max_key(&pos_o[b * p.M + g], Key::of(ov));
    }
    t_a[k] = t;
  }
}

template <typename T>
__global__ void tal_targets_kernel(assign::TalArgs<T> p, const int64_t* gt_idx, const bool* fg, const T* t_a,
                                   const typename assign::TalKey<T>::type* pos_t, const typename assign::TalKey<T>::type* pos_o,
                                   int64_t* labels, T* boxes, T* scores) {
  using Key = assign::TalKey<T>;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < p.B * p.A; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = k / p.A, r = b * p.M + gt_idx[k];
    const int64_t l = max(p.labels[r], int64_t(0));
    labels[k] = l;
    for (int c = 0; c < 4; ++c) boxes[k * 4 + c] = p.gt[r * 4 + c];
    if (fg[k] && (p.compact || l < p.nc))  // a label >= nc (unchecked on CUDA) matches no class: never a stray write
      scores[p.compact ? k : k * p.nc + l] = assign::tal_norm(t_a[k], Key::value(pos_o[r]), Key::value(pos_t[r]), static_cast<T>(p.eps));
  }
}

std::vector<at::Tensor> task_aligned_assign_cuda(const at::Tensor& pd_scores, const at::Tensor& pd_bboxes, const at::Tensor& anc_points,
                                                 const at::Tensor& gt_labels, const at::Tensor& gt_bboxes, const at::Tensor& gt_valid, int64_t topk,
                                                 int64_t num_classes, double alpha, double beta, double stride_val, double eps, int64_t tie_rule,
                                                 bool compact) {
  int64_t B, A, M;
  std::tie(B, A, M) = assign::check_task_aligned_args(pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, gt_valid, topk, num_classes, tie_rule);
  TORCH_CHECK(tie_rule == 1, "fastloss task_aligned_assign: the CUDA kernel implements torch's CUDA top-k tie rule only (tie_rule 1)");
  const c10::cuda::CUDAGuard guard(pd_scores.device());
  const auto opts = pd_scores.options();
  at::Tensor labels = at::empty({B, A}, opts.dtype(at::kLong));
  at::Tensor boxes = at::empty({B, A, 4}, opts);
  at::Tensor scores = compact ? at::zeros({B, A}, opts) : at::zeros({B, A, num_classes}, opts);
  at::Tensor fg = at::empty({B, A}, opts.dtype(at::kBool));
  at::Tensor gt_idx = at::empty({B, A}, opts.dtype(at::kLong));
  if (B * A == 0) return {labels, boxes, scores, fg, gt_idx};
  const at::Tensor atan_gt = assign::tal_aspect_atan(gt_bboxes), atan_pd = assign::tal_aspect_atan(pd_bboxes);  // torch's CUDA atan
  at::Tensor count = at::zeros({B, A}, opts.dtype(at::kInt));
  at::Tensor claimant = at::full({B, A}, std::numeric_limits<int32_t>::max(), opts.dtype(at::kInt));
  at::Tensor t_a = at::empty({B, A}, opts);
  const auto key_dtype = pd_scores.scalar_type() == at::kDouble ? at::kLong : at::kInt;  // the maxima's bit patterns, 0 = +0.0
  at::Tensor pos_t = at::zeros({B, std::max<int64_t>(M, 1)}, opts.dtype(key_dtype));
  at::Tensor pos_o = at::zeros({B, std::max<int64_t>(M, 1)}, opts.dtype(key_dtype));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(pd_scores.scalar_type(), "task_aligned_assign_cuda", [&] {
    using K = typename assign::TalKey<scalar_t>::type;
    const assign::TalArgs<scalar_t> p{pd_scores.const_data_ptr<scalar_t>(), pd_bboxes.const_data_ptr<scalar_t>(),
                                      anc_points.const_data_ptr<scalar_t>(), gt_labels.const_data_ptr<int64_t>(),
                                      gt_bboxes.const_data_ptr<scalar_t>(), gt_valid.const_data_ptr<bool>(),
                                      atan_gt.const_data_ptr<scalar_t>(), atan_pd.const_data_ptr<scalar_t>(),
                                      B, A, M, num_classes, topk, alpha, beta, stride_val, eps, /*cuda_rule=*/true, compact};
    if (B * M > 0) {
      tal_claim_kernel<<<static_cast<unsigned>(std::min<int64_t>(B * M, 1 << 20)), kThreads, 0, stream>>>(
          p, count.mutable_data_ptr<int32_t>(), claimant.mutable_data_ptr<int32_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    K* pt = reinterpret_cast<K*>(pos_t.mutable_data_ptr());
    K* po = reinterpret_cast<K*>(pos_o.mutable_data_ptr());
    tal_resolve_kernel<<<grid_for(B * A), kThreads, 0, stream>>>(p, count.const_data_ptr<int32_t>(), claimant.const_data_ptr<int32_t>(),
                                                                 gt_idx.mutable_data_ptr<int64_t>(), fg.mutable_data_ptr<bool>(),
                                                                 t_a.mutable_data_ptr<scalar_t>(), pt, po);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    tal_targets_kernel<<<grid_for(B * A), kThreads, 0, stream>>>(p, gt_idx.const_data_ptr<int64_t>(), fg.const_data_ptr<bool>(),
                                                                 t_a.const_data_ptr<scalar_t>(), pt, po,
                                                                 labels.mutable_data_ptr<int64_t>(), boxes.mutable_data_ptr<scalar_t>(),
                                                                 scores.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {labels, boxes, scores, fg, gt_idx};
}

// ------------------------------------------------------------------ ATSS (mmdetection)
//
// Three launches, no float atomics (deterministic):
//   1. one thread per (image, gt): per level the min(topk, n) nearest priors by centre distance
//      under torch's CUDA top-k rule (the k smallest of the total order (distance, index): the
//      lowest index among ties), kept sorted by (distance, index) in a scratch row -- the spec's
//      canonical order, which fixes the threshold's summation order; then the candidates' IoU, the
//      threshold (assign::atss_moments, a correctly rounded sqrt as torch's CUDA sqrt) and the
//      positives (their IoU, -1 elsewhere);
//   2. one thread per (image, gt, candidate): a positive offers (IoU, gt) to its prior's 64-bit
//      key by atomicMax -- fp32: (IoU bits << 32) | (2^32 - 1 - g), IoU >= 0 so the bit order is
//      the value order and the larger complement the lower g (the first gt on ties); fp64: the
//      IoU's bits + 1, then a second launch takes the lowest g attaining it by atomicMin;
//   3. one thread per (image, prior): gt_inds / max_overlaps from its key.
// Integer atomics are order-free, so every result is independent of the schedule.

constexpr int kAtssMaxLevels = 16;

struct AtssLevels {  // the priors per level, by value in the launch's parameters (no copy, no sync)
  int64_t n[kAtssMaxLevels];
};

template <typename T>
struct AtssPtrs {
  const T* priors;  // (Bp, A, 4)
  const T* gt;      // (B, M, 4)
  const bool* valid;    // (B, M)
  const bool* ignored;  // (B, A)
  AtssLevels levels;
  int64_t B, A, M, prior_stride, topk, lk, L;
};

template <typename T>
__global__ void atss_select_kernel(AtssPtrs<T> p, int64_t* cand, T* dist, T* pos_v) {
  const T inf = static_cast<T>(assign::kAtssInf);
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < p.B * p.M; r += int64_t(gridDim.x) * blockDim.x) {
    T* pv = pos_v + r * p.lk;
    if (!p.valid[r]) {
      for (int64_t j = 0; j < p.lk; ++j) pv[j] = T(-1);
      continue;
    }
    const int64_t b = r / p.M;
    const T* g = p.gt + r * 4;
    const T* pr = p.priors + (p.prior_stride ? b : 0) * p.prior_stride;
    const T gcx = assign::centre(g[0], g[2]), gcy = assign::centre(g[1], g[3]);
    int64_t* ci = cand + r * p.lk;
    T* cd = dist + r * p.lk;
    int64_t base = 0, start = 0;
    for (int64_t l = 0; l < p.L; ++l) {
      const int64_t n = p.levels.n[l], k = n < p.topk ? n : p.topk;
      int64_t cnt = 0;  // sorted (distance, index) list ci / cd [base, base + cnt)
      for (int64_t i = start; i < start + n && k > 0; ++i) {
        const T* q = pr + i * 4;
        const T d = p.ignored[b * p.A + i] ? inf
                                           : assign::rn_sqrt(assign::centre_distance2(assign::centre(q[0], q[2]), assign::centre(q[1], q[3]), gcx, gcy));
        if (cnt == k && !(d < cd[base + k - 1])) continue;  // a later index loses a tie
        int64_t pos = cnt < k ? cnt++ : k - 1;
        while (pos > 0 && d < cd[base + pos - 1]) {  // insert after the equal distances (lower indices)
          cd[base + pos] = cd[base + pos - 1], ci[base + pos] = ci[base + pos - 1];
          --pos;
        }
        cd[base + pos] = d, ci[base + pos] = i;
      }
      base += k, start += n;
    }
    const T ga = assign::area(g[0], g[1], g[2], g[3]);
    auto mx = [](T x, T y) { return x > y || x != x ? x : y; };  // torch.max / torch.min: NaN propagates
    auto mn = [](T x, T y) { return x < y || x != x ? x : y; };
    for (int64_t j = 0; j < p.lk; ++j) {  // the IoUs replace the distances
      const T* q = pr + ci[j] * 4;
      cd[j] = assign::iou(g[0], g[1], g[2], g[3], ga, q[0], q[1], q[2], q[3], assign::area(q[0], q[1], q[2], q[3]),
                          static_cast<T>(assign::kOverlapsEps), T(0), mx, mn);
    }
    double var;
    const T mean = assign::atss_moments(cd, p.lk, var);
    const T thr = assign::atss_threshold(mean, assign::rn_sqrt(var));
    for (int64_t j = 0; j < p.lk; ++j) {
      const T* q = pr + ci[j] * 4;
      const bool in = assign::atss_inside(assign::centre(q[0], q[2]), assign::centre(q[1], q[3]), g);
      pv[j] = cd[j] >= thr && in ? cd[j] : T(-1);
    }
  }
}

// the 64-bit key of a positive (IoU v >= 0) of gt g: see the section comment
__device__ __forceinline__ unsigned long long atss_key(float v, int64_t g) {
  return (static_cast<unsigned long long>(__float_as_uint(v)) << 32) | (0xFFFFFFFFull - static_cast<unsigned long long>(g));
}
__device__ __forceinline__ unsigned long long atss_key(double v, int64_t) {
  return static_cast<unsigned long long>(__double_as_longlong(v)) + 1ull;
}

template <typename T>
__global__ void atss_offer_kernel(int64_t B, int64_t M, int64_t A, int64_t lk, const int64_t* cand, const T* pos_v, unsigned long long* key) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < B * M * lk; k += int64_t(gridDim.x) * blockDim.x) {
    const T v = pos_v[k];
    if (!(v >= T(0))) continue;
    const int64_t r = k / lk, b = r / M;
    atomicMax(key + b * A + cand[k], atss_key(v, r - b * M));
  }
}

// fp64: the lowest gt among the positives attaining the prior's largest IoU
template <typename T>
__global__ void atss_first_gt_kernel(int64_t B, int64_t M, int64_t A, int64_t lk, const int64_t* cand, const T* pos_v,
                                     const unsigned long long* key, unsigned long long* first) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < B * M * lk; k += int64_t(gridDim.x) * blockDim.x) {
    const T v = pos_v[k];
    if (!(v >= T(0))) continue;
    const int64_t r = k / lk, b = r / M, i = b * A + cand[k];
    if (atss_key(v, 0) == key[i]) atomicMin(first + i, static_cast<unsigned long long>(r - b * M));
  }
}

template <typename T>
__global__ void atss_finish_kernel(int64_t B, int64_t M, int64_t A, const bool* valid, const bool* ignored, const unsigned long long* key,
                                   const unsigned long long* first, int64_t* inds, T* best) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < B * A; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = k / A;
    bool any = false;
    for (int64_t g = 0; g < M && !any; ++g) any = valid[b * M + g];
    const unsigned long long kk = key[k];
    if (!any) {  // mmdetection: no gts -> every prior background, overlap 0
      inds[k] = 0, best[k] = T(0);
    } else if (kk == 0) {
      inds[k] = ignored[k] ? -1 : 0, best[k] = -static_cast<T>(assign::kAtssInf);
    } else if (sizeof(T) == 4) {
      inds[k] = static_cast<int64_t>(0xFFFFFFFFull - (kk & 0xFFFFFFFFull)) + 1;
      best[k] = static_cast<T>(__uint_as_float(static_cast<unsigned int>(kk >> 32)));
    } else {
      inds[k] = static_cast<int64_t>(first[k]) + 1;
      best[k] = static_cast<T>(__longlong_as_double(static_cast<long long>(kk - 1ull)));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> atss_assign_cuda(const at::Tensor& priors, at::IntArrayRef num_level_priors, const at::Tensor& gt_bboxes,
                                                    const at::Tensor& gt_valid, const at::Tensor& ignored, int64_t topk) {
  int64_t B, A, M, Lk;
  std::tie(B, A, M, Lk) = assign::check_atss_args(priors, num_level_priors, gt_bboxes, gt_valid, ignored, topk);
  const c10::cuda::CUDAGuard guard(priors.device());
  at::Tensor inds = at::empty({B, A}, priors.options().dtype(at::kLong));
  at::Tensor best = at::empty({B, A}, priors.options());
  if (B * A == 0) return {inds, best};
  const int64_t L = static_cast<int64_t>(num_level_priors.size());
  TORCH_CHECK(L <= kAtssMaxLevels, "fastloss atss_assign: at most 16 levels on CUDA");
  AtssLevels levels{};
  std::copy(num_level_priors.begin(), num_level_priors.end(), levels.n);
  at::Tensor cand = at::empty({B, M, Lk}, priors.options().dtype(at::kLong));
  at::Tensor scratch = at::empty({B, M, Lk}, priors.options());
  at::Tensor pos_v = at::empty({B, M, Lk}, priors.options());
  at::Tensor key = at::zeros({B, A}, priors.options().dtype(at::kLong));
  at::Tensor first = at::full({B, A}, std::numeric_limits<int64_t>::max(), priors.options().dtype(at::kLong));
  auto* key_p = reinterpret_cast<unsigned long long*>(key.mutable_data_ptr<int64_t>());
  auto* first_p = reinterpret_cast<unsigned long long*>(first.mutable_data_ptr<int64_t>());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(priors.scalar_type(), "atss_assign_cuda", [&] {
    const AtssPtrs<scalar_t> p{priors.const_data_ptr<scalar_t>(), gt_bboxes.const_data_ptr<scalar_t>(), gt_valid.const_data_ptr<bool>(),
                               ignored.const_data_ptr<bool>(), levels, B, A, M, priors.size(0) == 1 ? 0 : A * 4,
                               topk, Lk, L};
    if (B * M > 0 && Lk > 0) {
      atss_select_kernel<<<grid_for(B * M), kThreads, 0, stream>>>(p, cand.mutable_data_ptr<int64_t>(), scratch.mutable_data_ptr<scalar_t>(),
                                                                   pos_v.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      atss_offer_kernel<<<grid_for(B * M * Lk), kThreads, 0, stream>>>(B, M, A, Lk, cand.const_data_ptr<int64_t>(),
                                                                       pos_v.const_data_ptr<scalar_t>(), key_p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (sizeof(scalar_t) == 8) {
        atss_first_gt_kernel<<<grid_for(B * M * Lk), kThreads, 0, stream>>>(B, M, A, Lk, cand.const_data_ptr<int64_t>(),
                                                                            pos_v.const_data_ptr<scalar_t>(), key_p, first_p);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    atss_finish_kernel<<<grid_for(B * A), kThreads, 0, stream>>>(B, M, A, gt_valid.const_data_ptr<bool>(), ignored.const_data_ptr<bool>(), key_p,
                                                                 first_p, inds.mutable_data_ptr<int64_t>(), best.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {inds, best};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("max_iou_assign_native", &max_iou_assign_cuda);
  m.impl("task_aligned_assign_native", &task_aligned_assign_cuda);
  m.impl("atss_assign_native", &atss_assign_cuda);
}

}  // namespace fastloss
