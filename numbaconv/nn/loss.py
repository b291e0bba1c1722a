"""Loss modules: CrossEntropyLoss, NLLLoss, MSELoss, as in torch.nn.

``loss = loss_fn(out, target)`` returns the loss (a 0-d array for "mean" and "sum");
``loss_fn.backward()`` returns the gradient of that loss with respect to ``out``, the start of
``model.backward``. A loss is the end of the chain, so its backward takes no gradient (a weight
for the loss may be passed as grad_out, default 1).
"""

from .. import functional as F
from .._arith import full_like
from .._geometry import check_choice
from ..functional.loss import REDUCTIONS
from .module import Module


class _Loss(Module):
    _op = ""

    def __init__(self, reduction="mean"):
        super().__init__()
        self.reduction = check_choice(type(self).__name__, "reduction", reduction, REDUCTIONS)

    def forward(self, input, target):
        self._input, self._target = input, target
        return getattr(F, self._op)(input, target, reduction=self.reduction)

    def backward(self, grad_out=None, input_grad=True):
        input = self._saved()
        if grad_out is None:
            if self.reduction == "none":
                raise ValueError(f"{type(self).__name__}.backward: with reduction='none' give grad_out, "
                                 f"the gradient for each element of the loss (shape {self._target.shape})")
            grad_out = full_like(input, 1)  # on the input's device
        return getattr(F, self._op + "_backward")(grad_out, input, self._target, reduction=self.reduction)

    def extra_repr(self):
        return f"reduction={self.reduction!r}" if self.reduction != "mean" else ""


class CrossEntropyLoss(_Loss):
    """Cross entropy of logits (N, C, ...) against class indices (N, ...): log_softmax + NLL."""

    _op = "cross_entropy"


class NLLLoss(_Loss):
    """Negative log likelihood of log-probabilities (N, C, ...) against class indices (N, ...)."""

    _op = "nll_loss"


class MSELoss(_Loss):
    """Mean squared error between input and target of the same shape."""

    _op = "mse_loss"


__all__ = ["CrossEntropyLoss", "NLLLoss", "MSELoss"]
