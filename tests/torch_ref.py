"""PyTorch as a second reference: forward and autograd backward on NumPy arrays.

Imported only by test modules that have already called ``pytest.importorskip("torch")``.
Padding modes go through torch.nn.Conv{n}d itself, the definition of their semantics.
"""

import numpy as np
import torch

CONV_MODULES = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}
CONV_TRANSPOSE = {
    1: torch.nn.functional.conv_transpose1d,
    2: torch.nn.functional.conv_transpose2d,
    3: torch.nn.functional.conv_transpose3d,
}


def _tensor(a, grad=False):
    return torch.tensor(np.array(a), requires_grad=grad)


def _numpy(t):
    return None if t is None else t.detach().numpy()


def conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", grad_out=None):
    """Forward through torch.nn.Conv{n}d; with ``grad_out`` also (grad_x, grad_w, grad_b)."""
    nd = x.ndim - 2
    dtype = torch.float64 if x.dtype == np.float64 else torch.float32
    module = CONV_MODULES[nd](
        x.shape[1], w.shape[0], w.shape[2:], stride=stride, padding=padding, dilation=dilation,
        groups=groups, bias=True, padding_mode=padding_mode, dtype=dtype,
    )
    with torch.no_grad():
        module.weight.copy_(torch.tensor(np.array(w)))
        module.bias.copy_(torch.tensor(np.zeros(w.shape[0]) if b is None else np.array(b)))
    xt = _tensor(x, grad=True)
    y = module(xt)
    if grad_out is None:
        return _numpy(y)
    y.backward(torch.tensor(np.array(grad_out)))
    return _numpy(y), _numpy(xt.grad), _numpy(module.weight.grad), _numpy(module.bias.grad)


def conv_transpose(x, w, b=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1, grad_out=None):
    """Forward through F.conv_transpose{n}d; with ``grad_out`` also (grad_x, grad_w, grad_b)."""
    xt, wt = _tensor(x, grad=True), _tensor(w, grad=True)
    bias = np.zeros(w.shape[1] * groups, dtype=x.dtype) if b is None else b
    bt = _tensor(bias, grad=True)
    y = CONV_TRANSPOSE[x.ndim - 2](xt, wt, bt, stride, padding, output_padding, groups, dilation)
    if grad_out is None:
        return _numpy(y)
    y.backward(torch.tensor(np.array(grad_out)))
    return _numpy(y), _numpy(xt.grad), _numpy(wt.grad), _numpy(bt.grad)


# --------------------------------------------------------------------------- models


def resnet18(num_classes=1000, in_channels=3):
    """torchvision's ResNet-18, written out with torch.nn (torchvision is not installed), and its
    BasicBlock class: the twin of numbaconv.models.resnet18, key for key."""
    tnn = torch.nn

    class TorchBasicBlock(tnn.Module):
        def __init__(self, inplanes, planes, stride=1, downsample=None):
            super().__init__()
            self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(out + identity)

    class TorchResNet(tnn.Module):
        def __init__(self):
            super().__init__()
            self.inplanes = 64
            self.conv1 = tnn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(64, 1)
            self.layer2 = self._make_layer(128, 2)
            self.layer3 = self._make_layer(256, 2)
            self.layer4 = self._make_layer(512, 2)
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(512, num_classes)

        def _make_layer(self, planes, stride):
            downsample = None
            if stride != 1 or self.inplanes != planes:
                downsample = tnn.Sequential(tnn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                            tnn.BatchNorm2d(planes))
            blocks = [TorchBasicBlock(self.inplanes, planes, stride, downsample), TorchBasicBlock(planes, planes)]
            self.inplanes = planes
            return tnn.Sequential(*blocks)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return TorchResNet(), TorchBasicBlock


def sequential_twin(model):
    """The torch.nn twin of a numbaconv model made of Sequentials and plain layers (LeNet-5, the
    CIFAR demo net), child names and so state-dict keys equal; weights copied in, float32."""
    from collections import OrderedDict

    import numbaconv.nn as ncnn

    def twin(module):
        if isinstance(module, ncnn.Sequential):
            return torch.nn.Sequential(OrderedDict((name, twin(child)) for name, child in module.named_children()))
        if isinstance(module, ncnn.Conv2d):
            return torch.nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                                   module.padding, module.dilation, module.groups, module.bias is not None)
        if isinstance(module, ncnn.Linear):
            return torch.nn.Linear(module.in_features, module.out_features, module.bias is not None)
        if isinstance(module, ncnn.MaxPool2d):
            return torch.nn.MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation,
                                      ceil_mode=module.ceil_mode)
        if isinstance(module, (ncnn.ReLU, ncnn.Flatten)):
            return getattr(torch.nn, type(module).__name__)()
        raise TypeError(f"sequential_twin: no torch twin for {type(module).__name__}")

    result = twin(model)
    result.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return result
