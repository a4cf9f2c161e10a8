"""Smoke test of benchmarks/: every case runs on the smallest settings, so that the benchmark code cannot rot.

The figures themselves are not checked (benchmarks are not tests): only that each case returns positive numbers
and that the report renders them.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from benchmarks import exp0_memory, pair_decoding, run
from benchmarks.cases import device_cache_build, video_branch_flops
from benchmarks.media import write_tv_clip
from benchmarks.report import gpu_section
from configuration_mmemotion import MMEmotionConfig
from test_train_joint import data, joint_run  # noqa: F401 (fixtures)


DEVICE_CHECK = os.path.join(run.ROOT, "benchmarks", "device_check.sh")
TINY_VIDEO = {
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "patch_size": 32},
    "qformer_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
    "video_qformer_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4},
    "num_query_tokens": 4,
    "num_video_query_tokens": 4,
    "llm_hidden_size": 32,
}


def test_every_case_runs_and_reports(tmp_path):
    results = run.run("smoke", run.GROUPS, str(tmp_path), "smoke test", in_process=True)

    cases = {job["case"] for job in results["jobs"]}
    assert cases >= {"video_decoding", "audio_extraction", "utterance_pipeline", "encoder_forward", "training_epoch"}
    assert {"scaling_utterances", "scaling_frames", "encoder_flops", "fbank_implementations"} <= cases
    for job in results["jobs"]:
        assert job["rows"], job["case"]
        assert (job["peak_rss_mb"] > 0) if job["isolated"] else (job["peak_rss_mb"] is None), job["case"]
        for row in job["rows"]:
            numbers = {key: value for key, value in row.items() if isinstance(value, float)}
            assert all(value >= 0 for value in numbers.values()), row
            assert all(value > 0 for key, value in numbers.items() if key.endswith(("_per_s", "_s", "gflops"))), row

    training = {row["mode"]: row for job in results["jobs"] if job["case"] == "training_epoch" for row in job["rows"]}
    assert training["live"]["cache_build_s"] is None and training["cached"]["cache_build_s"] > 0
    assert training["lora"]["trainable_parameters"] > training["cached"]["trainable_parameters"]

    assert json.loads((tmp_path / "results.json").read_text())["profile"] == "smoke"
    markdown = (tmp_path / "results.md").read_text()
    for heading in ("## Headlines", "## Video", "## Audio", "## Encoders", "## Training", "## Scaling"):
        assert heading in markdown
    assert "Feature cache" in markdown and "Data pipeline vs encoders" in markdown
    if results["gpu"]:
        assert run.NO_GPU in markdown


def test_gpu_video_branch_case_on_cpu():
    # The GPU case's code path, on the CPU with a tiny video branch.
    rows = video_branch_flops(1, 1, "cpu", "float32", ["sdpa", "eager"], config=TINY_VIDEO)
    assert [row["attention"] for row in rows] == ["sdpa", "eager"]
    assert all(row["gflops_per_utterance"] > 0 and row["utterances_per_s"] > 0 for row in rows)
    assert rows[0]["share_of_peak"] is None and rows[0]["cuda_peak_mb"] is None


def test_device_cache_build_case_on_cpu(tmp_path):
    # The GPU cache build's code path, on the CPU with the tiny preset's encoders in bfloat16.
    clip = write_tv_clip(str(tmp_path / "clip.mp4"), 1, width=64, height=48)
    rows = device_cache_build(clip, 3, "tiny", "cpu", "bfloat16", [0, 1], batch_size=2, repeats=1)
    assert [row["workers"] for row in rows] == [0, 1]
    assert all(row["utterances_per_s"] > 0 and row["ecf_minutes"] > 0 and row["cuda_peak_mb"] is None for row in rows)
    video_rows = video_branch_flops(1, 1, "cpu", "float32", ["sdpa"], config=TINY_VIDEO)
    results = {"jobs": [{"case": "video_branch_flops", "rows": video_rows}, {"case": "device_cache_build", "rows": rows}]}
    markdown = "\n".join(gpu_section(results))
    assert "building the video + audio feature cache" in markdown and "| tiny | cpu | bfloat16 | 1 | 3 |" in markdown


def _device_check(*args: str, **environment: str) -> subprocess.CompletedProcess:
    # No CUDA device, whatever the machine running the tests has.
    environment = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **environment}
    return subprocess.run(["bash", DEVICE_CHECK, *args], capture_output=True, text=True, env=environment)


def test_device_check_refuses_without_cuda(tmp_path):
    result = _device_check(OUT=str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "no CUDA device" in result.stderr
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_device_check_dry_run_prints_the_gpu_benchmarks():
    result = _device_check("--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"+ {sys.executable} benchmarks/run.py --only gpu --output $OUT"


def test_exp0_memory_folder_loads_through_train(tmp_path):
    # exp0_memory.py's folder and load process, at the tiny preset's sizes: the folder holds every weight of the model
    # (`measure` fails on a loading report of missing or unexpected weights) and the load keeps the head in float32.
    config = MMEmotionConfig.from_pretrained(os.path.join(run.ROOT, "presets", "tiny"))
    weights_bytes = exp0_memory.write_converted_folder(str(tmp_path), config, torch.float32)
    assert {"config.json", "modeling_mmemotion.py", "model.safetensors"} <= {path.name for path in tmp_path.iterdir()}
    assert 0 < weights_bytes < (tmp_path / "model.safetensors").stat().st_size
    result = exp0_memory.measure(str(tmp_path), exp0_memory.LOAD_MODEL.format(encoder_dtype="bfloat16"))
    assert set(result["parameter_dtypes"]) == {"bfloat16", "float32"}
    assert result["VmHWM"] >= result["after_load"]["VmHWM"] > 0


def test_pair_decoding_report_scores_and_tunes_as_train_py_did(tmp_path, joint_run, data):
    output_dir = joint_run["output_dir"]
    report = pair_decoding.main([
        "--model_name_or_path", str(output_dir), "--input_file", data["labelled"], "--output_file", str(tmp_path / "r.json"),
    ])
    assert json.loads((tmp_path / "r.json").read_text()) == report
    # The joint run's validation file is this input: its pairs as saved score what train.py's evaluation gave, and the
    # single threshold is tuned and cross-fitted exactly as train.py's model card says it was.
    eval_results = json.loads((output_dir / "eval_results.json").read_text())
    assert report["as saved"] == pytest.approx(eval_results["eval_pair_weighted_f1"], abs=1e-4)
    card = (output_dir / "README.md").read_text()
    line = re.search(
        r"Pair threshold .*?weighted pair F1 ([\d.]+) \(fold values ([\d., ]+)\).*tuned on all of them: ([\d.]+) "
        r"\(weighted pair F1 ([\d.]+)\)", card,
    )
    cross_fitted, fold_values, tuned, tuned_score = line.groups()
    single = report["one threshold"]
    assert single["tuned on all"] == [float(tuned)] and single["score tuned on all"] == pytest.approx(float(tuned_score), abs=1e-4)
    assert single["cross-fitted"] == pytest.approx(float(cross_fitted), abs=1e-4)
    assert [value for (value,) in single["fold values"]] == [float(value) for value in fold_values.split(", ")]
    for rule in ("itself / previous / others", "threshold, at most k causes", "threshold, itself always"):
        assert 0 <= report[rule]["cross-fitted"] <= 1 and len(report[rule]["fold values"]) == 5
    for row in ("gold causes", "gold emotions", "itself and the previous utterance"):
        assert 0 <= report[row] <= 1
    assert list(report["by offset"]) == ["-3", "-2", "-1", "0", "1", "2"]
    assert sum(counts["found"] + counts["missed"] + counts["added"] for counts in report["by offset"].values()) > 0
