"""Small networks: the ConvNetJS CIFAR-10 demo, a 1-D net for audio, a 3-D net for volumes."""

from collections import OrderedDict

from .. import nn
from ._common import setup


class ConvNetJSCifar10(nn.Sequential):
    """Andrej Karpathy's ConvNetJS CIFAR-10 demo network, on 32x32x3 images:
    conv 16@5x5 padding 2, ReLU, pool 2 (-> 16x16x16); conv 20@5x5 padding 2, ReLU, pool 2
    (-> 8x8x20); conv 20@5x5 padding 2, ReLU, pool 2 (-> 4x4x20); fully connected 320 ->
    num_classes (logits; the demo's softmax is the loss's). Parameters: 1,216, 8,020, 10,020 and
    3,210, 22,466 in all. Children ``features``, ``flatten``, ``classifier`` (the Linear).
    """

    def __init__(self, num_classes=10, in_channels=3, dtype=None, rng=None):
        dtype, rng = setup("ConvNetJSCifar10", dtype, rng)

        def conv(c_in, c_out):
            return nn.Conv2d(c_in, c_out, 5, padding=2, dtype=dtype, rng=rng)

        super().__init__(OrderedDict([
            ("features", nn.Sequential(
                conv(in_channels, 16), nn.ReLU(), nn.MaxPool2d(2, 2),  # 32 -> 16
                conv(16, 20), nn.ReLU(), nn.MaxPool2d(2, 2),           # 16 -> 8
                conv(20, 20), nn.ReLU(), nn.MaxPool2d(2, 2),           # 8 -> 4
            )),
            ("flatten", nn.Flatten()),
            ("classifier", nn.Linear(20 * 4 * 4, num_classes, dtype=dtype, rng=rng)),
        ]))


def convnetjs_cifar10(num_classes=10, in_channels=3, dtype=None, rng=None):
    """The ConvNetJS CIFAR-10 demo network for 32x32 inputs; see :class:`ConvNetJSCifar10`."""
    return ConvNetJSCifar10(num_classes, in_channels, dtype=dtype, rng=rng)


class AudioCNN1d(nn.Sequential):
    """An M5-style 1-D network for raw waveforms (Dai, Dai, Qu, Li and Das, 2017; the layout
    of torchaudio's speech-command tutorial): a wide first conv (kernel 80, stride 16, a 5 ms
    window at 16 kHz) and three 3-tap convs, each followed by BatchNorm1d, ReLU and a max pool
    of 4; then ``avgpool`` (AdaptiveAvgPool1d(1), the global average over time), ``flatten``
    and ``classifier`` (Linear 2*channels -> num_classes).

    Input (N, in_channels, L) for any L >= 80. Unlike M5, the 3-tap convs pad by 1 (keeping
    the length) and the pools use ceil_mode, so short inputs shrink to length 1 instead of
    failing; in training mode BatchNorm needs more than one value per channel, which a batch
    of one has from L >= 1104. The convs have no bias (BatchNorm's bias takes its place). With
    channels=32 (the default) the net has 25,098 parameters at 10 classes.
    """

    def __init__(self, num_classes=10, in_channels=1, channels=32, dtype=None, rng=None):
        dtype, rng = setup("AudioCNN1d", dtype, rng)
        widths = (channels, channels, 2 * channels, 2 * channels)
        layers, c_in = [], in_channels
        for i, c_out in enumerate(widths):
            if i == 0:
                conv = nn.Conv1d(c_in, c_out, 80, stride=16, bias=False, dtype=dtype, rng=rng)
            else:
                conv = nn.Conv1d(c_in, c_out, 3, padding=1, bias=False, dtype=dtype, rng=rng)
            layers += [conv, nn.BatchNorm1d(c_out, dtype=dtype), nn.ReLU(), nn.MaxPool1d(4, ceil_mode=True)]
            c_in = c_out
        super().__init__(OrderedDict([
            ("features", nn.Sequential(*layers)),
            ("avgpool", nn.AdaptiveAvgPool1d(1)),
            ("flatten", nn.Flatten()),
            ("classifier", nn.Linear(c_in, num_classes, dtype=dtype, rng=rng)),
        ]))


def audio_cnn1d(num_classes=10, in_channels=1, channels=32, dtype=None, rng=None):
    """An M5-style 1-D conv net for sequences such as audio, any length >= 80; see
    :class:`AudioCNN1d`."""
    return AudioCNN1d(num_classes, in_channels, channels, dtype=dtype, rng=rng)


class CNN3d(nn.Sequential):
    """A small 3-D network for volumes or short videos, input (N, in_channels, D, H, W): two
    stages of 3x3x3 conv (padding 1, no bias), BatchNorm3d, ReLU and a 2x2x2 max pool
    (ceil_mode, so odd and size-1 dimensions pass), with ``channels`` and 2*channels filters;
    then ``avgpool`` (AdaptiveAvgPool3d(1)), ``flatten`` and ``classifier`` (Linear
    2*channels -> num_classes). Any D, H, W >= 1 runs (in training mode BatchNorm needs more
    than one value per channel, so a batch of one needs more than one voxel).
    """

    def __init__(self, num_classes=10, in_channels=1, channels=16, dtype=None, rng=None):
        dtype, rng = setup("CNN3d", dtype, rng)
        layers, c_in = [], in_channels
        for c_out in (channels, 2 * channels):
            layers += [nn.Conv3d(c_in, c_out, 3, padding=1, bias=False, dtype=dtype, rng=rng),
                       nn.BatchNorm3d(c_out, dtype=dtype), nn.ReLU(), nn.MaxPool3d(2, ceil_mode=True)]
            c_in = c_out
        super().__init__(OrderedDict([
            ("features", nn.Sequential(*layers)),
            ("avgpool", nn.AdaptiveAvgPool3d(1)),
            ("flatten", nn.Flatten()),
            ("classifier", nn.Linear(c_in, num_classes, dtype=dtype, rng=rng)),
        ]))


def cnn3d(num_classes=10, in_channels=1, channels=16, dtype=None, rng=None):
    """A small 3-D conv net for volumes and video clips, any size; see :class:`CNN3d`."""
    return CNN3d(num_classes, in_channels, channels, dtype=dtype, rng=rng)
