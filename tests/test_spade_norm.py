"""Parity of the Triton SPADE normalization with the reference, the reference's own gradients,
synchronized batch norm over two gloo processes, and the dispatch contract.

By default the Triton kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1`` from
conftest.py), where each launched program costs ~30 ms: tensors are small and blocks are large. On a
CUDA machine, ``TRITON_INTERPRET=0 pytest tests/test_spade_norm.py`` runs the parity tests on the GPU
with the compiled kernels (the two-process sync test always uses CPU, gloo and the interpreter).
"""
import os
import warnings

import pytest
import torch
import torch.multiprocessing as mp

from sbgan_fast import ops
from sbgan_fast.ops import _dispatch
from sbgan_fast.ops import _triton
from sbgan_fast.nn import SyncBatchNorm2d
from sbgan_fast.ops.spade_norm import merge_process_stats, merge_stats, spade_norm_ref, sync_batch_stats
from tolerances import FP32_LOOSE_SUM, FP32_STATS_OF_1E4_MEAN, tol

pytest.importorskip("triton")

from triton_common import DEVICE, DTYPES, _default_device, needs_interpreter  # noqa: E402,F401


@pytest.fixture
def on_cpu(_default_device):
    """For tests about CPU semantics (or CPU-only gloo): tensors on CPU whatever DEVICE is."""
    torch.set_default_device("cpu")
    yield


def _inputs(shape, dtype, layout="nchw", offset=0.5, scale=2.0):
    """x (mean ``offset``, std ``scale``), gamma, beta of the given shape/dtype/layout, as leaves."""
    x = torch.randn(shape) * scale + offset
    gamma = torch.randn(shape) * 0.3
    beta = torch.randn(shape) * 0.3
    out = []
    for i, t in enumerate((x, gamma, beta)):
        t = t.to(dtype)
        if layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
        elif layout == "mixed":  # x channels-last, gamma NCHW, beta a strided view (no flat H*W)
            if i == 0:
                t = t.contiguous(memory_format=torch.channels_last)
            elif i == 2:
                holder = torch.zeros(shape[0], shape[1], shape[2], 2 * shape[3], dtype=dtype)
                holder[..., ::2] = t
                t = holder[..., ::2]
        out.append(t.detach().requires_grad_())
    return out


def _running(c, dtype=torch.float32):
    return torch.randn(c).to(dtype) * 0.1, (torch.rand(c) + 0.5).to(dtype)


def _forward_backward(impl, x, gamma, beta, grad, **kw):
    out = ops.spade_norm(x, gamma, beta, impl=impl, **kw)
    grads = torch.autograd.grad(out, (x, gamma, beta), grad)
    return out, grads


def _compare(shape, dtype, layout, norm, training, with_running=True):
    x, gamma, beta = _inputs(shape, dtype, layout)
    c = shape[1]
    rm, rv = _running(c) if with_running else (None, None)
    grad = torch.randn(shape).to(dtype)
    results = {}
    for impl in ("triton", "ref"):
        kw = dict(norm=norm, training=training)
        if with_running:
            kw.update(running_mean=rm.clone(), running_var=rv.clone())
        out, grads = _forward_backward(impl, x, gamma, beta, grad, **kw)
        results[impl] = (out, grads, kw.get("running_mean"), kw.get("running_var"))
    (out, grads, rm_t, rv_t), (out_r, grads_r, rm_r, rv_r) = results["triton"], results["ref"]
    t = tol(dtype)
    assert out.dtype == out_r.dtype and out.shape == out_r.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout in ("channels_last", "mixed"))
    torch.testing.assert_close(out, out_r, **t)
    for name, g, g_r in zip(("x", "gamma", "beta"), grads, grads_r):
        assert g.dtype == g_r.dtype, name
        torch.testing.assert_close(g, g_r, **t, msg=lambda m: f"grad {name}: {m}")
    if with_running:
        torch.testing.assert_close(rm_t, rm_r, **tol(torch.float32))
        torch.testing.assert_close(rv_t, rv_r, **tol(torch.float32))
        if training and norm != "instance":
            assert not torch.equal(rm_t, rm)  # the update really happened
        else:
            assert torch.equal(rm_t, rm) and torch.equal(rv_t, rv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("training", [True, False])
def test_parity(dtype, layout, norm, training):
    _compare((2, 6, 5, 7), dtype, layout, norm, training)


@pytest.mark.parametrize("c", [3, 64, 1024])
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_channel_counts(c, norm):
    _compare((2, c, 3, 5), torch.float32, "channels_last" if c == 64 else "nchw", norm, True)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_mixed_layouts_and_odd_sizes(norm):
    _compare((3, 5, 9, 11), torch.float32, "mixed", norm, True)
    _compare((1, 7, 1, 13), torch.float16, "mixed", norm, True)


def test_batch_stats_in_eval_without_running_stats():
    _compare((2, 4, 3, 3), torch.float32, "nchw", "batch", False, with_running=False)
    _compare((2, 4, 3, 3), torch.bfloat16, "channels_last", "sync_batch", True, with_running=False)


def test_partial_gradients():
    """Only some inputs require grad: each returned gradient still matches."""
    x, gamma, beta = _inputs((2, 5, 4, 3), torch.float32)
    grad = torch.randn(2, 5, 4, 3)
    for wrt in ((gamma,), (x,), (beta,), (x, beta)):
        res = []
        for impl in ("triton", "ref"):
            xs = [t.detach().requires_grad_(any(t is w for w in wrt)) for t in (x, gamma, beta)]
            out = ops.spade_norm(*xs, impl=impl)
            res.append(torch.autograd.grad(out, [xs[i] for i, t in enumerate((x, gamma, beta))
                                                 if any(t is w for w in wrt)], grad))
        for g, g_r in zip(*res):
            torch.testing.assert_close(g, g_r, **tol(torch.float32))


def test_autocast_output_dtype():
    x, gamma, beta = _inputs((2, 3, 2, 2), torch.float32)
    gamma, beta = gamma.detach().bfloat16(), beta.detach().bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.spade_norm(x, gamma, beta, impl="triton")
        out_r = ops.spade_norm(x, gamma, beta, impl="ref")
    assert out.dtype == out_r.dtype == torch.bfloat16
    torch.testing.assert_close(out, out_r, **tol(torch.bfloat16))


def test_single_value_per_channel_raises():
    x, gamma, beta = _inputs((1, 3, 1, 1), torch.float32)
    with pytest.raises(ValueError, match="more than 1 value"):
        ops.spade_norm(x, gamma, beta, impl="triton")


# ---------------------------------------------------------------- kernel-level statistics


def test_stats_merge_across_tiles_and_chunks_is_numerically_safe():
    """Small blocks force the in-program tile merge and the cross-chunk finalize merge; a mean far
    from zero (|mean| / std = 1e4) breaks the sum-of-squares formula in fp32, not these kernels."""
    from sbgan_fast.kernels import spade_norm as ks
    x = (torch.randn(2, 6, 5, 7, dtype=torch.float64) + 1e4).float().contiguous(
        memory_format=torch.channels_last)
    x64 = x.double()
    var64 = x64.var(dim=(0, 2, 3), unbiased=False)
    naive = (x * x).mean(dim=(0, 2, 3)) - x.mean(dim=(0, 2, 3)) ** 2
    assert ((naive.double() - var64).abs() / var64).max() > 0.1  # the test data does break naive sums
    rm, rv = torch.zeros(6), torch.ones(6)
    mean, var, rstd = ks.compute_stats(x, instance=False, eps=1e-5, running_mean=rm, running_var=rv,
                                       momentum=0.25, block_hw=8, block_c=4, tiles_per_chunk=2, block_j=4)
    torch.testing.assert_close(mean.double(), x64.mean(dim=(0, 2, 3)), rtol=1e-6, atol=0)  # fp32 mean of a 1e4-offset: rounding of 1e4
    torch.testing.assert_close(var.double(), var64, **FP32_STATS_OF_1E4_MEAN)
    torch.testing.assert_close(rstd.double(), torch.rsqrt(var64 + 1e-5), **FP32_STATS_OF_1E4_MEAN)
    n = x.numel() // 6
    torch.testing.assert_close(rv.double(), 0.75 + 0.25 * var64 * n / (n - 1), **FP32_STATS_OF_1E4_MEAN)
    mean_i, var_i, _ = ks.compute_stats(x, instance=True, eps=1e-5, block_hw=8, block_c=8, tiles_per_chunk=1,
                                        block_j=2)
    torch.testing.assert_close(mean_i.double(), x64.mean(dim=(2, 3)).flatten(), rtol=1e-6, atol=0)  # fp32 mean of a 1e4-offset: rounding of 1e4
    torch.testing.assert_close(var_i.double(), x64.var(dim=(2, 3), unbiased=False).flatten(), **FP32_STATS_OF_1E4_MEAN)

    # Backward sums with the same small blocks, against fp64.
    dy, gamma = torch.randn_like(x), torch.randn_like(x)
    for instance, dims in ((False, (0, 2, 3)), (True, (2, 3))):
        m, _, r = ks.compute_stats(x, instance=instance, eps=1e-5)
        dgamma = torch.empty_like(x)
        sums = ks.backward_sums(dy, x, gamma, m, r, instance=instance, dgamma=dgamma,
                                block_hw=8, block_c=4, tiles_per_chunk=2)
        shape = (1, 6, 1, 1) if not instance else (2, 6, 1, 1)
        x_hat = (x64 - m.double().view(shape)) * r.double().view(shape)
        gy = dy.double() * (1 + gamma.double())
        torch.testing.assert_close(sums[0].double(), gy.sum(dims).flatten(), rtol=1e-5, atol=1e-4)  # fp32 sums of 70 terms
        torch.testing.assert_close(sums[1].double(), (gy * x_hat).sum(dims).flatten(), rtol=1e-5, atol=1e-4)  # as above
        torch.testing.assert_close(dgamma.double(), dy.double() * x_hat, **FP32_LOOSE_SUM)


# ---------------------------------------------------------------- reference gradients


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_reference_gradcheck(norm):
    """The reference computes in fp64 for fp64 inputs and supports any gradient order."""
    shape = (2, 2, 2, 3)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    gamma = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    beta = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def fn(a, b, c):
        return spade_norm_ref(a, b, c, norm=norm)

    assert torch.autograd.gradcheck(fn, (x, gamma, beta))
    assert torch.autograd.gradgradcheck(fn, (x, gamma, beta), fast_mode=True)


# ---------------------------------------------------------------- synchronized batch norm


def _sync_worker(rank, world, init_file, out_dir, data):
    os.environ["TRITON_INTERPRET"] = "1"
    torch.set_num_threads(1)
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, gamma, beta, grad, bounds = data["x"], data["gamma"], data["beta"], data["grad"], data["bounds"]
        lo, hi = bounds[rank], bounds[rank + 1]
        results = {}
        for impl in ("triton", "ref"):
            xs = [t[lo:hi].clone().requires_grad_() for t in (x, gamma, beta)]
            rm, rv = data["rm"].clone(), data["rv"].clone()
            out = ops.spade_norm(*xs, norm="sync_batch", running_mean=rm, running_var=rv, impl=impl)
            grads = torch.autograd.grad(out, xs, grad[lo:hi])
            results[impl] = dict(out=out.detach(), grads=[g.detach() for g in grads], rm=rm, rv=rv)
        results["far"] = _far_stats(data["far"][lo:hi])
        bn = SyncBatchNorm2d(x.shape[1], momentum=0.25)
        with torch.no_grad():
            bn.weight.copy_(data["bn_weight"])
            bn.bias.copy_(data["bn_bias"])
        xs = x[lo:hi].clone().requires_grad_()
        out = bn(xs)
        grads = torch.autograd.grad(out, [xs, bn.weight, bn.bias], grad[lo:hi])
        results["bn"] = dict(out=out.detach(), grads=[g.detach() for g in grads], rm=bn.running_mean,
                             rv=bn.running_var)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _far_stats(x):
    """Synchronized statistics of this process's slice of ``x`` by the reference (merge of the
    processes' statistics), by the Triton path, and by the sum / sum-of-squares all-reduce that the
    reference used before (kept here to show its cancellation)."""
    import torch.distributed as dist
    mean, var, _ = sync_batch_stats(x)
    c = x.shape[1]
    local = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), x.new_full((1,), float(x.numel() // c))])
    dist.all_reduce(local)
    old_mean = local[:c] / local[2 * c]
    old_var = (local[c:2 * c] / local[2 * c] - old_mean * old_mean).clamp_min(0)
    ks = _triton.kernels("spade_norm")
    mean_l, var_l, _ = ks.compute_stats(x, instance=False, eps=1e-5)
    t_mean, t_var, _ = merge_process_stats(mean_l, var_l, x.numel() // c)  # as the Triton path merges
    return dict(ref=(mean, var), old=(old_mean, old_var), triton=(t_mean, t_var))


@pytest.fixture(scope="module")
def sync_run(module_tmp):
    """Two gloo processes (rank 0 holds 2 images, rank 1 holds 3: unequal local batches) run the
    synchronized paths on their slices; returns (inputs, per-rank results)."""
    tmp_path = module_tmp
    previous = torch.get_default_device()
    torch.set_default_device("cpu")
    try:
        torch.manual_seed(0)
        shape = (5, 6, 3, 4)
        x, gamma, beta = (t.detach() for t in _inputs(shape, torch.float32, "channels_last", offset=3.0))
        grad = torch.randn(shape)
        rm, rv = _running(6)
        far = (torch.randn(shape, dtype=torch.float64) + 1e4).float()  # |mean| / std = 1e4
        data = dict(x=x, gamma=gamma, beta=beta, grad=grad, rm=rm, rv=rv, bounds=[0, 2, 5], far=far,
                    bn_weight=torch.randn(6), bn_bias=torch.randn(6))
        mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), str(tmp_path), data), nprocs=2, join=True)
        return data, [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    finally:
        torch.set_default_device(previous)


@pytest.mark.slow
@pytest.mark.distributed
def test_sync_batch_two_processes_equals_batch_norm_of_concatenated_batch(sync_run, on_cpu):
    data, results = sync_run
    x, gamma, beta, grad, rm, rv = (data[k] for k in ("x", "gamma", "beta", "grad", "rm", "rv"))
    xs = [t.clone().requires_grad_() for t in (x, gamma, beta)]
    rm_e, rv_e = rm.clone(), rv.clone()
    out_e = ops.spade_norm(*xs, norm="batch", running_mean=rm_e, running_var=rv_e, impl="ref")
    grads_e = torch.autograd.grad(out_e, xs, grad)
    t = tol(torch.float32)
    for rank, (lo, hi) in enumerate(((0, 2), (2, 5))):
        res = results[rank]
        for impl in ("triton", "ref"):
            r = res[impl]
            torch.testing.assert_close(r["out"], out_e[lo:hi], **t)
            for name, g, g_e in zip(("x", "gamma", "beta"), r["grads"], grads_e):
                torch.testing.assert_close(g, g_e[lo:hi], **t, msg=lambda m: f"{impl} rank {rank} grad {name}: {m}")
            torch.testing.assert_close(r["rm"], rm_e, **t)
            torch.testing.assert_close(r["rv"], rv_e, **t)


@pytest.mark.slow
@pytest.mark.distributed
def test_sync_statistics_merge_is_stable_where_sums_cancel(sync_run, on_cpu):
    """With |mean| / std = 1e4 the old reference (all-reduced sum and sum of squares in fp32) loses the
    variance to cancellation; the reference's merge of per-process statistics and the Triton path
    match an fp64 two-pass computation over the concatenated batch."""
    data, results = sync_run
    far = data["far"].double()
    mean64, var64 = far.mean(dim=(0, 2, 3)), far.var(dim=(0, 2, 3), unbiased=False)
    for res in results:
        old_mean, old_var = res["far"]["old"]
        assert ((old_var.double() - var64).abs() / var64).max() > 0.1  # the data do break the old formula
        for path in ("ref", "triton"):
            mean, var = res["far"][path]
            torch.testing.assert_close(mean.double(), mean64, rtol=1e-6, atol=0,  # fp32 mean of a 1e4-offset
                                       msg=lambda m: f"{path}: {m}")
            torch.testing.assert_close(var.double(), var64, **FP32_STATS_OF_1E4_MEAN, msg=lambda m: f"{path}: {m}")


@pytest.mark.distributed
def test_sync_batch_norm_layer_two_processes_equals_batch_norm(sync_run, on_cpu):
    """nn.SyncBatchNorm2d on each process's slice equals nn.BatchNorm2d on the concatenated batch
    (output, gradients of x, weight and bias, running statistics)."""
    data, results = sync_run
    bn = torch.nn.BatchNorm2d(6, momentum=0.25)
    with torch.no_grad():
        bn.weight.copy_(data["bn_weight"])
        bn.bias.copy_(data["bn_bias"])
    x = data["x"].clone().requires_grad_()
    out = bn(x)
    gx, gw, gb = torch.autograd.grad(out, [x, bn.weight, bn.bias], data["grad"])
    t = tol(torch.float32)
    for rank, (lo, hi) in enumerate(((0, 2), (2, 5))):
        r = results[rank]["bn"]
        torch.testing.assert_close(r["out"], out[lo:hi], **t)
        torch.testing.assert_close(r["grads"][0], gx[lo:hi], **t)
        # weight and bias gradients are per-process (DDP averages them): their sum is the full one
    for i, g in ((1, gw), (2, gb)):
        torch.testing.assert_close(results[0]["bn"]["grads"][i] + results[1]["bn"]["grads"][i], g, **t)
    for r in results:
        torch.testing.assert_close(r["bn"]["rm"], bn.running_mean, **t)
        torch.testing.assert_close(r["bn"]["rv"], bn.running_var, **t)


def test_merged_statistics_match_fp64_two_pass_where_sums_cancel():
    """merge_stats (the rule both synchronized paths use) of per-slice two-pass statistics in fp32 matches
    fp64 two-pass statistics of the whole batch, where the sum-of-squares formula cancels."""
    x = (torch.randn(7, 3, 5, 6, dtype=torch.float64) * 0.5 + 1e4).float()
    x64 = x.double()
    var64 = x64.var(dim=(0, 2, 3), unbiased=False)
    naive = (x * x).mean(dim=(0, 2, 3)) - x.mean(dim=(0, 2, 3)) ** 2
    assert ((naive.double() - var64).abs() / var64).max() > 0.1
    parts = [x[:2], x[2:3], x[3:]]  # unequal slices
    counts = torch.tensor([[float(p.numel() // 3)] for p in parts], dtype=torch.float64)
    means = torch.stack([p.mean(dim=(0, 2, 3)) for p in parts]).double()
    variances = torch.stack([p.var(dim=(0, 2, 3), unbiased=False) for p in parts]).double()
    mean, var, total = merge_stats(counts, means, variances)
    assert total.item() == x.numel() // 3
    torch.testing.assert_close(mean, x64.mean(dim=(0, 2, 3)), rtol=1e-7, atol=0)  # fp32 per-part means, fp64 merge
    torch.testing.assert_close(var, var64, rtol=1e-3, atol=0)    # fp32 per-part variances of a 1e4-offset


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sync_batch_norm_layer_single_process_is_plain_batch_norm_bitwise(dtype, on_cpu):
    """Without torch.distributed, nn.SyncBatchNorm2d computes exactly F.batch_norm in fp32 (fp64 for
    fp64) followed by its fp32 affine, in training and eval, updating the running statistics alike."""
    from sbgan_fast.models.discriminator import SyncBatchNorm2d as FromModels
    assert FromModels is SyncBatchNorm2d
    bn = SyncBatchNorm2d(4, momentum=0.2)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(4))
        bn.bias.copy_(torch.randn(4))
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    for training in (True, False):
        bn.train(training)
        x = (torch.randn(3, 4, 5, 6) * 2 + 1).to(dtype)
        xf = x if dtype == torch.float64 else x.float()
        if dtype == torch.float64:
            rm64, rv64 = rm.double(), rv.double()
            x_hat = torch.nn.functional.batch_norm(xf, rm64, rv64, None, None, training, 0.2, 1e-5)
            rm.copy_(rm64)
            rv.copy_(rv64)
        else:
            x_hat = torch.nn.functional.batch_norm(xf, rm, rv, None, None, training, 0.2, 1e-5)
        want = (x_hat * bn.weight.float().view(1, -1, 1, 1) + bn.bias.float().view(1, -1, 1, 1)).to(dtype)
        got = bn(x)
        assert got.dtype == dtype and torch.equal(got, want)
        assert torch.equal(bn.running_mean, rm) and torch.equal(bn.running_var, rv)
    assert int(bn.num_batches_tracked) == 1


# ---------------------------------------------------------------- dispatch contract


def _small():
    return _inputs((2, 3, 2, 2), torch.float32)


@pytest.fixture
def auto_eligible(monkeypatch):
    """Make the Triton impl eligible under ``auto`` as it is for CUDA tensors: on CPU, ``auto`` never
    picks the interpreter (a testing tool, only used when asked for by name)."""
    if DEVICE == "cpu":
        monkeypatch.setattr(_dispatch, "explicit_request", lambda: True, raising=False)


@needs_interpreter
def test_auto_on_cpu_picks_ref_silently_with_or_without_interpreter(monkeypatch, on_cpu):
    x, gamma, beta = _small()
    _dispatch.reset_warnings()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback warning would fail here: CPU is "not applicable"
        assert "-> ref" in ops.explain("spade_norm", x, gamma, beta)
        torch.testing.assert_close(ops.spade_norm(x, gamma, beta), spade_norm_ref(x, gamma, beta))
        monkeypatch.setenv("TRITON_INTERPRET", "0")  # read by the check at call time
        assert "-> ref" in ops.explain("spade_norm", x, gamma, beta)
        torch.testing.assert_close(ops.spade_norm(x, gamma, beta), spade_norm_ref(x, gamma, beta))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with ops.use_impl("spade_norm", "triton"):  # asked for by name: the interpreter runs
        out = ops.spade_norm(x, gamma, beta)
    assert type(out.grad_fn).__name__ == "GeneratedBackwardFor_sbgan_fast_spade_norm_apply_triton_defaultBackward"


def test_explicit_triton_on_cpu_without_interpreter_raises(monkeypatch, on_cpu):
    x, gamma, beta = _small()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(_dispatch.ImplUnavailableError) as info:
        ops.spade_norm(x, gamma, beta, impl="triton")
    msg = str(info.value)
    assert "spade_norm" in msg and "impl='triton'" in msg  # op and impl
    assert "need CUDA tensors" in msg and "TRITON_INTERPRET" in msg  # reason
    assert "Fix:" in msg and "impl='ref'" in msg  # fix


def test_double_backward_scope_never_picks_triton(auto_eligible):
    x, gamma, beta = _small()
    with ops.double_backward():
        assert "-> ref" in ops.explain("spade_norm", x, gamma, beta)
        out = ops.spade_norm(x, gamma, beta)
        (gx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        gx.sum().backward()  # second order works through the reference
        with pytest.raises(_dispatch.ImplUnavailableError, match="second-order"):
            ops.spade_norm(x, gamma, beta, impl="triton")
    out = ops.spade_norm(x, gamma, beta, impl="triton")
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)


def test_missing_triton_warns_once_and_strict_raises(monkeypatch, auto_eligible):
    monkeypatch.delenv("SBGAN_FAST_STRICT", raising=False)   # the test sets strict mode itself below
    x, gamma, beta = _small()
    monkeypatch.setattr(_triton, "_kernels_loaded", False)
    monkeypatch.setattr(_triton, "_import_error", "ModuleNotFoundError: No module named 'triton'")
    _dispatch.reset_warnings()
    with pytest.warns(_dispatch.SbganFallbackWarning, match="pip install triton"):
        out = ops.spade_norm(x, gamma, beta)
    torch.testing.assert_close(out, spade_norm_ref(x, gamma, beta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same reason is not warned twice
        ops.spade_norm(x, gamma, beta)
    with pytest.raises(_dispatch.ImplUnavailableError, match="pip install triton"):
        ops.spade_norm(x, gamma, beta, impl="triton")
    monkeypatch.setenv("SBGAN_FAST_STRICT", "1")
    with pytest.raises(_dispatch.ImplUnavailableError, match="SBGAN_FAST_STRICT"):
        ops.spade_norm(x, gamma, beta)


@needs_interpreter
def test_interpreter_flag_set_after_kernel_import_is_reported(monkeypatch, on_cpu):
    x, gamma, beta = _small()
    monkeypatch.setattr(_triton.kernels("utils"), "is_interpreted", lambda: False)
    with pytest.raises(_dispatch.ImplUnavailableError, match="imported before it was set"):
        ops.spade_norm(x, gamma, beta, impl="triton")


def test_not_applicable_inputs_fall_back_silently():
    x, gamma, beta = (t.detach().double() for t in _small())
    rm = torch.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "-> ref" in ops.explain("spade_norm", x, gamma, beta)
        x32, g32, b32 = (t.float() for t in (x, gamma, beta))
        bad_rv = torch.ones(6)[::2]  # non-contiguous running_var
        assert "-> ref" in ops.explain("spade_norm", x32, g32, b32, "batch", 1e-5, rm, bad_rv)
