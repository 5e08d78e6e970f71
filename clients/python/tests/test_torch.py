"""dmoe_client.torch: a remote expert inside a PyTorch graph; its backward trains the server."""

import numpy as np
import torch

from conftest import HIDDEN
from dmoe_client import Identity
from dmoe_client import RemoteExpert as Client
from dmoe_client.torch import RemoteExpert


def test_gradients_reach_the_server_and_grad_x_is_the_servers(swarm):
    # "train" and "twin" start ffn.1.1 from the same seed: the twin computes the reference.
    twin = Client(swarm["twin"], "ffn.1.1")
    module = RemoteExpert(swarm["train"], "ffn.1.1", identity=Identity.load(swarm["trainer_key_file"]))
    assert list(module.parameters()) == []
    torch.manual_seed(0)
    x = torch.randn(3, HIDDEN, requires_grad=True)
    w = torch.randn(3, HIDDEN)
    np.testing.assert_array_equal(twin.forward(x.detach().numpy()), module(x).detach().numpy())

    y = module(x)
    (y * w).sum().backward()
    assert module.client.last_step == 1
    expected = twin.backward(x.detach().numpy(), w.numpy())
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert np.abs(x.grad.numpy()).max() > 0

    after = module(x).detach()
    assert (after - y.detach()).abs().max().item() > 1e-5  # the server's weights moved


def test_half_precision_tensors_travel_as_they_are(swarm):
    module = RemoteExpert(swarm["twin"], "ffn.0.1")
    x = torch.randn(2, HIDDEN)
    y32 = module(x)
    for dtype, tol in ((torch.float16, 2e-2), (torch.bfloat16, 6e-2)):
        y = module(x.to(dtype))
        assert y.dtype == dtype
        assert (y.float() - y32).abs().max().item() < tol
