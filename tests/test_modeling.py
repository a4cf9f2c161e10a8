"""MMEmotion model behaviour: masking, padding invariance, missing modalities, freezing, presets, save/reload."""

import inspect
import json
import logging
import os

import pytest
import torch

from configuration_mmemotion import MMEmotionConfig
from modeling_mmemotion import MMEmotionForEmotionClassification, MMEmotionModel


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = os.path.join(ROOT, "presets")
SEED_PRESETS = ["exp0", "exp1", "exp3", "exp4"]


def tiny_config(**overrides) -> MMEmotionConfig:
    with open(os.path.join(PRESETS, "tiny", "config.json")) as handle:
        config = json.load(handle)
    config.update(overrides)
    return MMEmotionConfig(**config)


def random_inputs(config: MMEmotionConfig, batch_size=3, num_frames=5, num_clips=3, text_length=7, seed=0):
    """Processor-shaped random inputs for the modalities of `config`."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "input_ids": torch.randint(1, 1000, (batch_size, text_length), generator=generator),
        "attention_mask": torch.ones(batch_size, text_length, dtype=torch.long),
        "text_mask": torch.ones(batch_size, dtype=torch.long),
    }
    if "video" in config.modalities:
        image_size = config.video_config.vision_config.image_size
        inputs["pixel_values_videos"] = torch.randn(batch_size, num_frames, 3, image_size, image_size, generator=generator)
        inputs["video_frame_mask"] = torch.ones(batch_size, num_frames, dtype=torch.long)
        inputs["video_mask"] = torch.ones(batch_size, dtype=torch.long)
    if "audio" in config.modalities:
        inputs["audio_values"] = torch.randn(batch_size, num_clips, 1, 128, 204, generator=generator)
        inputs["audio_clip_mask"] = torch.ones(batch_size, num_clips, dtype=torch.long)
        inputs["audio_mask"] = torch.ones(batch_size, dtype=torch.long)
    return inputs


def pad(tensor: torch.Tensor, dim: int, extra: int) -> torch.Tensor:
    """Append `extra` positions of noise (padding must be ignored whatever its value)."""
    shape = list(tensor.shape)
    shape[dim] = extra
    filler = torch.randn(shape) if tensor.is_floating_point() else torch.zeros(shape, dtype=tensor.dtype)
    return torch.cat([tensor, filler], dim=dim)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return MMEmotionForEmotionClassification(tiny_config()).eval()


def test_output_shapes_and_loss(tiny_model):
    inputs = random_inputs(tiny_model.config)
    outputs = tiny_model(**inputs, labels=torch.tensor([0, 3, 6]))
    assert outputs.logits.shape == (3, 7)
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    assert outputs.pooler_output.shape == (3, 3 * tiny_model.config.projection_size)
    assert tiny_model.config.id2label[4] == "joy"


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_padding_does_not_change_logits(pooling):
    torch.manual_seed(0)
    model = MMEmotionForEmotionClassification(tiny_config(pooling=pooling)).eval()
    inputs = random_inputs(model.config, batch_size=1)
    padded = dict(inputs)
    padded["input_ids"] = pad(inputs["input_ids"], 1, 6)
    padded["attention_mask"] = pad(inputs["attention_mask"], 1, 6)
    padded["pixel_values_videos"] = pad(inputs["pixel_values_videos"], 1, 3)
    padded["video_frame_mask"] = pad(inputs["video_frame_mask"], 1, 3)
    padded["audio_values"] = pad(inputs["audio_values"], 1, 2)
    padded["audio_clip_mask"] = pad(inputs["audio_clip_mask"], 1, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, model(**padded).logits, rtol=1e-5, atol=1e-5)


def test_absent_modality_uses_learned_vector_not_zeros(tiny_model):
    inputs = random_inputs(tiny_model.config)
    inputs["video_mask"] = torch.tensor([1, 0, 1])
    inputs["audio_mask"] = torch.tensor([1, 1, 0])
    inputs["text_mask"] = torch.tensor([1, 1, 0])
    with torch.no_grad():
        outputs = tiny_model.mmemotion(**inputs)
    assert torch.isfinite(outputs.pooler_output).all()
    assert outputs.modality_mask.tolist() == [[1, 1, 1], [1, 0, 1], [0, 1, 0]]
    missing = tiny_model.mmemotion.missing_modality_embeds
    torch.testing.assert_close(outputs.modality_embeds[1, 1], missing[1])
    torch.testing.assert_close(outputs.modality_embeds[2, 0], missing[0])
    torch.testing.assert_close(outputs.modality_embeds[2, 2], missing[2])
    assert missing.abs().sum() > 0, "absence must not be fed to the head as a zero-valued observation"
    # Whatever garbage the absent item's tensors hold, its output is the same.
    garbage = dict(inputs)
    garbage["pixel_values_videos"] = inputs["pixel_values_videos"].clone()
    garbage["pixel_values_videos"][1] = float("nan")
    garbage["video_frame_mask"] = inputs["video_frame_mask"].clone()
    garbage["video_frame_mask"][1] = 0
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(**garbage).logits, tiny_model(**inputs).logits)


def test_item_with_every_modality_absent_is_finite(tiny_model):
    inputs = random_inputs(tiny_model.config, batch_size=2)
    for key in ("text_mask", "video_mask", "audio_mask"):
        inputs[key] = torch.tensor([0, 1])
    with torch.no_grad():
        logits = tiny_model(**inputs).logits
    assert torch.isfinite(logits).all()


def test_branch_without_inputs_is_absent_for_every_item(caplog):
    # The published tiny checkpoint (text + video + audio) called with text only: the same logits as video and audio
    # marked absent item by item, and one warning naming the branch.
    from processing_mmemotion import MMEmotionProcessor

    processor = MMEmotionProcessor.from_pretrained(os.path.join(PRESETS, "tiny"))
    torch.manual_seed(0)
    model = MMEmotionForEmotionClassification(tiny_config()).eval()
    text = ["Oh my God , you got the job !", "I do not want to talk about it .", "Fine ."]
    absent = processor(text=text, videos=[None] * len(text), audio=[None] * len(text))
    text_only = processor(text=text)
    logging.Logger.warning_once.cache_clear()  # the warning is shown once per process
    assert "pixel_values_videos" not in text_only and "audio_values" not in text_only
    with torch.no_grad(), caplog.at_level("WARNING"):
        expected = model(**absent).logits
        logits = model(**text_only).logits
        model(**text_only)
    torch.testing.assert_close(logits, expected)
    warnings = [record.getMessage() for record in caplog.records if "branch but got no" in record.getMessage()]
    assert len(warnings) == 2 and "video branch" in warnings[0] and "audio branch" in warnings[1], warnings
    # A video mask without video is absent too (it used to raise).
    with torch.no_grad():
        torch.testing.assert_close(model(**text_only, video_mask=torch.zeros(3, dtype=torch.long)).logits, expected)


def test_no_input_at_all_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="got no input for any of its branches"):
        tiny_model(text_mask=torch.ones(2, dtype=torch.long))


@pytest.mark.parametrize(("modality", "match"), [("video", "9 frames per item; the branch has positions for 8"), ("audio", "9 audio clips per item; the branch has positions for 8")])
def test_more_frames_or_clips_than_positions_is_a_clear_error(modality, match):
    config = tiny_config()
    config.video_config.max_frame_positions = config.audio_config.max_clip_positions = 8
    model = MMEmotionForEmotionClassification(config).eval()
    inputs = random_inputs(config, batch_size=1, num_frames=8, num_clips=8)
    model(**inputs)  # as many as there are positions: fine
    too_many = random_inputs(config, batch_size=1, num_frames=9 if modality == "video" else 8, num_clips=9 if modality == "audio" else 8)
    with pytest.raises(ValueError, match=match):
        model(**too_many)


def test_cached_features_give_the_same_logits(tiny_model):
    inputs = random_inputs(tiny_model.config)
    with torch.no_grad():
        base = tiny_model.mmemotion
        features = {
            "text_features": base.get_text_features(inputs["input_ids"], inputs["attention_mask"]),
            "video_features": base.get_video_features(
                inputs["pixel_values_videos"], inputs["video_frame_mask"], inputs["video_mask"]
            ),
            "audio_features": base.get_audio_features(inputs["audio_values"], inputs["audio_clip_mask"], inputs["audio_mask"]),
        }
        from_features = tiny_model(
            **features, attention_mask=inputs["attention_mask"], text_mask=inputs["text_mask"],
            video_mask=inputs["video_mask"], audio_mask=inputs["audio_mask"],
        ).logits
        torch.testing.assert_close(from_features, tiny_model(**inputs).logits)


def test_frozen_encoders_get_no_gradient_and_stay_in_eval_mode():
    torch.manual_seed(0)
    model = MMEmotionForEmotionClassification(tiny_config(classifier_dropout=0.5))
    model.train()
    encoders = [model.mmemotion.encoder(modality) for modality in ("text", "video", "audio")]
    assert all(not module.training for encoder in encoders for module in encoder.modules())
    assert model.classifier.training and model.mmemotion.poolers.training
    model(**random_inputs(model.config), labels=torch.tensor([1, 2, 3])).loss.backward()
    for encoder in encoders:
        assert all(parameter.grad is None and not parameter.requires_grad for parameter in encoder.parameters())
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert all(parameter.grad is not None for name, parameter in model.named_parameters() if parameter.requires_grad)
    assert not any("_encoder." in name for name in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    optimizer.step()
    assert len(optimizer.state) == len(trainable)


def test_unfrozen_text_encoder_trains():
    model = MMEmotionForEmotionClassification(tiny_config(freeze_text_encoder=False)).train()
    model(**random_inputs(model.config), labels=torch.tensor([1, 2, 3])).loss.backward()
    assert model.mmemotion.text_encoder.embed_tokens.weight.grad is not None
    assert model.mmemotion.text_encoder.training
    assert all(p.grad is None for p in model.mmemotion.video_encoder.parameters())


def test_class_weights_change_the_loss():
    inputs = random_inputs(tiny_config())
    labels = torch.tensor([0, 0, 5])
    torch.manual_seed(0)
    plain = MMEmotionForEmotionClassification(tiny_config()).eval()
    weighted = MMEmotionForEmotionClassification(tiny_config(class_weights=[0.1, 1, 1, 1, 1, 10.0, 1])).eval()
    weighted.load_state_dict(plain.state_dict())
    logits = plain(**inputs).logits
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([0.1, 1, 1, 1, 1, 10.0, 1]))
    torch.testing.assert_close(weighted(**inputs, labels=labels).loss, expected)


def test_config_drops_unlisted_branches_and_validates():
    config = tiny_config(modalities=["text", "video"])
    assert config.audio_config is None
    model = MMEmotionModel(config)
    assert not hasattr(model, "audio_encoder")
    with pytest.raises(ValueError, match="modalities"):
        MMEmotionConfig(modalities=["text", "smell"])
    with pytest.raises(ValueError, match="pooling"):
        MMEmotionConfig(modalities=["text"], pooling="max")


@pytest.mark.parametrize("preset", SEED_PRESETS)
def test_seed_presets_build_at_real_size_on_meta(preset):
    config = MMEmotionConfig.from_pretrained(os.path.join(PRESETS, f"{preset}.json"))
    with torch.device("meta"):
        model = MMEmotionForEmotionClassification(config)
    counts = {modality: sum(p.numel() for p in model.mmemotion.encoder(modality).parameters()) for modality in config.modalities}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(preset, {k: f"{v / 1e6:.1f}M" for k, v in counts.items()}, f"trainable {trainable / 1e6:.2f}M")
    assert config.text_config.hidden_size == 5120 and counts["text"] == 32000 * 5120  # LLaMA-2-13B input embeddings
    assert 1.0e9 < counts["video"] < 1.2e9  # EVA ViT-g + BLIP-2 Q-Former + video Q-Former + llama_proj
    if "audio" in config.modalities:
        assert 0.09e9 < counts["audio"] < 0.13e9  # ImageBind-Huge audio trunk + audio Q-Former
    projection = model.mmemotion.poolers["text"].projection
    assert projection.in_features == 5120 and projection.out_features == config.projection_size
    head_input = len(config.modalities) * config.projection_size
    assert model.classifier.dense.in_features == head_input  # e.g. exp0: 3 x 1024 = 3072, exp1: 2 x 512 = 1024
    assert (trainable > 5120 * 32000) == (preset == "exp4")  # only exp4 trains the text embeddings


@pytest.mark.parametrize("preset", SEED_PRESETS)
def test_scaled_down_seed_presets_train(preset):
    """Each seed preset with its fusion settings kept and the encoders shrunk to the tiny sizes."""
    with open(os.path.join(PRESETS, f"{preset}.json")) as handle:
        seed = json.load(handle)
    with open(os.path.join(PRESETS, "tiny", "config.json")) as handle:
        tiny = json.load(handle)
    fusion = {key: value for key, value in seed.items() if not key.endswith("_config")}
    config = MMEmotionConfig(**{**tiny, **fusion, "projection_size": 24, "classifier_hidden_size": 24})
    model = MMEmotionForEmotionClassification(config).train()
    loss = model(**random_inputs(config), labels=torch.tensor([1, 2, 3])).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.classifier.dense.weight.grad is not None


def test_frozen_encoders_stay_frozen_after_from_pretrained(tmp_path):
    MMEmotionForEmotionClassification(tiny_config(freeze_text_encoder=False)).save_pretrained(tmp_path)
    loaded = MMEmotionForEmotionClassification.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in loaded.mmemotion.video_encoder.parameters())
    assert not any(p.requires_grad for p in loaded.mmemotion.audio_encoder.parameters())
    assert all(p.requires_grad for p in loaded.mmemotion.text_encoder.parameters())
    assert all(p.requires_grad for p in loaded.classifier.parameters())


def test_every_processor_key_is_a_named_input_and_a_misspelled_one_is_a_type_error(tmp_path):
    """Every key the processor gives (a context window, real clips, one without audio) is a named input of the joint
    model, and of the utterance models once flattened to the real utterances; a misspelled input is a TypeError,
    never silently ignored."""
    from modeling_mmemotion import MMEmotionForEmotionCauseExtraction
    from processing_mmemotion import MMEmotionProcessor
    from test_remote_code import write_clips

    clips = write_clips(tmp_path)
    processor = MMEmotionProcessor.from_pretrained(os.path.join(PRESETS, "tiny"), context_past=1)
    conversation = [
        {"text": "Oh my God , you got the job !", "speaker": "Monica", "video": clips[0]},
        {"text": "I did .", "speaker": "Rachel", "video": clips[1]},
    ]
    batch = processor(conversations=[conversation])
    assert {"text_target_mask", "pixel_values_videos", "audio_values", "utterance_mask", "speaker_ids"} <= set(batch)
    utterance_mask = batch["utterance_mask"].bool()
    flat = {key: value[utterance_mask] for key, value in batch.items() if key not in ("utterance_mask", "speaker_ids")}
    torch.manual_seed(0)
    joint = MMEmotionForEmotionCauseExtraction(tiny_config()).eval()
    classifier = MMEmotionForEmotionClassification(tiny_config()).eval()
    assert set(joint.utterance_input_names) <= set(inspect.signature(joint.forward).parameters)
    with torch.no_grad():
        assert joint(**batch).emotion_logits.shape == (1, 2, 7)
        assert classifier(**flat).logits.shape == (2, 7)
        for model, inputs in ((joint, batch), (classifier, flat), (classifier.mmemotion, flat)):
            with pytest.raises(TypeError, match="pixel_value_videos"):
                model(**inputs, pixel_value_videos=inputs["pixel_values_videos"])


def test_initializer_range_sets_the_new_weights_and_old_sub_config_fields_still_load(tmp_path):
    with open(os.path.join(PRESETS, "tiny", "config.json")) as handle:
        settings = json.load(handle)
    # The sub-configs' `initializer_range` fields (removed: nothing read them) in an old config.json still load, and
    # change nothing.
    settings["video_config"]["initializer_range"] = settings["audio_config"]["initializer_range"] = 5.0
    (tmp_path / "config.json").write_text(json.dumps(settings))
    old_config = MMEmotionConfig.from_pretrained(tmp_path)
    weights = {}
    for name, config in (("old", old_config), ("0.02", tiny_config()), ("0.5", tiny_config(initializer_range=0.5))):
        torch.manual_seed(0)
        weights[name] = MMEmotionModel(config).state_dict()
    assert weights["old"].keys() == weights["0.02"].keys()
    assert all(torch.equal(weights["old"][key], value) for key, value in weights["0.02"].items())
    # `config.initializer_range` sets the fusion's and ImageBind's new weights (the encoders' own sub-models keep
    # their configs' ranges).
    for key in (
        "missing_modality_embeds",
        "poolers.text.projection.weight",
        "audio_encoder.audio_model.embeddings.position_embedding",
        "video_encoder.llama_proj.weight",
    ):
        assert weights["0.5"][key].std() > 10 * weights["0.02"][key].std(), key


def test_a_saved_model_reloads_every_weight(tmp_path):
    torch.manual_seed(0)
    model = MMEmotionForEmotionClassification(tiny_config())
    model.save_pretrained(tmp_path)
    loaded, loading_info = MMEmotionForEmotionClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(loading_info.values()), loading_info
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert not any(p.requires_grad for p in loaded.mmemotion.video_encoder.parameters())
