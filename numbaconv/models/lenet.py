"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, 1998), the network of the lecture's walk-through."""

from collections import OrderedDict

from .. import nn
from ._common import setup


class LeNet5(nn.Sequential):
    """LeNet-5 on 32x32 images: conv 6@5x5 -> 28x28x6, pool 2 -> 14x14x6, conv 16@5x5 ->
    10x10x16, pool 2 -> 5x5x16 = 400, fully connected 120, 84, num_classes.

    The modern variant: ReLU and max pooling where the 1998 paper has scaled tanh and trainable
    average-pooling ("subsampling") units, and every conv2 filter reading all six maps (the
    paper connects each to a subset). It trains faster and better on digits; the layer sizes,
    shapes and parameter counts of the conv and fc layers are the paper's. Inputs must be 32x32
    (pad 28x28 MNIST digits by 2 on each side, as LeCun did).

    Children: ``features`` (Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, MaxPool2d), ``flatten``,
    ``classifier`` (Linear 400->120, ReLU, Linear 120->84, ReLU, Linear 84->num_classes); state
    dict keys ``features.0.weight`` ... ``classifier.4.bias``. Outputs are logits (no softmax:
    pair them with CrossEntropyLoss).
    """

    def __init__(self, num_classes=10, in_channels=1, dtype=None, rng=None):
        dtype, rng = setup("LeNet5", dtype, rng)
        super().__init__(OrderedDict([
            ("features", nn.Sequential(
                nn.Conv2d(in_channels, 6, 5, dtype=dtype, rng=rng),  # 32 -> 28
                nn.ReLU(),
                nn.MaxPool2d(2),                                     # 28 -> 14
                nn.Conv2d(6, 16, 5, dtype=dtype, rng=rng),           # 14 -> 10
                nn.ReLU(),
                nn.MaxPool2d(2),                                     # 10 -> 5
            )),
            ("flatten", nn.Flatten()),
            ("classifier", nn.Sequential(
                nn.Linear(16 * 5 * 5, 120, dtype=dtype, rng=rng),
                nn.ReLU(),
                nn.Linear(120, 84, dtype=dtype, rng=rng),
                nn.ReLU(),
                nn.Linear(84, num_classes, dtype=dtype, rng=rng),
            )),
        ]))


def lenet5(num_classes=10, in_channels=1, dtype=None, rng=None):
    """LeNet-5 for 32x32 inputs with ``in_channels`` channels (ReLU + max pool variant); see
    :class:`LeNet5`."""
    return LeNet5(num_classes, in_channels, dtype=dtype, rng=rng)
