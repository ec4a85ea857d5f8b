"""Muon: the Newton-Schulz orthogonalisation and the optimizer step (renormalised weights, descent)."""

from __future__ import annotations

import pytest
import torch

from mlsd_assets.core.training.muon import Muon, orthogonalize


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(16, 144), (144, 16), (32, 32)])
def test_orthogonalize_flattens_the_spectrum(shape: tuple[int, int], dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    # a badly conditioned matrix: singular values spread over three orders of magnitude
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0], generator=g))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1], generator=g))
    k = min(shape)
    s = torch.logspace(0, -3, k)
    m = u[:, :k] @ torch.diag(s) @ v[:, :k].T
    out = orthogonalize(m, steps=5, dtype=dtype)
    assert out.shape == m.shape and out.dtype == dtype
    out = out.float()
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


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_newton_schulz_runs_in_bf16_only_where_bf16_is_native(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool
) -> None:
    """Without native bf16 (an AVX2 CPU) a bf16 matmul is a scalar fallback, 13x slower than fp32: Muon is made
    with fp32 there; and its step really computes in the dtype it was given."""
    from mlsd_assets.core.training import muon, steps
    from mlsd_assets.core.training.models import build_model
    from mlsd_assets.core.training.recipes import TrainConfig

    monkeypatch.setattr(steps, "bf16_is_fast", lambda device: native_bf16)
    optimizers = steps.make_optimizers(build_model("airbench", (8, 16, 16)), TrainConfig())
    (optimizer,) = [o for o in optimizers if isinstance(o, Muon)]
    expected = torch.bfloat16 if native_bf16 else torch.float32
    assert optimizer.ns_dtype == expected

    seen: list[torch.dtype] = []
    real = muon.orthogonalize
    monkeypatch.setattr(
        muon, "orthogonalize", lambda m, steps, dtype: seen.append(dtype) or real(m, steps, dtype=dtype)
    )
    for p in (p for g in optimizer.param_groups for p in g["params"]):
        p.grad = torch.randn_like(p)
    optimizer.step()
    assert seen and set(seen) == {expected}
