"""The networks of SB-GAN and their reference-checkpoint converters."""
from .discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from .sbgan import SBGAN
from .seg import SegDiscriminator, SegGenerator
from .spade_gen import SPADEGenerator
from .vgg import VGG19Features, VGGLoss, load_vgg19_weights

__all__ = ["MultiscaleDiscriminator", "NLayerDiscriminator", "SBGAN", "SPADEGenerator", "SegDiscriminator",
           "SegGenerator", "VGG19Features", "VGGLoss", "load_vgg19_weights"]
