"""The exceptions the core raises; the CLI maps them to exit codes (input errors exit 2)."""

from __future__ import annotations


class SoundtrackError(Exception):
    """Base class for every error this package raises on purpose."""


class InputError(SoundtrackError):
    """Bad user input (manifest, path, prompt, storage URL): nothing is written, exit code 2."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []

    def __reduce__(self) -> tuple[type[InputError], tuple[str, list[str]]]:
        return (InputError, (str(self), self.problems))


class ModelLoadError(SoundtrackError):
    """A model cannot be loaded (weights missing offline, unknown id, bad local directory)."""


class GenerationError(SoundtrackError):
    """Generation produced unusable audio (NaN/inf, silence, a backend error) for one track."""

    def __init__(self, track_id: str, reason: str) -> None:
        super().__init__(f"track {track_id!r}: {reason}")
        self.track_id = track_id
        self.reason = reason

    # Prefect pickles task exceptions; the default would call __init__ with the message only.
    def __reduce__(self) -> tuple[type[GenerationError], tuple[str, str]]:
        return (GenerationError, (self.track_id, self.reason))


class AudioError(SoundtrackError):
    """Audio cannot be read, processed or encoded (ffmpeg failure, unreadable source)."""


class StorageBusy(SoundtrackError):
    """Another build of the soundtrack holds its storage past the wait limit: exit code 75."""


class StorageError(SoundtrackError):
    """Publishing or reading from storage failed; `transient` says whether a retry may heal it."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient

    def __reduce__(self) -> tuple[object, tuple[str, bool]]:
        return (_storage_error, (str(self), self.transient))


def _storage_error(message: str, transient: bool) -> StorageError:
    return StorageError(message, transient=transient)
