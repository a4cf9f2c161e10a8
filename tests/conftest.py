"""Test set-up: offline Hugging Face libraries, a private HF_HOME, and the repository root importable."""

import os
import sys
import tempfile


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="mmemotion-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
