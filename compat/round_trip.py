"""Remote-code round trip across two environments: `save DIR` writes a checkpoint and its logits, `load DIR` reloads it
with `trust_remote_code=True` from outside the repository and compares the logits.

Run `save` with one set of library versions and `load` with another (`make compat` does both directions).
"""

import json
import os
import sys

import numpy as np
import torch
import transformers


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["Oh my God , you got the job !", "I do not want to talk about it ."]


def write_inputs(directory: str) -> dict:
    sys.path.insert(0, ROOT)
    from demo.media import tone, write_mp4

    rng = np.random.default_rng(0)
    clip = write_mp4(
        os.path.join(directory, "clip.mp4"), rng.integers(0, 255, size=(12, 48, 64, 3), dtype=np.uint8), fps=8,
        audio=tone(440, 1.5),
    )
    return {"text": TEXTS, "videos": [clip, None]}


def save(directory: str) -> None:
    sys.path.insert(0, ROOT)
    from configuration_mmemotion import MMEmotionConfig
    from modeling_mmemotion import MMEmotionForEmotionClassification
    from processing_mmemotion import MMEmotionProcessor

    tiny = os.path.join(ROOT, "presets", "tiny")
    torch.manual_seed(0)
    model = MMEmotionForEmotionClassification(MMEmotionConfig.from_pretrained(tiny)).eval()
    processor = MMEmotionProcessor.from_pretrained(tiny)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    with torch.no_grad():
        logits = model(**processor(**write_inputs(directory), return_tensors="pt")).logits
    with open(os.path.join(directory, "expected_logits.json"), "w") as handle:
        json.dump({"transformers": transformers.__version__, "logits": logits.tolist()}, handle)
    print(f"saved with transformers {transformers.__version__} in {directory}")


def load(directory: str) -> None:
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(directory, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(directory, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**processor(text=TEXTS, videos=[os.path.join(directory, "clip.mp4"), None], return_tensors="pt")).logits
    with open(os.path.join(directory, "expected_logits.json")) as handle:
        expected = json.load(handle)
    difference = (logits - torch.tensor(expected["logits"])).abs().max().item()
    print(
        f"saved with transformers {expected['transformers']}, loaded with {transformers.__version__}: "
        f"largest logit difference {difference:.3g}"
    )
    if difference > 1e-6:
        sys.exit("the reloaded checkpoint gives different logits")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("save", "load"):
        sys.exit("usage: python compat/round_trip.py save|load DIR")
    {"save": save, "load": load}[sys.argv[1]](os.path.abspath(sys.argv[2]))
