// Every dualvae:: op schema, declared once. Backends register implementations per dispatch key
// (TORCH_LIBRARY_IMPL in this folder for CPU; Triton kernels from Python for CUDA).
#include <torch/library.h>

TORCH_LIBRARY(dualvae, m) {
  // Per-row KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 * sum_k (1 + logvar - mu^2 - exp(logvar)).
  m.def("kl_standard_normal(Tensor mu, Tensor logvar) -> Tensor");
}
