"""soundtrack-pipeline: a game's soundtrack manifest in, approved engine-ready music assets out."""

import os

# torch puts its CPU tensors of 2 MiB and more on transparent huge pages when this is set, which
# it reads at its first allocation, so it is set before anything imports torch. A 10 s ACE-Step
# render on the CPU takes 40x fewer page faults and 10% less time, at the same peak memory
# (docs/benchmarks.md). Set THP_MEM_ALLOC_ENABLE=0 to turn it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"

# Bumped whenever a change to generation, mastering, gating or encoding changes the assets made
# for the same manifest: it is part of every spec_hash, so every track is mastered, judged and
# published again. "2": MP3 end padding, loops filtered and resampled as a circle, a resampled
# render's last sample, bar loops from exact-length recordings, the clipping, tempo and theme
# gates, mono stems, the sidecar's beats on a steady groove's grid. "3": BS.1770's own
# K-weighting and whole gating blocks only (every master's gain moves by a few hundredths of a LU).
# "4": the true-peak interpolator flat to 18.8 kHz (a limited master's envelope moves where it
# reads hi-hats and clicks higher), and a master mastered again where an encoder overshot.
PIPELINE_VERSION = "4"

# Bumped (with PIPELINE_VERSION) only when a change alters what a model renders for the same
# spec: it is part of every generation key, so bumping it renders every track again.
RENDER_VERSION = "1"
