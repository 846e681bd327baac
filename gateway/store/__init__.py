"""The store: everything the gateway keeps, behind the `Store` port.

The rest of the gateway imports the port from here (`from gateway.store import Store, …`) and
one engine from `gateway.store.engines`. Inside, one module per concept:

- `port`: the `Store` Protocol and the records that cross it, with the guarantees every
  implementation gives;
- `steps`: the sans-I/O vocabulary (Query, QueryOne, Statement, Batch, LockCase, Wake) in which
  operations speak to a database, and `drive`, the one loop that runs them;
- `writes` (accept), `deliveries` (lease, acknowledge, end a lease, dead letters and their
  redrive), `decision` (the case decision inside an accept),
  `index` (the suspended-record index: records, enrollments and the cases they open),
  `views` (cases as Tracking shows them), `reports` (settlement, backlog, deadlines) and
  `calendar` (the notices every replica counts on, and stages counted again): the operations, as
  generators of steps; `rows` holds what they share;
- `transparency`: the transparency log's leaves, stored tree, checkpoints and proofs, and the
  snapshot its audit reads;
- `migrations`: the schema, numbered, and `migrate`;
- `base`: the port's methods written once over the operations (`SQLStore`);
- `sqlite` and `postgres`: the drivers, each answering the steps in its engine's words and
  running operations as reads and writes; `engines`: which one a configuration names.

How to add an operation or a migration: see `gateway.store.steps` and `gateway.store.migrations`.
"""

from gateway.store.port import (
    AcceptOutcome,
    AuditSink,
    AuthoredOpening,
    CaseQuery,
    CaseView,
    CheckpointRecord,
    Claim,
    ClaimedDelivery,
    ConsistencyRecord,
    DeadLetter,
    DeadLetterCount,
    DeadLettered,
    DeadLetterQuery,
    DeadReason,
    Decide,
    DeliveryStats,
    EnrollmentReport,
    Escalation,
    HeldQuery,
    HeldTransfer,
    InclusionRecord,
    IncomingMessage,
    IndexCount,
    IndexFacts,
    IndexMessage,
    IndexOutcome,
    IssuedReceipt,
    LeaseEnd,
    LoggedMessage,
    MakeIndexReceipt,
    MakeReceipt,
    MessageView,
    OpenCase,
    OpenedCase,
    Opening,
    OptOut,
    RecordRegistration,
    RecordWithdrawal,
    Retimed,
    SettlementLine,
    SignCheckpoint,
    StageCount,
    StageRecord,
    StageTotal,
    StaleEntry,
    Store,
    StoredCalendar,
    StoredRegistry,
    UnaskedQuestion,
)

__all__ = [
    "AcceptOutcome",
    "AuditSink",
    "AuthoredOpening",
    "CaseQuery",
    "CaseView",
    "CheckpointRecord",
    "Claim",
    "ClaimedDelivery",
    "ConsistencyRecord",
    "DeadLetter",
    "DeadLetterCount",
    "DeadLetterQuery",
    "DeadLettered",
    "DeadReason",
    "Decide",
    "DeliveryStats",
    "EnrollmentReport",
    "Escalation",
    "HeldQuery",
    "HeldTransfer",
    "InclusionRecord",
    "IncomingMessage",
    "IndexCount",
    "IndexFacts",
    "IndexMessage",
    "IndexOutcome",
    "IssuedReceipt",
    "LeaseEnd",
    "LoggedMessage",
    "MakeIndexReceipt",
    "MakeReceipt",
    "MessageView",
    "OpenCase",
    "OpenedCase",
    "Opening",
    "OptOut",
    "RecordRegistration",
    "RecordWithdrawal",
    "Retimed",
    "SettlementLine",
    "SignCheckpoint",
    "StageCount",
    "StageRecord",
    "StageTotal",
    "StaleEntry",
    "Store",
    "StoredCalendar",
    "StoredRegistry",
    "UnaskedQuestion",
]
