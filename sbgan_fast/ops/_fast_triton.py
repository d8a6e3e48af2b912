"""Registration of the Triton impls (sbgan_fast.kernels), imported lazily."""
