"""Sources: where the agent learns Services and EndpointSlices (first step of
sources -> model -> plan -> apply). Each source hands the agent a Manifests value when what it
watches changed; the rest of the pipeline does not know which source it came from."""
from typing import Optional, Protocol

from ..manifests import Manifests


class Source(Protocol):
    description: str
    changed_at: Optional[float]  # wall-clock time of the change the last poll returned, if known

    def poll(self) -> Optional[Manifests]:
        """New content when it changed since the last call, else None. Raises ManifestErrors
        for content that changed but is invalid (the caller keeps the last good state)."""
