"""numbaconv.models: classic networks built from numbaconv.nn, forward and backward.

Every constructor takes ``num_classes`` and ``in_channels``, and ``dtype`` (float32 by default,
or float64) and ``rng`` (a seed or numpy Generator for the initial weights and dropout masks;
default numbaconv's generator) for its layers. The torchvision models (alexnet's layout,
vgg11, vgg16, resnet18) have torchvision's state dict keys. Outputs are logits.
"""

from .alexnet import AlexNet, alexnet
from .lenet import LeNet5, lenet5
from .resnet import BasicBlock, ResNet, conv1x1, conv3x3, resnet18
from .small import AudioCNN1d, CNN3d, ConvNetJSCifar10, audio_cnn1d, cnn3d, convnetjs_cifar10
from .vgg import VGG, make_layers, vgg11, vgg16

__all__ = [
    "lenet5", "alexnet", "vgg11", "vgg16", "resnet18", "convnetjs_cifar10", "audio_cnn1d", "cnn3d",
    "LeNet5", "AlexNet", "VGG", "make_layers", "ResNet", "BasicBlock", "conv1x1", "conv3x3",
    "ConvNetJSCifar10", "AudioCNN1d", "CNN3d",
]
