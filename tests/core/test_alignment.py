"""AVOpT: the OT loss against POT, its entropic solver's convergence, and its gradients."""

import numpy as np
import ot
import pytest
import torch

from meerkat_core.alignment import cosine_cost, ot_loss


def _pot_reference(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """POT's emd2 on a cosine cost computed independently in numpy."""
    out = []
    for xb, yb in zip(x.double().numpy(), y.double().numpy(), strict=True):
        xn = xb / np.linalg.norm(xb, axis=1, keepdims=True)
        yn = yb / np.linalg.norm(yb, axis=1, keepdims=True)
        cost = 1.0 - xn @ yn.T
        out.append(ot.emd2(np.full(len(xb), 1 / len(xb)), np.full(len(yb), 1 / len(yb)), cost))
    return np.array(out)


def test_cosine_cost_hand_case():
    x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    y = torch.tensor([[[3.0, 0.0], [-1.0, 0.0], [1.0, 1.0]]])
    expected = torch.tensor([[[0.0, 2.0, 1 - 2**-0.5], [1.0, 1.0, 1 - 2**-0.5]]])
    torch.testing.assert_close(cosine_cost(x, y), expected)


def test_exact_matches_pot_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 13, 8, generator=g, dtype=torch.float64)
    y = torch.randn(4, 7, 8, generator=g, dtype=torch.float64)
    ours = ot_loss(x, y, solver="exact").double().numpy()
    np.testing.assert_allclose(ours, _pot_reference(x, y), atol=1e-6, rtol=0)


def test_exact_hand_case_two_points():
    # One image token [1,0]; audio tokens [1,0] and [0,1] with mass 1/2 each:
    # all mass leaves the single source, cost = 0.5*0 + 0.5*1.
    x = torch.tensor([[[1.0, 0.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert ot_loss(x, y, solver="exact").item() == pytest.approx(0.5, abs=1e-7)


def test_sinkhorn_converges_to_exact_as_reg_shrinks():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 20, 16, generator=g)
    y = torch.randn(3, 12, 16, generator=g)
    exact = ot_loss(x, y, solver="exact")
    gaps = [
        (ot_loss(x, y, solver="sinkhorn", reg=reg, n_iters=5000, tol=1e-9) - exact).abs().max().item()
        for reg in (0.5, 0.1, 0.02, 0.005)
    ]
    assert gaps == sorted(gaps, reverse=True), gaps
    assert gaps[-1] < 5e-3, gaps
    assert gaps[0] > 10 * gaps[-1], gaps


@pytest.mark.parametrize("solver", ["exact", "sinkhorn"])
def test_identical_clouds_cost_about_zero(solver):
    x = torch.randn(2, 10, 6, generator=torch.Generator().manual_seed(2))
    loss = ot_loss(x, x.clone(), solver=solver, reg=0.01, n_iters=2000)
    assert loss.abs().max().item() < 1e-2


@pytest.mark.parametrize("solver", ["exact", "sinkhorn"])
def test_gradients_reach_both_feature_sets(solver):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 5, generator=g, requires_grad=True)
    y = torch.randn(2, 4, 5, generator=g, requires_grad=True)
    ot_loss(x, y, solver=solver).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert y.grad is not None and y.grad.abs().sum() > 0
    # a step against the gradient lowers the loss
    with torch.no_grad():
        before = ot_loss(x, y, solver=solver).sum()
        after = ot_loss(x - 0.1 * x.grad, y - 0.1 * y.grad, solver=solver).sum()
    assert after < before


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        ot_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 5))
    with pytest.raises(ValueError):
        ot_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), solver="magic")
