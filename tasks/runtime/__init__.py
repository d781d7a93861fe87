"""The model runtime: where models come from, how they load, and the threads torch runs on.

Nothing here downloads: ``HF_HUB_OFFLINE=1`` is set before transformers is imported (importing any
module of this package sets it).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The per-load "Loading weights" bars drown the progress lines that matter.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
