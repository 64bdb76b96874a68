// The float launchers of the Dice CUDA kernels (dice_kernels.cuh; one dtype per file, built in parallel).
#include "dice_kernels.cuh"

namespace fastloss {
namespace dice_cuda {
FL_DICE_CUDA_INSTANTIATE(, float)
}  // namespace dice_cuda
}  // namespace fastloss
