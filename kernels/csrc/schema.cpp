// The dualvae:: op schemas of the compiled library, declared once. Implementations are registered per dispatch
// key (TORCH_LIBRARY_IMPL(dualvae, CPU, m) in this folder). The public ops dualvae::dual_bce and
// dualvae::reparameterize_kl (+ _backward) are defined in kernels/ops.py, next to the Triton kernels; with
// backend="cpu" they call the *_cpu ops below.
#include <torch/library.h>

TORCH_LIBRARY(dualvae, m) {
  // Per-row KL(N(mu, exp(logvar)) || N(0, I)) = -1/2 * sum_k (1 + logvar - mu^2 - exp(logvar)).
  m.def("kl_standard_normal(Tensor mu, Tensor logvar) -> Tensor");
  // z = mu + exp(logvar / 2) * eps and kl (B,) float32; eps None: Philox normals (seed, offset + k).
  m.def("reparameterize_kl_cpu(Tensor mu, Tensor logvar, Tensor? eps, int seed, int offset) -> (Tensor, Tensor)");
  // (dmu, dlogvar, deps or an empty tensor); eps None: the forward's eps, regenerated from (seed, offset).
  m.def("reparameterize_kl_backward_cpu(Tensor dz, Tensor dkl, Tensor mu, Tensor logvar, Tensor? eps, int seed, "
        "int offset, bool need_deps) -> (Tensor, Tensor, Tensor)");
  // Masked dual-head BCE over tiles of L = z U^T + b, never stored whole. label_kind "dense": labels = (B, n) y
  // (any real dtype) with an optional (B, n) mask weight; "packed": int32 words (B, ceil(n/16)) carrying the
  // mask; "sparse": labels = CSR positives, int32 or int64 indices (nnz,) with int64 indptr (B + 1,), each row
  // strictly increasing in [0, n), with an optional dense mask. mask_rows (int64 (B,)) given: the hashed mask,
  // entry (b, j) observed iff h(mask_rows[b], mask_col_offset + j) >= mask_threshold (in [0, 2**32]) under the
  // uint32 mask_key (kernels/reference.py hashed_observed); not with a dense mask or packed labels.
  // G = gscale_row * mask * (sigmoid(L) - y). Returns (rows (B,) f32 per-row loss or empty, count () f32,
  // bad () int64 = dense labels outside {0, 1}, dz = G U (B, d), dU = G^T z (n, d), db = column sums of G (n,)),
  // each f32 or empty when not asked for. linear_bce's options (kernels/linear_bce.py): soft_targets takes targets
  // t = y (1 - label_smoothing) + label_smoothing / 2 anywhere in [0, 1] (bad then counts y outside [0, 1]);
  // pos_weight (n,) gives loss (1 - t) L + (1 + (p - 1) t) softplus(-L) and G = (1 + (p - 1) t) sigmoid(L) - p t;
  // label_weight (n,) multiplies each column like the mask.
  m.def("dual_bce_cpu(Tensor z, Tensor U, Tensor labels, Tensor? mask, Tensor? bias, Tensor? gscale, int n, "
        "str label_kind, Tensor? indptr, Tensor? mask_rows, int mask_key, int mask_threshold, int mask_col_offset, "
        "bool need_loss, bool need_dz, bool need_dU, bool need_db, Tensor? pos_weight=None, "
        "Tensor? label_weight=None, float label_smoothing=0.0, bool soft_targets=False) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // An eager CPU call of dual_bce (soft_targets False) or linear_bce (True), reduction "sum" or "mean", with its
  // autograd in C++ (bce_eager_cpu.cpp): the arguments of dual_bce_cpu as the Python ops stage them; loss_scale:
  // linear_bce's 1 / (B n) for "mean"; check: raise on bad labels and (linear_bce) negative weights; grad_mode:
  // torch.is_grad_enabled() of the caller. Returns the loss, fp32 ().
  m.def("bce_cpu_eager(Tensor z, Tensor U, Tensor? bias, Tensor labels, Tensor? mask, int n, str label_kind, "
        "Tensor? indptr, Tensor? mask_rows, int mask_key, int mask_threshold, int mask_col_offset, "
        "Tensor? pos_weight, Tensor? label_weight, float label_smoothing, bool soft_targets, str reduction, "
        "float loss_scale, bool check, bool grad_mode) -> Tensor");
  // The build of the fused CPU kernels that runs in this process: "default", "avx2" or "avx512".
  m.def("cpu_isa() -> str");
}
