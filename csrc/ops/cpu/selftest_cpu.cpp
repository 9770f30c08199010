// CPU kernel of mudsc::affine_selftest: y = scale * x + shift over a contiguous
// copy of x, parallel over elements with at::parallel_for. Also registers the
// "cpu" backend name that mudsc::build_info reports (backend_registry.hpp).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "backend_registry.hpp"

namespace mudsc {
namespace ops {
namespace {

const BackendRegistrar kCpuBackend(c10::DeviceType::CPU, "cpu");

}  // namespace

// y = scale * x + shift for a float32/float64 CPU tensor x of any layout; returns a new contiguous tensor.
at::Tensor affine_selftest_cpu(const at::Tensor& x, double scale, double shift) {
  TORCH_CHECK(x.device().is_cpu(), "affine_selftest_cpu: expected a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "affine_selftest: x must be float32 or float64, got ", x.scalar_type());
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty_like(input);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "affine_selftest_cpu", [&] {
    const scalar_t* src = input.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    const scalar_t a = static_cast<scalar_t>(scale), b = static_cast<scalar_t>(shift);
    at::parallel_for(0, input.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) dst[k] = a * src[k] + b;
    });
  });
  return out;
}

}  // namespace ops
}  // namespace mudsc

TORCH_LIBRARY_IMPL(mudsc, CPU, m) { m.impl("affine_selftest", &mudsc::ops::affine_selftest_cpu); }
