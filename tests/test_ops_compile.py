"""The custom ops inside ``torch.compile(fullgraph=True)``: no graph break, same results as eager.

Every op is compiled with each provider runnable here: ``ref`` (plain PyTorch), ``cpp`` (one-hot and the
label-embedding convolution, ``torch.ops.sbgan_fast.*`` from the C++ extension) and ``triton`` (Gumbel
straight-through, argmax one-hot, SPADE normalization: ``torch.library`` custom ops whose bodies launch
the kernels, here in Triton's CPU interpreter). ``fullgraph=True`` fails on any graph break, and a
counting backend checks that one graph was captured and that it calls the fast ops (not the reference).
Outputs, gradients and running statistics equal eager mode within tests/tolerances.py.

The dispatch rules inside a compiled function: the impl is chosen while tracing, so an explicit impl
that cannot run, a fallback under ``SBGAN_FAST_STRICT=1`` and the second-order scope are decided there
(the double-backward scope is guarded: entering it recompiles with the reference path).

Not covered without a GPU: the Triton ops compiled by inductor into CUDA graphs (here the custom ops
run their interpreted kernels as opaque calls), and the synchronized batch norm across processes
inside a compiled graph.
"""
import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

from sbgan_fast import ops
from sbgan_fast.ops import _cpp, _dispatch, _triton
from tolerances import tol

needs_ext = pytest.mark.skipif(_cpp.extension_error() is not None, reason=f"{_cpp.extension_error()}")
needs_interpreter = pytest.mark.skipif(not _triton.interpreter_requested() or _triton.load() is not None,
                                       reason="needs Triton and TRITON_INTERPRET=1")


class Counting:
    """A torch.compile backend that records each captured graph's code, then runs ``inner``."""

    def __init__(self, inner="aot_eager"):
        self.inner, self.graphs = lookup_backend(inner), []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm.print_readable(print_output=False))  # with the submodules
        return self.inner(gm, example_inputs)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compare(fn, inputs, buffers=(), backend="aot_eager", expect_ops=()):
    """Run ``fn`` eagerly and compiled (fullgraph) on copies of ``inputs`` (the float ones, except the
    running-statistics ``buffers`` (indices), as leaves requiring grad); compare outputs, gradients and
    the buffers each run updated from the same start. Returns the compiled graphs' code."""
    counter = Counting(backend)
    compiled = torch.compile(fn, fullgraph=True, backend=counter)

    def copies():
        return [t.detach().clone().requires_grad_(t.is_floating_point() and i not in buffers)
                for i, t in enumerate(inputs)]
    eager_in, comp_in = copies(), copies()
    eager_out = fn(*eager_in)
    comp_out = compiled(*comp_in)
    assert len(counter.graphs) == 1, f"{len(counter.graphs)} graphs captured"
    for name in expect_ops:
        assert name in counter.graphs[0], f"the compiled graph does not call {name}"
    weights = [torch.randn_like(o) for o in eager_out]
    for k, (t_e, t_c) in enumerate(zip(eager_out, comp_out)):
        torch.testing.assert_close(t_c, t_e, **tol(t_e.dtype), msg=lambda m: f"output {k}: {m}")
    diff = [i for i, t in enumerate(eager_in) if t.requires_grad]
    grads = []
    for ins, outs in ((eager_in, eager_out), (comp_in, comp_out)):
        loss = sum((o * w).sum() for o, w in zip(outs, weights) if o.requires_grad)
        grads.append(torch.autograd.grad(loss, [ins[i] for i in diff], allow_unused=True))
    for i, g_e, g_c in zip(diff, *grads):
        assert (g_e is None) == (g_c is None), f"input {i}: gradient missing in one mode"
        if g_e is not None:
            torch.testing.assert_close(g_c, g_e, **tol(g_e.dtype), msg=lambda m: f"input {i} gradient: {m}")
    for i in buffers:
        assert not torch.equal(eager_in[i], inputs[i]), f"buffer {i} was not updated"
        torch.testing.assert_close(comp_in[i], eager_in[i], **tol(inputs[i].dtype), msg=lambda m: f"buffer {i}: {m}")
    return counter.graphs


def _spade_inputs(shape=(2, 6, 5, 4)):
    x = torch.randn(shape) * 2 + 0.5
    x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randn(shape) * 0.3, torch.randn(shape) * 0.3, torch.randn(6) * 0.1, torch.rand(6) + 0.5


def _float_ops(impl):
    """Gumbel ST (explicit noise), argmax one-hot, SPADE norm (batch training with running statistics,
    eval with them, instance), all with ``impl``."""
    def fn(logits, noise, x, gamma, beta, rm, rv):
        y = ops.gumbel_softmax_st(logits, 0.7, noise=noise, impl=impl)
        hard = ops.argmax_one_hot(logits.detach(), impl=impl)
        a = ops.spade_norm(x, gamma, beta, running_mean=rm, running_var=rv, momentum=0.2, impl=impl)
        b = ops.spade_norm(x, gamma, beta, running_mean=rm, running_var=rv, training=False, impl=impl)
        c = ops.spade_norm(x, gamma, beta, norm="instance", impl=impl)
        return y, hard, a, b, c
    return fn


def _float_inputs():
    logits = torch.randn(2, 7, 4, 6)
    noise = -torch.log(torch.empty_like(logits).exponential_())
    return [logits, noise, *_spade_inputs()]


@pytest.mark.slow
def test_ref_float_ops_compile_without_graph_break():
    _compare(_float_ops("ref"), _float_inputs(), buffers=(5, 6))


@pytest.mark.slow
@needs_interpreter
def test_triton_ops_compile_without_graph_break():
    graphs = _compare(_float_ops("triton"), _float_inputs(), buffers=(5, 6),
                      expect_ops=("gumbel_st_triton", "argmax_one_hot_triton", "spade_norm_stats_triton",
                                  "spade_norm_apply_triton"))
    assert "aten.softmax" not in graphs[0] and "torch.softmax" not in graphs[0] and ".softmax(" not in graphs[0]


@needs_interpreter
def test_triton_gumbel_in_kernel_noise_compiles():
    """Without explicit noise the seed is drawn in the graph (compiled RNG differs from eager's, so the
    sample is checked for being one-hot and its gradient for being the softmax JVP's shape)."""
    counter = Counting()
    fn = torch.compile(lambda z: ops.gumbel_softmax_st(z, 1.0, impl="triton"), fullgraph=True, backend=counter)
    logits = torch.randn(2, 5, 3, 4, requires_grad=True)
    y = fn(logits)
    assert len(counter.graphs) == 1 and "gumbel_st_triton" in counter.graphs[0]
    assert torch.equal(y.sum(1), torch.ones(2, 3, 4))
    (g,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), logits)
    torch.testing.assert_close(g.sum(1), torch.zeros(2, 3, 4), atol=1e-6, rtol=0)  # softmax JVP sums to 0


def _label_ops(impl):
    def fn(labels, weight, bias):
        oh = ops.one_hot(labels, 5, dontcare=255, size=(8, 10), impl=impl)
        emb = ops.onehot_conv2d(labels, weight, bias, dontcare=255, size=(8, 10), impl=impl)
        return oh, emb
    return fn


def _label_inputs():
    labels = torch.randint(0, 5, (2, 5, 7))
    labels[0, 0, :3] = 255
    return [labels, torch.randn(4, 6, 3, 3), torch.randn(4)]


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["ref", pytest.param("cpp", marks=needs_ext)])
def test_label_ops_compile_without_graph_break(impl):
    graphs = _compare(_label_ops(impl), _label_inputs())
    if impl == "cpp":
        assert "sbgan_fast.one_hot" in graphs[0] and "sbgan_fast.onehot_conv2d" in graphs[0]


def test_compiled_label_check_still_rejects_bad_labels():
    """The range check becomes an in-graph assertion: a bad label still raises, naming the op."""
    fn = torch.compile(lambda lab: ops.one_hot(lab, 5, impl="ref"), fullgraph=True, backend="aot_eager")
    labels = torch.randint(0, 5, (1, 4, 4))
    fn(labels)
    labels[0, 1, 2] = 9
    with pytest.raises(RuntimeError, match="one_hot: a label value is outside"):
        fn(labels)


def test_param_free_norm_compiles_without_graph_break():
    """The normalization of nn.SyncBatchNorm2d (single process: plain batch statistics)."""
    def fn(x, w, b, rm, rv):
        x_hat = ops.param_free_norm(x, "sync_batch", running_mean=rm, running_var=rv, momentum=0.2)
        return (x_hat * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1),)
    x, *_ = _spade_inputs()
    _compare(fn, [x, torch.randn(6), torch.randn(6), torch.zeros(6), torch.ones(6)], buffers=(3, 4))


@pytest.mark.slow
@pytest.mark.parametrize("fast", [False, pytest.param(True, marks=[needs_ext, needs_interpreter])])
def test_inductor_matches_eager(fast):
    """Inductor on CPU: the reference ops are compiled into C++ kernels; the fast ops stay opaque calls."""
    float_fn, label_fn = _float_ops("triton" if fast else "ref"), _label_ops("cpp" if fast else "ref")

    def fn(logits, noise, x, gamma, beta, rm, rv, labels, weight, bias):
        return (*float_fn(logits, noise, x, gamma, beta, rm, rv), *label_fn(labels, weight, bias))
    _compare(fn, _float_inputs() + _label_inputs(), buffers=(5, 6), backend="inductor")


# ---------------------------------------------------------------- dispatch rules inside compiled graphs

def _small():
    return torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)


@needs_interpreter
def test_explicit_impl_that_cannot_run_raises_when_compiled():
    x, gamma, beta = (t.detach().double() for t in _small())
    fn = lambda x: ops.spade_norm(x, gamma, beta, impl="triton")  # noqa: E731  fp64: the kernels cannot run
    with pytest.raises(Exception, match="impl='triton' cannot run: x has dtype torch.float64"):
        torch.compile(fn, fullgraph=True, backend="eager")(x)
    torch._dynamo.reset()
    with pytest.raises(_dispatch.ImplUnavailableError, match="impl='triton' cannot run"):
        torch.compile(fn, backend="eager")(x)  # without fullgraph: the same error type as eager


@pytest.fixture
def auto_eligible(monkeypatch):
    """Make the Triton impl eligible under ``auto`` as it is for CUDA tensors (see test_spade_norm.py)."""
    monkeypatch.setattr(_dispatch, "explicit_request", lambda: True, raising=False)


@needs_interpreter
def test_double_backward_scope_and_use_impl_recompile(auto_eligible):
    x, gamma, beta = _small()
    counter = Counting("eager")
    fn = torch.compile(lambda x: ops.spade_norm(x, gamma, beta), fullgraph=True, backend=counter)
    fn(x)
    assert "spade_norm_apply_triton" in counter.graphs[-1]
    with ops.double_backward():
        fn(x)
    assert len(counter.graphs) == 2 and "spade_norm_apply_triton" not in counter.graphs[-1]
    fn(x)  # outside the scope again: the first graph, no recompilation
    assert len(counter.graphs) == 2
    with ops.use_impl("spade_norm", "ref"):  # a scoped override is guarded too
        fn(x)
    assert len(counter.graphs) == 3 and "spade_norm_apply_triton" not in counter.graphs[-1]


@needs_interpreter
def test_fallback_warns_once_and_strict_mode_raises_when_compiled(monkeypatch, auto_eligible):
    monkeypatch.delenv("SBGAN_FAST_STRICT", raising=False)
    monkeypatch.setattr(_triton, "_kernels_loaded", False)
    monkeypatch.setattr(_triton, "_import_error", "ModuleNotFoundError: No module named 'triton'")
    _dispatch.reset_warnings()
    x, gamma, beta = _small()
    counter = Counting("eager")
    fn = torch.compile(lambda x: ops.spade_norm(x, gamma, beta), fullgraph=True, backend=counter)
    with pytest.warns(_dispatch.SbganFallbackWarning, match="pip install triton"):
        fn(x)
    assert "spade_norm_apply_triton" not in counter.graphs[-1]
    monkeypatch.setenv("SBGAN_FAST_STRICT", "1")
    torch._dynamo.reset()
    with pytest.raises(Exception, match="SBGAN_FAST_STRICT=1 makes this an error"):
        torch.compile(lambda x: ops.spade_norm(x, gamma, beta), fullgraph=True, backend="eager")(x)


# ---------------------------------------------------------------- the registrations themselves

@needs_interpreter
def test_triton_custom_op_registrations_pass_opcheck():
    """torch.library.opcheck: schema, fake (meta) kernels, autograd registration and AOT dispatch of the
    Triton custom ops, on small CPU inputs run by the interpreter."""
    sb = torch.ops.sbgan_fast
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    logits = torch.randn(1, 5, 2, 4, requires_grad=True)
    noise = torch.randn(1, 5, 2, 4)
    torch.library.opcheck(sb.gumbel_st_triton, (logits, 0.5, noise, None), test_utils=tests)
    torch.library.opcheck(sb.gumbel_st_triton, (logits, 0.5, None, torch.tensor([7])), test_utils=tests)
    torch.library.opcheck(sb.gumbel_st_triton_backward, (logits.detach(), torch.randn(1, 5, 2, 4), 0.5, noise,
                                                         None, torch.float32), test_utils=tests)
    torch.library.opcheck(sb.argmax_one_hot_triton, (logits.detach(),), test_utils=tests)
    x = torch.randn(2, 3, 2, 4).contiguous(memory_format=torch.channels_last)
    rm, rv = torch.zeros(3), torch.ones(3)
    for instance, batch_stats, update in ((False, True, True), (True, True, False), (False, False, False)):
        running = (None, None) if instance else (rm, rv)
        torch.library.opcheck(sb.spade_norm_stats_triton, (x, instance, batch_stats, 1e-5, *running, 0.1, update, None),
                              test_utils=("test_schema", "test_faketensor"))
    mean, rstd, count = sb.spade_norm_stats_triton(x, False, True, 1e-5, None, None, 0.1, False, None)
    xs = x.clone().requires_grad_()
    gamma, beta = torch.randn(2, 3, 2, 4, requires_grad=True), torch.randn(2, 3, 2, 4, requires_grad=True)
    torch.library.opcheck(sb.spade_norm_apply_triton, (xs, gamma, beta, mean, rstd, count, False, True, None,
                                                       torch.float32), test_utils=tests)
    torch.library.opcheck(sb.spade_norm_backward_triton, (torch.randn(2, 3, 2, 4), x, gamma.detach(), mean, rstd,
                                                          count, False, True, None, True, False), test_utils=tests)
