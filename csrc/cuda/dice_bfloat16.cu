// The at::BFloat16 launchers of the Dice CUDA kernels (dice_kernels.cuh; one dtype per file, built in parallel).
#include "dice_kernels.cuh"

namespace fastloss {
namespace dice_cuda {
FL_DICE_CUDA_INSTANTIATE(, at::BFloat16)
}  // namespace dice_cuda
}  // namespace fastloss
