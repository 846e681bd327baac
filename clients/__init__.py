"""Reference client of the transfer gateway for provincial platforms (医保关系转移接续).

Copy it into your platform. It depends only on the contracts (`mitransfer`), grpcio,
grpcio-status, protobuf and cryptography; nothing here imports the gateway itself.

Pure (no network):
- `signing`: DSSE PAE, the platform's `Signer`, the registry's `KeyRing` (verify messages, receipts)
- `deliveries`: verify a delivery completely; `RecentIds` to drop redeliveries
- `builders`, `idnumbers`: valid messages and synthetic people
- `roles`: the inbound side's answers and the outbound side's outcome, as pure decisions
- `messages`, `retry`, `errors`: kinds and payload types, retry policy, the error classes

Network:
- `platform`: `PlatformClient` over mutual TLS (submit, subscribe, ack, get_case)
- `scenario`: `ReferencePlatform` and `run_cases`, two platforms playing whole cases
- `python -m clients.outbound`, `python -m clients.inbound`: command-line tools
"""
