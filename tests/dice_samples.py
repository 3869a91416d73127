"""The sample-inputs table of the Dice-family ops (``seglosses::dice_sums`` and
``seglosses::dice_sigmoid_sums``, with their backward ops), shared by the CPU and the CUDA tests.

``sample_inputs(device)`` gives the small cases (fast on a 2-core CPU; compared with the
float64 reference there). ``big_samples()`` lists the cases that only make sense on a GPU
(millions of voxels, 70,000 samples, 300 classes on big volumes, fp16 [2, 40, 256^3]) as lazy
builders; the CUDA tests compare those with the CPU kernels. The cases cover, sparsely rather than as a full
product: every logit dtype, C in {1, 2, 3, 8, 9, 40, 41, 300}, p in {1, 2, 3, 5}, every label
dtype, ignore_label -1 / 255 / 0, y as [B, *] and [B, 1, *], 1-D / 2-D / 3-D, S in {1, 255, 1025,
2^20 + 17, 3 * 2^20 + 5}, masks, the cross-entropy rows, and the layouts contiguous,
channels_last, a channel slice of a NaN-padded larger tensor (a stray read shows as NaN),
transposed, expanded; empty B and S.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional, Tuple

import torch

LOGIT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
LABEL_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                torch.uint64]
TARGET_DTYPES = [torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64]


@dataclasses.dataclass
class Sample:
    """One call of a sums op: ``dice_sums(x, y, mask, ignore_label, p, with_ce, ...)`` or
    ``dice_sigmoid_sums(x, y, mask, p, with_ce, ...)``."""

    name: str
    op: str  # "dice_sums" or "dice_sigmoid_sums"
    x: torch.Tensor
    y: torch.Tensor
    mask: Optional[torch.Tensor] = None
    ignore_label: int = -1
    p: int = 1
    with_ce: bool = False

    def sums(self, validate: bool = False) -> torch.Tensor:
        ops = torch.ops.seglosses
        if self.op == "dice_sums":
            return ops.dice_sums(self.x, self.y, self.mask, self.ignore_label, self.p, self.with_ce, validate,
                                 "dice_loss")
        return ops.dice_sigmoid_sums(self.x, self.y, self.mask, self.p, self.with_ce, validate, "dice_loss")

    def backward(self, grad_sums: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.seglosses
        if self.op == "dice_sums":
            return ops.dice_backward(self.x, self.y, self.mask, grad_sums, self.ignore_label, self.p)
        return ops.dice_sigmoid_backward(self.x, self.y, self.mask, grad_sums, self.p)

    def sums_args(self, validate: bool = False):
        if self.op == "dice_sums":
            return (self.x, self.y, self.mask, self.ignore_label, self.p, self.with_ce, validate, "dice_loss")
        return (self.x, self.y, self.mask, self.p, self.with_ce, validate, "dice_loss")

    def backward_args(self, grad_sums):
        if self.op == "dice_sums":
            return (self.x, self.y, self.mask, grad_sums, self.ignore_label, self.p)
        return (self.x, self.y, self.mask, grad_sums, self.p)

    @property
    def num_classes(self) -> int:
        return 2 if self.op == "dice_sums" and self.x.shape[1] == 1 else self.x.shape[1]

    @property
    def rows(self) -> int:
        return 4 if self.op == "dice_sums" else 6

    def to(self, device) -> "Sample":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return dataclasses.replace(self, x=mv(self.x), y=mv(self.y), mask=mv(self.mask))


def _gen(seed: int, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _randn(shape, g, dtype):
    """Standard normal values rounded to dtype (drawn in float32 unless dtype is float64)."""
    draw = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.randn(shape, generator=g, dtype=draw, device=g.device).to(dtype)


def _logits(device, shape, dtype, seed, layout="contiguous", scale=3.0) -> torch.Tensor:
    """x of `shape` in the given memory layout."""
    g = _gen(seed, device)
    B, C, spatial = shape[0], shape[1], tuple(shape[2:])
    if layout == "slice":  # channels [1, 1 + C) of a NaN-padded [B, C + 3, *] tensor
        big = torch.full((B, C + 3) + spatial, float("nan"), dtype=dtype, device=device)
        big[:, 1:1 + C] = _randn((B, C) + spatial, g, dtype) * scale
        return big[:, 1:1 + C]
    if layout == "transposed":  # the last two spatial dims swapped in memory
        t = _randn((B, C) + spatial[:-2] + (spatial[-1], spatial[-2]), g, dtype) * scale
        return t.transpose(-1, -2)
    if layout == "expanded":  # one sample expanded over the batch (stride 0)
        t = _randn((1, C) + spatial, g, dtype) * scale
        return t.expand((B, C) + spatial)
    x = _randn(shape, g, dtype) * scale
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


def _labels(device, B, K, spatial, dtype, ignore_label, seed, with_channel=False, bad_frac=0.0) -> torch.Tensor:
    """Labels in [0, K) with ~20 % ignore_label (when the dtype holds it) and every class present
    where the volume allows; with bad_frac, some labels outside [0, K)."""
    g = _gen(seed, device)
    n = math.prod(spatial)
    y = torch.randint(0, K, (B, n), generator=g, device=device)
    y[:, :min(K, n)] = torch.arange(min(K, n), device=device)
    info = torch.iinfo(dtype)
    if info.min <= ignore_label <= info.max:
        y[torch.rand(B, n, generator=g, device=device) < 0.2] = ignore_label
        y[:, :min(K, n)] = torch.arange(min(K, n), device=device)
    if bad_frac:
        bad = torch.rand(B, n, generator=g, device=device) < bad_frac
        y[bad] = min(K + 3, info.max)
    y = y.reshape((B,) + tuple(spatial)).to(dtype)
    return y.unsqueeze(1) if with_channel else y


def _mask(device, shape, seed, dtype=torch.bool) -> torch.Tensor:
    m = torch.rand(shape, generator=_gen(seed, device), device=device) > 0.25
    return m.to(dtype)


def _targets(device, shape, dtype, seed) -> torch.Tensor:
    g = _gen(seed, device)
    if dtype in (torch.bool, torch.uint8):
        return (torch.rand(shape, generator=g, device=device) > 0.6).to(dtype)
    return torch.rand(shape, generator=g, dtype=torch.float64, device=device).to(dtype)


def _spatial(S: int, ndim: int):
    """A spatial shape with S voxels and ndim dims (factors of S where possible)."""
    if ndim == 1 or S <= 1:
        return (S,) + (1,) * (ndim - 1)
    for a in range(int(round(S ** (1 / ndim))), 0, -1):
        if S % a == 0:
            return (a,) + _spatial(S // a, ndim - 1)
    return (S,) + (1,) * (ndim - 1)


def label_samples(d="cpu") -> List[Sample]:
    out: List[Sample] = []
    # C sweep, with the other dimensions rotating.
    ignores = [-1, 255, 0]
    for i, C in enumerate([1, 2, 3, 8, 9, 40, 41, 300]):
        K = 2 if C == 1 else C
        dtype = LOGIT_DTYPES[i % 4]
        ldtype = LABEL_DTYPES[i % len(LABEL_DTYPES)]
        ndim = 1 + i % 3
        S = [300, 255, 1025, 343][i % 4] if C < 300 else 64
        spatial = _spatial(S, ndim)
        ign = ignores[i % 3]
        y = _labels(d, 2, K, spatial, ldtype, ign, seed=100 + i, with_channel=bool(i % 2))
        mask = _mask(d, (2,) + spatial, seed=200 + i) if i % 3 == 1 else None
        out.append(Sample(f"C{C}-{str(dtype)[6:]}-{str(ldtype)[6:]}-{ndim}d", "dice_sums",
                          _logits(d, (2, C) + spatial, dtype, seed=i), y, mask, ign, p=[1, 2, 3, 5][i % 4],
                          with_ce=bool((i + 1) % 2)))
    # S sweep (1, 255, 1025 here; the GPU-sized ones below).
    for j, S in enumerate([1, 255, 1025]):
        spatial = _spatial(S, 2)
        out.append(Sample(f"S{S}", "dice_sums", _logits(d, (3, 3) + spatial, torch.float32, seed=20 + j),
                          _labels(d, 3, 3, spatial, torch.int64, 255, seed=30 + j), None, 255, p=2, with_ce=True))
    # layouts of x (and y), 2-D and 3-D
    for j, layout in enumerate(["channels_last", "slice", "transposed", "expanded"]):
        spatial = (5, 6, 7) if j % 2 else (9, 11)
        C = 4 if j < 3 else 3
        y = _labels(d, 2, C, spatial, torch.int32, 255, seed=40 + j)
        if layout == "transposed":
            y = y.transpose(-1, -2).contiguous().transpose(-1, -2)
        if layout == "expanded":
            y = y[:1].expand((2,) + spatial)
        mask = _mask(d, (2, 1) + spatial, seed=50 + j, dtype=torch.float32) if j % 2 == 0 else None
        out.append(Sample(f"layout-{layout}", "dice_sums", _logits(d, (2, C) + spatial, torch.float64, seed=60 + j, layout=layout),
                          y, mask, 255, p=1 + j % 2, with_ce=True))
    # a mask broadcast over the batch, bad labels (validation off: they count nowhere)
    out.append(Sample("mask-broadcast-batch", "dice_sums", _logits(d, (3, 3, 8, 9), torch.float32, seed=70),
                      _labels(d, 3, 3, (8, 9), torch.uint8, 255, seed=71), _mask(d, (1, 8, 9), seed=72, dtype=torch.uint8),
                      255, p=1, with_ce=True))
    out.append(Sample("bad-labels", "dice_sums", _logits(d, (2, 3, 40), torch.float32, seed=73),
                      _labels(d, 2, 3, (40,), torch.int16, -1, seed=74, bad_frac=0.1), None, -1, p=2, with_ce=True))
    # empty batch and empty volume
    out.append(Sample("empty-B", "dice_sums", torch.randn(0, 3, 4, 5, device=d), torch.zeros(0, 4, 5, dtype=torch.long, device=d),
                      None, -1, 1, True))
    out.append(Sample("empty-S", "dice_sums", torch.randn(2, 3, 0, 5, device=d), torch.zeros(2, 0, 5, dtype=torch.long, device=d),
                      None, -1, 1, True))
    return out


def sigmoid_samples(d="cpu") -> List[Sample]:
    out: List[Sample] = []
    for i, C in enumerate([1, 3, 8]):
        for j, tdtype in enumerate(TARGET_DTYPES):
            k = i * len(TARGET_DTYPES) + j
            if k % 2:  # half of the cross product
                continue
            dtype = LOGIT_DTYPES[k % 4]
            spatial = _spatial([97, 255, 343][k % 3], 1 + k % 3)
            shape = (2, C) + spatial
            mask = None
            if k % 3 == 1:
                mask = _mask(d, (2, 1) + spatial, seed=300 + k)
            elif k % 3 == 2:
                mask = _mask(d, shape, seed=300 + k, dtype=torch.float16)
            out.append(Sample(f"sigmoid-C{C}-{str(tdtype)[6:]}-{str(dtype)[6:]}", "dice_sigmoid_sums",
                              _logits(d, shape, dtype, seed=310 + k), _targets(d, shape, tdtype, 320 + k), mask,
                              p=[1, 2, 3, 5][k % 4], with_ce=bool(k % 4 < 2)))
    for j, layout in enumerate(["channels_last", "slice", "transposed", "expanded"]):
        spatial = (5, 6, 7) if j % 2 else (9, 11)
        shape = (2, 3) + spatial
        t = _targets(d, shape, torch.uint8, 330 + j)
        if layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
        out.append(Sample(f"sigmoid-layout-{layout}", "dice_sigmoid_sums",
                          _logits(d, shape, torch.float64, seed=340 + j, layout=layout), t,
                          _mask(d, (2, 1) + spatial, seed=350 + j) if j % 2 else None, p=1 + j % 2, with_ce=True))
    bad = _targets(d, (2, 2, 30), torch.float32, 360)
    bad[0, 1, 3] = 1.5
    bad[1, 0, 7] = float("nan")
    out.append(Sample("sigmoid-bad-targets", "dice_sigmoid_sums", _logits(d, (2, 2, 30), torch.float32, seed=361), bad,
                      None, p=1, with_ce=True))
    out.append(Sample("sigmoid-empty-B", "dice_sigmoid_sums", torch.randn(0, 2, 4, 5, device=d),
                      torch.zeros(0, 2, 4, 5, dtype=torch.bool, device=d), None, 1, True))
    out.append(Sample("sigmoid-empty-S", "dice_sigmoid_sums", torch.randn(2, 2, 0, device=d),
                      torch.zeros(2, 2, 0, dtype=torch.bool, device=d), None, 1, True))
    return out


def big_samples() -> List[Tuple[str, Callable[[str], Sample]]]:
    """The GPU-sized samples, as (name, build(device)): built only when a test runs them, on the
    device (the CUDA tests copy them to the CPU for the comparison)."""
    specs: List[Tuple[str, Callable[[str], Sample]]] = []
    for j, S in enumerate([2**20 + 17, 3 * 2**20 + 5]):
        spatial = _spatial(S, 3)
        specs.append((f"S{S}", lambda d, j=j, S=S, spatial=spatial: Sample(
            f"S{S}", "dice_sums", _logits(d, (2, 3) + spatial, torch.float32, seed=80 + j),
            _labels(d, 2, 3, spatial, torch.uint8, 255, seed=82 + j), _mask(d, (2,) + spatial, seed=84 + j),
            255, p=2, with_ce=True)))
        specs.append((f"sigmoid-S{S}", lambda d, j=j, S=S, spatial=spatial: Sample(
            f"sigmoid-S{S}", "dice_sigmoid_sums", _logits(d, (2, 3) + spatial, torch.float16, seed=370 + j),
            _targets(d, (2, 3) + spatial, torch.uint8, 372 + j), _mask(d, (2, 1) + spatial, seed=374 + j),
            p=2, with_ce=True)))
    specs += [
        ("C300-big", lambda d: Sample("C300-big", "dice_sums", _logits(d, (2, 300, 64, 64, 16), torch.float16, seed=86),
                                      _labels(d, 2, 300, (64, 64, 16), torch.int16, -1, seed=87), None, -1, p=1,
                                      with_ce=True)),
        ("C41-big-bf16", lambda d: Sample("C41-big-bf16", "dice_sums",
                                          _logits(d, (2, 41, 33, 65, 129), torch.bfloat16, seed=88),
                                          _labels(d, 2, 41, (33, 65, 129), torch.int32, 0, seed=89), None, 0, p=3,
                                          with_ce=True)),
        ("B70000", lambda d: Sample("B70000", "dice_sums", _logits(d, (70000, 2, 5), torch.float32, seed=90),
                                    _labels(d, 70000, 2, (5,), torch.int64, 255, seed=91), None, 255, p=1,
                                    with_ce=True)),
        ("sigmoid-B70000", lambda d: Sample("sigmoid-B70000", "dice_sigmoid_sums",
                                            _logits(d, (70000, 2, 5), torch.float32, seed=376),
                                            _targets(d, (70000, 2, 5), torch.float32, 377), None, p=1, with_ce=True)),
        ("fp16-2x40x256^3", lambda d: Sample("fp16-2x40x256^3", "dice_sums",
                                             _logits(d, (2, 40, 256, 256, 256), torch.float16, seed=92),
                                             _labels(d, 2, 40, (256, 256, 256), torch.uint8, 255, seed=93), None, 255,
                                             p=2, with_ce=False)),
    ]
    return specs


def sample_inputs(device="cpu") -> List[Sample]:
    """The small samples of both ops, built on `device` (fast on a 2-core CPU)."""
    return label_samples(device) + sigmoid_samples(device)
