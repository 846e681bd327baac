"""The protocol's rules, written once for the gateway and for every platform.

Pure functions and frozen dataclasses over the generated contracts (`mitransfer.v1`); no I/O,
no gRPC, and nothing from `gateway` or `clients`. Each side maps the errors raised here
(`mitransfer.protocol.errors`, all ValueError with a stable `reason`) into its own.

- `dsse`: PAE, the bytes every signature covers, and the idempotency fingerprint.
- `kinds`: message kind ↔ protobuf class ↔ DSSE payload type, short names, and which kinds
  only the gateway writes.
- `suites`: the signature algorithms a registry may name, as a table (load keys, sign, verify).
- `registry`: the agency registry's public JSON format, parsed and checked.
- `idnumbers`: GB 11643-1999 citizen ID numbers and their check character.
- `tlog`: the transparency log's Merkle tree (RFC 9162): leaf and node hashes, stored hash
  indexes, inclusion and consistency proofs and their checks.
- `note`: signed notes (C2SP signed-note): format, key IDs per suite, signing and verifying.
- `checkpoint`: the log's signed tree heads (C2SP tlog-checkpoint).
"""
