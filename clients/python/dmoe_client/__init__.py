"""dmoe_client: use a dmoe swarm from Python (numpy, requests, websocket-client, PyNaCl).

- RemoteExpert(endpoint, uid, identity=None).forward(x) / .backward(x, grad_y), over HTTP, and
  .forward_many / .backward_many over one WebSocket with many requests in flight;
- Router(url).infer(model, x), .generate(model, prompt, stream=True), .models(), .swarm();
- Identity.load(path) reads the identity files of the C++ tools (`dmoe keygen`);
- dmoe_client.safetensors: the protocol's tensor codec in numpy;
- dmoe_client.torch (when torch imports): RemoteExpert as a torch.nn.Module.

Every error is a DmoeError; an error answer of a server is a ServerError with its code and message.
"""

from dmoe_client.errors import (DmoeError, ProofError, ProtocolError, SafetensorsError, ServerError,
                                TransportError)
from dmoe_client.expert import RemoteExpert
from dmoe_client.identity import Identity
from dmoe_client.router import Generation, Router

__all__ = ["DmoeError", "Generation", "Identity", "ProofError", "ProtocolError", "RemoteExpert",
           "Router", "SafetensorsError", "ServerError", "TransportError"]
