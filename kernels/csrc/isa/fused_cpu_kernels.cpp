// The fused CPU kernels, compiled once per instruction set: CMake builds this file with CPU_CAPABILITY=DEFAULT
// (baseline x86-64 / any CPU), CPU_CAPABILITY=AVX2 (-mavx2 -mfma -mf16c) and CPU_CAPABILITY=AVX512 (-mavx512f
// -mavx512bw -mavx512vl -mavx512dq -mfma), and ops_cpu.cpp picks one at run time, so the library runs on any
// machine and uses the widest vectors it has. at::vec::Vectorized<float> is 16 lanes under AVX512, 8 under AVX2
// (exp/log1p from Sleef or ATen's own polynomials) and a portable array otherwise.
#include "../fused_cpu.h"
#include "vec.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

// Fortran BLAS sgemm, exported by libtorch_cpu (MKL on x86 wheels). Weak: where a torch build does not export
// it, the tiles go through at::addmm_ instead (same math, some per-call overhead).
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));
// MKL's per-thread thread count (0 = back to the global setting); weak like sgemm_.
extern "C" int MKL_Set_Num_Threads_Local(int nt) __attribute__((weak));  // the C entry (lowercase is Fortran)

namespace dualvae::cpu {
namespace CPU_CAPABILITY {
namespace {

#if defined(CPU_CAPABILITY_AVX512)
static_assert(Vec::size() == 16, "the AVX512 build must use at::vec's 512-bit vectors");
#elif defined(CPU_CAPABILITY_AVX2)
static_assert(Vec::size() == 8, "the AVX2 build must use at::vec's 256-bit vectors");
#endif

// Each work item runs its tile GEMMs on its own thread: BLAS must not start threads of its own inside our
// parallel region (oversubscription), and a GEMM that always runs single-threaded sums in one fixed order,
// whatever the thread count.
struct SingleThreadedBlas {
  int previous = 0;
  SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous);
  }
};

// Row-major C (M x N, ldc) = op(A) (M x K) * op(B) (K x N) + beta * C; op(X) = X^T when its flag is set,
// X stored row-major with leading dimension ld. BLAS is column-major, so it computes C^T = op(B)^T op(A)^T.
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bm,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (sgemm_ != nullptr) {
    const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
    const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
    const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
    const float one = 1.0f;
    sgemm_(&opa, &opb, &m, &n, &k, &one, Bm, &la, A, &lb, &beta, C, &lc);
    return;
  }
  const auto f = at::TensorOptions().dtype(at::kFloat);
  auto a = ta ? at::from_blob(const_cast<float*>(A), {K, M}, {lda, 1}, f).t()
              : at::from_blob(const_cast<float*>(A), {M, K}, {lda, 1}, f);
  auto b = tb ? at::from_blob(const_cast<float*>(Bm), {N, K}, {ldb, 1}, f).t()
              : at::from_blob(const_cast<float*>(Bm), {K, N}, {ldb, 1}, f);
  auto c = at::from_blob(C, {M, N}, {ldc, 1}, f);
  c.addmm_(a, b, beta, 1.0f);  // beta = 0 ignores C's old contents, NaN included
}

// One row of labels as float (y, w), columns [j0, j0 + nj) of row b, into the scratch rows ys / ws; returns
// pointers to them, or straight into the inputs where those are float32 already (no copy). Labels outside
// {0, 1} are counted by the epilogue, which sees every y.
struct LabelRow {
  const float* y;
  const float* w;  // null: every label observed
};

template <typename T>
void convert_row(const T* src, int64_t nj, float* dst) {
  for (int64_t j = 0; j < nj; ++j) dst[j] = static_cast<float>(src[j]);
}

// Row b of sparse labels, columns [j0, j0 + nj): zeros with a 1 at each positive. The scan starts at the first
// index >= j0: *cursor where the row's previous tile (columns up to j0) left it, else found by a binary search in
// the row's sorted indices; it leaves *cursor at the first index >= j0 + nj, where the next tile starts.
template <typename I>
void load_sparse_row(const I* idx, int64_t lo, int64_t hi, int64_t j0, int64_t nj, int64_t* cursor, float* ys) {
  std::fill(ys, ys + nj, 0.0f);
  const I* end = idx + hi;
  const I* p = *cursor >= 0 ? idx + *cursor : std::lower_bound(idx + lo, end, static_cast<I>(j0));
  for (; p != end && static_cast<int64_t>(*p) < j0 + nj; ++p) ys[static_cast<int64_t>(*p) - j0] = 1.0f;
  *cursor = p - idx;
}

// The hashed mask of one row, columns c0 .. c0 + nj - 1 (global label indices): a plain uint32 loop the compiler
// vectorizes (three multiplies an entry).
void load_hashed_mask_row(uint32_t row_key, uint32_t c0, uint64_t threshold, int64_t nj, float* ws) {
  if (threshold > 0xFFFFFFFFull) {  // ratio 1: nothing observed
    std::fill(ws, ws + nj, 0.0f);
    return;
  }
  const uint32_t t = static_cast<uint32_t>(threshold);
  for (int64_t j = 0; j < nj; ++j) {
    const uint32_t h = fmix32(row_key ^ ((c0 + static_cast<uint32_t>(j)) * kMaskColMul));
    ws[j] = h >= t ? 1.0f : 0.0f;
  }
}

// cursor: row b's sparse scan position (see load_sparse_row); unused for other labels.
LabelRow load_label_row(const Labels& L, int64_t n, int64_t b, int64_t j0, int64_t nj, float* ys, float* ws,
                        int64_t* cursor) {
  if (L.words != nullptr) {
    const int32_t* row = L.words + b * L.n_words;
    for (int64_t j = 0; j < nj; ++j) {
      const int64_t c = j0 + j;
      const uint32_t code = (static_cast<uint32_t>(row[c >> 4]) >> (2 * (c & 15))) & 3u;
      ys[j] = static_cast<float>(code & 1u);
      ws[j] = static_cast<float>(code >> 1);
    }
    return {ys, ws};
  }
  LabelRow out{ys, nullptr};
  const int64_t at = b * n + j0;
  if (L.indptr != nullptr) {
    if (L.indices_64) {
      load_sparse_row(static_cast<const int64_t*>(L.indices), L.indptr[b], L.indptr[b + 1], j0, nj, cursor, ys);
    } else {
      load_sparse_row(static_cast<const int32_t*>(L.indices), L.indptr[b], L.indptr[b + 1], j0, nj, cursor, ys);
    }
  } else if (L.y_type == at::kFloat) {
    out.y = static_cast<const float*>(L.y) + at;
  } else {
    AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, L.y_type, "dual_bce_cpu_labels", [&] {
      convert_row(static_cast<const scalar_t*>(L.y) + at, nj, ys);
    });
  }
  if (L.mask_row_keys != nullptr) {
    if (L.mask_threshold > 0) {  // threshold 0: every entry observed, the same as no mask
      load_hashed_mask_row(L.mask_row_keys[b], L.mask_col_offset + static_cast<uint32_t>(j0), L.mask_threshold,
                           nj, ws);
      out.w = ws;
    }
  } else if (L.mask != nullptr) {
    if (L.mask_type == at::kFloat) {
      out.w = static_cast<const float*>(L.mask) + at;
    } else {
      AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, L.mask_type, "dual_bce_cpu_mask", [&] {
        convert_row(static_cast<const scalar_t*>(L.mask) + at, nj, ws);
      });
      out.w = ws;
    }
  }
  return out;
}

// Row b of the label matrices is n entries away from row b - 1, so every row of a tile starts in a new page
// where the hardware prefetcher has no stream yet: fetch a row's labels a few rows ahead of the epilogue.
constexpr int64_t kPrefetchRows = 4;

void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 3);
}

void prefetch_label_row(const Labels& L, int64_t n, int64_t b, int64_t j0, int64_t nj, const int64_t* cursor) {
  if (L.words != nullptr) {
    prefetch_bytes(L.words + b * L.n_words + (j0 >> 4), ((nj + 15) >> 4) * 4);
    return;
  }
  if (L.indptr != nullptr) {  // where the row's scan resumes, else the row's bounds for its binary search
    if (*cursor >= 0) {
      __builtin_prefetch(static_cast<const char*>(L.indices) + *cursor * (L.indices_64 ? 8 : 4), 0, 3);
    } else {
      __builtin_prefetch(L.indptr + b, 0, 3);
    }
  } else {
    const int64_t y_size = c10::elementSize(L.y_type);
    prefetch_bytes(static_cast<const char*>(L.y) + (b * n + j0) * y_size, nj * y_size);
  }
  if (L.mask != nullptr) {
    const int64_t m_size = c10::elementSize(L.mask_type);
    prefetch_bytes(static_cast<const char*>(L.mask) + (b * n + j0) * m_size, nj * m_size);
  }
}

// The epilogue of one logits row: t holds L (without bias) and is overwritten with G. Adds the row's loss,
// mask sum and count of labels outside {0, 1} to *loss / *cnt / *bad and G to db_acc. From one e = exp(-|x|)
// (exp_u20: 20 ulp, ~1e-6 relative, inside the error budget of the fp32 result) and one division:
//   BCE = max(x, 0) - y x + log1p(e),   sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below,
//   q = 1 / ((1 + e)(2 + e)) gives both 1 / (1 + e) = (2 + e) q and log1p's e / (2 + e) = e (1 + e) q.
// linear_bce's options, compile-time flags of the epilogue, so that dual_bce (none set) runs the code it always
// ran: kPosWeight (per-column pos_weight), kLabelWeight (per-column weight), kSoft (targets t = a y + c of any
// value in [0, 1], bad = targets outside [0, 1]).
constexpr int kPosWeight = 1, kLabelWeight = 2, kSoft = 4;
struct ColumnOptions {
  const float* pos_weight;    // columns j0.. of pos_weight, or null
  const float* label_weight;  // columns j0.. of label_weight, or null
  float smooth_a, smooth_c;
};

inline Vec load(const float* p, int64_t j, int64_t m, bool full) {
  return full ? Vec::loadu(p + j) : Vec::loadu(p + j, m);  // zero past m
}

template <bool kLoss, bool kMask, int kOpts>
void epilogue_row(float* t, const float* bias, LabelRow lab, int64_t nj, float scale, float* db_acc, double* loss,
                  double* cnt, int64_t* bad, const ColumnOptions& opt) {
  const Vec zero(0.0f), one(1.0f), two(2.0f), s(scale);
  Vec loss_v(0.0f), cnt_v(0.0f), bad_v(0.0f);
  for (int64_t j = 0; j < nj; j += Vec::size()) {
    const int64_t m = std::min<int64_t>(Vec::size(), nj - j);
    const bool full = m == Vec::size();
    Vec x = full ? Vec::loadu(t + j) : Vec::loadu(t + j, m);
    if (bias != nullptr) x = x + (full ? Vec::loadu(bias + j) : Vec::loadu(bias + j, m));
    const Vec yraw = full ? Vec::loadu(lab.y + j) : Vec::loadu(lab.y + j, m);  // zero past m: no contribution
    Vec yv = yraw;
    if constexpr ((kOpts & kSoft) != 0) yv = at::vec::fmadd(yraw, Vec(opt.smooth_a), Vec(opt.smooth_c));
    const Vec e = x.abs().neg().exp_u20();
    const Vec one_e = one + e, two_e = two + e;
    const Vec q = one / (one_e * two_e);
    const Vec r = two_e * q;
    const Vec sig = Vec::blendv(e * r, r, x >= zero);
    Vec g, pw, lw;
    if constexpr ((kOpts & kPosWeight) != 0) {  // d/dx [(1 - t) x + lw softplus(-x)] = lw sigmoid(x) - p t
      pw = load(opt.pos_weight, j, m, full);
      lw = at::vec::fmadd(pw - one, yv, one);
      g = (lw * sig - pw * yv) * s;
    } else {
      g = (sig - yv) * s;
    }
    Vec wv = one;
    if constexpr (kMask) {
      wv = full ? Vec::loadu(lab.w + j) : Vec::loadu(lab.w + j, m);
      if constexpr ((kOpts & kLabelWeight) != 0) wv = wv * load(opt.label_weight, j, m, full);
      g = g * wv;
    } else if constexpr ((kOpts & kLabelWeight) != 0) {
      wv = load(opt.label_weight, j, m, full);  // zero past m
      g = g * wv;
    } else if (!full) {
      wv = Vec::set(zero, one, m);  // the first m lanes
      g = g * wv;
    }
    if (full) {
      g.store(t + j);
      (Vec::loadu(db_acc + j) + g).store(db_acc + j);
    } else {
      g.store(t + j, m);
      (Vec::loadu(db_acc + j, m) + g).store(db_acc + j, m);
    }
    if constexpr (kLoss) {
      const Vec sl = e * one_e * q;  // e / (2 + e)
      const Vec s2 = sl * sl;
      Vec p(1.0f / 15.0f);
      p = at::vec::fmadd(p, s2, Vec(1.0f / 13.0f));
      p = at::vec::fmadd(p, s2, Vec(1.0f / 11.0f));
      p = at::vec::fmadd(p, s2, Vec(1.0f / 9.0f));
      p = at::vec::fmadd(p, s2, Vec(1.0f / 7.0f));
      p = at::vec::fmadd(p, s2, Vec(1.0f / 5.0f));
      p = at::vec::fmadd(p, s2, Vec(1.0f / 3.0f));
      p = at::vec::fmadd(p, s2, one);
      const Vec log1p_e = two * sl * p;  // 2 atanh(sl): first omitted term < 2e-9 relative
      Vec bce;
      if constexpr ((kOpts & kPosWeight) != 0) {
        bce = (one - yv) * x + lw * (at::vec::maximum(x.neg(), zero) + log1p_e);
      } else {
        bce = at::vec::maximum(x, zero) - yv * x + log1p_e;
      }
      loss_v = at::vec::fmadd(wv, bce, loss_v);
      cnt_v = cnt_v + wv;
      if constexpr ((kOpts & kSoft) != 0) {  // 1.0 where y is outside [0, 1] (NaN included)
        bad_v = bad_v + (one - (((yraw >= zero) & (yraw <= one)) & one));
      } else {
        bad_v = bad_v + (((yv != zero) & (yv != one)) & one);  // 1.0 where y is not 0 or 1 (NaN included)
      }
    }
  }
  if constexpr (kLoss) {
    *loss += static_cast<double>(hsum(loss_v));
    *cnt += static_cast<double>(hsum(cnt_v));
    *bad += static_cast<int64_t>(hsum(bad_v));
  }
}

template <bool kLoss, int kOpts>
void dual_bce_impl(const BceProblem& p, const BceOutputs& o) {
  const int64_t B = p.B, n = p.n, d = p.d, TB = p.tile_b, TN = p.tile_n;
  const BcePlan plan = plan_bce(B, n, d, TB, TN);
  const int64_t NG = plan.n_groups, BG = plan.b_groups, items = NG * BG;
  // Partials, reduced below in group order. With one group the item writes the output directly.
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor dz_part = (o.dz && NG > 1) ? at::empty({NG, B, d}, f32) : at::Tensor();
  at::Tensor du_part = (o.dU && BG > 1) ? at::empty({BG, n, d}, f32) : at::Tensor();
  std::vector<float> db_part(o.db ? BG * n : 0, 0.0f);
  std::vector<double> rows_part(kLoss ? NG * B : 0, 0.0), cnt_part(kLoss ? items : 0, 0.0);
  std::vector<int64_t> bad_part(items, 0);

  // A lone item runs on the calling thread: waking a thread team costs more than a small head's arithmetic.
  at::parallel_for(0, items, items == 1 ? 2 : 1, [&](int64_t i0, int64_t i1) {
    const SingleThreadedBlas blas_guard;
    // Scratch sized to the problem (a small one must not pay for a 256 KiB tile), left uninitialized where
    // every entry is written before it is read.
    const int64_t tb_max = std::min(TB, B), tn_max = std::min(TN, n);
    const int64_t ldt = tn_max;  // leading dimension of the tile
    std::unique_ptr<float[]> scratch(new float[tb_max * ldt + 3 * tn_max]);
    float* tile = scratch.get();
    float* yrow = tile + tb_max * ldt;
    float* wrow = yrow + tn_max;
    float* db_scratch = wrow + tn_max;
    std::fill(db_scratch, db_scratch + tn_max, 0.0f);  // never read, but kept free of garbage NaNs
    // Sparse labels: per row, where its scan of the indices resumes at the item's next column tile (-1: search).
    std::vector<int64_t> cursors(p.labels.indptr != nullptr ? B : 1, -1);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t g = item % NG, bg = item / NG;
      const int64_t tn0 = g * plan.tiles_n / NG, tn1 = (g + 1) * plan.tiles_n / NG;
      const int64_t tb0 = bg * plan.tiles_b / BG, tb1 = (bg + 1) * plan.tiles_b / BG;
      if (p.labels.indptr != nullptr) {
        std::fill(cursors.begin() + std::min(B, tb0 * TB), cursors.begin() + std::min(B, tb1 * TB), int64_t{-1});
      }
      float* dz = o.dz ? (NG > 1 ? dz_part.data_ptr<float>() + g * B * d : o.dz) : nullptr;
      float* du = o.dU ? (BG > 1 ? du_part.data_ptr<float>() + bg * n * d : o.dU) : nullptr;
      double* rows = kLoss ? rows_part.data() + g * B : nullptr;
      double cnt = 0.0;
      int64_t bad = 0;
      for (int64_t tn = tn0; tn < tn1; ++tn) {
        const int64_t j0 = tn * TN, nj = std::min(TN, n - j0);
        const float* u = p.U + j0 * d;
        const float* bias = p.bias ? p.bias + j0 : nullptr;
        const ColumnOptions opt{p.pos_weight ? p.pos_weight + j0 : nullptr,
                                p.label_weight ? p.label_weight + j0 : nullptr, p.smooth_a, p.smooth_c};
        // Column sums of G go to this item's own slice of db_part (or to scratch nobody reads).
        float* db_acc = o.db ? db_part.data() + bg * n + j0 : db_scratch;
        for (int64_t tb = tb0; tb < tb1; ++tb) {
          const int64_t b0 = tb * TB, nb = std::min(TB, B - b0);
          const float* zb = p.z + b0 * d;
          gemm(false, true, nb, nj, d, zb, d, u, d, 0.0f, tile, ldt);  // L = z_b U_n^T
          auto cursor = [&](int64_t b) { return p.labels.indptr != nullptr ? cursors.data() + b : cursors.data(); };
          for (int64_t r = 0; r < std::min(kPrefetchRows, nb); ++r) {
            prefetch_label_row(p.labels, n, b0 + r, j0, nj, cursor(b0 + r));
          }
          for (int64_t r = 0; r < nb; ++r) {
            const int64_t b = b0 + r;
            if (r + kPrefetchRows < nb) {
              prefetch_label_row(p.labels, n, b + kPrefetchRows, j0, nj, cursor(b + kPrefetchRows));
            }
            const LabelRow lab = load_label_row(p.labels, n, b, j0, nj, yrow, wrow, cursor(b));
            const float scale = p.gscale ? p.gscale[b] : 1.0f;
            float* t = tile + r * ldt;
            double* row_loss = kLoss ? rows + b : nullptr;
            if (lab.w != nullptr) {
              epilogue_row<kLoss, true, kOpts>(t, bias, lab, nj, scale, db_acc, row_loss, &cnt, &bad, opt);
            } else {
              epilogue_row<kLoss, false, kOpts>(t, bias, lab, nj, scale, db_acc, row_loss, &cnt, &bad, opt);
            }
          }
          if (dz != nullptr)  // dz_b (+)= G U_n
            gemm(false, false, nb, d, nj, tile, ldt, u, d, tn == tn0 ? 0.0f : 1.0f, dz + b0 * d, d);
          if (du != nullptr)  // dU_n (+)= G^T z_b
            gemm(true, false, nj, d, nb, tile, ldt, zb, d, tb == tb0 ? 0.0f : 1.0f, du + j0 * d, d);
        }
      }
      if (kLoss) cnt_part[item] = cnt;
      bad_part[item] = bad;
    }
  });

  // Deterministic reductions, in group order.
  if (kLoss) {
    for (int64_t b = 0; b < B; ++b) {
      double s = 0.0;
      for (int64_t g = 0; g < NG; ++g) s += rows_part[g * B + b];
      if (o.rows) o.rows[b] = s;
    }
    double c = 0.0;
    for (int64_t i = 0; i < items; ++i) c += cnt_part[i];
    if (o.count) *o.count = c;
  }
  if (o.bad) {
    int64_t s = 0;
    for (int64_t i = 0; i < items; ++i) s += bad_part[i];
    *o.bad = s;
  }
  auto reduce = [](const float* part, int64_t parts, int64_t len, float* out) {
    at::parallel_for(0, len, 1 << 14, [&](int64_t a, int64_t e) {
      for (int64_t i = a; i < e; ++i) {
        float s = part[i];
        for (int64_t g = 1; g < parts; ++g) s += part[g * len + i];
        out[i] = s;
      }
    });
  };
  if (o.dz && NG > 1) reduce(dz_part.data_ptr<float>(), NG, B * d, o.dz);
  if (o.dU && BG > 1) reduce(du_part.data_ptr<float>(), BG, n * d, o.dU);
  if (o.db) reduce(db_part.data(), BG, n, o.db);
}

template <int kOpts>
void dual_bce_with(const BceProblem& p, const BceOutputs& o) {
  if (o.rows || o.count || o.bad) {
    dual_bce_impl<true, kOpts>(p, o);
  } else {
    dual_bce_impl<false, kOpts>(p, o);
  }
}

template <int... kAll>
void dual_bce_dispatch(int opts, const BceProblem& p, const BceOutputs& o, std::integer_sequence<int, kAll...>) {
  ((opts == kAll ? dual_bce_with<kAll>(p, o) : void()), ...);
}

}  // namespace

void dual_bce(const BceProblem& p, const BceOutputs& o) {
  const int opts = (p.pos_weight ? kPosWeight : 0) | (p.label_weight ? kLabelWeight : 0) | (p.soft ? kSoft : 0);
  dual_bce_dispatch(opts, p, o, std::make_integer_sequence<int, 8>{});
}

}  // namespace CPU_CAPABILITY
}  // namespace dualvae::cpu
