"""Sources: where the agent learns Services and EndpointSlices (first step of
sources -> changes -> store -> model -> plan -> apply). A source hands over per-object changes
(ebpflb.changes), never snapshots, and wakes the agent when it has some: the rest of the pipeline
does not know which source they came from."""
from typing import Any, Dict, List, Optional, Protocol

from ..changes import ChangeBatch
from ..errors import ManifestError


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

    def revision(self) -> Any:
        """What take() has covered so far (the manifest source: a wall-clock time in ns before
        which every file written has been read; the API source: per kind, the newest
        resourceVersion handled). The agent reports it once its changes are in the maps."""

    def problems(self) -> List[ManifestError]:
        """The current refusals (bad objects, unreadable files), for the agent's status."""

    def own_node(self) -> Optional[Dict[str, Any]]:
        """This node's Node object as the API has it (the API source watches its own Node);
        None when unknown (the manifest source has none: --node-zone stands in)."""
