"""One table of tolerances for parity tests (fast impl vs reference), per dtype.

Low-precision tolerances are judged against the reference's own error in that precision: a fast
impl computing in fp32 internally is usually *more* accurate than the half-precision reference.
"""
import torch

TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-9),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    # half inputs, fp32 math inside: the output rounding alone is ~1e-3 (fp16) / ~8e-3 (bf16) relative.
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def tol(dtype):
    return TOL[dtype]


# Named tolerances for the comparisons that are not "fast impl vs reference at one dtype". Each names why it is
# what it is; a test that needs another one adds it here with its reason.
EXACT = dict(rtol=0, atol=0)                     # the same arithmetic in the same order: bit for bit
FP64_SAME_MATH = dict(rtol=1e-12, atol=1e-14)    # two algebraically identical float64 formulas (a few ops apart)
FP64_REDUCTION = dict(rtol=1e-10, atol=1e-12)    # float64 sums of hundreds of terms in another order (moments)
FP32_REORDERED = dict(atol=1e-5, rtol=1e-4)      # float32 values of order 1 through a network or a sum in another
                                                 # order (the float32 row of TOL)
FP32_GRAD = dict(atol=1e-6, rtol=1e-4)           # float32 gradients of order 1e-3..1 through another op order
FP32_SHORT_CHAIN = dict(atol=1e-6, rtol=1e-5)    # float32 values a few reordered ops apart (e.g. one norm)
FP32_LOOSE_SUM = dict(rtol=1e-5, atol=1e-5)      # a float32 sum of tens of terms of order 1, in another order
FP32_DEEP_NET = dict(rtol=1e-5, atol=5e-5)       # ~100 float32 layers with other convolution algorithms
                                                 # (measured max |diff| ~1e-5 on features up to ~5)
FP32_STATS_OF_1E4_MEAN = dict(rtol=2e-3, atol=0)  # float32 variance of data with |mean| / std = 1e4: the inputs'
                                                  # own float32 rounding (1e4 * 6e-8 = 6e-4 of std) limits it
