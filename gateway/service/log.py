"""LogService: the transparency log's checkpoints and proofs, for platforms and operators.

A platform may ask for the inclusion of the messages of its own agencies' cases (like Tracking,
an operator for any); checkpoints and consistency proofs are the same for everyone. An
inclusion proof asked against the latest checkpoint for a message no checkpoint covers yet has
one published first, so that a platform can check a receipt right after it got it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.core.errors import FieldViolation, InvalidMessage, NotFound
from gateway.core.registry import LiveRegistry
from gateway.core.validation import is_uuid
from gateway.service.auth import Callers
from gateway.store import CheckpointRecord, Store
from mitransfer.v1 import log_pb2, log_pb2_grpc

MAX_TREE_SIZE = 2**63 - 1  # what the store's integers hold; no log comes near it


def checkpoint_proto(record: CheckpointRecord) -> log_pb2.Checkpoint:
    return log_pb2.Checkpoint(note=record.note, tree_size=record.tree_size, root_hash=record.root_hash)


class LogService(log_pb2_grpc.LogServiceServicer):
    def __init__(self, *, registry: LiveRegistry, store: Store,
                 publish_now: Callable[[], Awaitable[CheckpointRecord | None]], callers: Callers) -> None:
        self._callers = callers
        self._registry = registry
        self._store = store
        self._publish_now = publish_now

    async def GetCheckpoint(self, request: log_pb2.GetCheckpointRequest,
                            context: Any) -> log_pb2.GetCheckpointResponse:
        self._callers.tracking_scope(context, self._registry.current)  # any platform or operator; refuses anyone else
        latest = await self._store.latest_checkpoint()
        if latest is None:
            await self._publish_now()
            latest = await self._store.latest_checkpoint()
        if latest is None:
            raise NotFound("the log is empty: no checkpoint yet", reason="CHECKPOINT_NOT_FOUND")
        return log_pb2.GetCheckpointResponse(checkpoint=checkpoint_proto(latest))

    async def GetInclusionProof(self, request: log_pb2.GetInclusionProofRequest,
                                context: Any) -> log_pb2.GetInclusionProofResponse:
        scope = self._callers.tracking_scope(context, self._registry.current)
        bad = [] if is_uuid(request.message_id) else [
            FieldViolation("message_id", "must be a canonical lower-case UUID")]
        bad += _tree_sizes(tree_size=request.tree_size)
        if bad:
            raise InvalidMessage(bad, reason="QUERY_INVALID")
        logged = await self._store.leaf_of(request.message_id)
        # A message of another platform's case is answered as one that does not exist: nothing is
        # learnt of it, not even that it exists.
        if logged is None or (scope is not None and logged.outbound not in scope and logged.inbound not in scope):
            raise NotFound(f"no message {request.message_id}", reason="MESSAGE_NOT_FOUND",
                           metadata={"message_id": request.message_id})
        if request.tree_size == 0:
            latest = await self._store.latest_checkpoint()
            if latest is None or latest.tree_size <= logged.leaf_index:
                await self._publish_now()
        proof = await self._store.inclusion_proof(request.message_id, request.tree_size)
        return log_pb2.GetInclusionProofResponse(
            leaf_index=proof.leaf_index, tree_size=proof.checkpoint.tree_size, entry=proof.entry,
            hashes=proof.hashes, checkpoint=checkpoint_proto(proof.checkpoint))

    async def GetConsistencyProof(self, request: log_pb2.GetConsistencyProofRequest,
                                  context: Any) -> log_pb2.GetConsistencyProofResponse:
        self._callers.tracking_scope(context, self._registry.current)
        bad = _tree_sizes(first=request.first, second=request.second)
        if bad:
            raise InvalidMessage(bad, reason="QUERY_INVALID")
        proof = await self._store.consistency_proof(request.first, request.second)
        return log_pb2.GetConsistencyProofResponse(
            first=proof.first, second=proof.checkpoint.tree_size, hashes=proof.hashes,
            checkpoint=checkpoint_proto(proof.checkpoint))


def _tree_sizes(**sizes: int) -> list[FieldViolation]:
    """Tree sizes the store can hold (its integers are signed 64-bit); uint64 fields go beyond."""
    return [FieldViolation(name, f"must be at most {MAX_TREE_SIZE}") for name, size in sizes.items()
            if size > MAX_TREE_SIZE]
