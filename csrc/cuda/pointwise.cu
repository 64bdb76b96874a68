// The pointwise engine, CUDA kernels and launchers.  The losses' math is
// csrc/kernels/pointwise.h (shared with the CPU kernels); the calling convention is in
// csrc/fastloss.cpp.  Forward and backward are one grid-stride kernel template per loss:
// each thread loads kUnroll coalesced elements before computing (memory-level parallelism),
// the forward either stores per-element losses or reduces them to one fp32 partial per block
// (fixed-order warp shuffles: deterministic), and the partials are added by one at::sum.
// Class labels are compared with the column index in registers (an out-of-range label matches
// no class: CUDA tensors are not checked without a host sync).  On GPUs these losses are
// bandwidth-bound, so fastloss/_backend.py has the backward recompute from the inputs.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "fastloss/cuda_reduce.cuh"
#include "fastloss/op_checks.h"
#include "kernels/pointwise.h"

namespace fastloss {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int64_t kMaxBlocks = 8192;  // fixed cap (not SM-dependent): partial count depends on numel only

template <typename acc_t, typename scalar_t, typename index_t>
struct Ptrs {
  const scalar_t* x;
  const scalar_t* t;        // float targets, or nullptr
  const int64_t* labels;    // class labels (one per row of C), or nullptr
  const acc_t* tv;          // per-row value of the label's class, or nullptr (1)
  const acc_t* w;           // weights, or nullptr
  const acc_t* aux;         // aux operand, or nullptr
  int w_layout, aux_layout; // Layout codes
  const scalar_t* up;       // per-element upstream gradient (backward, reduction none), or nullptr
  const acc_t* up_scalar;   // scalar upstream gradient (backward, reduced), or nullptr
  acc_t up_scale;           // 1 / numel for mean, else 1 (formed in double)
  scalar_t* out;            // per-element loss or gradient, or nullptr (reduced forward)
  acc_t* partial;           // one partial sum per block (reduced forward), or nullptr
  acc_t* cache;             // forward with_grad: dL/dx * weight, or nullptr
  index_t numel, C;
};

template <typename acc_t, typename index_t>
__device__ __forceinline__ acc_t operand(const acc_t* ptr, int layout, index_t i, index_t row, index_t col, bool ok) {
  if (ptr == nullptr) return acc_t(1);
  if (!ok) return acc_t(0);
  return ptr[layout == 1 ? i : (layout == 2 ? row : col)];
}

template <typename F, bool kBackward, typename acc_t, typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads) pointwise_kernel(Ptrs<acc_t, scalar_t, index_t> p, pointwise::Params<acc_t> prm) {
  const acc_t up_scalar = (kBackward && p.up_scalar != nullptr) ? *p.up_scalar * p.up_scale : acc_t(1);
  const bool by_row = p.labels != nullptr || p.w_layout >= 2 || p.aux_layout >= 2;
  acc_t sum = 0;
  const index_t stride = static_cast<index_t>(gridDim.x) * kThreads * kUnroll;
  for (index_t base = static_cast<index_t>(blockIdx.x) * kThreads * kUnroll + threadIdx.x; base < p.numel; base += stride) {
    acc_t x[kUnroll], t[kUnroll], w[kUnroll], aux[kUnroll], up[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {  // all loads first
      const index_t i = base + static_cast<index_t>(k) * kThreads;
      const bool ok = i < p.numel;
      const index_t row = by_row ? i / p.C : index_t(0);
      const index_t col = i - row * p.C;
      x[k] = ok ? static_cast<acc_t>(p.x[i]) : acc_t(0);
      if (p.labels != nullptr) {
        const bool hit = ok && p.labels[row] == static_cast<int64_t>(col);
        t[k] = hit ? (p.tv != nullptr ? p.tv[row] : acc_t(1)) : acc_t(0);
      } else {
        t[k] = ok ? static_cast<acc_t>(p.t[i]) : acc_t(0);
      }
      w[k] = operand(p.w, p.w_layout, i, row, col, ok);
      aux[k] = operand(p.aux, p.aux_layout, i, row, col, ok);
      if (kBackward) up[k] = p.up != nullptr ? (ok ? static_cast<acc_t>(p.up[i]) : acc_t(0)) : up_scalar;
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const index_t i = base + static_cast<index_t>(k) * kThreads;
      acc_t loss, grad;
      F::eval(x[k], t[k], aux[k], prm, loss, grad);
      if (i < p.numel) {
        if (kBackward) {
          p.out[i] = static_cast<scalar_t>(grad * w[k] * up[k]);
        } else {
          if (p.cache != nullptr) p.cache[i] = grad * w[k];
          if (p.out != nullptr) {
            p.out[i] = static_cast<scalar_t>(loss * w[k]);
          } else {
            sum += loss * w[k];
          }
        }
      }
    }
  }
  if (!kBackward && p.partial != nullptr) {
    sum = block_sum<kThreads>(sum);
    if (threadIdx.x == 0) p.partial[blockIdx.x] = sum;
  }
}

template <typename F, bool kBackward, typename scalar_t>
at::Tensor launch(const PointwiseArgs& a, const at::Tensor& upstream, const at::Tensor& cache = at::Tensor()) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool reduced_forward = !kBackward && a.reduction != Reduction::None;
  const int64_t blocks = std::max<int64_t>(1, std::min(kMaxBlocks, (a.numel + kThreads * kUnroll - 1) / (kThreads * kUnroll)));
  at::Tensor out = reduced_forward ? at::Tensor() : at::empty_like(a.input);
  at::Tensor partial = reduced_forward ? at::empty({blocks}, a.input.options().dtype(reduced_dtype(a.input.scalar_type()))) : at::Tensor();
  const pointwise::Params<acc_t> prm = params_as<acc_t>(a);
  auto fill = [&](auto& p) {
    p.x = a.input.const_data_ptr<scalar_t>();
    p.t = a.labels ? nullptr : a.target.const_data_ptr<scalar_t>();
    p.labels = a.labels ? a.target.const_data_ptr<int64_t>() : nullptr;
    p.tv = a.target_value.defined() ? a.target_value.const_data_ptr<acc_t>() : nullptr;
    p.w = a.weight.defined() ? a.weight.const_data_ptr<acc_t>() : nullptr;
    p.aux = a.aux.defined() ? a.aux.const_data_ptr<acc_t>() : nullptr;
    p.w_layout = static_cast<int>(a.weight_layout);
    p.aux_layout = static_cast<int>(a.aux_layout);
    p.up = (kBackward && a.reduction == Reduction::None) ? upstream.const_data_ptr<scalar_t>() : nullptr;
    p.up_scalar = (kBackward && a.reduction != Reduction::None) ? upstream.const_data_ptr<acc_t>() : nullptr;
    p.up_scale = static_cast<acc_t>(a.reduction == Reduction::Mean ? 1.0 / mean_count(a.numel) : 1.0);  // formed in double
    p.out = reduced_forward ? nullptr : out.mutable_data_ptr<scalar_t>();
    p.partial = reduced_forward ? partial.mutable_data_ptr<acc_t>() : nullptr;
    p.cache = cache.defined() ? cache.mutable_data_ptr<acc_t>() : nullptr;
    p.numel = a.numel;
    p.C = std::max<int64_t>(a.C, 1);
  };
  if (a.numel > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    // 32-bit indexing when every index (plus one grid stride of slack) fits: cheaper divisions
    if (a.numel + kMaxBlocks * kThreads * kUnroll < std::numeric_limits<int32_t>::max()) {
      Ptrs<acc_t, scalar_t, int32_t> p;
      fill(p);
      pointwise_kernel<F, kBackward><<<blocks, kThreads, 0, stream>>>(p, prm);
    } else {
      Ptrs<acc_t, scalar_t, int64_t> p;
      fill(p);
      pointwise_kernel<F, kBackward><<<blocks, kThreads, 0, stream>>>(p, prm);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!reduced_forward) return out;
  if (a.numel == 0) partial.zero_();
  at::Tensor total = at::sum(partial);
  return a.reduction == Reduction::Mean ? total.div_(mean_count(a.numel)) : total;
}

// with_grad is supported for completeness; fastloss/_backend.py recomputes on GPUs (fewer bytes).
std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& target_value,
                                                const c10::optional<at::Tensor>& weight, int64_t weight_layout,
                                                const c10::optional<at::Tensor>& aux, int64_t aux_layout, int64_t loss,
                                                c10::ArrayRef<double> params, int64_t reduction, bool with_grad) {
  const c10::cuda::CUDAGuard guard(input.device());
  const PointwiseArgs a = make_pointwise_args(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction);
  const auto acc_options = input.options().dtype(reduced_dtype(input.scalar_type()));
  at::Tensor cache = at::empty(with_grad ? input.sizes().vec() : std::vector<int64_t>{0}, acc_options);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pointwise_forward_cuda", [&] {
    pointwise::dispatch_loss(a.loss, [&](auto functor) {
      out = launch<decltype(functor), false, scalar_t>(a, at::Tensor(), with_grad ? cache : at::Tensor());
    });
  });
  return {out, cache};
}

at::Tensor backward_cuda(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& target_value,
                         const c10::optional<at::Tensor>& weight, int64_t weight_layout, const c10::optional<at::Tensor>& aux,
                         int64_t aux_layout, int64_t loss, c10::ArrayRef<double> params, int64_t reduction) {
  const c10::cuda::CUDAGuard guard(input.device());
  const PointwiseArgs a = make_pointwise_args(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction);
  check_upstream(grad, a);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pointwise_backward_cuda", [&] {
    pointwise::dispatch_loss(a.loss, [&](auto functor) { out = launch<decltype(functor), true, scalar_t>(a, grad); });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("pointwise_forward_native", &forward_cuda);
  m.impl("pointwise_backward_native", &backward_cuda);
}

}  // namespace fastloss
