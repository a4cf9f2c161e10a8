"""The Hub use case: save a model and processor, then load them as remote code in a fresh process."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

from demo.media import tone, write_mp4
from configuration_mmemotion import MMEmotionConfig
from modeling_mmemotion import MMEmotionForEmotionClassification
from processing_mmemotion import MMEmotionProcessor


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "presets", "tiny")
TEXT = ["Oh my God , you got the job !", "I do not want to talk about it ."]

LOAD_AND_PREDICT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoProcessor

    model_dir, clips, texts = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    head_model = AutoModelForSequenceClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    inputs = processor(text=texts, videos=clips, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        head_logits = head_model(**inputs).logits
    print(json.dumps({
        "config": type(config).__name__, "model": type(model).__name__, "processor": type(processor).__name__,
        "modules": sorted(m for m in sys.modules if m.endswith("_mmemotion")),
        "logits": logits.tolist(), "head_logits": head_logits.tolist(),
        "keys": sorted(inputs.keys()), "label": model.config.id2label[0],
    }))
    """
)


def write_clips(directory) -> list[str]:
    rng = np.random.default_rng(0)
    with_audio = write_mp4(
        os.path.join(directory, "dia1utt1.mp4"),
        rng.integers(0, 255, size=(12, 48, 64, 3), dtype=np.uint8), fps=8, audio=tone(440, 1.5),
    )
    without_audio = write_mp4(
        os.path.join(directory, "dia1utt2.mp4"), rng.integers(0, 255, size=(5, 48, 64, 3), dtype=np.uint8), fps=8
    )
    return [with_audio, without_audio]


def test_saved_model_and_processor_load_as_remote_code_in_a_fresh_process(tmp_path):
    clips = write_clips(tmp_path)
    torch.manual_seed(0)
    processor = MMEmotionProcessor.from_pretrained(TINY)
    model = MMEmotionForEmotionClassification(MMEmotionConfig.from_pretrained(TINY)).eval()  # random weights
    model_dir = tmp_path / "published"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    for name in ("configuration_mmemotion.py", "modeling_mmemotion.py", "processing_mmemotion.py", "config.json",
                 "processor_config.json", "model.safetensors", "tokenizer.json"):
        assert (model_dir / name).is_file(), name
    auto_map = json.loads((model_dir / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_mmemotion.MMEmotionForEmotionClassification"

    inputs = processor(text=TEXT, videos=clips, return_tensors="pt")
    assert inputs["audio_mask"].tolist() == [1, 0] and inputs["video_frame_mask"].sum(1).tolist() == [8, 5]
    with torch.no_grad():
        expected = model(**inputs).logits

    # A fresh interpreter, run from an empty folder with no repository path: only the saved folder's code exists.
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(model_dir), json.dumps(clips), json.dumps(TEXT)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert (loaded["config"], loaded["model"], loaded["processor"]) == (
        "MMEmotionConfig", "MMEmotionForEmotionClassification", "MMEmotionProcessor"
    )
    assert all(name.startswith("transformers_modules.") for name in loaded["modules"]), loaded["modules"]
    assert loaded["keys"] == sorted(inputs.keys())
    assert loaded["label"] == "neutral"
    torch.testing.assert_close(torch.tensor(loaded["logits"]), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor(loaded["head_logits"]), expected, rtol=1e-5, atol=1e-5)


def test_remote_code_on_a_too_old_transformers_names_the_version_it_needs(tmp_path):
    # transformers' dynamic-module loader runs the saved configuration file; on an old release it must stop there with
    # one line, not with an ImportError from inside transformers.
    config_dir = tmp_path / "published"
    MMEmotionConfig.from_pretrained(TINY).save_pretrained(config_dir)
    for name in ("configuration_mmemotion.py", "modeling_mmemotion.py", "processing_mmemotion.py"):
        (config_dir / name).write_text(open(os.path.join(ROOT, name)).read())
    script = textwrap.dedent(
        """
        import sys
        import transformers
        transformers.__version__ = "5.18.0"
        from transformers import AutoConfig
        AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True)
        """
    )
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(config_dir)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == (
        "ImportError: MMEmotion's remote code needs transformers>=5.21.0 (found 5.18.0): "
        'pip install -U "transformers>=5.21.0,<6"'
    ), result.stderr[-2000:]
