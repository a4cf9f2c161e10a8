"""The demo's pipeline on part of its learnable sample: real clips, the tiny preset, cached features, above chance."""

import json
import os

import train
from demo.make_demo_data import write_clips


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subset(source: str, target, count: int) -> str:
    with open(os.path.join(ROOT, "demo", source)) as handle:
        conversations = json.load(handle)[:count]
    target.write_text(json.dumps(conversations))
    return str(target)


def test_demo_pipeline_learns_from_clips_and_text(tmp_path):
    train_file = subset("sample_train.json", tmp_path / "train.json", 14)
    test_file = subset("sample_test.json", tmp_path / "test.json", 6)
    clip_dir = tmp_path / "clips"
    write_clips([train_file, test_file], str(clip_dir))
    output_dir = tmp_path / "output"
    train.main([
        "--task", "emotion", "--config_name", "tiny", "--train_file", train_file, "--validation_file", test_file,
        "--test_file", test_file, "--video_dir", str(clip_dir), "--do_train", "--do_eval", "--do_predict",
        "--num_train_epochs", "30", "--learning_rate", "3e-3", "--per_device_train_batch_size", "16",
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--eval_strategy", "no",
        "--feature_cache_dir", str(tmp_path / "cache"), "--output_dir", str(output_dir), "--disable_tqdm", "true",
        "--seed", "0",
    ])
    results = json.loads((output_dir / "eval_results.json").read_text())
    print({key: results[key] for key in ("eval_accuracy", "eval_weighted_f1")})
    assert results["eval_weighted_f1"] > 0.6  # five balanced emotions: chance is about 0.2
    predictions = json.loads((output_dir / "predictions.json").read_text())
    assert len(predictions) == 6 and all("emotion" in u for c in predictions for u in c["conversation"])
