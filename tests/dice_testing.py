"""Helpers shared by the Dice-family tests."""

import math

import pytest
import torch


def make_labels(B, K, spatial, dtype=torch.int64, ignore_label=None, ignore_frac=0.25):
    """Random labels in [0, K), [B, *spatial]. Every class is present in every sample (the
    first K voxels hold 0..K-1 and are never ignored); with ``ignore_label`` about
    ``ignore_frac`` of the other voxels carry it."""
    n = math.prod(spatial)
    assert n >= K
    y = torch.randint(0, K, (B, n))
    if ignore_label is not None:
        y[torch.rand(B, n) < ignore_frac] = ignore_label
    y[:, :K] = torch.arange(K)
    return y.reshape(B, *spatial).to(dtype)


def num_classes(C):
    return 2 if C == 1 else C


def upstream_like(loss):
    """A non-trivial incoming gradient: checks that backward multiplies by it."""
    if loss.dim() == 0:
        return torch.tensor(1.3, dtype=loss.dtype)
    return torch.linspace(0.7, 1.3, loss.numel(), dtype=loss.dtype).reshape(loss.shape)


def value_and_grad(fn, x, y):
    """fn(x, y) and d(<upstream, fn>)/dx; x is used as given (layout kept)."""
    x = x.detach().requires_grad_(True) if x.is_leaf else x
    loss = fn(x, y)
    (g,) = torch.autograd.grad(loss, x, grad_outputs=upstream_like(loss))
    return loss.detach(), g


def assert_close(actual, expected, rtol, atol_frac=None, atol=0.0):
    """assert_close in float64; ``atol_frac`` sets atol relative to max |expected|."""
    actual = actual.detach().double()
    expected = expected.detach().double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if atol_frac is not None and expected.numel():
        atol = max(atol, atol_frac * expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def raises(exc, arg, value, fn="dice_loss"):
    """pytest.raises whose message names the function, the argument and the value (any order)."""
    return pytest.raises(exc, match=rf"(?s)^(?=.*{fn})(?=.*\b{arg}\b)(?=.*{value})")
