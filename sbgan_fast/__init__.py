"""sbgan_fast: a performance-engineered Semantic Bottleneck GAN (SB-GAN).

Subpackages: ``ops`` (custom ops with dispatch), ``nn`` (layers), ``models`` (networks),
``train`` (stages, loop, checkpoints), ``data`` (datasets, loaders), ``metrics``.
Imports need only torch, numpy and pillow; fast paths load lazily.
"""
__version__ = "0.1.0"
