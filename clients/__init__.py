"""Reference client of the transfer gateway for provincial platforms (医保关系转移接续).

To use it in a platform, copy two folders: `clients/` and `mitransfer/` (the generated contracts,
`mitransfer.v1`, and the protocol rules the gateway applies too, `mitransfer.protocol`: PAE,
message kinds, signature suites, the registry's format, ID-number check characters). Beyond
them it needs grpcio, grpcio-status, protobuf and cryptography; nothing here imports the gateway
itself (tests/test_layers.py holds both to that).

Pure (no network):
- `signing`: the platform's `Signer`, the registry's `KeyRing` (verify messages, receipts)
- `deliveries`: verify a delivery completely; `RecentIds` to drop redeliveries
- `builders`, `idnumbers`: valid messages and synthetic people
- `roles`: the inbound side's answers and the outbound side's outcome, as pure decisions
- `messages`, `retry`, `errors`: kinds and payload types, retry policy, the error classes

Network:
- `platform`: `PlatformClient` over mutual TLS (submit, subscribe, ack, get_case)
- `scenario`: `ReferencePlatform` and `run_cases`, two platforms playing whole cases
- `python -m clients.outbound`, `python -m clients.inbound`: command-line tools
"""
