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
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

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

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) { m.impl("max_iou_assign_native", &max_iou_assign_cuda); }

}  // namespace fastloss
