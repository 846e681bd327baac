"""The benchmark's submissions: whole, valid cases signed before any clock starts.

Each case is what two reference platforms exchange for an employee with a personal-account
balance below the review threshold: outbound notice, information table and fund transfer from the
outbound side, then the inbound side's acknowledgements (accepted, funds credited, transfer-in
completed), decided by `clients.roles.answer_as_inbound`, so every one passes the case rules.
Directions alternate between Jiangsu and Zhejiang, over all their agencies.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass

from clients.builders import EMPLOYEE
from clients.messages import kind_of
from clients.roles import InboundCase, answer_as_inbound
from clients.scenario import CasePlan, outbound_messages
from clients.signing import Signer
from gateway.app.devpki import DEV_PLATFORMS, DEV_REVIEW_ABOVE_FEN, GATEWAY_KEY_ID, DevPaths
from gateway.core.signing import LocalSigner
from gateway.devtools.bench.stores import Route, Template
from gateway.service.receipts import issue_receipt
from mitransfer.v1 import envelope_pb2, messages_pb2

PLATFORMS = ("jiangsu", "zhejiang")
FUND_TRANSFER = envelope_pb2.MESSAGE_KIND_FUND_TRANSFER


@dataclass(frozen=True)
class Submission:
    platform: str     # the platform that signs it and sends it on its own mTLS channel
    kind: envelope_pb2.MessageKind.ValueType
    transfer_id: str
    data: bytes       # the serialized SignedMessage, sent as is


SignedCase = tuple[Submission, ...]


def presign_cases(pki: DevPaths, count: int, *, seed: int = 20260101) -> list[SignedCase]:
    """`count` cases of six signed messages each, in sending order.

    People are `sample_person(seed + i)`; distinct for up to 657,000 cases, so no case meets
    another open case of the same person (CASE_ALREADY_OPEN).
    """
    signers = {p.id: Signer.from_pem(p.key_id, pki.platform_signing_key(p.id).read_bytes())
               for p in DEV_PLATFORMS if p.id in PLATFORMS}
    agencies = {p.id: p.agency_codes for p in DEV_PLATFORMS if p.id in PLATFORMS}
    threshold = DEV_REVIEW_ABOVE_FEN  # the dev registry's review threshold (Zhejiang's outbound transfers)
    rng = random.Random(seed)
    cases: list[SignedCase] = []
    for i in range(count):
        out_platform, in_platform = PLATFORMS if i % 2 == 0 else PLATFORMS[::-1]
        slot = i // 2
        outbound = agencies[out_platform][slot % len(agencies[out_platform])]
        inbound = agencies[in_platform][(slot + 1) % len(agencies[in_platform])]
        plan = CasePlan.synthetic(outbound, inbound, insurance_type=EMPLOYEE,
                                  balance_fen=rng.randint(100, threshold), seed=seed + i)
        submissions: list[Submission] = []
        remembered: InboundCase | None = None
        for message in outbound_messages(plan):
            kind = kind_of(message)
            signed = signers[out_platform].sign(kind, message)
            submissions.append(Submission(out_platform, kind, plan.route.transfer_id, signed.SerializeToString()))
            decision = answer_as_inbound(remembered, message)
            remembered = decision.case
            for ack in decision.acknowledgements:
                answer = signers[in_platform].sign(kind_of(ack), ack)
                submissions.append(Submission(in_platform, kind_of(ack), plan.route.transfer_id,
                                              answer.SerializeToString()))
        cases.append(tuple(submissions))
    return cases


def store_templates(pki: DevPaths, case: SignedCase) -> list[Template]:
    """One real message of each step of a case, with a real receipt, for the bulk loader to copy."""
    signer = LocalSigner.from_pem(GATEWAY_KEY_ID, pki.gateway_signing_key.read_bytes())
    templates = []
    for sequence, s in enumerate(case, start=1):
        signed = envelope_pb2.SignedMessage.FromString(s.data)
        ack_status = messages_pb2.Acknowledgement.FromString(signed.payload).status \
            if s.kind == envelope_pb2.MESSAGE_KIND_ACKNOWLEDGEMENT else 0
        digest = hashlib.sha256(signed.payload).digest()
        receipt = issue_receipt(signer, message_id="0" * 36, transfer_id=s.transfer_id, kind=s.kind,
                                sender="000000", receiver="000000", payload_sha256=digest, sequence=sequence,
                                accepted_at=dt.datetime.now(dt.UTC)).receipt
        templates.append(Template(s.kind, s.platform == case[0].platform, s.data, receipt, ack_status))
    return templates


def store_routes() -> list[Route]:
    """Every pair of a Jiangsu and a Zhejiang agency, in both directions."""
    agencies = {p.id: p.agency_codes for p in DEV_PLATFORMS if p.id in PLATFORMS}
    a, b = PLATFORMS
    return [Route(x, a, y, b) for x in agencies[a] for y in agencies[b]] + \
        [Route(y, b, x, a) for x in agencies[a] for y in agencies[b]]
