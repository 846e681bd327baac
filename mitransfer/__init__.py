"""The transfer gateway's contracts in Python, shared by the gateway and every platform.

- `mitransfer.v1`: the protobuf and gRPC code generated from proto/mitransfer/v1 (never edited
  by hand; `python scripts/gen_protos.py` makes it and `--check` proves it current).
- `mitransfer.protocol`: the hand-written rules both ends apply to those messages (DSSE PAE, the
  message kinds, the signature suites, the registry's public format, ID-number check digits).

This package imports protobuf and cryptography only. A platform copies it with `clients/`.
"""
