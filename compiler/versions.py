"""Installed package versions, for manifests and reports (missing packages are left out)."""
from __future__ import annotations

from importlib import metadata


def installed_versions(*packages: str) -> dict[str, str]:
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
