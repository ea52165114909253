// CPU implementations of the dualvae::*_cpu ops (schemas in schema.cpp): argument checks, float32 staging,
// and the choice of the kernel build (AVX512, AVX2 or baseline) at run time.
#include "fused_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <tuple>
#include <vector>

namespace dualvae::cpu {
namespace {

enum class Isa { kDefault, kAvx2, kAvx512 };

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

bool isa_built(Isa isa) {
  switch (isa) {
#if DUALVAE_HAVE_AVX512
    case Isa::kAvx512: return true;
#endif
#if DUALVAE_HAVE_AVX2
    case Isa::kAvx2: return true;
#endif
    case Isa::kDefault: return true;
    default: return false;
  }
}

#if defined(__x86_64__) || defined(__i386__)
// The OS saves the register state an ISA writes (XCR0): AVX needs XMM+YMM (bits 1-2), AVX-512 also the opmask
// and ZMM state (bits 5-7). A CPU can report avx512f while the OS leaves those registers off.
uint64_t os_saved_state() {
  uint32_t eax = 0, ebx = 0, ecx = 0, edx = 0;
  __asm__("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(1), "c"(0));
  if (!(ecx & (1u << 27))) return 0;  // no OSXSAVE: xgetbv would fault
  uint32_t lo = 0, hi = 0;
  __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}
#endif

bool isa_runs(Isa isa) {
  if (isa == Isa::kDefault) return true;
#if defined(__x86_64__) || defined(__i386__)
  const uint64_t xcr0 = os_saved_state();
  const bool avx_state = (xcr0 & 0x6) == 0x6, avx512_state = (xcr0 & 0xe6) == 0xe6;
  const bool avx2 = avx_state && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (isa == Isa::kAvx2) return avx2;
  return avx2 && avx512_state && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

std::string isa_list(bool (*keep)(Isa)) {
  std::string out;
  for (Isa isa : {Isa::kDefault, Isa::kAvx2, Isa::kAvx512}) {
    if (!keep(isa)) continue;
    if (!out.empty()) out += ", ";
    out += isa_name(isa);
  }
  return out;
}

// The kernel build every op of this process runs: DUALVAE_CPU_ISA (read once, at the first call of a kernel or
// of cpu_isa()) forces one, else the widest that is built and that this CPU and OS run. A forced build that is
// missing or that the CPU cannot run is an error, raised at every call, never a silent fallback.
Isa kernel_isa() {
  static const Isa chosen = [] {
    const char* env = std::getenv("DUALVAE_CPU_ISA");
    const std::string want = env != nullptr ? env : "";
    if (want.empty() || want == "auto") {
      for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
        if (isa_built(isa) && isa_runs(isa)) return isa;
      }
      return Isa::kDefault;
    }
    for (Isa isa : {Isa::kDefault, Isa::kAvx2, Isa::kAvx512}) {
      if (want != isa_name(isa)) continue;
      TORCH_CHECK(isa_built(isa), "DUALVAE_CPU_ISA=", want, ": this build of dualvae.kernels has no ", want,
                  " kernels (compiled without them: DUALVAE_AVX2/DUALVAE_AVX512=OFF, a compiler without the "
                  "flags, or not x86-64); builds present: ", isa_list(isa_built));
      TORCH_CHECK(isa_runs(isa), "DUALVAE_CPU_ISA=", want, ": this CPU (or its OS) cannot run the ", want,
                  " kernels; builds it runs: ", isa_list([](Isa i) { return isa_built(i) && isa_runs(i); }));
      return isa;
    }
    TORCH_CHECK_VALUE(false, "DUALVAE_CPU_ISA='", want, "': expected one of default, avx2, avx512 or auto "
                      "(unset or empty: auto, the widest build this CPU runs)");
    return Isa::kDefault;
  }();
  return chosen;
}

std::string cpu_isa() { return isa_name(kernel_isa()); }

// Runs ISA::fn in the build kernel_isa() chose.
#if DUALVAE_HAVE_AVX512
#define DUALVAE_ISA_CASE_AVX512(fn, ...) \
  case Isa::kAvx512:                     \
    AVX512::fn(__VA_ARGS__);             \
    break;
#else
#define DUALVAE_ISA_CASE_AVX512(fn, ...)
#endif
#if DUALVAE_HAVE_AVX2
#define DUALVAE_ISA_CASE_AVX2(fn, ...) \
  case Isa::kAvx2:                     \
    AVX2::fn(__VA_ARGS__);             \
    break;
#else
#define DUALVAE_ISA_CASE_AVX2(fn, ...)
#endif
#define DUALVAE_ISA_CALL(fn, ...)                 \
  do {                                            \
    switch (kernel_isa()) {                       \
      DUALVAE_ISA_CASE_AVX512(fn, __VA_ARGS__)    \
      DUALVAE_ISA_CASE_AVX2(fn, __VA_ARGS__)      \
      default:                                    \
        DEFAULT::fn(__VA_ARGS__);                 \
    }                                             \
  } while (0)

// Tile shape (rows of z x columns of U): a 256 x 256 float tile is 256 KiB, half of a core's L2 on the machines
// we measured (AMD EPYC, 512 KiB L2). DUALVAE_CPU_TILE="BxN" overrides it, for tuning.
std::pair<int64_t, int64_t> tile_shape() {
  static const std::pair<int64_t, int64_t> shape = [] {
    std::pair<int64_t, int64_t> s{256, 256};
    if (const char* env = std::getenv("DUALVAE_CPU_TILE")) {
      long b = 0, n = 0;
      if (std::sscanf(env, "%ldx%ld", &b, &n) == 2 && b > 0 && n > 0) s = {b, n};
    }
    return s;
  }();
  return shape;
}

void check_cpu(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got one on ", t.device());
}

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

std::tuple<at::Tensor, at::Tensor> reparameterize_kl_cpu(const at::Tensor& mu, const at::Tensor& logvar,
                                                         const std::optional<at::Tensor>& eps, int64_t seed,
                                                         int64_t offset) {
  const char* op = "reparameterize_kl_cpu";
  check_cpu(op, "mu", mu);
  check_cpu(op, "logvar", logvar);
  TORCH_CHECK_VALUE(mu.dim() == 2 && logvar.sizes() == mu.sizes(), op, ": mu and logvar must be (B, d) of one "
                    "shape, got ", mu.sizes(), " and ", logvar.sizes());
  TORCH_CHECK_VALUE(logvar.scalar_type() == mu.scalar_type(), op, ": mu and logvar must share one dtype");
  const auto m = mu.contiguous(), lv = logvar.contiguous();
  at::Tensor e;
  if (eps.has_value()) {
    check_cpu(op, "eps", *eps);
    TORCH_CHECK_VALUE(eps->sizes() == mu.sizes() && eps->scalar_type() == mu.scalar_type(), op,
                      ": eps must match mu's shape and dtype, got ", eps->sizes(), " ", eps->scalar_type());
    e = eps->contiguous();
  }
  auto z = at::empty_like(m);
  auto kl = at::empty({m.size(0)}, m.options().dtype(at::kFloat));
  DUALVAE_ISA_CALL(reparam_kl_fwd, m, lv, e, seed, offset, z, kl);
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> reparameterize_kl_backward_cpu(
    const at::Tensor& dz, const at::Tensor& dkl, const at::Tensor& mu, const at::Tensor& logvar,
    const std::optional<at::Tensor>& eps, int64_t seed, int64_t offset, bool need_deps) {
  const char* op = "reparameterize_kl_backward_cpu";
  for (const auto* t : {&dz, &dkl, &mu, &logvar}) check_cpu(op, "an input", *t);
  TORCH_CHECK_VALUE(dz.sizes() == mu.sizes() && dkl.dim() == 1 && dkl.size(0) == mu.size(0), op,
                    ": dz must be like mu and dkl (B,), got ", dz.sizes(), " and ", dkl.sizes());
  const auto m = mu.contiguous(), lv = logvar.contiguous();
  const auto g = dz.to(m.scalar_type()).contiguous();
  const auto k = dkl.to(at::kFloat).contiguous();
  at::Tensor e;
  if (eps.has_value()) e = eps->contiguous();
  auto dmu = at::empty_like(m), dlv = at::empty_like(m);
  auto deps = need_deps ? at::empty_like(m) : at::Tensor();
  DUALVAE_ISA_CALL(reparam_kl_bwd, g, k, m, lv, e, seed, offset, dmu, dlv, deps);
  return {dmu, dlv, need_deps ? deps : m.new_empty({0})};
}

// Row b of sparse labels: ValueError unless its indices are strictly increasing and in [0, n).
template <typename I>
int64_t first_bad_sparse_row(const int64_t* indptr, const I* idx, int64_t B, int64_t n) {
  // Rows in parallel chunks, each stopping at its first bad row; the smallest one is reported, so the message
  // does not depend on the thread count.
  std::atomic<int64_t> first{B};
  at::parallel_for(0, B, 256, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1 && b < first.load(std::memory_order_relaxed); ++b) {
      int64_t prev = -1;
      for (int64_t k = indptr[b]; k < indptr[b + 1]; ++k) {
        const int64_t c = static_cast<int64_t>(idx[k]);
        if (c <= prev || c >= n) {
          int64_t cur = first.load();
          while (b < cur && !first.compare_exchange_weak(cur, b)) {
          }
          return;
        }
        prev = c;
      }
    }
  });
  return first.load();
}

template <typename I>
void check_sparse_row(const char* op, const int64_t* indptr, const I* idx, int64_t b, int64_t n) {
  int64_t prev = -1;
  for (int64_t k = indptr[b]; k < indptr[b + 1]; ++k) {
    const int64_t c = static_cast<int64_t>(idx[k]);
    TORCH_CHECK_VALUE(c >= 0 && c < n, op, ": sparse labels: row ", b, " has label index ", c, " outside [0, ", n,
                      ")");
    TORCH_CHECK_VALUE(c > prev, op, ": sparse labels: row ", b, " has ", c == prev ? "a duplicate" : "unsorted indices",
                      ": ", prev, " then ", c, " (each row's indices must be strictly increasing)");
    prev = c;
  }
}

// indptr (B + 1,) int64 from 0 to nnz, non-decreasing, and indices (nnz,) int32/int64, each row strictly
// increasing in [0, n): ValueError naming the first bad row. One pass over indptr and the indices (the kernel's
// binary searches and writes rely on it).
void check_sparse(const char* op, const at::Tensor& indptr, const at::Tensor& indices, int64_t B, int64_t n) {
  TORCH_CHECK_VALUE(indptr.scalar_type() == at::kLong && indptr.dim() == 1 && indptr.size(0) == B + 1, op,
                    ": sparse labels: indptr must be int64 (B + 1,) = (", B + 1, ",), got ", indptr.scalar_type(), " ",
                    indptr.sizes());
  TORCH_CHECK_VALUE((indices.scalar_type() == at::kInt || indices.scalar_type() == at::kLong) && indices.dim() == 1,
                    op, ": sparse labels: indices must be a 1-D int32 or int64 tensor, got ", indices.scalar_type(),
                    " ", indices.sizes());
  const int64_t* p = indptr.const_data_ptr<int64_t>();
  const int64_t nnz = indices.size(0);
  TORCH_CHECK_VALUE(p[0] == 0, op, ": sparse labels: indptr[0] must be 0, got ", p[0]);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK_VALUE(p[b] <= p[b + 1], op, ": sparse labels: indptr is not monotone at row ", b, ": indptr[", b,
                      "] = ", p[b], " > indptr[", b + 1, "] = ", p[b + 1]);
  }
  TORCH_CHECK_VALUE(p[B] == nnz, op, ": sparse labels: indptr[-1] = ", p[B], " but indices holds ", nnz,
                    " entries");
  if (indices.scalar_type() == at::kLong) {
    const int64_t* idx = indices.const_data_ptr<int64_t>();
    const int64_t b = first_bad_sparse_row(p, idx, B, n);
    if (b < B) check_sparse_row(op, p, idx, b, n);
  } else {
    const int32_t* idx = indices.const_data_ptr<int32_t>();
    const int64_t b = first_bad_sparse_row(p, idx, B, n);
    if (b < B) check_sparse_row(op, p, idx, b, n);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dual_bce_cpu(
    const at::Tensor& z, const at::Tensor& U, const at::Tensor& labels, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& gscale, int64_t n,
    c10::string_view label_kind, const std::optional<at::Tensor>& indptr, const std::optional<at::Tensor>& mask_rows,
    int64_t mask_key, int64_t mask_threshold, int64_t mask_col_offset, bool need_loss, bool need_dz, bool need_dU,
    bool need_db, const std::optional<at::Tensor>& pos_weight, const std::optional<at::Tensor>& label_weight,
    double label_smoothing, bool soft_targets) {
  const char* op = "dual_bce_cpu";
  check_cpu(op, "z", z);
  check_cpu(op, "U", U);
  check_cpu(op, "labels", labels);
  TORCH_CHECK_VALUE(z.dim() == 2 && U.dim() == 2 && U.size(1) == z.size(1) && U.size(0) == n, op,
                    ": z (B, d) and U (n, d) expected, got ", z.sizes(), " and ", U.sizes(), " with n = ", n);
  const bool packed = label_kind == "packed", sparse = label_kind == "sparse";
  TORCH_CHECK_VALUE(packed || sparse || label_kind == "dense", op, ": label_kind must be 'dense', 'packed' or "
                    "'sparse', got '", std::string(label_kind), "'");
  TORCH_CHECK_VALUE(sparse == indptr.has_value(), op, ": indptr ", sparse ? "is required" : "must be None",
                    " with label_kind '", std::string(label_kind), "'");
  const int64_t B = z.size(0), d_in = z.size(1);
  // d = 0: every logit is the bias alone; one zero column keeps the BLAS leading dimensions valid.
  const int64_t d = std::max<int64_t>(d_in, 1);
  const auto zf = d_in ? f32(z) : at::zeros({B, 1}, z.options().dtype(at::kFloat));
  const auto Uf = d_in ? f32(U) : at::zeros({n, 1}, z.options().dtype(at::kFloat));
  BceProblem p;
  p.B = B, p.n = n, p.d = d;
  p.z = zf.const_data_ptr<float>();
  p.U = Uf.const_data_ptr<float>();
  std::tie(p.tile_b, p.tile_n) = tile_shape();
  at::Tensor lab = labels.contiguous(), msk, bf, gs, ptr;
  std::vector<uint32_t> row_keys;
  if (mask_rows.has_value()) {
    check_cpu(op, "mask_rows", *mask_rows);
    TORCH_CHECK_VALUE(!packed, op, ": a hashed mask (mask_rows) cannot go with packed labels (they carry their mask)");
    TORCH_CHECK_VALUE(!mask.has_value(), op, ": give either a dense mask or a hashed one (mask_rows), not both");
    TORCH_CHECK_VALUE(mask_rows->scalar_type() == at::kLong && mask_rows->dim() == 1 && mask_rows->size(0) == B, op,
                      ": mask_rows must be int64 (", B, ",), got ", mask_rows->scalar_type(), " ", mask_rows->sizes());
    TORCH_CHECK_VALUE(mask_key >= 0 && mask_key <= 0xFFFFFFFFll, op, ": mask_key must be a uint32 value in [0, 2**32), "
                      "got ", mask_key);
    TORCH_CHECK_VALUE(mask_threshold >= 0 && mask_threshold <= (int64_t{1} << 32), op,
                      ": mask_threshold must be in [0, 2**32], got ", mask_threshold);
    TORCH_CHECK_VALUE(mask_col_offset >= 0 && mask_col_offset <= 0x7FFFFFFFll, op,
                      ": mask_col_offset must be in [0, 2**31), got ", mask_col_offset);
    const auto r = mask_rows->contiguous();
    const int64_t* rp = r.const_data_ptr<int64_t>();
    row_keys.resize(B);
    for (int64_t b = 0; b < B; ++b) row_keys[b] = mask_row_key(static_cast<uint32_t>(mask_key), rp[b]);
    p.labels.mask_row_keys = row_keys.data();
    p.labels.mask_threshold = static_cast<uint64_t>(mask_threshold);
    p.labels.mask_col_offset = static_cast<uint32_t>(mask_col_offset);
  }
  if (packed) {
    TORCH_CHECK_VALUE(lab.scalar_type() == at::kInt && lab.dim() == 2 && lab.size(0) == B &&
                      lab.size(1) == (n + 15) / 16, op, ": packed labels must be int32 (", B, ", ", (n + 15) / 16,
                      "), got ", lab.scalar_type(), " ", lab.sizes());
    TORCH_CHECK_VALUE(!mask.has_value(), op, ": packed labels carry their mask");
    p.labels.words = lab.const_data_ptr<int32_t>();
    p.labels.n_words = lab.size(1);
  } else {
    if (sparse) {
      check_cpu(op, "indptr", *indptr);
      ptr = indptr->contiguous();
      check_sparse(op, ptr, lab, B, n);
      p.labels.indptr = ptr.const_data_ptr<int64_t>();
      p.labels.indices = lab.const_data_ptr();
      p.labels.indices_64 = lab.scalar_type() == at::kLong;
    } else {
      TORCH_CHECK_VALUE(lab.dim() == 2 && lab.size(0) == B && lab.size(1) == n, op, ": labels must be (", B, ", ",
                        n, "), got ", lab.sizes());
      p.labels.y = lab.const_data_ptr();
      p.labels.y_type = lab.scalar_type();
    }
    if (mask.has_value()) {
      check_cpu(op, "mask", *mask);
      msk = mask->contiguous();
      TORCH_CHECK_VALUE(msk.dim() == 2 && msk.size(0) == B && msk.size(1) == n, op, ": mask must be (", B, ", ", n,
                        "), got ", msk.sizes());
      p.labels.mask = msk.const_data_ptr();
      p.labels.mask_type = msk.scalar_type();
    }
  }
  if (bias.has_value()) {
    check_cpu(op, "bias", *bias);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, op, ": bias must be (", n, "), got ", bias->sizes());
    bf = f32(*bias);
    p.bias = bf.const_data_ptr<float>();
  }
  at::Tensor pw, lw;
  for (auto [name, t, out, ptr_out] : {std::make_tuple("pos_weight", &pos_weight, &pw, &p.pos_weight),
                                       std::make_tuple("label_weight", &label_weight, &lw, &p.label_weight)}) {
    if (!t->has_value()) continue;
    check_cpu(op, name, **t);
    TORCH_CHECK_VALUE((*t)->dim() == 1 && (*t)->size(0) == n, op, ": ", name, " must be (", n, "), got ",
                      (*t)->sizes());
    *out = f32(**t);
    *ptr_out = out->const_data_ptr<float>();
  }
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0, op, ": label_smoothing must be in [0, 1], got ",
                    label_smoothing);
  TORCH_CHECK_VALUE(soft_targets || (label_smoothing == 0.0 && !pos_weight.has_value() && !label_weight.has_value()),
                    op, ": pos_weight, label_weight and label_smoothing need soft_targets=True");
  p.soft = soft_targets;
  p.smooth_a = static_cast<float>(1.0 - label_smoothing);
  p.smooth_c = static_cast<float>(0.5 * label_smoothing);
  if (gscale.has_value()) {
    check_cpu(op, "gscale", *gscale);
    TORCH_CHECK_VALUE(gscale->dim() == 1 && gscale->size(0) == B, op, ": gscale must be (", B, "), got ",
                      gscale->sizes());
    gs = f32(*gscale);
    p.gscale = gs.const_data_ptr<float>();
  }
  const auto fo = z.options().dtype(at::kFloat);
  const auto dbl = z.options().dtype(at::kDouble);
  at::Tensor rows = need_loss ? at::zeros({B}, dbl) : at::empty({0}, fo);
  at::Tensor count = at::zeros({}, dbl);
  at::Tensor bad = at::zeros({}, z.options().dtype(at::kLong));
  // The kernel writes every entry of these (no memset of a possibly large dU); an empty problem zeroes them.
  at::Tensor dz = at::empty(need_dz ? at::IntArrayRef{B, d} : at::IntArrayRef{0}, fo);
  at::Tensor dU = at::empty(need_dU ? at::IntArrayRef{n, d} : at::IntArrayRef{0}, fo);
  at::Tensor db = at::empty(need_db ? at::IntArrayRef{n} : at::IntArrayRef{0}, fo);
  BceOutputs o;
  if (need_loss) {
    o.rows = rows.data_ptr<double>();
    o.count = count.data_ptr<double>();
    o.bad = bad.data_ptr<int64_t>();
  }
  if (need_dz) o.dz = dz.data_ptr<float>();
  if (need_dU) o.dU = dU.data_ptr<float>();
  if (need_db) o.db = db.data_ptr<float>();
  if (B > 0 && n > 0) {
    DUALVAE_ISA_CALL(dual_bce, p, o);
  } else {
    dz.zero_(), dU.zero_(), db.zero_();
  }
  if (d_in == 0) {
    dz = dz.narrow(-1, 0, 0);
    dU = dU.narrow(-1, 0, 0);
  }
  return {need_loss ? rows.to(at::kFloat) : rows, count.to(at::kFloat), bad, dz, dU, db};
}

}  // namespace dualvae::cpu

TORCH_LIBRARY_IMPL(dualvae, CPU, m) {
  m.impl("reparameterize_kl_cpu", &dualvae::cpu::reparameterize_kl_cpu);
  m.impl("reparameterize_kl_backward_cpu", &dualvae::cpu::reparameterize_kl_backward_cpu);
  m.impl("dual_bce_cpu", &dualvae::cpu::dual_bce_cpu);
}

// No tensor arguments, so no backend key to dispatch on.
TORCH_LIBRARY_IMPL(dualvae, CompositeImplicitAutograd, m) {
  m.impl("cpu_isa", &dualvae::cpu::cpu_isa);
}
