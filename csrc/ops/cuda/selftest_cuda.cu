// CUDA kernel of mudsc::affine_selftest: y = scale * x + shift, one thread per
// element (grid-stride loop), on the current stream of x's device. Also registers
// the "cuda" backend name that mudsc::build_info reports (backend_registry.hpp).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "backend_registry.hpp"

namespace mudsc {
namespace ops {
namespace {

const BackendRegistrar kCudaBackend(c10::DeviceType::CUDA, "cuda");

// dst[k] = a * src[k] + b for k < n, grid-stride.
template <typename scalar_t>
__global__ void affine_kernel(const scalar_t* __restrict__ src, scalar_t* __restrict__ dst, int64_t n, scalar_t a,
                              scalar_t b) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    dst[k] = a * src[k] + b;
  }
}

}  // namespace

// y = scale * x + shift for a float32/float64 CUDA tensor x of any layout; returns a new contiguous tensor.
at::Tensor affine_selftest_cuda(const at::Tensor& x, double scale, double shift) {
  TORCH_CHECK(x.is_cuda(), "affine_selftest_cuda: expected a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "affine_selftest: x must be float32 or float64, got ", x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty_like(input);
  const int64_t n = input.numel();
  if (n == 0) return out;
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((n + threads - 1) / threads, 65535));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "affine_selftest_cuda", [&] {
    affine_kernel<scalar_t><<<blocks, threads, 0, stream>>>(input.const_data_ptr<scalar_t>(),
                                                            out.mutable_data_ptr<scalar_t>(), n,
                                                            static_cast<scalar_t>(scale), static_cast<scalar_t>(shift));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace ops
}  // namespace mudsc

TORCH_LIBRARY_IMPL(mudsc, CUDA, m) { m.impl("affine_selftest", &mudsc::ops::affine_selftest_cuda); }
