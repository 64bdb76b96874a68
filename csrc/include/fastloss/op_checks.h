// Host-only: argument checks and the prepared argument bundle of the compiled ops.
// The Python layer (fastloss/ops/) validates user input with friendly errors and hands the
// compiled ops canonical tensors; these checks guard the kernels' memory accesses.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "fastloss/common.h"

namespace fastloss {

enum class WeightMode { None, Elem, Row };

// dtype of a reduced (scalar) result: fp32 for fp32/fp16/bf16 input, fp64 for fp64.
inline at::ScalarType reduced_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

struct FocalArgs {
  at::Tensor input, target, weight;
  bool labels = false;   // target holds int64 class labels, one per row of C logits
  WeightMode weight_mode = WeightMode::None;
  int64_t numel = 0, C = 1, rows = 0;
  double alpha = 0, gamma = 0;
  Reduction reduction = Reduction::Mean;
};

inline FocalArgs make_focal_args(const at::Tensor& input, const at::Tensor& target, const c10::optional<at::Tensor>& weight, double alpha,
                                 double gamma, int64_t reduction) {
  FocalArgs a;
  TORCH_CHECK(input.is_floating_point() && input.is_contiguous(), "fastloss: `input` must be a contiguous floating tensor");
  TORCH_CHECK(target.device() == input.device() && target.is_contiguous(), "fastloss: `target` must be contiguous on input's device");
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "fastloss: reduction code must be 0 (none), 1 (sum) or 2 (mean)");
  TORCH_CHECK(gamma >= 0, "fastloss: gamma must be >= 0");
  a.input = input;
  a.target = target;
  a.numel = input.numel();
  a.C = input.dim() == 0 ? 1 : input.size(-1);
  a.rows = 1;  // product of the leading sizes (also when C == 0)
  for (int64_t d = 0; d + 1 < input.dim(); ++d) a.rows *= input.size(d);
  a.alpha = alpha;
  a.gamma = gamma;
  a.reduction = static_cast<Reduction>(reduction);
  if (target.scalar_type() == at::kLong) {
    a.labels = true;
    TORCH_CHECK(target.numel() == a.rows, "fastloss: label `target` must hold one label per row of `input`");
  } else {
    TORCH_CHECK(target.scalar_type() == input.scalar_type() && target.numel() == a.numel,
                "fastloss: float `target` must match `input` in dtype and size");
  }
  if (weight.has_value() && weight->defined()) {
    const at::Tensor& w = *weight;
    TORCH_CHECK(w.device() == input.device() && w.is_contiguous() && w.scalar_type() == reduced_dtype(input.scalar_type()),
                "fastloss: `weight` must be contiguous, on input's device, in fp32 (fp64 for fp64 input)");
    if (w.numel() == a.numel) {
      a.weight_mode = WeightMode::Elem;
    } else {
      TORCH_CHECK(w.numel() == a.rows, "fastloss: `weight` must have one value per element or per row");
      a.weight_mode = WeightMode::Row;
    }
    a.weight = w;
  }
  return a;
}

// Upstream gradient: same size as input in input's dtype for reduction "none", else a scalar
// in the reduced dtype.
inline void check_upstream(const at::Tensor& grad, const FocalArgs& a) {
  TORCH_CHECK(grad.device() == a.input.device() && grad.is_contiguous(), "fastloss: upstream gradient must be contiguous on input's device");
  if (a.reduction == Reduction::None) {
    TORCH_CHECK(grad.numel() == a.numel && grad.scalar_type() == a.input.scalar_type(), "fastloss: upstream gradient must match input");
  } else {
    TORCH_CHECK(grad.numel() == 1 && grad.scalar_type() == reduced_dtype(a.input.scalar_type()),
                "fastloss: upstream gradient of a reduced loss must be a scalar in the reduced dtype");
  }
}

}  // namespace fastloss
