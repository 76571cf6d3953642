"""One object per role that fans calls out to every actor of the role, and replaces a dead
one under one retry policy (slime's actor group, with the restart the pools need)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


class GroupLost(RuntimeError):
    """A member of a collective group died or hung: the whole group must be rebuilt."""

    def __init__(self, group: str, cause: BaseException):
        # The cause's first line: Ray's death reports run to a dozen lines.
        first_line = next(iter(str(cause).splitlines()), "")
        super().__init__(f"the {group} group lost a member ({type(cause).__name__}: {first_line})")
        self.group = group


@dataclass(frozen=True)
class RetryPolicy:
    """What a failed call (actor died, or no answer within ``timeout_s``) gets: the actor is
    killed and rebuilt, ``on_restart`` runs, and the call is tried again, at most
    ``retries`` times."""

    timeout_s: float
    retries: int = 1
    # An actor's start (its model loaded): slower than any call, so it has its own limit.
    start_timeout_s: float = 1800.0


class ActorGroup:
    """``size`` actors built by ``factory(rank)``.

    ``call`` sends the same call to every actor and waits for all (what a collective needs:
    no retry, one rank alone cannot redo it); ``scatter`` sends one share to each and retries
    a failed share on a rebuilt actor; ``call_one`` does the same for one actor.
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[int], object],
        size: int,
        policy: RetryPolicy,
        on_restart: Callable[[int], None] | None = None,
    ) -> None:
        self.name, self.factory, self.policy = name, factory, policy
        self.on_restart = on_restart
        self.actors = [factory(rank) for rank in range(size)]

    def __len__(self) -> int:
        return len(self.actors)

    def get(self, refs):
        import ray

        return ray.get(refs, timeout=self.policy.timeout_s)

    def get_all(self, refs: list, timeout_s: float | None = None) -> list:
        """Every result, failing as soon as one actor fails: the others of a collective may
        be blocked on the dead one and would only answer at the timeout."""
        import time

        import ray

        failures = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError)
        deadline = time.monotonic() + (timeout_s or self.policy.timeout_s)
        pending = list(refs)
        try:
            while pending:
                left = max(0.0, deadline - time.monotonic())
                ready, pending = ray.wait(pending, num_returns=1, timeout=left)
                if not ready:
                    raise ray.exceptions.GetTimeoutError(f"{self.name}: no answer in {left:.0f}s")
                ray.get(ready[0])  # raises what the call raised
        except failures as err:
            raise GroupLost(self.name, err) from err
        return ray.get(refs)

    def wait_started(self, ranks: Sequence[int] | None = None) -> None:
        """Until the actors have started (models loaded), at most ``start_timeout_s``; one
        that dies or does not start in time fails the group (GroupLost)."""
        ranks = range(len(self.actors)) if ranks is None else ranks
        refs = [self.actors[rank].ready.remote() for rank in ranks]
        self.get_all(refs, self.policy.start_timeout_s)

    def call(self, method: str, *args, **kwargs) -> list:
        """The same call on every actor (a collective: a lost member fails it, GroupLost)."""
        return self.get_all([getattr(a, method).remote(*args, **kwargs) for a in self.actors])

    def scatter(
        self,
        method: str,
        shares: Sequence,
        retry: bool = True,
        own: Sequence[dict] | None = None,
        **kwargs,
    ) -> list:
        """``method(share, **kwargs, **own[i])`` on actor i for the i-th share, all at once;
        results in order. ``own``: keyword arguments of each actor's call alone."""
        if len(shares) != len(self.actors):
            raise ValueError(f"{self.name}: {len(shares)} shares for {len(self.actors)} actors")
        own = own or [{}] * len(self.actors)
        calls = [{**kwargs, **extra} for extra in own]
        refs = [
            getattr(a, method).remote(share, **call)
            for a, share, call in zip(self.actors, shares, calls, strict=True)
        ]
        if not retry:
            return self.get_all(refs)
        return [
            self._with_retry(rank, method, (share,), call, first=ref)
            for rank, (ref, share, call) in enumerate(zip(refs, shares, calls, strict=True))
        ]

    def call_one(self, rank: int, method: str, *args, **kwargs):
        return self._with_retry(rank, method, args, kwargs)

    def _with_retry(self, rank: int, method: str, args: tuple, kwargs: dict, first=None):
        import ray

        failures = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError)
        attempt = 0
        while True:
            ref = (
                first
                if first is not None
                else getattr(self.actors[rank], method).remote(*args, **kwargs)
            )
            first = None
            try:
                return self.get(ref)
            except failures as err:
                if attempt >= self.policy.retries:
                    raise
                attempt += 1
                log.warning(
                    "%s-%d failed (%s); restarting it and retrying",
                    self.name,
                    rank,
                    type(err).__name__,
                )
                self.restart(rank)

    def check_health(self, timeout_s: float) -> list[int]:
        """Ping every actor; one that is dead or does not answer within ``timeout_s`` (an
        actor runs one call at a time: a hung call blocks the ping) is rebuilt. Returns the
        rebuilt ranks."""
        import ray

        failures = (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError)
        refs = [a.ready.remote() for a in self.actors]
        rebuilt = []
        for rank, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=timeout_s)
            except failures as err:
                log.warning(
                    "%s-%d failed its health check (%s); restarting it",
                    self.name,
                    rank,
                    type(err).__name__,
                )
                self.restart(rank)
                rebuilt.append(rank)
        return rebuilt

    def restart(self, rank: int) -> None:
        """Kill actor ``rank`` and build a fresh one in its place."""
        import ray

        ray.kill(self.actors[rank], no_restart=True)
        self.actors[rank] = self.factory(rank)
        self.wait_started([rank])
        if self.on_restart is not None:
            self.on_restart(rank)

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
