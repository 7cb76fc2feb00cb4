"""Exception types. Every user-facing failure is one of these, with a one-line message."""


class NeuroprintError(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits non-zero."""


class SourceError(NeuroprintError, ValueError):
    """The source itself cannot be used (bad path, unknown kind, malformed list or table)."""


class EmptySourceError(SourceError):
    """The source holds no image, or none of its images could be decoded."""


class DecodeError(NeuroprintError):
    """One item could not be read or decoded; recorded as a per-item failure, never fatal."""


class WeightsError(NeuroprintError, RuntimeError):
    """Weights or published files could not be found, fetched or loaded."""


class VDNAFileError(NeuroprintError, ValueError):
    """A VDNA file pair is missing, malformed, or inconsistent."""


class IncompatibleVDNAError(NeuroprintError, ValueError):
    """Two VDNAs cannot be compared or merged (different extractor, distribution, ranges, ...)."""


class RayJobError(NeuroprintError, RuntimeError):
    """A job on Ray cannot go on: a shard failed or killed its actors too often, or no actor came back."""
