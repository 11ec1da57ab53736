"""Mamba's selective scan (S6) in pure PyTorch, plus a naive reference.

The recurrence, per channel ``d`` and state ``n``::

    h[t] = exp(delta[t, d] * A[d, n]) * h[t-1] + delta[t, d] * B[t, n] * u[t, d]
    y[t, d] = sum_n C[t, n] * h[t, d, n] + D[d] * u[t, d]

Shapes follow ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` so
its CUDA kernel is a drop-in: ``u``, ``delta``, ``z`` are (batch, dim, L);
``A`` is (dim, state); ``B`` and ``C`` are (batch, state, L); ``D`` and
``delta_bias`` are (dim,).

:func:`selective_scan_chunked` never materialises the (L, dim, state) state
tensor: it walks the sequence in groups of a few dozen steps with small
reusable buffers, keeps only the state entering each group, and its hand-written
backward pass recomputes one group at a time before running the adjoint
recurrence. Memory is O(L * dim) and every pass stays in cache, which on CPU
is several times faster than materialising the states or a log-space scan.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

_GROUP = 32  # time steps per recomputation group (buffers of GROUP x dim x state)


@functools.lru_cache(maxsize=1)
def mamba_kernel():
    """``mamba_ssm``'s CUDA ``selective_scan_fn`` if importable, else None."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or built without CUDA
        return None
    return selective_scan_fn


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    impl="auto",
):
    """Selective scan; ``impl`` is ``auto`` (mamba-ssm kernel on CUDA when
    installed, else the pure-PyTorch chunked scan), ``kernel``, ``chunked``
    or ``reference``."""
    if impl == "auto":
        impl = "kernel" if (u.is_cuda and mamba_kernel() is not None) else "chunked"
    if impl == "kernel":
        fn = mamba_kernel()
        if fn is None:
            raise RuntimeError("mamba-ssm is not installed; use impl='chunked'")
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if impl == "chunked":
        return selective_scan_chunked(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    if impl == "reference":
        return selective_scan_reference(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    raise ValueError(f"unknown selective scan implementation {impl!r}")


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError("B and C must be input-dependent, shaped (batch, state, L)")
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A, B, C


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def selective_scan_reference(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
):
    """Naive sequential scan, one time step at a time (for tests)."""
    dtype = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    y = _finish(y, u, D, z, dtype)
    return (y, h) if return_last_state else y


class _SelectiveScanFn(torch.autograd.Function):
    """y[t] = C[t] . h[t] for h[t] = exp(delta[t] A) h[t-1] + delta[t] u[t] B[t].

    Inputs are (batch, L, dim) / (batch, L, state), float32, contiguous.
    Only the state entering each group of ``group`` steps is kept; the
    backward pass recomputes a group's states from it, then runs the adjoint
    recurrence backwards. Temporaries are (batch, group, dim, state) buffers
    reused across groups, so memory is O(L * dim) rather than O(L * dim * state).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, group: int):
        batch, length, dim = u.shape
        du = delta * u
        y = u.new_empty(batch, length, dim)
        n_groups = -(-length // group)
        starts = u.new_empty(n_groups, batch, dim, A.shape[1])
        bufs = _Buffers(u, group, dim, A.shape[1])
        h = u.new_zeros(batch, dim, A.shape[1])
        for gi, t0 in enumerate(range(0, length, group)):
            starts[gi].copy_(h)
            a, _, s = _recompute(bufs, delta, du, A, B, starts[gi], t0, min(group, length - t0))
            k = s.shape[1]
            y[:, t0 : t0 + k] = torch.einsum("btdn,btn->btd", s, C[:, t0 : t0 + k])
            h = s[:, -1]
        last = h.clone()
        ctx.save_for_backward(u, delta, A, B, C, starts)
        ctx.group = group
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, grad_y, _grad_last):
        u, delta, A, B, C, starts = ctx.saved_tensors
        group = ctx.group
        batch, length, dim = u.shape
        du = delta * u
        grad_y = grad_y.contiguous()
        g_u, g_delta = torch.empty_like(u), torch.empty_like(delta)
        g_B, g_C = torch.empty_like(B), torch.empty_like(C)
        g_A = torch.zeros_like(A)
        bufs = _Buffers(u, group, dim, A.shape[1])
        carry = None  # a[t+1] * dL/dh[t+1], entering the end of the current group
        for gi in reversed(range(starts.shape[0])):
            t0 = gi * group
            k = min(group, length - t0)
            sl = slice(t0, t0 + k)
            a, x, s = _recompute(bufs, delta, du, A, B, starts[gi], t0, k)
            g = bufs.grad[:, :k]
            torch.mul(grad_y[:, sl, :, None], C[:, sl, None, :], out=g)  # dL/dh from y
            if carry is not None:
                g[:, -1] += carry
            g_steps, a_steps = g.unbind(1), a.unbind(1)
            for j in range(k - 2, -1, -1):
                g_steps[j].addcmul_(a_steps[j + 1], g_steps[j + 1])
            carry = a[:, 0] * g[:, 0]
            g_C[:, sl] = torch.matmul(grad_y[:, sl, None, :], s)[:, :, 0]
            g_du = torch.einsum("btdn,btn->btd", g, B[:, sl])
            g_B[:, sl] = torch.matmul(du[:, sl, None, :], g)[:, :, 0]
            # dL/d(log decay) = dL/dh[t] * h[t-1] * a[t]; x is free to hold it now
            torch.mul(g[:, 1:], s[:, :-1], out=x[:, 1:])
            torch.mul(g[:, 0], starts[gi], out=x[:, 0])
            x.mul_(a)
            g_A += (x * delta[:, sl, :, None]).sum((0, 1))
            x.mul_(A)
            g_delta[:, sl] = x.sum(-1) + g_du * u[:, sl]
            g_u[:, sl] = g_du * delta[:, sl]
        return g_u, g_delta, g_A, g_B, g_C, None


class _Buffers:
    """Reusable (batch, group, dim, state) work buffers for one scan."""

    def __init__(self, like: torch.Tensor, group: int, dim: int, nstate: int):
        batch = like.shape[0]
        self.decay = like.new_empty(batch, group, dim, nstate)
        self.inp = like.new_empty(batch, group, dim, nstate)
        self.states = like.new_empty(batch, group, dim, nstate)
        self.grad = like.new_empty(batch, group, dim, nstate)


def _recompute(bufs: _Buffers, delta, du, A, B, h0, t0: int, k: int):
    """Decays, inputs and states of steps t0..t0+k-1 starting from ``h0``."""
    sl = slice(t0, t0 + k)
    a, x, s = bufs.decay[:, :k], bufs.inp[:, :k], bufs.states[:, :k]
    torch.mul(delta[:, sl, :, None], A, out=a)
    a.exp_()
    torch.mul(du[:, sl, :, None], B[:, sl, None, :], out=x)
    h = h0
    for x_j, a_j, s_j in zip(x.unbind(1), a.unbind(1), s.unbind(1)):
        h = torch.addcmul(x_j, a_j, h, out=s_j)
    return a, x, s


def selective_scan_chunked(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    group: int = _GROUP,
):
    """Pure-PyTorch scan (float32 inside, any device, autograd, O(L*dim) memory)."""
    dtype = u.dtype
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
        batch, dim, length = u.shape
        if length == 0:
            y, last = u.new_zeros(batch, dim, 0), u.new_zeros(batch, dim, A.shape[1])
        else:
            ut, dt = u.transpose(1, 2).contiguous(), delta.transpose(1, 2).contiguous()
            Bt, Ct = B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()
            y, last = _SelectiveScanFn.apply(ut, dt, A.contiguous(), Bt, Ct, int(group))
            y = y.transpose(1, 2)
        y = _finish(y, u, D, z, dtype)
    return (y, last) if return_last_state else y
