// Dice / Tversky / Jaccard (+ fused cross entropy), CUDA kernels: the two passes of
// csrc/kernels/dice.h over (N, C, S) logits read in place (channel-first; consecutive threads
// read consecutive pixels of one class: coalesced).
//   pass 1: grid (spatial blocks, N); each thread owns kPPT pixels of the block; an online
//           softmax pass gives max / sum per pixel, then per class the thread's I, P', G' are
//           reduced over the block (warp shuffles + shared memory, fixed order) into
//           partial[n, blk, c, :]; one at::sum over the block axis finishes: deterministic,
//           no float atomics.
//   pass 2: the same tiling; dL/dlogits through the softmax/sigmoid Jacobian, recomputing
//           the softmax (the repeated reads of a block's logits hit L2).
// Out-of-range labels are not checked on the GPU (that would need a host sync): they match
// no class (the pixel counts in P' only; CE term 0).
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "dice_kernels.cuh"

namespace fastloss {
namespace dice_cuda {

FL_DICE_CUDA_INSTANTIATE(, double)

namespace {

std::tuple<at::Tensor, at::Tensor> sums_cuda_op(const at::Tensor& input, const at::Tensor& target, int64_t activation, bool squared,
                                                bool soft, c10::optional<int64_t> ignore_index, bool with_ce) {
  const c10::cuda::CUDAGuard guard(input.device());
  const dice::Args a = dice::make_args(input, target, activation, squared, soft, ignore_index);
  TORCH_CHECK(a.N <= 65535, "fastloss dice (CUDA): batch size N must be <= 65535");
  const auto acc_opt = input.options().dtype(input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  if (a.N * a.C * a.S == 0) {
    return {at::zeros({a.N, a.C, 3}, acc_opt), with_ce ? at::zeros({a.N, 2}, acc_opt) : at::empty({0}, acc_opt)};
  }
  const DiceDims d = make_dims(a);
  at::Tensor part = at::empty({a.N, d.nblk, a.C, 3}, acc_opt);
  at::Tensor cepart = at::empty({with_ce ? a.N : 1, with_ce ? d.nblk : 1, 2}, acc_opt);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dice_sums_cuda",
                                  [&] { launch_sums<scalar_t>(a, d, with_ce, part, cepart, stream); });
  at::Tensor sums = at::sum(part, {1});
  at::Tensor ce = with_ce ? at::sum(cepart, {1}) : at::empty({0}, acc_opt);
  return {sums, ce};
}

at::Tensor grad_cuda_op(const at::Tensor& grad_sums, const at::Tensor& grad_ce, const at::Tensor& input, const at::Tensor& target,
                        int64_t activation, bool squared, bool soft, c10::optional<int64_t> ignore_index) {
  const c10::cuda::CUDAGuard guard(input.device());
  const dice::Args a = dice::make_args(input, target, activation, squared, soft, ignore_index);
  TORCH_CHECK(a.N <= 65535, "fastloss dice (CUDA): batch size N must be <= 65535");
  const auto acc_t_type = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(grad_sums.device() == input.device() && grad_sums.scalar_type() == acc_t_type && grad_sums.is_contiguous() &&
                  grad_sums.numel() == a.N * a.C * 3,
              "fastloss dice: grad_sums must be a contiguous (N, C, 3) tensor in the accumulation dtype");
  const bool with_ce = grad_ce.numel() > 0;
  TORCH_CHECK(!with_ce || (grad_ce.device() == input.device() && grad_ce.scalar_type() == acc_t_type && grad_ce.is_contiguous() &&
                           grad_ce.numel() == a.N * 2),
              "fastloss dice: grad_ce must be empty or a contiguous (N, 2) tensor in the accumulation dtype");
  at::Tensor out = at::empty_like(input);
  if (out.numel() == 0) return out;
  const DiceDims d = make_dims(a);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "dice_grad_cuda",
                                  [&] { launch_grad<scalar_t>(a, d, grad_sums, grad_ce, with_ce, out, stream); });
  return out;
}

}  // namespace
}  // namespace dice_cuda

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("dice_sums_native", &dice_cuda::sums_cuda_op);
  m.impl("dice_grad_native", &dice_cuda::grad_cuda_op);
}

}  // namespace fastloss
