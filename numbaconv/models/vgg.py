"""VGG-11 and VGG-16 (Simonyan and Zisserman, 2014), torchvision's layout and state dict keys."""

from collections import OrderedDict

from .. import nn
from ._common import setup

# torchvision's configurations: channels of each 3x3 conv, "M" a 2x2 stride-2 max pool
CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # VGG-11
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # VGG-16
}


def make_layers(config, in_channels=3, batch_norm=False, dtype=None, rng=None):
    """``features`` of a VGG: for each number a 3x3 padding-1 conv (then BatchNorm2d when
    batch_norm) and a ReLU, for each "M" a 2x2 stride-2 max pool, numbered as torchvision does."""
    layers = []
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1, dtype=dtype, rng=rng))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v, dtype=dtype))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Sequential):
    """torchvision's VGG: ``features`` (see :func:`make_layers`), ``avgpool``
    AdaptiveAvgPool2d((7, 7)), ``flatten``, ``classifier`` (Linear 25088->4096, ReLU, Dropout,
    Linear 4096->4096, ReLU, Dropout, Linear 4096->num_classes). The state dict keys are
    torchvision's (``features.0.weight`` ... ``classifier.6.bias``), so its weights load as
    they are. The adaptive pool lets any input of at least 32x32 through.

    Initialization: numbaconv's default (PyTorch's layer default, kaiming uniform with
    a=sqrt(5)), not torchvision's VGG scheme (kaiming normal fan_out for convs, normal(0, 0.01)
    for linears, zero biases); load a state dict for torchvision's numbers.
    """

    def __init__(self, features, num_classes=1000, dropout=0.5, dtype=None, rng=None):
        dtype, rng = setup("VGG", dtype, rng)
        super().__init__(OrderedDict([
            ("features", features),
            ("avgpool", nn.AdaptiveAvgPool2d((7, 7))),
            ("flatten", nn.Flatten()),
            ("classifier", nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096, dtype=dtype, rng=rng),
                nn.ReLU(True),
                nn.Dropout(p=dropout, rng=rng),
                nn.Linear(4096, 4096, dtype=dtype, rng=rng),
                nn.ReLU(True),
                nn.Dropout(p=dropout, rng=rng),
                nn.Linear(4096, num_classes, dtype=dtype, rng=rng),
            )),
        ]))


def _vgg(op, config, num_classes, in_channels, batch_norm, dropout, dtype, rng):
    dtype, rng = setup(op, dtype, rng)
    features = make_layers(CONFIGS[config], in_channels, batch_norm, dtype=dtype, rng=rng)
    return VGG(features, num_classes, dropout, dtype=dtype, rng=rng)


def vgg11(num_classes=1000, in_channels=3, batch_norm=False, dropout=0.5, dtype=None, rng=None):
    """VGG-11 (configuration "A"): 132,863,336 parameters at 1000 classes (132,868,840 with
    batch_norm=True, torchvision's vgg11_bn). See :class:`VGG`."""
    return _vgg("vgg11", "A", num_classes, in_channels, batch_norm, dropout, dtype, rng)


def vgg16(num_classes=1000, in_channels=3, batch_norm=False, dropout=0.5, dtype=None, rng=None):
    """VGG-16 (configuration "D"): 138,357,544 parameters at 1000 classes (138,365,992 with
    batch_norm=True, torchvision's vgg16_bn). See :class:`VGG`."""
    return _vgg("vgg16", "D", num_classes, in_channels, batch_norm, dropout, dtype, rng)
