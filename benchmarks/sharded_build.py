"""
Builds the tiny preset's video + audio feature cache (`training.features.FeatureCache`) of copies of one clip in every process it
runs in, with one torch thread per process, and writes the build's seconds (the slowest process, the join included).

    torchrun --standalone --nproc_per_node 2 benchmarks/sharded_build.py clip.mp4 64 cache_dir/ result.json

Run by the `sharded_cache_build` case of `cases.py` with 1 and 2 processes.
"""

import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import datasets
import torch
from accelerate import PartialState

from benchmarks.cases import TINY, load_config
from modeling_mmemotion import MMEmotionForEmotionClassification
from processing_mmemotion import MMEmotionProcessor
from training.features import FeatureCache


def main(clip: str, num_utterances: int, cache_dir: str, output: str, batch_size: int = 8) -> None:
    state = PartialState(cpu=True)
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    torch.manual_seed(0)  # the same random weights in every process: one fingerprint
    model = MMEmotionForEmotionClassification(load_config("tiny")).eval()
    processor = MMEmotionProcessor.from_pretrained(TINY)
    dataset = datasets.Dataset.from_dict({"video_path": [clip] * num_utterances})
    cache = FeatureCache(model, processor, ["video", "audio"], cache_dir, batch_size)
    state.wait_for_everyone()
    start = time.perf_counter()
    cache.add_features(dataset, "bench")
    state.wait_for_everyone()
    if state.is_main_process:
        with open(output, "w") as file:
            json.dump({"seconds": time.perf_counter() - start, "processes": state.num_processes}, file)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
