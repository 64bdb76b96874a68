// Whether fastloss's CUDA kernels can run on a device: the build holds machine code (SASS) for
// its architecture or PTX the driver can compile for it (setup.py's TORCH_CUDA_ARCH_LIST).  A GPU
// older than the oldest built architecture (a T4 or a V100 under the default list) has neither:
// every launch would fail with "no kernel image is available", so fastloss/_backend.py leaves
// the cuda backend out for such a device (the Triton kernels or the reference run instead).
// Plain CUDA runtime, no torch headers: asked once per device (fastloss/_extension.py caches it).
#include <cuda_runtime.h>

namespace fastloss {
namespace {
__global__ void probe_kernel() {}  // built for the same architectures as every other kernel
}  // namespace

bool cuda_kernels_run_on(int device) {
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess) {
    cudaGetLastError();  // clear it: torch must not see this error on its next check
    return false;
  }
  cudaFuncAttributes attr;
  const bool ok = cudaSetDevice(device) == cudaSuccess && cudaFuncGetAttributes(&attr, probe_kernel) == cudaSuccess;
  cudaGetLastError();
  cudaSetDevice(previous);
  return ok;
}
}  // namespace fastloss
