// CPU kernel for dualvae::kl_standard_normal: the per-row Gaussian KL, fp32 accumulation, one OpenMP
// parallel loop over rows. Its job in this first version is to prove the CMake/OpenMP/torch.library build.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cmath>

namespace {

at::Tensor kl_standard_normal_cpu(const at::Tensor& mu, const at::Tensor& logvar) {
  TORCH_CHECK(mu.dim() == 2, "kl_standard_normal: mu must be 2-D (B, d), got shape ", mu.sizes());
  TORCH_CHECK(mu.sizes() == logvar.sizes(), "kl_standard_normal: logvar has shape ", logvar.sizes(),
              ", expected ", mu.sizes());
  TORCH_CHECK(mu.is_floating_point() && mu.scalar_type() == logvar.scalar_type(),
              "kl_standard_normal: mu and logvar must share one floating dtype, got ", mu.scalar_type(),
              " and ", logvar.scalar_type());
  const auto m = mu.contiguous();
  const auto lv = logvar.contiguous();
  const int64_t rows = m.size(0), cols = m.size(1);
  auto out = at::empty({rows}, m.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, m.scalar_type(), "kl_standard_normal", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pm = m.data_ptr<scalar_t>();
    const scalar_t* pl = lv.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        acc_t acc = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const acc_t a = static_cast<acc_t>(pm[r * cols + c]);
          const acc_t l = static_cast<acc_t>(pl[r * cols + c]);
          acc += acc_t(1) + l - a * a - std::exp(l);
        }
        po[r] = static_cast<scalar_t>(acc_t(-0.5) * acc);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dualvae, CPU, m) { m.impl("kl_standard_normal", &kl_standard_normal_cpu); }
