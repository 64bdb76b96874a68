// The pointwise engine, C++ CPU kernels (ATen Vectorized lanes, at::parallel_for, fixed
// deterministic reduction blocks: csrc/include/fastloss/cpu_loop.h).  The losses' math is
// csrc/kernels/pointwise.h (shared with the CUDA kernels); the calling convention is in
// csrc/fastloss.cpp.
//
// On the CPU these losses are compute-bound (exp / log1p / divisions: ~3 ns per element and
// pass with AVX2, against ~0.3 ns to move its bytes), so fastloss/_backend.py asks the
// forward for dL/dx at the same time (with_grad) and the backward only scales it.  Class
// labels (validated by the op before any backend runs) are compared with the column index in
// registers: an out-of-range label matches no class.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include "fastloss/cpu_loop.h"
#include "fastloss/op_checks.h"
#include "kernels/pointwise.h"

namespace fastloss {
namespace {

using cpu::Vec;

// n <= V values of an operand with `layout` for the chunk at (row, col, flat index j); 1 when absent.
template <typename acc_t>
inline Vec<acc_t> operand(const acc_t* ptr, Layout layout, int64_t row, int64_t col, int64_t j, int64_t n) {
  switch (layout) {
    case Layout::Elem: return cpu::load<acc_t>(ptr + j, n);
    case Layout::Row: return Vec<acc_t>(ptr[row]);
    case Layout::Col: return cpu::load<acc_t>(ptr + col, n);
    default: return Vec<acc_t>(acc_t(1));
  }
}

// forward (kBackward = false): per-element loss into `out` or its sum, and dL/dx * weight
// into `cache` if defined; backward (kBackward = true): dL/dx * weight * upstream into `out`.
template <typename F, typename scalar_t, bool kBackward>
double pointwise_cpu(const PointwiseArgs& a, const at::Tensor& upstream, at::Tensor& out, at::Tensor& cache) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x_ptr = a.input.const_data_ptr<scalar_t>();
  const bool labels = a.labels;
  const scalar_t* t_ptr = labels ? nullptr : a.target.const_data_ptr<scalar_t>();
  const int64_t* lab_ptr = labels ? a.target.const_data_ptr<int64_t>() : nullptr;
  const acc_t* tv_ptr = a.target_value.defined() ? a.target_value.const_data_ptr<acc_t>() : nullptr;
  const acc_t* w_ptr = a.weight.defined() ? a.weight.const_data_ptr<acc_t>() : nullptr;
  const acc_t* aux_ptr = a.aux.defined() ? a.aux.const_data_ptr<acc_t>() : nullptr;
  const bool store = kBackward || a.reduction == Reduction::None;
  scalar_t* o_ptr = store ? out.mutable_data_ptr<scalar_t>() : nullptr;
  acc_t* c_ptr = cache.defined() ? cache.mutable_data_ptr<acc_t>() : nullptr;
  const bool per_elem_upstream = kBackward && a.reduction == Reduction::None;
  const scalar_t* g_ptr = per_elem_upstream ? upstream.const_data_ptr<scalar_t>() : nullptr;
  acc_t g_scale = acc_t(1);
  if (kBackward && !per_elem_upstream) {
    g_scale = upstream.item<acc_t>();  // a CPU scalar: no device sync
    if (a.reduction == Reduction::Mean) g_scale = static_cast<acc_t>(static_cast<double>(g_scale) / mean_count(a.numel));
  }
  const pointwise::Params<acc_t> prm = params_as<acc_t>(a);
  const bool row_data = labels || a.weight_layout == Layout::Row || a.weight_layout == Layout::Col || a.aux_layout == Layout::Row ||
                        a.aux_layout == Layout::Col;
  const int64_t row_len = row_data ? a.C : a.numel;

  return cpu::for_each_chunk<acc_t>(a.numel, row_len, [&](int64_t row, int64_t col, int64_t j, int64_t n) {
    const Vec<acc_t> x = cpu::load<acc_t>(x_ptr + j, n);
    Vec<acc_t> t;
    if (labels) {
      // one-hot target built in registers: 1 (or the row's target_value) where the lane's
      // class equals the row's label
      const auto hit = Vec<acc_t>::arange(static_cast<acc_t>(col), 1) == Vec<acc_t>(static_cast<acc_t>(lab_ptr[row]));
      // a select, not a product: the row's value (NaN included) reaches its label's class only
      t = Vec<acc_t>::blendv(Vec<acc_t>(acc_t(0)), tv_ptr != nullptr ? Vec<acc_t>(tv_ptr[row]) : Vec<acc_t>(acc_t(1)), hit);
    } else {
      t = cpu::load<acc_t>(t_ptr + j, n);
    }
    const Vec<acc_t> aux = operand(aux_ptr, a.aux_layout, row, col, j, n);
    Vec<acc_t> loss, grad;
    F::eval(x, t, aux, prm, loss, grad);
    const Vec<acc_t> w = operand(w_ptr, a.weight_layout, row, col, j, n);
    if constexpr (kBackward) {
      const Vec<acc_t> up = per_elem_upstream ? cpu::load<acc_t>(g_ptr + j, n) : Vec<acc_t>(g_scale);
      cpu::store<acc_t>(o_ptr + j, grad * w * up, n);
      return Vec<acc_t>(acc_t(0));
    } else {
      if (c_ptr != nullptr) cpu::store<acc_t>(c_ptr + j, grad * w, n);
      loss = loss * w;
      if (store) {
        cpu::store<acc_t>(o_ptr + j, loss, n);
        return Vec<acc_t>(acc_t(0));
      }
      return Vec<acc_t>::set(Vec<acc_t>(acc_t(0)), loss, n);  // zero the lanes past n
    }
  });
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& target_value,
                                               const c10::optional<at::Tensor>& weight, int64_t weight_layout,
                                               const c10::optional<at::Tensor>& aux, int64_t aux_layout, int64_t loss,
                                               c10::ArrayRef<double> params, int64_t reduction, bool with_grad) {
  const PointwiseArgs a = make_pointwise_args(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction);
  const auto acc_options = input.options().dtype(reduced_dtype(input.scalar_type()));
  at::Tensor out = a.reduction == Reduction::None ? cpu::empty_output(input.sizes(), input.options()) : at::Tensor();
  at::Tensor cache = with_grad ? cpu::empty_output(input.sizes(), acc_options) : at::Tensor();
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pointwise_forward_cpu", [&] {
    pointwise::dispatch_loss(a.loss, [&](auto functor) {
      total = pointwise_cpu<decltype(functor), scalar_t, false>(a, at::Tensor(), out, cache);
    });
  });
  if (!with_grad) cache = at::empty({0}, acc_options);
  if (a.reduction == Reduction::None) return {out, cache};
  if (a.reduction == Reduction::Mean) total /= mean_count(a.numel);
  return {at::scalar_tensor(total, acc_options), cache};
}

at::Tensor backward_cpu(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& target_value,
                        const c10::optional<at::Tensor>& weight, int64_t weight_layout, const c10::optional<at::Tensor>& aux, int64_t aux_layout,
                        int64_t loss, c10::ArrayRef<double> params, int64_t reduction) {
  const PointwiseArgs a = make_pointwise_args(input, target, target_value, weight, weight_layout, aux, aux_layout, loss, params, reduction);
  check_upstream(grad, a);
  at::Tensor out = cpu::empty_output(input.sizes(), input.options()), no_cache;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pointwise_backward_cpu", [&] {
    pointwise::dispatch_loss(a.loss, [&](auto functor) { pointwise_cpu<decltype(functor), scalar_t, true>(a, grad, out, no_cache); });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("pointwise_forward_native", &forward_cpu);
  m.impl("pointwise_backward_native", &backward_cpu);
}

}  // namespace fastloss
