"""Triton launch code for sbgan_fast.ops (installed as sbgan_fast.kernels; relative imports only)."""
