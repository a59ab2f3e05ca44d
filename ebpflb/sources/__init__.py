"""Sources: where the agent learns Services and EndpointSlices (first step of
sources -> changes -> store -> model -> plan -> apply). A source hands over per-object changes
(ebpflb.changes), never snapshots, and wakes the agent when it has some: the rest of the pipeline
does not know which source they came from."""
from typing import Optional, Protocol

from ..changes import ChangeBatch


class Source(Protocol):
    description: str

    @property
    def synced(self) -> bool:
        """The source has read its whole state once (before that, take() may hand over less)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def fileno(self) -> Optional[int]:
        """A descriptor that becomes readable when take() may have something; None: poll."""

    def next_poll(self) -> Optional[float]:
        """time.monotonic() by which take() should run even without an event; None: never."""

    def take(self) -> ChangeBatch:
        """Every change since the last call (possibly none). Never raises for bad input: a bad
        object or file is logged, and its last good version stays."""
