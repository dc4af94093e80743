"""Exceptions of the :mod:`proximity` package: one base, a few specific kinds."""

from __future__ import annotations


class ProximityError(Exception):
    """Base of every error the engine reports to a person (bad files, bad settings, ...)."""


class CaseFileError(ProximityError):
    """A case file that cannot be imported; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s), nothing was imported:\n{listed}")


class RegistryError(ProximityError):
    """The case registry database cannot be opened or used."""


class ConfigError(ProximityError):
    """Settings that cannot work (a bad value, a missing config file)."""
