"""soundtrack-pipeline: a game's soundtrack manifest in, approved engine-ready music assets out."""

__version__ = "0.1.0"

# Bumped whenever a change to generation, mastering or encoding changes the audio produced for
# the same manifest: it is part of every spec_hash, so bumping it invalidates every cached asset.
PIPELINE_VERSION = "1"
