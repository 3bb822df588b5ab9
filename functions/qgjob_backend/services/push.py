"""The push channel: agents hold a WebSocket connection and hear of a new batch at once.

An idle agent waits on its connection instead of polling: when a plan commits batches,
``batches_assigned`` posts ``{"type": "batch", "batch_id": ...}`` to each one's agent,
which then leases it. A push is only a wake-up, never the batch itself: the lease call
stays the one way to get work, so a lost push costs latency (until the agent's safety
poll), never a job. The connection id lives on the agent item, written by ``$connect``
with a conditional write on the registration's credential hash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from aws_lambda_powertools import Logger

from qgjob_backend.domain.models import Agent, Batch
from qgjob_backend.ports import AgentNotifier, StateStore
from qgjob_backend.services.agents import AgentCredential
from qgjob_backend.services.auth import hash_token
from qgjob_backend.services.errors import Unauthorized

logger = Logger(child=True)

# Posts to different agents go out together: a plan that commits 50 batches wakes the
# 50th agent about as soon as the first.
MAX_PARALLEL_POSTS = 8


def batch_message(batch: Batch) -> dict[str, str]:
    return {"type": "batch", "batch_id": batch.batch_id}


class PushService:
    def __init__(
        self,
        store: StateStore,
        notifier: AgentNotifier | None,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def connect(self, credential: AgentCredential, connection_id: str) -> Agent:
        """``$connect``: the agent's push connection is now this one (one conditional write,
        which is also the authentication: it needs the registration's credential hash)."""
        agent = self._store.set_agent_connection(
            credential.agent_id, hash_token(credential.secret), connection_id, self._clock()
        )
        if agent is None:
            raise Unauthorized(
                f"agent {credential.agent_id}: not this credential's registration "
                "(unknown, offline or superseded): register again"
            )
        logger.info(
            "push connected", extra={"agent_id": agent.agent_id, "connection_id": connection_id}
        )
        return agent

    def disconnect(self, connection_id: str) -> bool:
        """``$disconnect``: forgets the connection, unless the agent has a newer one."""
        agent_id = self._store.agent_for_connection(connection_id)
        if agent_id is None:
            return False
        return self._store.clear_agent_connection(agent_id, connection_id)

    def batches_assigned(self, batches: Sequence[Batch]) -> None:
        """Wakes the agents of freshly committed batches (DispatchService's ``on_assigned``).

        Best effort per agent: a failure is logged and the others are still told.
        """
        if self._notifier is None or not batches:
            return
        if len(batches) == 1:
            woken = int(self._wake(batches[0]))
        else:
            with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_POSTS, len(batches))) as pool:
                woken = sum(pool.map(self._wake, batches))
        logger.info("agents woken", extra={"batches": len(batches), "pushed": woken})

    def _wake(self, batch: Batch) -> bool:
        notifier = self._notifier
        assert notifier is not None
        try:
            agent = self._store.get_agent(batch.agent_id)
            connection_id = agent.connection_id if agent is not None else None
            if connection_id is None:
                return False  # not connected: its safety poll finds the batch
            if notifier.send(connection_id, batch_message(batch)):
                return True
            # Gone (the agent went away, or API Gateway closed an old connection).
            self._store.clear_agent_connection(batch.agent_id, connection_id)
            logger.info(
                "push connection gone; forgotten",
                extra={"agent_id": batch.agent_id, "connection_id": connection_id},
            )
        except Exception:
            logger.warning(
                "could not push a batch to its agent",
                extra={"agent_id": batch.agent_id, "batch_id": batch.batch_id},
                exc_info=True,
            )
        return False
