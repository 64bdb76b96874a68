// IoU family, CUDA kernels and launchers.  The geometry and its reverse-mode derivatives are
// csrc/kernels/box_iou.h (shared with the CPU kernels, run here on float/double scalars);
// the calling convention is in csrc/fastloss.cpp.  One thread per
// box (grid-stride; 2-D boxes of 4 coordinates, 3-D of 6), the forward either stores per-box losses or reduces
// them to one fp32 partial per block (fixed-order warp shuffles: deterministic), summed by one
// at::sum.  The backward recomputes from pred/target (fewer bytes than storing dL/dpred).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "fastloss/cuda_reduce.cuh"
#include "fastloss/op_checks.h"
#include "kernels/box_iou.h"

namespace fastloss {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;  // fixed cap: the partial count depends on n only

template <typename acc_t, typename scalar_t>
struct LossPtrs {
  const scalar_t* p;
  const scalar_t* t;
  const acc_t* w;           // per box, or nullptr
  const scalar_t* up;       // backward, reduction none: per box upstream
  const acc_t* up_scalar;   // backward, reduced: scalar upstream
  acc_t up_scale;
  scalar_t* out;            // per-box loss (forward none) or (n, NC) gradient (backward)
  acc_t* partial;           // reduced forward
  acc_t* cache;             // forward with_grad: dL/dpred * w (n, NC)
  int64_t n;
};

template <int NC = 4, typename acc_t, typename scalar_t>
__device__ FL_INLINE void load_box(const scalar_t* src, int64_t i, acc_t b[NC]) {
#pragma unroll
  for (int k = 0; k < NC; ++k) b[k] = static_cast<acc_t>(src[i * NC + k]);
}

// reduction code of bounded_iou's per-term output (fastloss/ops/box_iou.py TERMS): the forward
// writes (n, 4) terms (times the box's weight), the backward takes an (n, 4) upstream gradient
constexpr int64_t kTermsCode = 3;

// kGeneric: the box math's instantiation (box_iou.h Pair), false for convention "fastloss";
// NC: coordinates per box, 4 (2-D) or 6 (3-D, convention fastloss only); kTerms: the per-term
// output (ptr.out and ptr.up (n, 4))
template <bool kBackward, bool kGeneric, int NC, bool kTerms, typename acc_t, typename scalar_t>
__global__ void __launch_bounds__(kThreads) loss_kernel(LossPtrs<acc_t, scalar_t> ptr, box::Params<acc_t> prm) {
  const acc_t up_scalar = (kBackward && ptr.up_scalar != nullptr) ? *ptr.up_scalar * ptr.up_scale : acc_t(1);
  const bool need_grad = kBackward || ptr.cache != nullptr;
  acc_t sum = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < ptr.n; i += stride) {
    acc_t p[NC], t[NC];
    load_box<NC>(ptr.p, i, p);
    load_box<NC>(ptr.t, i, t);
    const acc_t w = ptr.w != nullptr ? ptr.w[i] : acc_t(1);
    if constexpr (kTerms) {
      acc_t up[4], terms[4], g[4];
      if constexpr (kBackward) load_box<4>(ptr.up, i, up);
      box::bounded_iou_terms<kBackward>(p, t, prm, up, terms, g);
      const acc_t* res = kBackward ? g : terms;
#pragma unroll
      for (int k = 0; k < 4; ++k) ptr.out[i * 4 + k] = static_cast<scalar_t>(res[k] * w);
      continue;
    }
    acc_t loss;
    if (need_grad) {
      acc_t g[NC];
      loss = box::paired_loss_coords<true, kGeneric, NC>(p, t, prm, g);
      if constexpr (kBackward) {
        const acc_t up = ptr.up != nullptr ? static_cast<acc_t>(ptr.up[i]) : up_scalar;
#pragma unroll
        for (int k = 0; k < NC; ++k) ptr.out[i * NC + k] = static_cast<scalar_t>(g[k] * w * up);
        continue;
      } else {
#pragma unroll
        for (int k = 0; k < NC; ++k) ptr.cache[i * NC + k] = g[k] * w;
      }
    } else {
      loss = box::paired_loss_coords<false, kGeneric, NC>(p, t, prm, static_cast<acc_t*>(nullptr));
    }
    if (ptr.out != nullptr) {
      ptr.out[i] = static_cast<scalar_t>(loss * w);
    } else {
      sum += loss * w;
    }
  }
  if (!kBackward && ptr.partial != nullptr) {
    sum = block_sum<kThreads>(sum);
    if (threadIdx.x == 0) ptr.partial[blockIdx.x] = sum;
  }
}

void check_args(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& weight, int64_t kind, int64_t fmt,
                int64_t convention, int64_t reduction) {
  TORCH_CHECK(pred.is_floating_point() && pred.is_contiguous() && pred.dim() == 2 && (pred.size(1) == 4 || pred.size(1) == 6),
              "fastloss: `pred` must be a contiguous floating (n, 4) or 3-D (n, 6) tensor");
  TORCH_CHECK(target.sizes() == pred.sizes() && target.scalar_type() == pred.scalar_type() && target.is_contiguous() &&
                  target.device() == pred.device(),
              "fastloss: `target` must match `pred` in shape, dtype and device and be contiguous");
  TORCH_CHECK(reduction >= 0 && reduction <= kTermsCode, "fastloss: reduction code must be 0, 1, 2 or 3 (terms)");
  TORCH_CHECK(reduction != kTermsCode || (kind == box::kBoundedIoU && pred.size(1) == 4),
              "fastloss: the per-term output (reduction code 3) is bounded_iou's, of 2-D boxes");
  TORCH_CHECK(kind >= 0 && kind <= box::kBoundedIoU && fmt >= 0 && fmt <= 2, "fastloss: box kind / fmt code out of range");
  TORCH_CHECK(convention >= box::kConvFastloss && convention <= box::kConvTorchvision, "fastloss: box convention code out of range");
  TORCH_CHECK(pred.size(1) == 4 || box::paired_nd_supported(static_cast<int>(kind), static_cast<int>(fmt), static_cast<int>(convention)),
              "fastloss: 3-D boxes (n, 6): kinds iou / giou / diou, fmt xyxy, convention fastloss only");
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->device() == pred.device() && weight->is_contiguous() && weight->scalar_type() == reduced_dtype(pred.scalar_type()) &&
                    weight->numel() == pred.size(0),
                "fastloss: `weight` must be contiguous on pred's device, fp32 (fp64), one value per box");
  }
}

template <bool kBackward, typename scalar_t>
at::Tensor launch(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& weight, int64_t kind, int64_t fmt,
                  int64_t convention, double eps, double power, double gamma, int64_t reduction, const at::Tensor& upstream, const at::Tensor& cache) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = pred.size(0);
  const bool terms = reduction == kTermsCode;
  const bool reduced_forward = !kBackward && reduction != 0 && !terms;
  const int64_t blocks = std::max<int64_t>(1, std::min(kMaxBlocks, (n + kThreads - 1) / kThreads));
  const auto acc_options = pred.options().dtype(reduced_dtype(pred.scalar_type()));
  at::Tensor out = kBackward ? at::empty({n, pred.size(1)}, pred.options())
                             : (reduced_forward ? at::Tensor() : terms ? at::empty({n, 4}, pred.options()) : at::empty({n}, pred.options()));
  at::Tensor partial = reduced_forward ? at::empty({blocks}, acc_options) : at::Tensor();
  LossPtrs<acc_t, scalar_t> p;
  p.p = pred.const_data_ptr<scalar_t>();
  p.t = target.const_data_ptr<scalar_t>();
  p.w = (weight.has_value() && weight->defined()) ? weight->const_data_ptr<acc_t>() : nullptr;
  p.up = (kBackward && (reduction == 0 || terms)) ? upstream.const_data_ptr<scalar_t>() : nullptr;
  p.up_scalar = (kBackward && reduction != 0 && !terms) ? upstream.const_data_ptr<acc_t>() : nullptr;
  p.up_scale = static_cast<acc_t>(reduction == 2 ? 1.0 / mean_count(n) : 1.0);  // formed in double
  p.out = reduced_forward ? nullptr : out.mutable_data_ptr<scalar_t>();
  p.partial = reduced_forward ? partial.mutable_data_ptr<acc_t>() : nullptr;
  p.cache = cache.defined() ? cache.mutable_data_ptr<acc_t>() : nullptr;
  p.n = n;
  const box::Params<acc_t> prm{static_cast<int>(kind), static_cast<int>(fmt), static_cast<acc_t>(eps), static_cast<acc_t>(power),
                               static_cast<acc_t>(gamma), static_cast<int>(convention)};
  if (n > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    if (terms) {
      loss_kernel<kBackward, false, 4, true><<<blocks, kThreads, 0, stream>>>(p, prm);
    } else if (pred.size(1) == 6) {
      loss_kernel<kBackward, false, 6, false><<<blocks, kThreads, 0, stream>>>(p, prm);
    } else if (!box::loss_is_generic(static_cast<int>(convention), static_cast<int>(kind))) {
      loss_kernel<kBackward, false, 4, false><<<blocks, kThreads, 0, stream>>>(p, prm);
    } else {
      loss_kernel<kBackward, true, 4, false><<<blocks, kThreads, 0, stream>>>(p, prm);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!reduced_forward) return out;
  if (n == 0) partial.zero_();
  at::Tensor total = at::sum(partial);
  return reduction == 2 ? total.div_(mean_count(n)) : total;
}

std::tuple<at::Tensor, at::Tensor> loss_forward_cuda(const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                                                     int64_t kind, int64_t fmt, int64_t convention, double eps, double power, double gamma,
                                                     int64_t reduction, bool with_grad) {
  const c10::cuda::CUDAGuard guard(pred.device());
  check_args(pred, target, weight, kind, fmt, convention, reduction);
  TORCH_CHECK(!(reduction == kTermsCode && with_grad), "fastloss: the per-term output stores no gradient (the backward recomputes it)");
  const auto acc_options = pred.options().dtype(reduced_dtype(pred.scalar_type()));
  at::Tensor cache = at::empty(with_grad ? std::vector<int64_t>{pred.size(0), pred.size(1)} : std::vector<int64_t>{0}, acc_options);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "box_iou_loss_forward_cuda", [&] {
    out = launch<false, scalar_t>(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, at::Tensor(), with_grad ? cache : at::Tensor());
  });
  return {out, cache};
}

at::Tensor loss_backward_cuda(const at::Tensor& grad, const at::Tensor& pred, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
                              int64_t kind, int64_t fmt, int64_t convention, double eps, double power, double gamma, int64_t reduction) {
  const c10::cuda::CUDAGuard guard(pred.device());
  check_args(pred, target, weight, kind, fmt, convention, reduction);
  TORCH_CHECK(grad.device() == pred.device() && grad.is_contiguous(), "fastloss: upstream gradient must be contiguous on pred's device");
  TORCH_CHECK(reduction == 0 || reduction == kTermsCode
                  ? (grad.numel() == pred.size(0) * (reduction == kTermsCode ? 4 : 1) && grad.scalar_type() == pred.scalar_type())
                  : (grad.numel() == 1 && grad.scalar_type() == reduced_dtype(pred.scalar_type())),
              "fastloss: upstream gradient: one value per box (reduction none; 4 per box for the terms) or a scalar in the reduced dtype");
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pred.scalar_type(), "box_iou_loss_backward_cuda", [&] {
    out = launch<true, scalar_t>(pred, target, weight, kind, fmt, convention, eps, power, gamma, reduction, grad, at::Tensor());
  });
  return out;
}


// ======================================================================================
// Pairwise / aligned matrices and the fused max
// ======================================================================================

struct MatrixShape {
  int64_t B, N, M;
  int kind, fmt, conv;
};

void check_matrix(const at::Tensor& b1, const at::Tensor& b2, int64_t kind, int64_t fmt, int64_t convention, bool aligned) {
  TORCH_CHECK(b1.is_floating_point() && b1.is_contiguous() && b1.dim() == 3 && b1.size(2) == 4,
              "fastloss: `boxes1` must be a contiguous floating (B, N, 4) tensor");
  TORCH_CHECK(b2.is_contiguous() && b2.dim() == 3 && b2.size(2) == 4 && b2.size(0) == b1.size(0) && b2.scalar_type() == b1.scalar_type() &&
                  b2.device() == b1.device(),
              "fastloss: `boxes2` must be a contiguous (B, M, 4) tensor of boxes1's dtype and device");
  TORCH_CHECK(!aligned || b2.size(1) == b1.size(1), "fastloss: aligned boxes need N == M");
  TORCH_CHECK(kind >= 0 && kind <= box::kMCIoU && fmt >= 0 && fmt <= 2, "fastloss: box kind / fmt code out of range");
  TORCH_CHECK(convention >= box::kConvFastloss && convention <= box::kConvTorchvision, "fastloss: box convention code out of range");
}

template <bool kGeneric, typename acc_t, typename scalar_t>
__global__ void __launch_bounds__(kThreads) matrix_kernel(const scalar_t* b1, const scalar_t* b2, scalar_t* out, MatrixShape s, bool aligned,
                                                          acc_t eps) {
  const int64_t total = aligned ? s.B * s.N : s.B * s.N * s.M;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    int64_t r1, r2;
    if (aligned) {
      r1 = r2 = i;
    } else {
      const int64_t bn = i / s.M, m = i - bn * s.M;
      r1 = bn;
      r2 = (bn / s.N) * s.M + m;
    }
    acc_t x[4], y[4];
    load_box(b1, r1, x);
    load_box(b2, r2, y);
    out[i] = static_cast<scalar_t>(box::metric_value<kGeneric>(x, y, s.kind, s.fmt, s.conv, eps));
  }
}

// aligned backward: both gradients per pair
template <bool kGeneric, typename acc_t, typename scalar_t>
__global__ void __launch_bounds__(kThreads) aligned_backward_kernel(const scalar_t* grad, const scalar_t* b1, const scalar_t* b2, scalar_t* g1,
                                                                    scalar_t* g2, MatrixShape s, acc_t eps) {
  const int64_t total = s.B * s.N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    acc_t x[4], y[4];
    load_box(b1, i, x);
    load_box(b2, i, y);
    const acc_t up = static_cast<acc_t>(grad[i]);
    acc_t dx[4], dy[4];
    box::pair_metric_impl<true, kGeneric>(x, y, s.kind, s.fmt, s.conv, eps, dx, dy);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      g1[i * 4 + k] = static_cast<scalar_t>(dx[k] * up);
      g2[i * 4 + k] = static_cast<scalar_t>(dy[k] * up);
    }
  }
}

// pass 1: one block per row (b, n) of boxes1; threads stride over m; fixed-order block sums
template <bool kGeneric, typename acc_t, typename scalar_t>
__global__ void __launch_bounds__(kThreads) rows_backward_kernel(const scalar_t* grad, const scalar_t* b1, const scalar_t* b2, scalar_t* g1,
                                                                 MatrixShape s, acc_t eps) {
  for (int64_t r = blockIdx.x; r < s.B * s.N; r += gridDim.x) {
    const int64_t bb = r / s.N;
    acc_t x[4];
    load_box(b1, r, x);
    acc_t acc[4] = {0, 0, 0, 0};
    for (int64_t m = threadIdx.x; m < s.M; m += kThreads) {
      acc_t y[4];
      load_box(b2, bb * s.M + m, y);
      const acc_t up = static_cast<acc_t>(grad[r * s.M + m]);
      acc_t dx[4], dy[4];
      box::pair_metric_impl<true, kGeneric>(x, y, s.kind, s.fmt, s.conv, eps, dx, dy);
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[k] += dx[k] * up;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const acc_t tot = block_sum<kThreads>(acc[k]);
      if (threadIdx.x == 0) g1[r * 4 + k] = static_cast<scalar_t>(tot);
    }
  }
}

// pass 2: one thread per box (b, m) of boxes2, looping over n in order
template <bool kGeneric, typename acc_t, typename scalar_t>
__global__ void __launch_bounds__(kThreads) cols_backward_kernel(const scalar_t* grad, const scalar_t* b1, const scalar_t* b2, scalar_t* g2,
                                                                 MatrixShape s, acc_t eps) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; c < s.B * s.M; c += stride) {
    const int64_t bb = c / s.M, m = c - bb * s.M;
    acc_t y[4];
    load_box(b2, c, y);
    acc_t acc[4] = {0, 0, 0, 0};
    for (int64_t n = 0; n < s.N; ++n) {
      acc_t x[4];
      load_box(b1, bb * s.N + n, x);
      const acc_t up = static_cast<acc_t>(grad[(bb * s.N + n) * s.M + m]);
      acc_t dx[4], dy[4];
      box::pair_metric_impl<true, kGeneric>(x, y, s.kind, s.fmt, s.conv, eps, dx, dy);
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[k] += dy[k] * up;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) g2[c * 4 + k] = static_cast<scalar_t>(acc[k]);
  }
}

// fused max: one thread per result, looping over the reduced set in order (first max wins, NaN wins)
template <bool kGeneric, typename acc_t, typename scalar_t>
__global__ void __launch_bounds__(kThreads) max_kernel(const scalar_t* b1, const scalar_t* b2, scalar_t* vals, int64_t* idx, MatrixShape s,
                                                       bool over_m, acc_t eps) {
  const int64_t R = over_m ? s.N : s.M, L = over_m ? s.M : s.N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; c < s.B * R; c += stride) {
    const int64_t bb = c / R;
    acc_t own[4];
    load_box(over_m ? b1 : b2, c, own);
    const scalar_t* other = over_m ? b2 : b1;
    acc_t best = -INFINITY;
    int64_t best_i = 0;
    for (int64_t l = 0; l < L; ++l) {
      acc_t y[4];
      load_box(other, bb * L + l, y);
      const acc_t v = over_m ? box::metric_value<kGeneric>(own, y, s.kind, s.fmt, s.conv, eps) : box::metric_value<kGeneric>(y, own, s.kind, s.fmt, s.conv, eps);
      if (v != v) {
        best = v;
        best_i = l;
        break;
      }
      if (v > best) {
        best = v;
        best_i = l;
      }
    }
    vals[c] = static_cast<scalar_t>(best);
    idx[c] = best_i;
  }
}

int64_t grid_for(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>(65535 * 8, (n + kThreads - 1) / kThreads)); }

at::Tensor matrix_forward_cuda(const at::Tensor& b1, const at::Tensor& b2, int64_t kind, int64_t fmt, int64_t convention, double eps, bool aligned) {
  const c10::cuda::CUDAGuard guard(b1.device());
  check_matrix(b1, b2, kind, fmt, convention, aligned);
  const MatrixShape s{b1.size(0), b1.size(1), b2.size(1), static_cast<int>(kind), static_cast<int>(fmt), static_cast<int>(convention)};
  at::Tensor out = aligned ? at::empty({s.B, s.N}, b1.options()) : at::empty({s.B, s.N, s.M}, b1.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kernel = s.conv == box::kConvFastloss ? matrix_kernel<false, acc_t, scalar_t> : matrix_kernel<true, acc_t, scalar_t>;
    kernel<<<grid_for(out.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s, aligned, static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> matrix_backward_cuda(const at::Tensor& grad, const at::Tensor& b1, const at::Tensor& b2, int64_t kind, int64_t fmt,
                                                        int64_t convention, double eps, bool aligned) {
  const c10::cuda::CUDAGuard guard(b1.device());
  check_matrix(b1, b2, kind, fmt, convention, aligned);
  const MatrixShape s{b1.size(0), b1.size(1), b2.size(1), static_cast<int>(kind), static_cast<int>(fmt), static_cast<int>(convention)};
  TORCH_CHECK(grad.is_contiguous() && grad.scalar_type() == b1.scalar_type() && grad.device() == b1.device() &&
                  grad.numel() == (aligned ? s.B * s.N : s.B * s.N * s.M),
              "fastloss: upstream gradient of box_iou must be contiguous and match the output");
  at::Tensor g1 = at::empty({s.B, s.N, 4}, b1.options());
  at::Tensor g2 = at::empty({s.B, s.M, 4}, b1.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* p1 = b1.const_data_ptr<scalar_t>();
    const scalar_t* p2 = b2.const_data_ptr<scalar_t>();
    scalar_t* o1 = g1.mutable_data_ptr<scalar_t>();
    scalar_t* o2 = g2.mutable_data_ptr<scalar_t>();
    const acc_t e = static_cast<acc_t>(eps);
    if (aligned) {
      if (s.B * s.N > 0) {
        auto kernel = s.conv == box::kConvFastloss ? aligned_backward_kernel<false, acc_t, scalar_t> : aligned_backward_kernel<true, acc_t, scalar_t>;
        kernel<<<grid_for(s.B * s.N), kThreads, 0, stream>>>(gp, p1, p2, o1, o2, s, e);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      return;
    }
    if (s.B * s.N > 0) {
      auto kernel = s.conv == box::kConvFastloss ? rows_backward_kernel<false, acc_t, scalar_t> : rows_backward_kernel<true, acc_t, scalar_t>;
      kernel<<<std::min<int64_t>(s.B * s.N, 65535 * 16), kThreads, 0, stream>>>(gp, p1, p2, o1, s, e);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (s.B * s.M > 0) {
      auto kernel = s.conv == box::kConvFastloss ? cols_backward_kernel<false, acc_t, scalar_t> : cols_backward_kernel<true, acc_t, scalar_t>;
      kernel<<<grid_for(s.B * s.M), kThreads, 0, stream>>>(gp, p1, p2, o2, s, e);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {g1, g2};
}

std::tuple<at::Tensor, at::Tensor> max_cuda(const at::Tensor& b1, const at::Tensor& b2, int64_t kind, int64_t fmt, int64_t convention, double eps,
                                            int64_t dim_code) {
  const c10::cuda::CUDAGuard guard(b1.device());
  check_matrix(b1, b2, kind, fmt, convention, false);
  TORCH_CHECK(dim_code == 0 || dim_code == 1, "fastloss: box_iou_max dim code must be 0 or 1");
  const MatrixShape s{b1.size(0), b1.size(1), b2.size(1), static_cast<int>(kind), static_cast<int>(fmt), static_cast<int>(convention)};
  const bool over_m = dim_code == 1;
  const int64_t R = over_m ? s.N : s.M;
  at::Tensor vals = at::empty({s.B, R}, b1.options());
  at::Tensor idx = at::empty({s.B, R}, b1.options().dtype(at::kLong));
  if (vals.numel() == 0) return {vals, idx};
  TORCH_CHECK((over_m ? s.M : s.N) > 0, "fastloss: box_iou_max over an empty set of boxes");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "box_iou_max_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kernel = s.conv == box::kConvFastloss ? max_kernel<false, acc_t, scalar_t> : max_kernel<true, acc_t, scalar_t>;
    kernel<<<grid_for(vals.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), vals.mutable_data_ptr<scalar_t>(), idx.mutable_data_ptr<int64_t>(), s, over_m,
        static_cast<acc_t>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {vals, idx};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("box_iou_loss_forward_native", &loss_forward_cuda);
  m.impl("box_iou_loss_backward_native", &loss_backward_cuda);
  m.impl("box_iou_native", &matrix_forward_cuda);
  m.impl("box_iou_backward_native", &matrix_backward_cuda);
  m.impl("box_iou_max_native", &max_cuda);
}

}  // namespace fastloss
