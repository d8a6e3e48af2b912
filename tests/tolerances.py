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
