"""RemoteExpert as a torch.nn.Module: a swarm expert inside a PyTorch model.

Its forward sends the input to the server; its backward (a torch.autograd.Function) sends the input
and the output's gradient to the server's backward, which answers grad_x and steps the expert's own
optimizer there: the expert's weights live on the server and train with it, so the module has no
parameters. float32 and float16 travel as they are; bfloat16 travels as BF16. Importing this module
raises ImportError when torch is missing.
"""

import numpy as np
import torch

from dmoe_client.expert import RemoteExpert as _Client


def _to_wire(t):
    """(numpy array, dtype= for the client) of a tensor."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy(), "BF16"
    if t.dtype in (torch.float32, torch.float16):
        return t.numpy(), None
    raise TypeError(f"a remote expert takes float32, float16 or bfloat16, got {t.dtype}")


def _from_wire(a, like):
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype=like.dtype, device=like.device)


class _RemoteCall(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, client):
        ctx.client = client
        ctx.save_for_backward(x)
        array, dtype = _to_wire(x)
        return _from_wire(client.forward(array, dtype=dtype), x)

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        array, dtype = _to_wire(x)
        grad, _ = _to_wire(grad_y.to(x.dtype))
        return _from_wire(ctx.client.backward(array, grad, dtype=dtype), x), None


class RemoteExpert(torch.nn.Module):
    """The expert `uid` at `endpoint`; the arguments are those of dmoe_client.RemoteExpert."""

    def __init__(self, endpoint, uid, identity=None, peer_id=None, timeout=30.0):
        super().__init__()
        self.client = _Client(endpoint, uid, identity=identity, peer_id=peer_id, timeout=timeout)

    def forward(self, x):
        return _RemoteCall.apply(x, self.client)
