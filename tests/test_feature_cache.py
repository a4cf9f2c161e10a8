"""training.features.FeatureCache at corpus scale: sharded across processes, crash-safe, and in half precision."""

import json
import os
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import torch

import ecf
import train
from configuration_mmemotion import MMEmotionConfig
from demo.media import tone, write_mp4
from modeling_mmemotion import MMEmotionForEmotionClassification
from processing_mmemotion import MMEmotionProcessor
from training.features import CACHE_DTYPES, FeatureCache, UtteranceCollator, tokenize_utterances
from training.models import load_input_embeddings, load_model


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "presets", "tiny")
MODALITIES = ["text", "video", "audio"]

# Builds the tiny preset's cache of every modality in each process it runs in (plain python: one process; torchrun:
# several), saves what `add_features` returned and how many rows each modality's `_encode` got. A process whose rank
# is `kill_rank` kills itself (SIGKILL, no clean-up) as it starts encoding its video shard.
BUILD_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    from accelerate import PartialState
    import ecf
    from configuration_mmemotion import MMEmotionConfig
    from modeling_mmemotion import MMEmotionForEmotionClassification
    from processing_mmemotion import MMEmotionProcessor
    from training.features import FeatureCache, tokenize_utterances

    data_file, clip_dir, cache_dir, output, kill_rank = sys.argv[1:]
    state = PartialState(cpu=True)
    torch.manual_seed(0)
    model = MMEmotionForEmotionClassification(MMEmotionConfig.from_pretrained(sys.path[0] + "/presets/tiny")).eval()
    processor = MMEmotionProcessor.from_pretrained(sys.path[0] + "/presets/tiny")
    dataset = ecf.conversations_to_utterance_dataset(ecf.load_conversations(data_file), video_dir=clip_dir)
    dataset = tokenize_utterances(dataset, processor, max_length=32)
    cache = FeatureCache(model, processor, ["text", "video", "audio"], cache_dir, batch_size=2)
    encoded_rows = {}
    encode = cache._encode

    def counting_encode(batch, modality):
        if modality == "video" and state.process_index == int(kill_rank):
            os.kill(os.getpid(), signal.SIGKILL)
        encoded_rows[modality] = encoded_rows.get(modality, 0) + len(batch["video_path"])
        return encode(batch, modality)

    cache._encode = counting_encode
    features = cache.add_features(dataset, "validation")
    torch.save(features[:], f"{output}.{state.process_index}.pt")
    with open(f"{output}.{state.process_index}.json", "w") as file:
        json.dump(encoded_rows, file)
    """
)


@pytest.fixture(scope="module")
def clip_data(tmp_path_factory):
    """Three conversations (13 utterances), each utterance with its own clip but one without any."""
    directory = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    conversations = []
    for conversation_id in (1, 2, 3):
        utterances = []
        for utterance_id in range(1, 5 + (conversation_id == 2)):
            emotion = ecf.EMOTIONS[(conversation_id + utterance_id) % len(ecf.EMOTIONS)]
            text = " ".join(rng.choice(["so", "i", "think", "you", "know", "wow", "okay"], size=2 + utterance_id))
            utterances.append({"utterance_ID": utterance_id, "text": text, "speaker": "Ross", "emotion": emotion})
            if (conversation_id, utterance_id) != (2, 3):
                frames = rng.integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8)
                audio = tone(300.0 + 40 * utterance_id + 7 * conversation_id, 0.6)
                write_mp4(directory / f"dia{conversation_id}utt{utterance_id}.mp4", frames, fps=8, audio=audio)
        conversations.append({"conversation_ID": conversation_id, "conversation": utterances, "emotion-cause_pairs": []})
    data_file = directory / "conversations.json"
    data_file.write_text(json.dumps(conversations))
    return str(data_file), str(directory)


def build(clip_data, cache_dir, output, num_processes, kill_rank=-1):
    """Runs BUILD_SCRIPT in 1 process (python) or `num_processes` (torchrun, gloo, one thread each)."""
    script = output.parent / "build_cache.py"
    script.write_text(f"import sys; sys.path.insert(0, {ROOT!r})\n" + BUILD_SCRIPT)
    launcher = [sys.executable]
    if num_processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [*launcher, str(script), *clip_data, str(cache_dir), str(output), str(kill_rank)],
        capture_output=True, text=True, env=environment, timeout=600,
    )


def load_outputs(output, num_processes):
    return [
        (torch.load(f"{output}.{rank}.pt"), json.loads(open(f"{output}.{rank}.json").read()))
        for rank in range(num_processes)
    ]


def assert_same_features(built, reference):
    assert built["video_path"] == reference["video_path"]
    for column in ("video_features", "audio_features", "video_mask", "audio_mask"):
        torch.testing.assert_close(torch.as_tensor(built[column]), torch.as_tensor(reference[column]), rtol=0, atol=0)
    assert len(built["text_features"]) == len(reference["text_features"])
    for item, reference_item in zip(built["text_features"], reference["text_features"]):
        torch.testing.assert_close(item, reference_item, rtol=0, atol=0)


def cache_files(cache_dir):
    """Complete cache files (datasets' and the join's temporary files aside), by modality."""
    return {
        modality: sorted(name for name in os.listdir(cache_dir / modality) if name.endswith(".arrow"))
        for modality in MODALITIES
        if (cache_dir / modality).is_dir()
    }


def test_two_processes_build_the_cache_of_one_and_a_killed_shard_is_rebuilt(tmp_path, clip_data):
    result = build(clip_data, tmp_path / "cache1", tmp_path / "one", num_processes=1)
    assert result.returncode == 0, result.stderr[-3000:]
    ((reference, encoded),) = load_outputs(tmp_path / "one", 1)
    num_utterances = len(reference["video_path"])
    assert num_utterances == 13 and encoded == {modality: num_utterances for modality in MODALITIES}
    # Every utterance has its own clip (zeros for the one without): rows in another order would not match.
    assert list(reference["video_mask"]).count(0) == 1
    assert len(set(map(tuple, reference["video_features"].flatten(1)[:, :4].tolist()))) == num_utterances

    result = build(clip_data, tmp_path / "cache2", tmp_path / "two", num_processes=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (first, first_encoded), (second, second_encoded) = load_outputs(tmp_path / "two", 2)
    # Each process encoded its half (6 and 7 utterances), and both read the one joined cache: that of one process.
    assert first_encoded == {modality: 6 for modality in MODALITIES}
    assert second_encoded == {modality: 7 for modality in MODALITIES}
    assert_same_features(first, reference)
    assert_same_features(second, reference)
    assert cache_files(tmp_path / "cache2") == cache_files(tmp_path / "cache1")  # one file each, the shards removed

    # The second process dies as it starts its video shard: the text cache was joined, the video one never is.
    killed_cache = tmp_path / "cache_killed"
    result = build(clip_data, killed_cache, tmp_path / "killed", num_processes=2, kill_rank=1)
    assert result.returncode != 0
    files = cache_files(killed_cache)
    assert files["text"] == cache_files(tmp_path / "cache1")["text"]
    assert not any("-00001-of-00002" in name for name in files["video"])  # no file of the killed shard
    assert cache_files(tmp_path / "cache1")["video"][0] not in files["video"]  # no joined video cache
    assert "audio" not in files

    result = build(clip_data, killed_cache, tmp_path / "rerun", num_processes=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (first, first_encoded), (second, second_encoded) = load_outputs(tmp_path / "rerun", 2)
    # The killed shard is encoded again; the finished first video shard may be reused; text is a cache hit.
    assert second_encoded == {"video": 7, "audio": 7}
    assert first_encoded in ({"video": 6, "audio": 6}, {"audio": 6})
    assert_same_features(first, reference)
    assert_same_features(second, reference)
    assert cache_files(killed_cache) == cache_files(tmp_path / "cache1")


@pytest.fixture(scope="module")
def tiny_inputs(clip_data):
    torch.manual_seed(0)
    model = MMEmotionForEmotionClassification(MMEmotionConfig.from_pretrained(TINY)).eval()
    processor = MMEmotionProcessor.from_pretrained(TINY)
    dataset = ecf.conversations_to_utterance_dataset(ecf.load_conversations(clip_data[0]), video_dir=clip_data[1])
    return model, processor, tokenize_utterances(dataset, processor, max_length=32)


def test_the_dtypes_are_part_of_the_fingerprint(tiny_inputs, tmp_path):
    model, processor, dataset = tiny_inputs
    fingerprints = {}
    for cache_dtype in CACHE_DTYPES:
        cache = FeatureCache(model, processor, MODALITIES, str(tmp_path), batch_size=4, cache_dtype=cache_dtype)
        fingerprints[cache_dtype] = [cache.fingerprint(dataset, modality) for modality in MODALITIES]
    half_model = MMEmotionForEmotionClassification(model.config).eval()
    half_model.load_state_dict(model.state_dict())
    half_model.base_model.video_encoder.to(torch.bfloat16)
    cache = FeatureCache(half_model, processor, MODALITIES, str(tmp_path), batch_size=4, cache_dtype="bfloat16")
    fingerprints["bfloat16 video encoder"] = [cache.fingerprint(dataset, modality) for modality in MODALITIES]
    assert len({tuple(value) for value in fingerprints.values()}) == len(fingerprints)
    # Only the video fingerprint follows the video encoder's dtype.
    assert fingerprints["bfloat16 video encoder"][0::2] == fingerprints["bfloat16"][0::2]
    with pytest.raises(ValueError, match="cache_dtype must be one of"):
        FeatureCache(model, processor, MODALITIES, str(tmp_path), batch_size=4, cache_dtype="int8")


def test_bfloat16_encoders_and_cache_stay_close_to_float32(tiny_inputs, tmp_path):
    model, processor, dataset = tiny_inputs
    half_model = MMEmotionForEmotionClassification(model.config).eval()
    half_model.load_state_dict(model.state_dict())
    for modality in MODALITIES:
        half_model.base_model.encoder(modality).to(torch.bfloat16)
    built = {}
    for name, encoder_model, cache_dtype in (("float32", model, "float32"), ("bfloat16", half_model, "bfloat16")):
        cache = FeatureCache(encoder_model, processor, MODALITIES, str(tmp_path / name), batch_size=4, cache_dtype=cache_dtype)
        built[name] = cache.add_features(dataset, "validation")
    sizes = {name: sum(path.stat().st_size for path in (tmp_path / name).rglob("*.arrow")) for name in built}
    assert 0.45 < sizes["bfloat16"] / sizes["float32"] < 0.55  # measured: 35,416 / 66,512 bytes (0.53)

    rows = {name: [features[index] for index in range(len(features))] for name, features in built.items()}
    batches = {name: UtteranceCollator(processor, MODALITIES, MODALITIES)(rows[name]) for name in rows}
    for modality in MODALITIES:
        full, half = batches["float32"][f"{modality}_features"], batches["bfloat16"][f"{modality}_features"]
        assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
        # Measured on this data: largest difference 0.4% (text), 1.8% (video), 2.3% (audio) of the largest feature.
        assert (half.float() - full).abs().max() <= 0.04 * full.abs().max(), modality
    with torch.no_grad():
        logits = {name: model(**batch).logits for name, batch in batches.items()}
    # The float32 head on bfloat16 features: the same predictions, logits within 3% of their range (measured: 1.4%).
    assert torch.equal(logits["bfloat16"].argmax(-1), logits["float32"].argmax(-1))
    assert (logits["bfloat16"] - logits["float32"]).abs().max() <= 0.03 * (logits["float32"].max() - logits["float32"].min())


@pytest.mark.parametrize("max_shard_size", [None, "40KB"])
def test_input_embeddings_are_read_alone_from_the_text_models_safetensors(tmp_path, max_shard_size):
    from transformers import LlamaConfig, LlamaForCausalLM

    text_config = LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4
    )
    torch.manual_seed(0)
    text_model = LlamaForCausalLM(text_config)  # saved with the `model.` prefix of a model with a head
    text_model.save_pretrained(tmp_path / "llama", **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    assert (tmp_path / "llama" / "model.safetensors.index.json").exists() == (max_shard_size is not None)

    model_args = train.ModelArguments(
        config_name="tiny", text_model_name_or_path=str(tmp_path / "llama"), modalities="text",
        text_embedding="input_embeddings", encoder_dtype="bfloat16",
    )
    config = train.build_config(model_args, class_weights=None)
    model = load_model(MMEmotionForEmotionClassification, config, model_args)
    embed_tokens = model.base_model.text_encoder.embed_tokens
    assert embed_tokens.weight.dtype == torch.bfloat16  # the frozen encoder in --encoder_dtype, the head in float32
    assert model.base_model.poolers["text"].projection.weight.dtype == torch.float32
    torch.testing.assert_close(embed_tokens.weight, text_model.get_input_embeddings().weight.detach().bfloat16())

    # The whole model in one process: a float32 head on bfloat16 text features.
    inputs = {"input_ids": torch.tensor([[1, 5, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    assert model(**inputs).logits.dtype == torch.float32

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "llama" / "config.json").read_text())
    with pytest.raises(ValueError, match="reads its token embeddings from safetensors"):
        load_input_embeddings(str(tmp_path / "empty"), text_config, trust_remote_code=False)


def test_training_on_a_bfloat16_cache(tmp_path, clip_data):
    output_dir = tmp_path / "run"
    train.main([
        "--config_name", "tiny", "--train_file", clip_data[0], "--validation_file", clip_data[0], "--video_dir", clip_data[1],
        "--encoder_dtype", "bfloat16", "--do_train", "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
        "--output_dir", str(output_dir), "--feature_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true",
        "--save_strategy", "no", "--load_best_model_at_end", "false",
    ])
    # bfloat16 features (stored as int16 bits) for every modality; a float32 head trained on them and saved.
    for modality in MODALITIES:
        (cache_file,) = (tmp_path / "cache" / modality).glob("*.arrow")
        schema = datasets.Dataset.from_file(str(cache_file)).features[f"{modality}_features"]
        assert schema.dtype == "int16", modality
    model = MMEmotionForEmotionClassification.from_pretrained(output_dir)
    assert model.base_model.poolers["video"].projection.weight.dtype == torch.float32
    assert np.isfinite(json.loads((output_dir / "train_results.json").read_text())["train_loss"])


@pytest.mark.parametrize("encoder_dtype", ["float32", "bfloat16"])
def test_a_bfloat16_checkpoint_trains_a_float32_head(tmp_path, encoder_dtype):
    # e.g. a VideoLLaMA conversion saved with --dtype bfloat16: the whole model, head included, loads in bfloat16.
    MMEmotionForEmotionClassification(MMEmotionConfig.from_pretrained(TINY)).to(torch.bfloat16).save_pretrained(tmp_path)
    model_args = train.ModelArguments(model_name_or_path=str(tmp_path), encoder_dtype=encoder_dtype)
    model = load_model(MMEmotionForEmotionClassification, train.build_config(model_args, None), model_args)
    for modality in MODALITIES:
        assert {p.dtype for p in model.base_model.encoder(modality).parameters()} == {getattr(torch, encoder_dtype)}
    trained = [parameter for name, parameter in model.named_parameters() if "_encoder." not in name]
    assert trained and {parameter.dtype for parameter in trained} == {torch.float32}
