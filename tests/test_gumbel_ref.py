"""The reference straight-through Gumbel-softmax (the path every fast impl is checked against)."""
import pytest
import torch
import torch.nn.functional as F

from sbgan_fast import ops
from sbgan_fast.ops.gumbel import gumbel_softmax_st_ref, sample_gumbel
from tolerances import FP32_SHORT_CHAIN, FP64_SAME_MATH


@pytest.mark.parametrize("k, tau", [(35, 1.0), (20, 0.5), (95, 2.0)])
def test_forward_is_exact_one_hot_and_gradient_is_the_soft_path(k, tau):
    logits = torch.randn(2, k, 5, 7, dtype=torch.float64).log_softmax(1).requires_grad_()
    noise = sample_gumbel(logits.shape, dtype=torch.float64)
    out = ops.gumbel_softmax_st(logits, tau, noise=noise, impl="ref")
    assert torch.equal(out.sum(1), torch.ones(2, 5, 7, dtype=torch.float64))
    assert torch.equal(out, (out == 1).to(out.dtype))
    assert torch.equal(out.argmax(1), ((logits + noise) / tau).argmax(1))
    upstream = torch.randn_like(out)
    (g_st,) = torch.autograd.grad((out * upstream).sum(), logits)
    soft = ((logits + noise) / tau).softmax(1)
    (g_soft,) = torch.autograd.grad((soft * upstream).sum(), logits)
    torch.testing.assert_close(g_st, g_soft, **FP64_SAME_MATH)


@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_explicit_noise_reproduces_torch_gumbel_softmax(tau):
    logits = torch.randn(3, 11, 4, 6).requires_grad_()
    torch.manual_seed(123)
    expected = F.gumbel_softmax(logits, tau=tau, hard=True, dim=1)
    torch.manual_seed(123)
    noise = -torch.empty_like(logits).exponential_().log()  # the noise torch draws, same RNG stream
    out = ops.gumbel_softmax_st(logits, tau, noise=noise, impl="ref")
    # torch's y_hard - y_soft.detach() + y_soft is one-hot only up to rounding; ours is exact
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)  # torch's y_hard - y_soft + y_soft rounding
    w = torch.randn_like(out)
    (g_out,) = torch.autograd.grad((out * w).sum(), logits)
    (g_exp,) = torch.autograd.grad((expected * w).sum(), logits)
    torch.testing.assert_close(g_out, g_exp, **FP32_SHORT_CHAIN)


def test_authors_noise_form_and_rng():
    torch.manual_seed(0)
    a = sample_gumbel((4, 5, 6, 7))
    torch.manual_seed(0)
    e = torch.empty(4, 5, 6, 7).exponential_()
    assert torch.equal(a, -torch.log(e + 1e-10))
    torch.manual_seed(1)
    x = ops.gumbel_softmax_st(torch.randn(2, 5, 3, 3), impl="ref")
    torch.manual_seed(1)
    y = ops.gumbel_softmax_st(torch.randn(2, 5, 3, 3), impl="ref")
    assert torch.equal(x, y)


def test_reference_second_order_equals_the_soft_path():
    # The straight-through estimator is not the derivative of the one-hot forward (gradcheck cannot
    # apply); its first and second derivatives are those of the soft sample, in fp64.
    logits = torch.randn(1, 4, 2, 3, dtype=torch.float64, requires_grad=True)
    noise = sample_gumbel(logits.shape, dtype=torch.float64)
    w = torch.randn(1, 4, 2, 3, dtype=torch.float64)
    def first_and_second(f):
        (g,) = torch.autograd.grad((f(logits) * w).sum(), logits, create_graph=True)
        (gg,) = torch.autograd.grad((g * g).sum(), logits)
        return g, gg

    g_st, gg_st = first_and_second(lambda x: gumbel_softmax_st_ref(x, 0.8, noise))
    g_soft, gg_soft = first_and_second(lambda x: ((x + noise) / 0.8).softmax(1))
    torch.testing.assert_close(g_st, g_soft, **FP64_SAME_MATH)
    torch.testing.assert_close(gg_st, gg_soft, **FP64_SAME_MATH)


def test_channels_last_and_half_keep_layout_and_dtype():
    x = torch.randn(2, 6, 4, 5).to(memory_format=torch.channels_last).to(torch.bfloat16)
    out = ops.gumbel_softmax_st(x, noise=torch.zeros(2, 6, 4, 5), impl="ref")
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.argmax(1), x.float().argmax(1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="tau must be > 0"):
        ops.gumbel_softmax_st(torch.randn(1, 3, 2, 2), 0.0)
    with pytest.raises(ValueError, match="noise shape"):
        ops.gumbel_softmax_st(torch.randn(1, 3, 2, 2), noise=torch.zeros(1, 3, 2, 1))
    with pytest.raises(ValueError, match="4 dims"):
        ops.gumbel_softmax_st(torch.randn(3, 2, 2))
