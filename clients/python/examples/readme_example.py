import sys

import numpy as np
from dmoe_client import RemoteExpert, Router

router_url, server_url, model, uid = sys.argv[1:5]  # e.g. http://127.0.0.1:8000 http://127.0.0.1:8001 tiny ffn.0.0
router = Router(router_url)
print("models:", [m["name"] for m in router.models()])
for piece in router.generate(model, "Once upon a time", max_tokens=32, seed=7, stream=True):
    print(piece, end="", flush=True)
expert = RemoteExpert(server_url, uid)  # checks that the server proves its key
x = np.random.rand(4, expert.info()["hidden_dim"]).astype(np.float32)
print("\ny =", expert.forward(x).shape)
