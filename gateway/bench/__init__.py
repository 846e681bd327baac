"""`transfer-gateway bench`: the gateway measured against the limits of its own stack.

Kept free of imports so that the server processes (`gateway.bench.child`) load only what they serve;
the harness is `gateway.bench.harness`.
"""
