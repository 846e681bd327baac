"""`transfer-gateway bench`: the gateway measured against the limits of its own stack.

Kept free of imports so that the server processes (`gateway.devtools.bench.child`) load only what they serve;
the harness is `gateway.devtools.bench.harness`.
"""
