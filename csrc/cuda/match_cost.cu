// Hungarian matching cost blocks, CUDA kernel (per-pair math: csrc/kernels/match_cost.h, every
// product and sum rounded on its own -- rn_mul / rn_add / rn_sub -- so each cost is the peer's
// float operations; spec: fastloss/reference/match_cost.py; calling convention: csrc/fastloss.cpp).
//
// One thread per (query q, target j) pair over the flat Q x N grid, j fastest: the targets of
// one image are contiguous, and so are their outputs (image b's block (Q, T_b) starts at
// Q * o_b).  No reduction across threads: deterministic.  The host reads nothing from the
// device (offsets stay there): no synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "kernels/match_cost.h"

namespace fastloss {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct CostArgs {
  const T* table;  // (B, Q, C)
  const T* pred_l1;
  const T* pred_xyxy;  // (B, Q, 4)
  const T* tgt_l1;
  const T* tgt_xyxy;  // (N, 4)
  const int64_t* labels;
  const int64_t* image;
  const int64_t* offsets;  // (B + 1,)
  int64_t Q, N, C;
  T w_class, w_bbox, w_giou;
  int mode, o0, o1, o2;
};

template <typename T>
__global__ void blocks_kernel(const CostArgs<T> a, T* __restrict__ out) {
  const int64_t total = a.Q * a.N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t q = i / a.N, j = i % a.N;
    const int64_t b = a.image[j], first = a.offsets[b], count = a.offsets[b + 1] - first;
    const int64_t row = b * a.Q + q, label = a.labels[j];
    // out-of-range label: NaN costs, never a stray read
    const T cls = label >= 0 && label < a.C ? a.table[row * a.C + label] : std::numeric_limits<T>::quiet_NaN();
    out[a.Q * first + q * count + (j - first)] = match_cost::pair_cost<T>(cls, a.pred_l1 + row * 4, a.tgt_l1 + j * 4, a.pred_xyxy + row * 4,
                                                                           a.tgt_xyxy + j * 4, a.w_class, a.w_bbox, a.w_giou, a.mode, a.o0, a.o1, a.o2);
  }
}

at::Tensor match_cost_cuda(const at::Tensor& table, const at::Tensor& pred_l1, const at::Tensor& pred_xyxy, const at::Tensor& tgt_l1,
                           const at::Tensor& tgt_xyxy, const at::Tensor& labels, const at::Tensor& image, const at::Tensor& offsets, double w_class,
                           double w_bbox, double w_giou, int64_t giou_mode, at::IntArrayRef order) {
  const auto dims = match_cost::check_args(table, pred_l1, pred_xyxy, tgt_l1, tgt_xyxy, labels, image, offsets, giou_mode, order);
  const int64_t Q = dims[1], C = dims[2], N = dims[3];
  const c10::cuda::CUDAGuard guard(table.device());
  at::Tensor out = at::empty({Q * N}, table.options());
  if (Q * N == 0) return out;
  const int64_t blocks = std::min<int64_t>((Q * N + kThreads - 1) / kThreads, int64_t(1) << 20);  // grid-stride beyond
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "match_cost_cuda", [&] {
    // weights rounded to the dtype once, as torch rounds a Python scalar operand
    const CostArgs<scalar_t> a{table.const_data_ptr<scalar_t>(), pred_l1.const_data_ptr<scalar_t>(), pred_xyxy.const_data_ptr<scalar_t>(),
                               tgt_l1.const_data_ptr<scalar_t>(), tgt_xyxy.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(),
                               image.const_data_ptr<int64_t>(), offsets.const_data_ptr<int64_t>(), Q, N, C,
                               static_cast<scalar_t>(w_class), static_cast<scalar_t>(w_bbox), static_cast<scalar_t>(w_giou),
                               static_cast<int>(giou_mode), static_cast<int>(order[0]), static_cast<int>(order[1]), static_cast<int>(order[2])};
    blocks_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) { m.impl("match_cost_native", &match_cost_cuda); }

}  // namespace fastloss
