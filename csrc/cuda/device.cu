// Whether fastloss's CUDA kernels have code for the current device: machine code (SASS) for its
// architecture or PTX the driver compiles for it (setup.py's TORCH_CUDA_ARCH_LIST).  A GPU older
// than the oldest built architecture (a T4 or a V100 under the default list) has neither: every
// launch would fail with "no kernel image is available", so fastloss/_backend.py leaves the cuda
// backend out for such a device (the Triton kernels or the reference run instead).
// The caller (fastloss/_extension.py) has torch initialise CUDA and select the device first:
// this switches no device and creates no context of its own.
#include <cuda_runtime.h>

#include <string>

namespace fastloss {
namespace {
__global__ void probe_kernel() {}  // built for the same architectures as every other kernel
}  // namespace

// 1: code for the current device; 0: none (the build's architectures do not cover it);
// -1: the question failed for another reason, given in `error` (the kernels' own launches
// would then report that error: it is not the build's to answer).
int cuda_kernel_code_status(std::string& error) {
  cudaFuncAttributes attr;
  const cudaError_t e = cudaFuncGetAttributes(&attr, probe_kernel);
  if (e == cudaSuccess) return 1;
  cudaGetLastError();  // this call's own error, cleared so torch's next check does not see it
  switch (e) {
    case cudaErrorInvalidDeviceFunction:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorInvalidPtx:
    case cudaErrorJitCompilerNotFound:
      return 0;
    default:
      error = cudaGetErrorString(e);
      return -1;
  }
}
}  // namespace fastloss
