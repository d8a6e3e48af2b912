"""The networks of SB-GAN, the semantic bottleneck that joins them, networks from a config or a checkpoint, and the
reference-checkpoint converters."""
from .build import NET_NAMES, PROGAN_NETS, build_networks, load_generators, load_seg_generator, run_networks
from .discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from .labels import label_ids, one_hot_labels
from .progan import ImageDiscriminator, ImageGenerator, generated_images
from .sbgan import SBGAN, bottleneck_sample, generated_label_maps, render, upsample
from .seg import SegDiscriminator, SegGenerator
from .spade_gen import SPADEGenerator
from .vgg import VGG19Features, VGGLoss, load_vgg19_weights

__all__ = ["ImageDiscriminator", "ImageGenerator", "MultiscaleDiscriminator", "NET_NAMES", "NLayerDiscriminator",
           "PROGAN_NETS", "SBGAN", "SPADEGenerator", "SegDiscriminator", "SegGenerator", "VGG19Features", "VGGLoss",
           "bottleneck_sample", "build_networks", "generated_images", "generated_label_maps", "label_ids",
           "load_generators", "load_seg_generator", "load_vgg19_weights", "one_hot_labels", "render", "run_networks",
           "upsample"]
