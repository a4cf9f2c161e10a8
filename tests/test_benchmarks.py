"""Smoke test of benchmarks/: every case runs on the smallest settings, so that the benchmark code cannot rot.

The figures themselves are not checked (benchmarks are not tests): only that each case returns positive numbers
and that the report renders them.
"""

import json

from benchmarks import run
from benchmarks.cases import video_branch_flops


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
    tiny = {
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "patch_size": 32},
        "qformer_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
        "video_qformer_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4},
        "num_query_tokens": 4,
        "num_video_query_tokens": 4,
        "llm_hidden_size": 32,
    }
    rows = video_branch_flops(1, 1, "cpu", "float32", ["sdpa", "eager"], config=tiny)
    assert [row["attention"] for row in rows] == ["sdpa", "eager"]
    assert all(row["gflops_per_utterance"] > 0 and row["utterances_per_s"] > 0 for row in rows)
    assert rows[0]["share_of_peak"] is None and rows[0]["cuda_peak_mb"] is None
