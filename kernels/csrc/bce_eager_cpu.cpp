// dualvae::bce_cpu_eager: an eager CPU call of dual_bce or linear_bce ("sum" and "mean") as one C++ op with its
// autograd in C++. The Python ops (kernels/ops.py, kernels/linear_bce.py) check and stage the arguments and call
// this outside torch.compile; it runs dual_bce_cpu once (loss and, for a scalar loss, dz, dU and db) and a C++
// backward that scales them. What it saves is per-call overhead: the Python autograd Function, its context and a
// Python backward cost more than a 64 x 40 head's arithmetic. The arithmetic is the Python ops' own, op for op
// (their autograd setup and backward in kernels/ops.py and kernels/linear_bce.py), so the results are the same
// bits.
#include "fused_cpu.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace dualvae::cpu {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_nonnegative(const char* op, const char* name, const std::optional<at::Tensor>& w) {
  if (!w.has_value() || !w->is_floating_point() || w->numel() == 0) return;
  TORCH_CHECK_VALUE(at::all(w->ge(0)).item<bool>(), op, ": ", name, " must be >= 0 everywhere, got min ",
                    w->min().item<double>());
}

struct BceEager : public torch::autograd::Function<BceEager> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& z, const at::Tensor& U,
                            const std::optional<at::Tensor>& bias, const at::Tensor& labels,
                            const std::optional<at::Tensor>& mask, int64_t n, c10::string_view label_kind,
                            const std::optional<at::Tensor>& indptr, const std::optional<at::Tensor>& mask_rows,
                            int64_t mask_key, int64_t mask_threshold, int64_t mask_col_offset,
                            const std::optional<at::Tensor>& pos_weight, const std::optional<at::Tensor>& label_weight,
                            double label_smoothing, bool soft, bool mean, double loss_scale, bool check,
                            bool grad_mode) {
    const bool dense = label_kind == "dense";
    const char* op = soft ? "linear_binary_cross_entropy_with_logits" : "dual_bce";
    if (soft && check) {
      check_nonnegative(op, "pos_weight", pos_weight);
      check_nonnegative(op, "label_weight", label_weight);
      check_nonnegative(op, "mask", mask);
    }
    const bool need_dz = grad_mode && z.requires_grad();
    const bool need_dU = grad_mode && (U.requires_grad() || (bias.has_value() && bias->requires_grad()));
    // linear_bce's "mean" scale goes into the kernel (its gradients come out scaled); dual_bce's divides by the
    // observed count, known only after the pass, so its gradients are scaled in the backward.
    std::optional<at::Tensor> gscale;
    if (soft && loss_scale != 1.0) gscale = at::full({z.size(0)}, loss_scale, z.options().dtype(at::kFloat));
    auto [rows, count, bad, dz, dU, db] = dual_bce_cpu(
        z, U, labels, mask, bias, gscale, n, label_kind, indptr, mask_rows, mask_key, mask_threshold,
        mask_col_offset, /*need_loss=*/true, need_dz, need_dU, need_dU && bias.has_value(), pos_weight, label_weight,
        label_smoothing, soft);
    if (check && dense) {
      const int64_t nbad = bad.item<int64_t>();
      if (soft) {
        TORCH_CHECK_VALUE(nbad == 0, op, ": target must hold values in [0, 1], got ", nbad, " outside it");
      } else {
        TORCH_CHECK_VALUE(nbad == 0, op, ": y must hold labels in {0, 1}, got ", nbad, " values outside it");
      }
    }
    at::Tensor loss = rows.sum();
    if (soft) {
      if (loss_scale != 1.0) loss = loss * loss_scale;
    } else if (mean) {
      loss = loss / count.clamp_min(1.0);
    }
    ctx->save_for_backward({dz, dU, db, count});
    ctx->saved_data["soft"] = soft;
    ctx->saved_data["mean"] = mean;
    ctx->saved_data["need_dz"] = need_dz;
    ctx->saved_data["z_type"] = static_cast<int64_t>(z.scalar_type());
    ctx->saved_data["U_type"] = static_cast<int64_t>(U.scalar_type());
    ctx->saved_data["bias_type"] = static_cast<int64_t>(bias.has_value() ? bias->scalar_type() : at::kFloat);
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &dz_fwd = saved[0], &dU_fwd = saved[1], &db_fwd = saved[2], &count = saved[3];
    const bool soft = ctx->saved_data["soft"].toBool(), mean = ctx->saved_data["mean"].toBool();
    const auto z_type = static_cast<at::ScalarType>(ctx->saved_data["z_type"].toInt());
    const auto U_type = static_cast<at::ScalarType>(ctx->saved_data["U_type"].toInt());
    const auto b_type = static_cast<at::ScalarType>(ctx->saved_data["bias_type"].toInt());
    at::Tensor scale = grads[0].to(at::kFloat);
    bool unit = false;
    if (soft) {
      unit = scale.item<float>() == 1.0f;  // an eager loss.backward(): hand the gradients over unscaled
    } else if (mean) {
      scale = scale / count.clamp_min(1.0);
    }
    auto scaled = [&](const at::Tensor& t) { return unit ? t : scale * t; };
    variable_list out(20);
    if (ctx->saved_data["need_dz"].toBool()) {
      // dual_bce scales dz per row (its "none" shares the code): the same multiply, element for element
      out[0] = (soft ? scaled(dz_fwd) : scale.expand({dz_fwd.size(0)}).unsqueeze(1) * dz_fwd).to(z_type);
    }
    if (dU_fwd.dim() == 2) out[1] = scaled(dU_fwd).to(U_type);
    if (db_fwd.dim() == 1 && db_fwd.size(0) > 0) out[2] = scaled(db_fwd).to(b_type);
    return out;
  }
};

at::Tensor bce_cpu_eager(const at::Tensor& z, const at::Tensor& U, const std::optional<at::Tensor>& bias,
                         const at::Tensor& labels, const std::optional<at::Tensor>& mask, int64_t n,
                         c10::string_view label_kind, const std::optional<at::Tensor>& indptr,
                         const std::optional<at::Tensor>& mask_rows, int64_t mask_key, int64_t mask_threshold,
                         int64_t mask_col_offset, const std::optional<at::Tensor>& pos_weight,
                         const std::optional<at::Tensor>& label_weight, double label_smoothing, bool soft_targets,
                         c10::string_view reduction, double loss_scale, bool check, bool grad_mode) {
  TORCH_CHECK_VALUE(reduction == "sum" || reduction == "mean", "bce_cpu_eager: reduction must be 'sum' or 'mean'");
  return BceEager::apply(z, U, bias, labels, mask, n, label_kind, indptr, mask_rows, mask_key, mask_threshold,
                         mask_col_offset, pos_weight, label_weight, label_smoothing, soft_targets,
                         reduction == "mean", loss_scale, check, grad_mode);
}

}  // namespace
}  // namespace dualvae::cpu

// Its own autograd: one kernel for every dispatch key (the op takes CPU tensors; ops.py and linear_bce.py call it
// for backend "cpu" only, outside torch.compile).
TORCH_LIBRARY_IMPL(dualvae, CompositeImplicitAutograd, m) {
  m.impl("bce_cpu_eager", &dualvae::cpu::bce_cpu_eager);
}
