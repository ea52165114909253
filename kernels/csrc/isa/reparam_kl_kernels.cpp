// reparameterize_kl's CPU kernels, compiled once per instruction set like fused_cpu_kernels.cpp (CMake builds
// every file of isa/ with CPU_CAPABILITY=DEFAULT, AVX2 and AVX512; ops_cpu.cpp picks one at run time).
#include "../fused_cpu.h"
#include "vec.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>

namespace dualvae::cpu {
namespace CPU_CAPABILITY {
namespace {

// Philox4x32-10 normal number for counter `counter` under key `seed`: triton.language.randn bit for bit
// (kernels/reference.py philox_randn is the same generator in torch ops).
inline float uint_to_uniform(uint32_t x) {
  int64_t s = static_cast<int32_t>(x);
  if (s < 0) s = -s - 1;
  return static_cast<float>(s) * 4.6566127342e-10f;
}

inline float philox_randn(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t pb = uint64_t{0xCD9E8D57u} * c2, pa = uint64_t{0xD2511F53u} * c0;
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0, n1 = static_cast<uint32_t>(pb);
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1, n3 = static_cast<uint32_t>(pa);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
  }
  const float u1 = std::max(uint_to_uniform(c0), 1.0e-7f);
  const float th = 6.283185307179586f * uint_to_uniform(c1);
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(th);
}

constexpr int64_t kReparamGrain = 1 << 14;  // elements per parallel chunk

}  // namespace

namespace {

// float32 with a given eps (the trainer's case): Vec::size() lanes at a time. Loads past the row end read zeros,
// which add exactly 0 to the KL (mu = logvar = 0: 0 + 1 - 1 - 0).
void reparam_kl_fwd_f32(const float* pm, const float* pl, const float* pe, float* pz, float* pk, int64_t B,
                        int64_t D) {
  at::parallel_for(0, B, std::max<int64_t>(1, kReparamGrain / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    const Vec half(0.5f), one(1.0f);
    for (int64_t r = r0; r < r1; ++r) {
      Vec acc(0.0f);
      for (int64_t c = 0; c < D; c += Vec::size()) {
        const int64_t i = r * D + c, m = std::min<int64_t>(Vec::size(), D - c);
        const Vec mu = Vec::loadu(pm + i, m), lv = Vec::loadu(pl + i, m), e = Vec::loadu(pe + i, m);
        const Vec sd = (half * lv).exp();
        at::vec::fmadd(sd, e, mu).store(pz + i, m);
        acc = acc + (mu * mu + sd * sd - one - lv);
      }
      pk[r] = 0.5f * hsum(acc);
    }
  });
}

void reparam_kl_bwd_f32(const float* pdz, const float* pdk, const float* pm, const float* pl, const float* pe,
                        float* pdm, float* pdl, float* pde, int64_t B, int64_t D) {
  at::parallel_for(0, B, std::max<int64_t>(1, kReparamGrain / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    const Vec half(0.5f), one(1.0f);
    for (int64_t r = r0; r < r1; ++r) {
      const Vec k(pdk[r]);
      for (int64_t c = 0; c < D; c += Vec::size()) {
        const int64_t i = r * D + c, m = std::min<int64_t>(Vec::size(), D - c);
        const Vec g = Vec::loadu(pdz + i, m), mu = Vec::loadu(pm + i, m), lv = Vec::loadu(pl + i, m);
        const Vec e = Vec::loadu(pe + i, m);
        const Vec sd = (half * lv).exp();
        at::vec::fmadd(k, mu, g).store(pdm + i, m);
        (half * (g * e * sd + k * (sd * sd - one))).store(pdl + i, m);
        if (pde != nullptr) (g * sd).store(pde + i, m);
      }
    }
  });
}

}  // namespace

void reparam_kl_fwd(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& eps, int64_t seed,
                    int64_t offset, at::Tensor& z, at::Tensor& kl) {
  const int64_t B = mu.size(0), D = mu.size(1);
  const bool has_eps = eps.defined();
  if (has_eps && mu.scalar_type() == at::kFloat) {
    reparam_kl_fwd_f32(mu.const_data_ptr<float>(), logvar.const_data_ptr<float>(), eps.const_data_ptr<float>(),
                       z.data_ptr<float>(), kl.data_ptr<float>(), B, D);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, mu.scalar_type(), "reparameterize_kl_cpu", [&] {
    const scalar_t* pm = mu.const_data_ptr<scalar_t>();
    const scalar_t* pl = logvar.const_data_ptr<scalar_t>();
    const scalar_t* pe = has_eps ? eps.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* pz = z.data_ptr<scalar_t>();
    float* pk = kl.data_ptr<float>();
    at::parallel_for(0, B, std::max<int64_t>(1, kReparamGrain / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        float acc = 0.0f;
        for (int64_t c = 0; c < D; ++c) {
          const int64_t i = r * D + c;
          const float m = static_cast<float>(pm[i]), lv = static_cast<float>(pl[i]);
          const float e = pe ? static_cast<float>(pe[i])
                             : philox_randn(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset + i));
          const float sd = std::exp(0.5f * lv);
          pz[i] = static_cast<scalar_t>(m + sd * e);
          acc += m * m + sd * sd - 1.0f - lv;
        }
        pk[r] = 0.5f * acc;
      }
    });
  });
}

void reparam_kl_bwd(const at::Tensor& dz, const at::Tensor& dkl, const at::Tensor& mu, const at::Tensor& logvar,
                    const at::Tensor& eps, int64_t seed, int64_t offset, at::Tensor& dmu, at::Tensor& dlogvar,
                    at::Tensor& deps) {
  const int64_t B = mu.size(0), D = mu.size(1);
  const bool has_eps = eps.defined(), need_deps = deps.defined();
  if (has_eps && mu.scalar_type() == at::kFloat) {
    reparam_kl_bwd_f32(dz.const_data_ptr<float>(), dkl.const_data_ptr<float>(), mu.const_data_ptr<float>(),
                       logvar.const_data_ptr<float>(), eps.const_data_ptr<float>(), dmu.data_ptr<float>(),
                       dlogvar.data_ptr<float>(), need_deps ? deps.data_ptr<float>() : nullptr, B, D);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, mu.scalar_type(), "reparameterize_kl_backward_cpu", [&] {
    const scalar_t* pdz = dz.const_data_ptr<scalar_t>();
    const float* pdk = dkl.const_data_ptr<float>();
    const scalar_t* pm = mu.const_data_ptr<scalar_t>();
    const scalar_t* pl = logvar.const_data_ptr<scalar_t>();
    const scalar_t* pe = has_eps ? eps.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* pdm = dmu.data_ptr<scalar_t>();
    scalar_t* pdl = dlogvar.data_ptr<scalar_t>();
    scalar_t* pde = need_deps ? deps.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B, std::max<int64_t>(1, kReparamGrain / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float k = pdk[r];
        for (int64_t c = 0; c < D; ++c) {
          const int64_t i = r * D + c;
          const float g = static_cast<float>(pdz[i]), m = static_cast<float>(pm[i]), lv = static_cast<float>(pl[i]);
          const float e = pe ? static_cast<float>(pe[i])  // else the forward's eps, regenerated
                             : philox_randn(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset + i));
          const float sd = std::exp(0.5f * lv);
          pdm[i] = static_cast<scalar_t>(g + k * m);
          pdl[i] = static_cast<scalar_t>(0.5f * (g * e * sd + k * (sd * sd - 1.0f)));
          if (pde) pde[i] = static_cast<scalar_t>(g * sd);
        }
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace dualvae::cpu
