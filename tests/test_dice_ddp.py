"""Batch Dice under DDP (issue 13): two CPU processes with the gloo backend.

With ``distributed=True`` and ``reduction="batch"`` every rank must compute the loss of the
global batch, and after DDP averages the gradients the parameters must get exactly the
single-process gradient (the all-reduce's backward sums the ranks' gradients, which DDP's
averaging divides back by the world size). Bounded in time: the workers are killed after
TIMEOUT_S.
"""

import os
import tempfile
import time

import pytest
import torch
import torch.multiprocessing as mp

import seglosses

WORLD = 2
TIMEOUT_S = 60

LOSSES = [
    ("DiceLoss", dict(smooth=0.1, p=2), "softmax"),
    ("DiceCELoss", dict(smooth=0.1, ce_weight=[0.5, 1.0, 2.0], lambda_ce=0.7), "softmax"),
    ("GeneralizedDiceLoss", dict(smooth=0.1), "softmax"),
    ("TverskyLoss", dict(alpha=0.3, beta=0.7, smooth=0.1), "sigmoid"),
    ("DiceCELoss", dict(smooth=0.1), "sigmoid"),
]


def make_data():
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(2 * WORLD, 2, 6, 7, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (2 * WORLD, 6, 7, 8), generator=g)
    labels[0, 0] = 255  # some ignored voxels
    targets = torch.rand(2 * WORLD, 3, 6, 7, 8, generator=g, dtype=torch.float64) > 0.5
    mask = torch.rand(2 * WORLD, 1, 6, 7, 8, generator=g) > 0.2
    return inputs, labels, targets, mask


def make_model():
    torch.manual_seed(1)
    return torch.nn.Conv3d(2, 3, kernel_size=3, padding=1).double()


def loss_fn(name, kw, activation, **extra):
    kwargs = dict(kw, activation=activation, reduction="batch", **extra)
    if activation == "softmax":
        kwargs["ignore_label"] = 255
    return getattr(seglosses, name)(**kwargs)


def run_losses(inputs, labels, targets, mask, rank=None, distributed=False):
    """Per loss: (value, parameter gradients, input gradient) on this rank's part of the batch
    (everything when rank is None)."""
    sl = slice(None) if rank is None else slice(2 * rank, 2 * rank + 2)
    out = []
    for name, kw, activation in LOSSES:
        model = make_model()
        if distributed:
            model = torch.nn.parallel.DistributedDataParallel(model)
        x = inputs[sl].clone().requires_grad_()
        y = labels[sl] if activation == "softmax" else targets[sl]
        loss = loss_fn(name, kw, activation, distributed=distributed)(model(x), y, mask[sl])
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()], x.grad.clone()))
    return out


def _worker(rank, init_file, result_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.save(run_losses(*make_data(), rank=rank, distributed=True), os.path.join(result_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_batch_dice_is_the_global_batch_loss_and_gradient():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        ctx = mp.start_processes(_worker, args=(init_file, tmp), nprocs=WORLD, join=False, start_method="spawn")
        deadline = time.monotonic() + TIMEOUT_S
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    pytest.fail(f"the DDP workers did not finish within {TIMEOUT_S} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        results = [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(WORLD)]
    single = run_losses(*make_data())
    for i, (name, _, activation) in enumerate(LOSSES):
        loss, grads, x_grad = single[i]
        for rank in range(WORLD):
            r_loss, r_grads, r_x_grad = results[rank][i]
            # every rank computes the loss of the whole batch ...
            torch.testing.assert_close(r_loss, loss, rtol=1e-12, atol=1e-14, msg=f"{name} {activation} loss")
            # ... DDP's averaged parameter gradients are the single-process ones ...
            for g, rg in zip(grads, r_grads):
                torch.testing.assert_close(rg, g, rtol=1e-10, atol=1e-13, msg=f"{name} {activation} grads")
            # ... because each rank's inputs get world_size x their share (DDP divides by it)
            torch.testing.assert_close(r_x_grad, WORLD * x_grad[2 * rank:2 * rank + 2], rtol=1e-10, atol=1e-13)
    # the check has teeth: the local (non-distributed) batch Dice of a rank is not the global one
    local = run_losses(*make_data(), rank=0)
    assert not torch.allclose(local[0][0], single[0][0])
