// Fused CPU kernels of dualvae::dual_bce and dualvae::reparameterize_kl: the interface between the op
// registrations (ops_cpu.cpp, compiled once) and the kernels (isa/*.cpp, each compiled once per
// instruction set with CPU_CAPABILITY set, the way ATen builds its own kernels; chosen at run time).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <tuple>

namespace dualvae::cpu {

// The hashed missing-label mask (kernels/reference.py, hashed_observed): entry (r, j) is observed iff
// h(r, j) = fmix32(row_key(r) ^ (j * kMaskColMul)) >= threshold, in uint32 arithmetic.
constexpr uint32_t kMaskRowMul = 0x9E3779B1u, kMaskColMul = 0x85EBCA77u;

// MurmurHash3's 32-bit finalizer.
inline uint32_t fmix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  return x ^ (x >> 16);
}

// fmix32(key + r * kMaskRowMul) of a global row index r (its low 32 bits, as the reference takes them).
inline uint32_t mask_row_key(uint32_t key, int64_t r) {
  return fmix32(key + static_cast<uint32_t>(r) * kMaskRowMul);
}

// Labels of one dual_bce call as raw views. y: unpacked (B, n) (any real dtype), packed (2 bits an entry with
// the mask, see kernels/labels.py PackedLabels) or sparse (CSR positives: row b's positives are
// indices[indptr[b] .. indptr[b + 1]), strictly increasing, all in [0, n); checked by the op). The mask: a
// (B, n) weight of any real dtype (1 = observed), the hash above (mask_row_keys), or none.
struct Labels {
  const void* y = nullptr;
  at::ScalarType y_type = at::kFloat;
  const void* mask = nullptr;  // null: every label observed (unless hashed)
  at::ScalarType mask_type = at::kFloat;
  const int32_t* words = nullptr;  // packed: (B, n_words)
  int64_t n_words = 0;
  const int64_t* indptr = nullptr;  // sparse: (B + 1,)
  const void* indices = nullptr;    // sparse: (nnz,) int32 or int64
  bool indices_64 = false;
  const uint32_t* mask_row_keys = nullptr;  // hashed mask: (B,) mask_row_key of each row; null: not hashed
  uint64_t mask_threshold = 0;              // in [0, 2**32]
  uint32_t mask_col_offset = 0;             // the global label index of column 0
};

// One dual_bce problem in float32: logits L = z U^T + b are made tile by tile and never stored whole.
// G = gscale_row * mask * (sigmoid(L) - y) is the gradient of the loss w.r.t. L.
struct BceProblem {
  int64_t B = 0, n = 0, d = 0;
  const float* z = nullptr;      // (B, d)
  const float* U = nullptr;      // (n, d)
  const float* bias = nullptr;   // (n,) or null
  const float* gscale = nullptr;  // (B,) or null (= 1)
  Labels labels;
  // linear_bce's options (all off for dual_bce). soft: targets t = smooth_a * y + smooth_c, any value in [0, 1]
  // (bad counts targets outside [0, 1]); pos_weight (n,): loss (1 - t) x + (1 + (p - 1) t) softplus(-x);
  // label_weight (n,): multiplies each column's loss like the mask.
  bool soft = false;
  float smooth_a = 1.0f, smooth_c = 0.0f;
  const float* pos_weight = nullptr;
  const float* label_weight = nullptr;
  int64_t tile_b = 256, tile_n = 256;
};

// What to compute; a null pointer skips that output. Sums are over the whole problem, in an order fixed by
// the shapes alone, so every thread count gives the same bits.
struct BceOutputs {
  double* rows = nullptr;     // (B,) per-row loss sum_j mask * BCE
  double* count = nullptr;    // () sum of mask
  int64_t* bad = nullptr;     // () dense labels outside {0, 1} ([0, 1] when soft); 0 for packed and sparse ones
  float* dz = nullptr;        // (B, d) G U
  float* dU = nullptr;        // (n, d) G^T z
  float* db = nullptr;        // (n,) column sums of G
};

// How the (B, n) plane is cut into work items: n_groups groups of column tiles x b_groups groups of row
// tiles. A function of the shapes only (never of the thread count). Items of one column group share a dz
// partial (B, d); items of one row group share a dU partial (n, d); the partials are summed in group order.
struct BcePlan {
  int64_t tiles_b, tiles_n, n_groups, b_groups;
};

inline BcePlan plan_bce(int64_t B, int64_t n, int64_t d, int64_t tile_b, int64_t tile_n) {
  constexpr int64_t kPartialBytes = int64_t(8) << 20;  // per kind of partial buffer
  constexpr int64_t kItems = 16;  // independent items: up to 16 threads busy
  BcePlan p;
  p.tiles_b = (B + tile_b - 1) / tile_b;
  p.tiles_n = (n + tile_n - 1) / tile_n;
  const int64_t dz_fit = std::max<int64_t>(1, kPartialBytes / std::max<int64_t>(1, B * d * 4));
  p.n_groups = std::max<int64_t>(1, std::min({p.tiles_n, dz_fit, kItems}));
  const int64_t du_fit = std::max<int64_t>(1, kPartialBytes / std::max<int64_t>(1, n * d * 4));
  const int64_t want_b = (kItems + p.n_groups - 1) / p.n_groups;
  p.b_groups = std::max<int64_t>(1, std::min({p.tiles_b, du_fit, want_b}));
  return p;
}

#define DUALVAE_CPU_KERNELS(ISA)                                                                         \
  namespace ISA {                                                                                        \
  void dual_bce(const BceProblem& p, const BceOutputs& o);                                              \
  void reparam_kl_fwd(const at::Tensor& mu, const at::Tensor& logvar, const at::Tensor& eps, int64_t seed, \
                      int64_t offset, at::Tensor& z, at::Tensor& kl);                                    \
  void reparam_kl_bwd(const at::Tensor& dz, const at::Tensor& dkl, const at::Tensor& mu,                 \
                      const at::Tensor& logvar, const at::Tensor& eps, int64_t seed, int64_t offset,     \
                      at::Tensor& dmu, at::Tensor& dlogvar, at::Tensor& deps);                           \
  }

// The dualvae::dual_bce_cpu op (ops_cpu.cpp; its schema in schema.cpp): checks, float32 staging, the kernel.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dual_bce_cpu(
    const at::Tensor& z, const at::Tensor& U, const at::Tensor& labels, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& gscale, int64_t n,
    c10::string_view label_kind, const std::optional<at::Tensor>& indptr, const std::optional<at::Tensor>& mask_rows,
    int64_t mask_key, int64_t mask_threshold, int64_t mask_col_offset, bool need_loss, bool need_dz, bool need_dU,
    bool need_db, const std::optional<at::Tensor>& pos_weight, const std::optional<at::Tensor>& label_weight,
    double label_smoothing, bool soft_targets);

DUALVAE_CPU_KERNELS(DEFAULT)
DUALVAE_CPU_KERNELS(AVX2)
DUALVAE_CPU_KERNELS(AVX512)

}  // namespace dualvae::cpu
