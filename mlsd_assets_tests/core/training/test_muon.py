"""Muon: the Newton-Schulz orthogonalisation and the optimizer step (renormalised weights, descent)."""

from __future__ import annotations

import pytest
import torch

from mlsd_assets.core.training.muon import Muon, orthogonalize


@pytest.mark.parametrize("shape", [(16, 144), (144, 16), (32, 32)])
def test_orthogonalize_flattens_the_spectrum(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    # a badly conditioned matrix: singular values spread over three orders of magnitude
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g))
    k = min(shape)
    s = torch.logspace(0, -3, k)
    m = u[:, :k] @ torch.diag(s) @ v[:, :k].T
    out = orthogonalize(m, steps=5).float()
    assert out.shape == m.shape
    sv = torch.linalg.svdvals(out)
    assert sv.max() < 1.6 and sv[: k // 2].min() > 0.5  # the large half lands near 1, none blows up
    assert torch.linalg.svdvals(m)[0] / torch.linalg.svdvals(m)[k // 2] > 10  # ... which the input was far from


def test_orthogonalize_rejects_non_matrices() -> None:
    with pytest.raises(ValueError, match="2-d"):
        orthogonalize(torch.ones(3, 3, 3))


def test_muon_step_renormalises_and_descends() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4, 3, 3) * 5)
    target = torch.randn(8, 4, 3, 3)
    opt = Muon([w], lr=0.05, momentum=0.6)
    losses = []
    for _ in range(20):
        loss = ((w - target) ** 2).sum()
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[1] * 0.8  # step 0 also rescales the weight, so compare from step 1
    # every step first sets the Frobenius norm to sqrt(rows); one lr-sized update moves it by little
    assert abs(float(w.detach().norm()) - 8**0.5) < 0.05 * 3 * 8**0.5


def test_muon_rejects_vectors() -> None:
    b = torch.nn.Parameter(torch.ones(4))
    b.grad = torch.ones(4)
    with pytest.raises(ValueError, match="not a matrix"):
        Muon([b]).step()
