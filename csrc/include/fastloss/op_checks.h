// Host-only: argument checks and the prepared argument bundle of the compiled ops.
// The Python layer (fastloss/ops/) validates user input with friendly errors and hands the
// compiled ops canonical tensors; these checks guard the kernels' memory accesses.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include "fastloss/common.h"
#include "kernels/pointwise.h"

namespace fastloss {

// Where a per-element operand (weight, aux) comes from: absent, one value per element, per
// row (the leading dims: mmdetection's per-anchor weight) or per column (the last dim: torch's
// pos_weight, per-class weights).  Codes shared with fastloss/ops/pointwise.py.
enum class Layout : int64_t { None = 0, Elem = 1, Row = 2, Col = 3 };

// dtype of a reduced (scalar) result: fp32 for fp32/fp16/bf16 input, fp64 for fp64.
inline at::ScalarType reduced_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The pointwise engine's arguments (calling convention: csrc/fastloss.cpp).
struct PointwiseArgs {
  at::Tensor input, target, target_value, weight, aux;
  bool labels = false;  // target holds int64 class labels, one per row of C inputs
  Layout weight_layout = Layout::None, aux_layout = Layout::None;
  int64_t numel = 0, C = 1, rows = 0;
  int64_t loss = 0;
  double params[pointwise::kNumParams] = {};
  Reduction reduction = Reduction::Mean;
};

inline void check_operand(const char* name, const at::Tensor& t, int64_t layout, const PointwiseArgs& a) {
  TORCH_CHECK(t.device() == a.input.device() && t.is_contiguous() && t.scalar_type() == reduced_dtype(a.input.scalar_type()), "fastloss: `",
              name, "` must be contiguous, on input's device, in fp32 (fp64 for fp64 input)");
  const int64_t expected = layout == 1 ? a.numel : (layout == 2 ? a.rows : a.C);
  TORCH_CHECK(layout >= 1 && layout <= 3 && t.numel() == expected, "fastloss: `", name, "` does not match its layout code ", layout);
}

inline PointwiseArgs make_pointwise_args(const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& target_value,
                                         const c10::optional<at::Tensor>& weight, int64_t weight_layout, const c10::optional<at::Tensor>& aux,
                                         int64_t aux_layout, int64_t loss, c10::ArrayRef<double> params, int64_t reduction) {
  PointwiseArgs a;
  TORCH_CHECK(input.is_floating_point() && input.is_contiguous(), "fastloss: `input` must be a contiguous floating tensor");
  TORCH_CHECK(target.device() == input.device() && target.is_contiguous(), "fastloss: `target` must be contiguous on input's device");
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "fastloss: reduction code must be 0 (none), 1 (sum) or 2 (mean)");
  TORCH_CHECK(loss >= 0 && loss < pointwise::kNumLosses, "fastloss: unknown pointwise loss code ", loss);
  TORCH_CHECK(static_cast<int64_t>(params.size()) <= pointwise::kNumParams, "fastloss: at most ", pointwise::kNumParams, " loss parameters");
  a.input = input;
  a.target = target;
  a.numel = input.numel();
  a.C = input.dim() == 0 ? 1 : input.size(-1);
  a.rows = 1;  // product of the leading sizes (also when C == 0)
  for (int64_t d = 0; d + 1 < input.dim(); ++d) a.rows *= input.size(d);
  a.loss = loss;
  for (size_t i = 0; i < params.size(); ++i) a.params[i] = params[i];
  a.reduction = static_cast<Reduction>(reduction);
  if (target.scalar_type() == at::kLong) {
    a.labels = true;
    TORCH_CHECK(target.numel() == a.rows, "fastloss: label `target` must hold one label per row of `input`");
    if (target_value.has_value() && target_value->defined()) {
      check_operand("target_value", *target_value, 2, a);
      a.target_value = *target_value;
    }
  } else {
    TORCH_CHECK(target.scalar_type() == input.scalar_type() && target.numel() == a.numel,
                "fastloss: float `target` must match `input` in dtype and size");
    TORCH_CHECK(!(target_value.has_value() && target_value->defined()), "fastloss: `target_value` goes with class labels only");
  }
  if (weight.has_value() && weight->defined()) {
    check_operand("weight", *weight, weight_layout, a);
    a.weight = *weight;
    a.weight_layout = static_cast<Layout>(weight_layout);
  }
  if (aux.has_value() && aux->defined()) {
    check_operand("aux", *aux, aux_layout, a);
    a.aux = *aux;
    a.aux_layout = static_cast<Layout>(aux_layout);
  }
  return a;
}

template <typename S>
inline pointwise::Params<S> params_as(const PointwiseArgs& a) {
  pointwise::Params<S> p;
  for (int i = 0; i < pointwise::kNumParams; ++i) p.p[i] = static_cast<S>(a.params[i]);  // formed in double on the host
  return p;
}

// Upstream gradient: same size as input in input's dtype for reduction "none", else a scalar
// in the reduced dtype.
inline void check_upstream(const at::Tensor& grad, const PointwiseArgs& a) {
  TORCH_CHECK(grad.device() == a.input.device() && grad.is_contiguous(), "fastloss: upstream gradient must be contiguous on input's device");
  if (a.reduction == Reduction::None) {
    TORCH_CHECK(grad.numel() == a.numel && grad.scalar_type() == a.input.scalar_type(), "fastloss: upstream gradient must match input");
  } else {
    TORCH_CHECK(grad.numel() == 1 && grad.scalar_type() == reduced_dtype(a.input.scalar_type()),
                "fastloss: upstream gradient of a reduced loss must be a scalar in the reduced dtype");
  }
}

}  // namespace fastloss
