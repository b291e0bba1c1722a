"""ResNet-18 (He, Zhang, Ren and Sun, 2015), torchvision's layout and state dict keys.

BasicBlock and ResNet write their backward out next to their forward, so the chain rule can be
read: backward visits the layers of forward in reverse, and where forward feeds one value to
two places (the block's input to the residual branch and to the shortcut) backward adds the two
gradients that come back.
"""

from .._arith import add
from .. import functional as F
from .. import nn
from ._common import setup


def conv3x3(in_planes, out_planes, stride=1, dtype=None, rng=None):
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False, dtype=dtype, rng=rng)


def conv1x1(in_planes, out_planes, stride=1, dtype=None, rng=None):
    """1x1 convolution with no bias: the projection of the shortcut."""
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False, dtype=dtype, rng=rng)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), torchvision's BasicBlock.

    Children ``conv1``, ``bn1``, ``relu``, ``conv2``, ``bn2`` and ``downsample``: None (the
    shortcut is x itself) unless given, e.g. Sequential(conv1x1(in, out, stride), BatchNorm2d)
    when the block changes the stride or the channels.

    A module keeps what its backward needs, so one instance runs once per forward pass. The
    ``relu`` child is the one after bn1; the ReLU after the addition is the functional op, and
    the block keeps the sum it was applied to. That keeps torchvision's children (and repr)
    with a single ``relu``.
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dtype=None, rng=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dtype=dtype, rng=rng)
        self.bn1 = nn.BatchNorm2d(planes, dtype=dtype)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dtype=dtype, rng=rng)
        self.bn2 = nn.BatchNorm2d(planes, dtype=dtype)
        if downsample is not None and not isinstance(downsample, nn.Module):
            raise TypeError(f"BasicBlock: downsample must be a Module or None, got {type(downsample).__name__}")
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        identity = x if self.downsample is None else self.downsample(x)
        self._sum = add(out, identity)
        return F.relu(self._sum)

    def backward(self, grad_out, input_grad=True):
        grad_sum = F.relu_backward(grad_out, self._saved("_sum"))
        # the sum passes grad_sum unchanged to both of its terms
        grad = self.bn2.backward(grad_sum)
        grad = self.conv2.backward(grad)
        grad = self.relu.backward(grad)
        grad = self.bn1.backward(grad)
        grad = self.conv1.backward(grad, input_grad=input_grad)
        if self.downsample is None:
            grad_identity = grad_sum
        else:
            grad_identity = self.downsample.backward(grad_sum, input_grad=input_grad)
        if not input_grad:
            return None
        # x fed both the residual branch and the shortcut: their gradients add
        return add(grad, grad_identity)


class ResNet(nn.Module):
    """torchvision's ResNet for BasicBlock: ``conv1`` (7x7 stride 2 padding 3, no bias),
    ``bn1``, ``relu``, ``maxpool`` (3x3 stride 2 padding 1), ``layer1`` ... ``layer4`` (each a
    Sequential of blocks; 64, 128, 256, 512 channels, layers 2-4 start with stride 2 and a
    downsample), ``avgpool`` AdaptiveAvgPool2d((1, 1)), flatten, ``fc``. State dict keys are
    torchvision's (``layer2.0.downsample.0.weight``, ``bn1.num_batches_tracked`` ...), so its
    weights load as they are.

    Initialization: numbaconv's default (PyTorch's layer default, kaiming uniform with
    a=sqrt(5); BatchNorm weight 1, bias 0), not torchvision's kaiming normal fan_out for the
    convs; load a state dict for torchvision's numbers.
    """

    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, in_channels=3, dtype=None, rng=None):
        super().__init__()
        dtype, rng = setup("ResNet", dtype, rng)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False, dtype=dtype, rng=rng)
        self.bn1 = nn.BatchNorm2d(64, dtype=dtype)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1, dtype, rng)
        self.layer2 = self._make_layer(128, layers[1], 2, dtype, rng)
        self.layer3 = self._make_layer(256, layers[2], 2, dtype, rng)
        self.layer4 = self._make_layer(512, layers[3], 2, dtype, rng)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * BasicBlock.expansion, num_classes, dtype=dtype, rng=rng)

    def _make_layer(self, planes, blocks, stride, dtype, rng):
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * BasicBlock.expansion, stride, dtype=dtype, rng=rng),
                nn.BatchNorm2d(planes * BasicBlock.expansion, dtype=dtype),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, dtype=dtype, rng=rng)]
        self.inplanes = planes * BasicBlock.expansion
        for _ in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes, dtype=dtype, rng=rng))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        self._pooled_shape = x.shape
        x = x.reshape(x.shape[0], -1)  # torch.flatten(x, 1)
        return self.fc(x)

    def backward(self, grad_out, input_grad=True):
        grad = self.fc.backward(grad_out)
        grad = grad.reshape(self._saved("_pooled_shape"))
        grad = self.avgpool.backward(grad)
        grad = self.layer4.backward(grad)
        grad = self.layer3.backward(grad)
        grad = self.layer2.backward(grad)
        grad = self.layer1.backward(grad)
        grad = self.maxpool.backward(grad)
        grad = self.relu.backward(grad)
        grad = self.bn1.backward(grad)
        return self.conv1.backward(grad, input_grad=input_grad)


def resnet18(num_classes=1000, in_channels=3, dtype=None, rng=None):
    """ResNet-18: two BasicBlocks in each of layer1 ... layer4; 11,689,512 parameters at 1000
    classes. Any input size runs (224x224 gives 7x7 maps before the adaptive pool, 32x32 gives
    1x1); in training mode BatchNorm needs more than one value per channel, so a batch of one
    needs inputs above 32x32. See :class:`ResNet`."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels, dtype=dtype, rng=rng)
