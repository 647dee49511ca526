"""One SAME adaptation step (SPEC section 5): teacher pseudo-labels, picker weights, student
distillation, Adam, EMA of the teacher. Host-synchronisation free.

Per batch (images in [-1, 1]):
1. teacher forward under ``no_grad`` (dropout on: ``teacher.train()``; its parameters have
   ``requires_grad=False``, so no teacher gradients are ever computed) -> ``y_T``, ``s_T``;
2. student forward -> ``y_S``, ``s_S`` (logits);
3. picker weights ``w`` (N,) in [0, 1] from ``(y_T, s_T)``; None accepts every sample;
4. loss = sum_i w_i [w_l1 L1_i + w_struct BCE_i(s_S, sigmoid(s_T)) + w_ssim (1 - SSIM_i)
   + w_entropy H_i] / max(sum w, 1), with H_i the mean binary entropy (bits) of sigmoid(s_S)
   of sample i: the entropy is minimised on accepted samples only (a rejected pseudo-label's
   structure is no more to be trusted than its image); with a field-of-view ``mask`` the L1 is
   taken inside it (the black border is not a restoration target);
5. Adam step on the student; 6. ``teacher <- ema * teacher + (1 - ema) * student`` (parameters).

Nothing here calls ``.item()``, indexes with booleans or copies to the CPU, so on CUDA the step
queues without waiting for the device; a fully rejected batch contributes zero distillation loss.
Randomness (dropout) comes from torch's global generator: seed it with ``torch.manual_seed``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from same_fast import ops
from same_fast.adapt.config import StepConfig
from same_fast.errors import InputError

__all__ = ["AdaptStep", "StepConfig", "distillation_losses"]

Picker = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_LN2 = math.log(2.0)


def distillation_losses(y_s: torch.Tensor, s_s: torch.Tensor, y_t: torch.Tensor,
                        s_t: torch.Tensor, w: torch.Tensor, config: StepConfig,
                        mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The loss of step 4 from both models' outputs and the picker weights.

    Args:
        y_s, y_t: student / teacher images (N, C, H, W) in [-1, 1].
        s_s, s_t: student / teacher structure logits (N, 1, H, W).
        w: (N,) weights in [0, 1] (treated as constants).
        mask: optional (N, 1, H, W) field of view in {0, 1}: the L1 is its mean inside it.
    Returns 0-d tensors ``loss, l1, struct, entropy, ssim`` (the picker-weighted means that
    were trained) and ``accepted`` (sum of weights).
    """
    w = w.detach().to(torch.float32)
    denom = w.sum().clamp_min(1.0)
    diff = (y_s - y_t).abs()
    if mask is None:
        l1_i = diff.flatten(1).mean(1).float()
    else:
        m = mask.detach().to(diff.dtype)
        inside = (m.flatten(1).sum(1) * diff.shape[1]).clamp_min(1.0)
        l1_i = ((diff * m).flatten(1).sum(1) / inside).float()
    bce_i = F.binary_cross_entropy_with_logits(
        s_s, torch.sigmoid(s_t), reduction="none").flatten(1).mean(1).float()
    per_sample = config.w_l1 * l1_i + config.w_struct * bce_i
    if config.w_ssim > 0.0:
        ssim_i = ops.ssim((y_s + 1.0) * 0.5, (y_t + 1.0) * 0.5, data_range=1.0)
        per_sample = per_sample + config.w_ssim * (1.0 - ssim_i)
        ssim_mean = (w * ssim_i).sum() / denom
    else:
        ssim_mean = torch.zeros((), device=y_s.device)
    distill = (w * per_sample).sum() / denom
    # Binary entropy from logits without log(0): -log p = softplus(-z), -log(1-p) = softplus(z).
    p = torch.sigmoid(s_s)
    ent_i = (p * F.softplus(-s_s) + (1.0 - p) * F.softplus(s_s)).flatten(1).mean(1).float() / _LN2
    entropy = (w * ent_i).sum() / denom
    loss = distill + config.w_entropy * entropy
    return {"loss": loss, "l1": (w * l1_i).sum() / denom, "struct": (w * bce_i).sum() / denom,
            "entropy": entropy, "ssim": ssim_mean, "accepted": w.sum()}


class AdaptStep:
    """Callable performing one adaptation step on a batch; owns the student's Adam optimizer.

    Args:
        student: the model being adapted; ``forward(x in [-1, 1]) -> (image, structure_logits)``.
        teacher: same architecture, initialised like the student; updated only by EMA.
        config: :class:`StepConfig`.
        picker: ``(y_T, s_T_logits) -> weights (N,)`` float on the device in [0, 1]; None
            accepts every sample.

    Both models' parameters are moved into flat buffers (identities kept) so the EMA is one
    pass over memory. The teacher's parameters get ``requires_grad=False``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: StepConfig | None = None,
                 picker: Picker | None = None) -> None:
        self.config = config or StepConfig()
        if not 0.0 <= self.config.ema <= 1.0:
            raise InputError(f"ema must be in [0, 1], got {self.config.ema}")
        self.student, self.teacher, self.picker = student, teacher, picker
        s_params, t_params = list(student.parameters()), list(teacher.parameters())
        if [p.shape for p in s_params] != [p.shape for p in t_params]:
            raise InputError("teacher and student must have the same parameter shapes")
        for p in t_params:
            p.requires_grad_(False)
        self._s_flat = ops.flatten_parameters_(student)
        self._t_flat = ops.flatten_parameters_(teacher)
        self._s_params, self._t_params = s_params, t_params
        self.optimizer = torch.optim.Adam(s_params, lr=self.config.lr, betas=self.config.betas,
                                          **_adam_impl(s_params))
        self._teacher_fn: Callable = self._teacher_forward
        self._student_fn: Callable = self._student_loss
        if self.config.compile:
            # Shapes are fixed per (batch, size), so on CUDA the compiled halves are captured as
            # CUDA graphs ("reduce-overhead"); on the CPU inductor emits C++ (needs a compiler).
            on_cuda = bool(s_params) and s_params[0].is_cuda
            mode = "reduce-overhead" if on_cuda else None
            self._teacher_fn = torch.compile(self._teacher_forward, dynamic=False, mode=mode)
            self._student_fn = torch.compile(self._student_loss, dynamic=False, mode=mode)

    # Split in two around the picker: the picker is user code (often another network) and would
    # break a compiled graph; each half compiles to one graph.
    def _teacher_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.teacher(x)

    def _student_loss(self, x: torch.Tensor, y_t: torch.Tensor, s_t: torch.Tensor,
                      w: torch.Tensor, mask: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
        y_s, s_s = self.student(x)
        return distillation_losses(y_s, s_s, y_t, s_t, w, self.config, mask)

    def __call__(self, x_teacher: torch.Tensor, x_student: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Adapt on one batch.

        Args:
            x_teacher: (N, C, H, W) float in [-1, 1], the view given to the teacher.
            x_student: the student's view (same shape); None gives it ``x_teacher`` (the
                reference's habit); a re-degraded view implements the SRTTA-style option.
            mask: optional (N, 1, H, W) field of view of the views; the L1 is taken inside it.
        Returns detached 0-d tensors ``loss, l1, struct, entropy, ssim, accepted`` and the
        ``weights`` (N,), all on the input's device.
        """
        if x_teacher.dim() != 4:
            raise InputError("adaptation expects (N, C, H, W) batches, got "
                             f"{tuple(x_teacher.shape)}")
        if x_student is None:
            x_student = x_teacher
        elif x_student.shape != x_teacher.shape:
            raise InputError("teacher and student views must have the same shape")
        cfg = self.config
        self.teacher.train(cfg.teacher_dropout)
        self.student.train()
        y_t, s_t = self._teacher_fn(x_teacher)
        if self.picker is None:
            w = torch.ones(x_teacher.shape[0], device=x_teacher.device)
        else:
            w = self.picker(y_t, s_t).detach().to(device=x_teacher.device,
                                                  dtype=torch.float32).reshape(-1)
        out = self._student_fn(x_student, y_t, s_t, w, mask)
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.optimizer.step()
        self.update_teacher()
        # Cloned: under CUDA graphs the compiled outputs live in memory the next replay reuses.
        result = {k: v.detach().clone() for k, v in out.items()}
        result["weights"] = w
        return result

    def update_teacher(self) -> None:
        """``teacher <- ema * teacher + (1 - ema) * student`` over parameters, in place."""
        if not (self._backs(self._s_flat, self._s_params)
                and self._backs(self._t_flat, self._t_params)):
            # Someone replaced parameter storage (e.g. ``model.to(device)``): flatten again.
            self._s_flat = ops.flatten_parameters_(self.student)
            self._t_flat = ops.flatten_parameters_(self.teacher)
        if self._s_flat is not None and self._t_flat is not None:
            ops.ema_(self._t_flat, self._s_flat, self.config.ema)
        else:
            ops.ema_(self._t_params, self._s_params, self.config.ema)

    @staticmethod
    def _backs(flat: torch.Tensor | None, params: list[torch.Tensor]) -> bool:
        """O(1) check that ``flat`` still holds ``params`` (first and last share its storage)."""
        if flat is None:
            return True
        ptr = flat.untyped_storage().data_ptr()
        return (params[0].untyped_storage().data_ptr() == ptr
                and params[-1].untyped_storage().data_ptr() == ptr)


def _adam_impl(params: list[torch.Tensor]) -> dict[str, bool]:
    """Fused Adam where torch has it for these tensors (CPU and CUDA float), else foreach."""
    if params and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params):
        return {"fused": True}
    return {"foreach": True}
