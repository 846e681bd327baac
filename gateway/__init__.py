"""transfer-gateway: the national exchange gateway for medical insurance relationship transfers.

Layout: `mitransfer` holds the generated contracts; in this package, `messages`, `validation`,
`idnumbers`, `case`, `signing` and `registry` are the pure core (no gRPC, no database);
`store` is the storage port and its implementations; `service` is the thin gRPC edge.
"""
