import pytest
import torch

from sae1n.mil.scan import (
    mamba_kernel,
    selective_scan,
    selective_scan_chunked,
    selective_scan_reference,
)


def _inputs(batch=2, dim=6, nstate=4, length=37, seed=0, decay_scale=5.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        u=r(batch, dim, length),
        delta=r(batch, dim, length),
        A=-torch.rand(dim, nstate, generator=g) * decay_scale,
        B=r(batch, nstate, length),
        C=r(batch, nstate, length),
        D=r(dim),
        z=r(batch, dim, length),
        delta_bias=r(dim),
    )


@pytest.mark.parametrize("group", [1, 5, 32, 64])
def test_chunked_scan_matches_naive_sequential_reference(group):
    x = _inputs()
    for t in x.values():
        t.requires_grad_(True)
    y, last = selective_scan_chunked(**x, delta_softplus=True, return_last_state=True, group=group)
    y_ref, last_ref = selective_scan_reference(**x, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-4)
    weight = torch.randn_like(y)
    names = list(x)
    grads = torch.autograd.grad((y * weight).sum(), [x[k] for k in names])
    grads_ref = torch.autograd.grad((y_ref * weight).sum(), [x[k] for k in names])
    for name, g, g_ref in zip(names, grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-3, msg=f"gradient of {name}")


def test_scan_edge_cases_and_dtype():
    x = _inputs(batch=1, dim=3, nstate=2, length=1)
    torch.testing.assert_close(selective_scan_chunked(**x), selective_scan_reference(**x))
    # strong decays (exp underflow) and no optional inputs
    x = _inputs(length=50, decay_scale=200.0)
    y = selective_scan_chunked(x["u"], x["delta"].abs(), x["A"], x["B"], x["C"])
    assert torch.isfinite(y).all()
    torch.testing.assert_close(
        y, selective_scan_reference(x["u"], x["delta"].abs(), x["A"], x["B"], x["C"])
    )
    half = selective_scan_chunked(x["u"].bfloat16(), x["delta"].abs(), x["A"], x["B"], x["C"])
    assert half.dtype == torch.bfloat16
    assert selective_scan_chunked(
        x["u"][..., :0], x["delta"][..., :0], x["A"], x["B"][..., :0], x["C"][..., :0]
    ).shape == (2, 6, 0)


def test_matches_float64_recurrence():
    x = _inputs(batch=1, dim=2, nstate=3, length=9)
    u, delta, A, B, C = (
        x["u"].double(),
        x["delta"].abs().double(),
        x["A"].double(),
        x["B"].double(),
        x["C"].double(),
    )
    h = torch.zeros(1, 2, 3, dtype=torch.float64)
    ys = []
    for t in range(9):  # the recurrence written out once more, in float64
        h = (
            torch.exp(delta[:, :, t, None] * A) * h
            + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        )
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    got = selective_scan_chunked(u, delta, A, B, C, group=4)
    assert got.dtype == torch.float64  # float32 inside, input dtype out
    torch.testing.assert_close(got, torch.stack(ys, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(
    mamba_kernel() is None or not torch.cuda.is_available(),
    reason="mamba-ssm CUDA kernels not installed",
)
def test_pure_scan_matches_mamba_ssm_kernel():  # pragma: no cover - needs CUDA + mamba-ssm
    x = {k: v.cuda() for k, v in _inputs(length=300).items()}
    y_kernel = selective_scan(**x, delta_softplus=True, impl="kernel")
    y_pure = selective_scan(**x, delta_softplus=True, impl="chunked")
    torch.testing.assert_close(y_pure, y_kernel, rtol=2e-3, atol=2e-3)


def test_auto_uses_pure_scan_on_cpu():
    x = _inputs(length=10)
    torch.testing.assert_close(
        selective_scan(**x), selective_scan_reference(**x), rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="unknown selective scan"):
        selective_scan(**x, impl="nope")
