// What the per-instruction-set kernels share. Included by every file of isa/, each compiled once per
// CPU_CAPABILITY, so each build gets its own copy in its own namespace.
#pragma once

#include <ATen/cpu/vec/vec.h>

namespace dualvae::cpu {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;

// The sum of a vector's lanes.
inline float hsum(const Vec& v) {
  alignas(64) float buf[Vec::size()];
  v.store(buf);
  float s = 0.0f;
  for (int i = 0; i < Vec::size(); ++i) s += buf[i];
  return s;
}

}  // namespace
}  // namespace CPU_CAPABILITY
}  // namespace dualvae::cpu
