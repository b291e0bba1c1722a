"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012) with its local response normalization."""

from collections import OrderedDict

from .. import nn
from ._common import setup


class AlexNet(nn.Sequential):
    """The original AlexNet, one tower: the paper's 96, 256, 384, 384, 256 filters (the two
    GPUs' halves side by side, each conv reading every channel of the layer below) in
    torchvision's layout and names.

    ``features``: conv1 11x11 stride 4 padding 2 (224x224 -> 55x55x96), ReLU,
    LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2), 3x3 stride-2 overlapping max pool (-> 27),
    conv2 5x5 padding 2 (256), ReLU, LRN, max pool (-> 13), conv3/4/5 3x3 padding 1 (384, 384,
    256) with ReLUs, max pool (-> 6). ``avgpool``: AdaptiveAvgPool2d((6, 6)), the identity at
    224x224 that lets other sizes through. ``flatten``, then ``classifier``: Dropout, Linear
    9216->4096, ReLU, Dropout, Linear 4096->4096, ReLU, Linear 4096->num_classes (logits).
    62,378,344 parameters at 1000 classes. Inputs must be at least 63x63 (smaller ones leave
    nothing for the last pool). Default numbaconv (PyTorch default) initialization, not the
    paper's normal(0, 0.01) with bias 1 in some layers.
    """

    def __init__(self, num_classes=1000, in_channels=3, dropout=0.5, dtype=None, rng=None):
        dtype, rng = setup("AlexNet", dtype, rng)

        def conv(c_in, c_out, k, **kw):
            return nn.Conv2d(c_in, c_out, k, dtype=dtype, rng=rng, **kw)

        def lrn():
            return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

        super().__init__(OrderedDict([
            ("features", nn.Sequential(
                conv(in_channels, 96, 11, stride=4, padding=2), nn.ReLU(), lrn(),  # 224 -> 55
                nn.MaxPool2d(3, 2),                                                # 55 -> 27
                conv(96, 256, 5, padding=2), nn.ReLU(), lrn(),
                nn.MaxPool2d(3, 2),                                                # 27 -> 13
                conv(256, 384, 3, padding=1), nn.ReLU(),
                conv(384, 384, 3, padding=1), nn.ReLU(),
                conv(384, 256, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(3, 2),                                                # 13 -> 6
            )),
            ("avgpool", nn.AdaptiveAvgPool2d((6, 6))),
            ("flatten", nn.Flatten()),
            ("classifier", nn.Sequential(
                nn.Dropout(dropout, rng=rng),
                nn.Linear(256 * 6 * 6, 4096, dtype=dtype, rng=rng),
                nn.ReLU(),
                nn.Dropout(dropout, rng=rng),
                nn.Linear(4096, 4096, dtype=dtype, rng=rng),
                nn.ReLU(),
                nn.Linear(4096, num_classes, dtype=dtype, rng=rng),
            )),
        ]))


def alexnet(num_classes=1000, in_channels=3, dropout=0.5, dtype=None, rng=None):
    """The original AlexNet with LRN (96/256/384/384/256 filters); see :class:`AlexNet`."""
    return AlexNet(num_classes, in_channels, dropout=dropout, dtype=dtype, rng=rng)
