"""PyTorch models for the ONNX tests and the inference benchmarks, built with random weights and
random batch-norm statistics (so that folding them changes the weights), and their export with
the TorchScript exporter (``dynamo=False``: offline, and fast) or PyTorch's default one (through
torch.export and onnxscript, which writes ReduceMean for global pooling and opset 18 and later),
with a dynamic batch dimension.

Imported only where torch is importable.
"""

import io
import os
import sys
import warnings

import torch


def export(module, x, opset=13, fold=True):
    module.eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), f, dynamo=False, opset_version=opset,
                          do_constant_folding=fold, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    return f.getvalue()


def export_dynamo(module, x):
    """The export through torch.export and onnxscript (PyTorch's default exporter), batch dynamic."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (torch.from_numpy(x),), dynamo=True, input_names=["x"],
                                    output_names=["y"], dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                    verbose=False)
    return program.model_proto.SerializeToString()


def randomize(module, seed=0):
    """Random batch-norm statistics and affine parameters, so that folding them matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return module


def lenet():
    tnn = torch.nn
    return tnn.Sequential(tnn.Conv2d(1, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Conv2d(6, 16, 5), tnn.ReLU(),
                          tnn.MaxPool2d(2), tnn.Flatten(), tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84),
                          tnn.ReLU(), tnn.Linear(84, 10))


def vgg_style():
    tnn = torch.nn

    def block(c_in, c_out):
        return [tnn.Conv2d(c_in, c_out, 3, padding=1), tnn.BatchNorm2d(c_out), tnn.ReLU(),
                tnn.Conv2d(c_out, c_out, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2, 2)]

    return tnn.Sequential(*block(3, 8), *block(8, 16), *block(16, 16), tnn.Flatten(), tnn.Linear(16 * 4 * 4, 32),
                          tnn.ReLU(), tnn.Dropout(0.5), tnn.Linear(32, 10), tnn.Softmax(dim=1))


def mobilenet_block():
    """A MobileNet-v2 style stem and inverted residual: depthwise 3x3, pointwise 1x1, ReLU6."""
    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, c, expand):
            super().__init__()
            h = c * expand
            self.body = tnn.Sequential(
                tnn.Conv2d(c, h, 1, bias=False), tnn.BatchNorm2d(h), tnn.ReLU6(),
                tnn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), tnn.BatchNorm2d(h), tnn.ReLU6(),
                tnn.Conv2d(h, c, 1, bias=False), tnn.BatchNorm2d(c))

        def forward(self, x):
            return x + self.body(x)

    return tnn.Sequential(
        tnn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU6(),
        tnn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), tnn.BatchNorm2d(16), tnn.ReLU6(),
        tnn.Conv2d(16, 8, 1, bias=False), tnn.BatchNorm2d(8),
        Block(8, 4), Block(8, 4),
        tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(8, 10))


def conv1d_net():
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv1d(2, 8, 5, stride=2), tnn.BatchNorm1d(8), tnn.ReLU(), tnn.MaxPool1d(2),
        tnn.Conv1d(8, 16, 3, padding=1, dilation=1), tnn.LeakyReLU(0.1), tnn.AvgPool1d(2),
        tnn.Conv1d(16, 16, 3, padding=2, dilation=2, groups=4), tnn.Tanh(),
        tnn.Flatten(), tnn.Linear(16 * 7, 5), tnn.LogSoftmax(dim=1))


def conv3d_net():
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv3d(1, 4, 3, padding=1), tnn.BatchNorm3d(4), tnn.ReLU(), tnn.MaxPool3d(2),
        tnn.Conv3d(4, 8, 3, stride=(1, 2, 1), padding=1), tnn.Sigmoid(), tnn.AvgPool3d(2, ceil_mode=False),
        tnn.AdaptiveAvgPool3d(1), tnn.Flatten(), tnn.Linear(8, 3))


def decoder():
    """Transposed convolutions (stride, padding, output_padding), a skip concatenation."""
    tnn = torch.nn

    class Decoder(tnn.Module):
        def __init__(self):
            super().__init__()
            self.down = tnn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.up = tnn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
            self.out = tnn.ConvTranspose2d(7, 2, 2, stride=1, dilation=2)

        def forward(self, x):
            y = torch.relu(self.up(torch.relu(self.down(x))))
            return torch.sigmoid(self.out(torch.cat([y, x], dim=1)))

    return Decoder()


def torch_resnet18():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_ref

    return torch_ref.resnet18(num_classes=10)[0]
