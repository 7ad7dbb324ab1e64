"""AVOpT: the patch-level optimal-transport alignment loss of the paper's Eq. 1-2.

Each image and each audio clip is a discrete distribution over its patch tokens with uniform weights
(``u_I = 1/M``, ``u_A = 1/N``); the loss is the Wasserstein distance between the two under the
cosine-distance cost ``φ(z_I(k), z_A(l)) = 1 - cos(z_I(k), z_A(l))``:

    L_OT = min_{Ω ∈ Ψ(u_I, u_A)} Σ_kl Ω_kl φ(z_I(k), z_A(l))

Which features: the encoders are frozen, so an OT loss on their raw outputs (as the authors' public
code does) has no gradient path and trains nothing. :class:`~meerkat_core.model.MeerkatModel` calls
:func:`ot_loss` on the *trainable* projections of the two token sets into AVACE's shared space,
taken before the cross-modal attention mixes the modalities (``AVACEOutput.img_proj`` /
``aud_proj``); the gradient reaches those projections and, through them, the LLM's inputs.

Two solvers, both returning ``<Ω*, C>`` with the gradient ``∂L/∂C = Ω*`` (the envelope theorem: the
optimal plan is held fixed, exactly what POT's ``emd2`` back-propagates):

* ``"exact"``: POT's network simplex (``ot.emd2``), one sample at a time on the CPU; the paper's
  sparse plan with at most ``M + N - 1`` non-zeros.
* ``"sinkhorn"``: POT's batched log-domain Sinkhorn (``ot.batch.solve_batch``) on all samples at once,
  on whatever device the features are; the plan is entropic (dense) and its transport cost tends to
  the exact one as ``reg`` shrinks. Faster for training; the ratio is measured in
  ``tests/benchmarks/test_ot_bench.py``.
"""

from __future__ import annotations

import ot
import ot.batch
import torch
import torch.nn.functional as F


def cosine_cost(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine distance between every pair of tokens: ``[B, M, D] x [B, N, D] -> [B, M, N]`` in [0, 2]."""
    xn = F.normalize(x, dim=-1, eps=eps)
    yn = F.normalize(y, dim=-1, eps=eps)
    return 1.0 - torch.bmm(xn, yn.transpose(1, 2))


def _exact_plan_cost(cost: torch.Tensor) -> torch.Tensor:
    """``[B, M, N] -> [B]`` with POT's exact solver; differentiable in ``cost``."""
    batch, m, n = cost.shape
    out = []
    for b in range(batch):
        c = cost[b].double()  # the network simplex wants float64 to meet its tolerances
        a = torch.full((m,), 1.0 / m, dtype=c.dtype, device=c.device)
        w = torch.full((n,), 1.0 / n, dtype=c.dtype, device=c.device)
        out.append(ot.emd2(a, w, c))
    return torch.stack(out).to(cost.dtype)


def _sinkhorn_plan_cost(cost: torch.Tensor, reg: float, n_iters: int, tol: float) -> torch.Tensor:
    """``[B, M, N] -> [B]`` with POT's batched log-domain Sinkhorn; the plan is held fixed."""
    with torch.no_grad():
        res = ot.batch.solve_batch(
            cost.detach().float(), reg=reg, max_iter=n_iters, tol=tol, method="log_sinkhorn", grad="detach"
        )
        plan = res.plan.to(cost.dtype)  # [B, M, N]
    return (plan * cost).sum(dim=(1, 2))


def ot_loss(
    z_img: torch.Tensor,
    z_aud: torch.Tensor,
    *,
    solver: str = "exact",
    reg: float = 0.05,
    n_iters: int = 100,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Per-sample Wasserstein distance between image and audio token clouds (Eq. 1-2).

    Args:
        z_img: ``[B, M, D]`` image patch features.
        z_aud: ``[B, N, D]`` audio patch features (same D).
        solver: ``"exact"`` (POT ``emd2``) or ``"sinkhorn"`` (batched entropic, see module docstring).
        reg: entropic regulariser for ``"sinkhorn"``, in units of the cosine cost.
        n_iters: Sinkhorn iterations at most.
        tol: Sinkhorn stopping tolerance on the marginals.

    Returns:
        ``[B]`` transport costs in [0, 2], differentiable in both feature sets.
    """
    if (
        z_img.ndim != 3
        or z_aud.ndim != 3
        or z_img.shape[0] != z_aud.shape[0]
        or z_img.shape[-1] != z_aud.shape[-1]
    ):
        raise ValueError(
            f"ot_loss wants [B, M, D] and [B, N, D]; got {tuple(z_img.shape)} and {tuple(z_aud.shape)}"
        )
    if z_img.shape[0] == 0:
        return z_img.new_zeros(0)
    cost = cosine_cost(z_img.float(), z_aud.float())  # [B, M, N]
    if solver == "exact":
        return _exact_plan_cost(cost)
    if solver == "sinkhorn":
        return _sinkhorn_plan_cost(cost, reg, n_iters, tol)
    raise ValueError(f"unknown OT solver {solver!r}; expected 'exact' or 'sinkhorn'")
