"""Registration of the C++/CUDA impls (sbgan_fast._C), imported lazily."""
