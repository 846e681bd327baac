"""transfer-gateway: the national exchange gateway for medical insurance relationship transfers.

Layers, lowest first (docs/architecture.md): `core` (the pure domain), `store` (the storage port
and its engines), `service` (the gRPC edge), `app` (the process), `devtools` (demo and bench);
`cli` is the entry point that wires them. The contracts and the protocol's shared rules are in
the `mitransfer` package.
"""
