"""Shared test helpers: root checks and unique names for kernel objects."""
import os
import secrets

import pytest


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


@pytest.fixture
def require_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF and network namespaces)")
