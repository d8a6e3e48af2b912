"""sbgan_fast: a performance-engineered Semantic Bottleneck GAN (SB-GAN).

Subpackages: ``config`` (the run configuration), ``ops`` (custom ops with dispatch), ``nn`` (layers), ``models``
(networks, the semantic bottleneck, checkpoints), ``data`` (datasets, loaders), ``metrics``, ``train`` (stages, loop).
Imports need only torch, numpy and pillow; fast paths load lazily.
"""
__version__ = "0.1.0"
