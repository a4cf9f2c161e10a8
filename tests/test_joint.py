"""Emotion-cause pair extraction: `MMEmotionForEmotionCauseExtraction`, its decoding, and `training.conversations`."""

import dataclasses
import json
import os
import random
import subprocess
import sys
import textwrap
import time

import datasets
import evaluate
import pytest
import torch
from transformers import Trainer, TrainingArguments

import ecf
from configuration_mmemotion import ECF_EMOTIONS, MMEmotionConfig
from modeling_mmemotion import MMEmotionForEmotionCauseExtraction, MMEmotionForEmotionClassification
from processing_mmemotion import MMEmotionProcessor
from test_modeling import random_inputs
from training.conversations import ConversationCollator, ConversationDataset
from training.evaluation import (
    ECPE_PAIR_F1,
    conversation_predictions,
    joint_logits,
    pair_records,
    pairs_to_submission,
    tune_cause_threshold,
)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = os.path.join(ROOT, "presets")
TINY = os.path.join(PRESETS, "tiny")
CONTEXT_ENCODERS = ["bilstm", "transformer"]
VOCAB_SIZE = 64


def text_config(**overrides) -> MMEmotionConfig:
    """A tiny text-only joint model config (a 64-token LLaMA whose input embeddings are the text features)."""
    settings = {
        "modalities": ["text"],
        "text_config": {
            "model_type": "llama", "vocab_size": VOCAB_SIZE, "hidden_size": 32, "intermediate_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "pad_token_id": 0,
        },
        "projection_size": 16,
        "attention_size": 8,
        "classifier_hidden_size": 16,
        "context_hidden_size": 16,
        "context_num_heads": 2,
        "cause_window": 3,
    }
    settings.update(overrides)
    return MMEmotionConfig(**settings)


def text_model(seed=0, **overrides) -> MMEmotionForEmotionCauseExtraction:
    torch.manual_seed(seed)
    return MMEmotionForEmotionCauseExtraction(text_config(**overrides))


def random_rows(lengths, seed=0, first_id=1):
    """`ConversationDataset`-like rows: raw `input_ids` (ragged per utterance), speakers, emotions, a few gold pairs."""
    rng = random.Random(seed)
    rows = []
    for conversation_id, length in enumerate(lengths, start=first_id):
        input_ids = [[rng.randrange(1, VOCAB_SIZE) for _ in range(rng.randint(2, 6))] for _ in range(length)]
        labels = [rng.choice([0, 0, 1, 4, 6]) for _ in range(length)]
        rows.append({
            "conversation_id": conversation_id,
            "utterance_ids": list(range(1, length + 1)),
            "utterances": {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]},
            "speaker_ids": [rng.randrange(3) for _ in range(length)],
            "labels": labels,
            "cause_pairs": [[i, max(i - rng.randint(0, 2), 0)] for i in range(length) if labels[i] != 0],
        })
    return rows


def candidate_count(length: int, window: int) -> int:
    return sum(abs(i - j) <= window for i in range(length) for j in range(length))


# ------------------------------------------------------------------------------------------------ forward and loss


@pytest.mark.parametrize("context_encoder", CONTEXT_ENCODERS)
def test_text_only_forward_backward(context_encoder):
    model = text_model(context_encoder=context_encoder).train()
    batch = ConversationCollator()(random_rows([4, 2, 5]))
    outputs = model(**batch)
    assert outputs.emotion_logits.shape == (3, 5, 7)
    assert outputs.cause_logits.shape == (3, 5, 5)
    assert outputs.utterance_states.shape == (3, 5, 16)
    assert outputs.utterance_embeds.shape == (3, 5, 16)
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    for module in (model.context_encoder, model.emotion_classifier, model.pair_scorer, model.mmemotion.poolers):
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad), type(module).__name__
    assert model.mmemotion.text_encoder.embed_tokens.weight.grad is None  # frozen by default


def test_all_modalities_from_the_tiny_preset_forward_backward():
    torch.manual_seed(0)
    config = MMEmotionConfig.from_pretrained(TINY)
    model = MMEmotionForEmotionCauseExtraction(config).train()
    num_conversations, max_utterances = 2, 3
    flat = random_inputs(config, batch_size=num_conversations * max_utterances, num_frames=2, num_clips=2)
    batch = {key: value.view(num_conversations, max_utterances, *value.shape[1:]) for key, value in flat.items()}
    batch["video_mask"][0, 1] = 0  # an utterance without a clip
    batch["utterance_mask"] = torch.tensor([[1, 1, 1], [1, 1, 0]])
    batch["speaker_ids"] = torch.tensor([[0, 1, 0], [0, 0, 0]])
    batch["labels"] = torch.tensor([[4, 0, 6], [1, 1, -100]])
    batch["cause_labels"] = torch.tensor([
        [[1, 0, 0], [0, 0, 0], [0, 1, 1]],
        [[1, 0, -100], [1, 1, -100], [-100, -100, -100]],
    ])
    outputs = model(**batch)
    assert outputs.emotion_logits.shape == (2, 3, 7) and outputs.cause_logits.shape == (2, 3, 3)
    assert outputs.utterance_embeds.shape == (2, 3, 3 * config.projection_size)
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss)
    assert all(p.grad is not None for p in model.pair_scorer.parameters())
    assert all(p.grad is not None for p in model.context_encoder.parameters())
    for modality in config.modalities:
        assert all(p.grad is None for p in model.mmemotion.encoder(modality).parameters())


@pytest.mark.parametrize("context_encoder", CONTEXT_ENCODERS)
def test_padding_utterances_do_not_change_the_outputs(context_encoder):
    model = text_model(context_encoder=context_encoder).eval()
    short, long = random_rows([3, 6])
    with torch.no_grad():
        short_alone = model(**ConversationCollator()([short]))
        long_alone = model(**ConversationCollator()([long]))
        batch = ConversationCollator(pad_to_utterances=9)([short, long])
        # Whatever the padding utterances hold, it must not reach the real ones (nor be encoded at all).
        batch["input_ids"][:, 6:] = torch.randint(1, VOCAB_SIZE, batch["input_ids"][:, 6:].shape)
        batch["attention_mask"][:, 6:] = 1
        batch["speaker_ids"][:, 6:] = 7
        together = model(**batch)
    for index, (alone, length) in enumerate([(short_alone, 3), (long_alone, 6)]):
        for name in ("emotion_logits", "utterance_states"):
            torch.testing.assert_close(getattr(together, name)[index, :length], getattr(alone, name)[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            together.cause_logits[index, :length, :length], alone.cause_logits[0], rtol=1e-5, atol=1e-5
        )
        assert (together.utterance_states[index, length:] == 0).all()
        assert (together.cause_logits[index, length:] == torch.finfo(torch.float32).min).all()
        assert (together.cause_logits[index, :, length:] == torch.finfo(torch.float32).min).all()


@pytest.mark.parametrize("context_encoder", CONTEXT_ENCODERS)
def test_one_and_33_utterance_conversations(context_encoder):
    model = text_model(context_encoder=context_encoder, cause_window=8).train()
    batch = ConversationCollator()(random_rows([1, 33]))
    outputs = model(**batch)
    assert outputs.cause_logits.shape == (2, 33, 33)
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss)
    candidates = outputs.cause_logits > torch.finfo(torch.float32).min
    assert candidates[0].sum() == 1 and candidates[0, 0, 0]
    assert candidates[1].sum() == candidate_count(33, 8)
    pairs = model.decode_pairs(outputs.emotion_logits, outputs.cause_logits, batch["utterance_mask"])
    assert all(pair == (0, 0) for pair in pairs[0])


def test_collator_serves_cached_features_like_raw_inputs():
    model = text_model().eval()
    raw_rows = random_rows([3, 5])
    cached_rows = []
    with torch.no_grad():
        for row in raw_rows:
            utterances = row["utterances"]
            features = [
                model.mmemotion.get_text_features(torch.tensor([ids]))[0]
                for ids in utterances["input_ids"]
            ]
            cached_rows.append({**row, "utterances": {"text_features": features, "attention_mask": utterances["attention_mask"]}})
        raw = model(**ConversationCollator()(raw_rows))
        cached = model(**ConversationCollator()(cached_rows))
    torch.testing.assert_close(cached.emotion_logits, raw.emotion_logits)
    torch.testing.assert_close(cached.cause_logits, raw.cause_logits)


def test_loss_is_weighted_emotion_ce_plus_window_pair_bce_on_gold_emotion_rows():
    model = text_model(cause_window=1, emotion_loss_weight=0.5, cause_loss_weight=2.0).eval()
    batch = ConversationCollator()(random_rows([4, 3], seed=3))
    batch["labels"] = torch.tensor([[0, 4, -100, 6], [1, 0, 2, -100]])
    torch.manual_seed(0)
    batch["cause_labels"] = torch.where(batch["cause_labels"] == -100, -100, torch.randint(0, 2, (2, 4, 4)))
    with torch.no_grad():
        outputs = model(**batch)
    real = batch["utterance_mask"].bool()
    positions = torch.arange(4)
    window = (positions[None, :] - positions[:, None]).abs() <= 1
    emotion_rows = real & (batch["labels"] != -100) & (batch["labels"] != 0)
    trained = real[:, :, None] & real[:, None, :] & window & emotion_rows[:, :, None]
    targets = batch["cause_labels"][trained].float()
    positive_weight = (targets.numel() - targets.sum()) / targets.sum()
    cause_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        outputs.cause_logits[trained], targets, pos_weight=positive_weight
    )
    emotion_loss = torch.nn.functional.cross_entropy(
        outputs.emotion_logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(outputs.loss, 0.5 * emotion_loss + 2.0 * cause_loss)

    # Pairs outside the window, of neutral / unlabelled rows, or touching padding are not trained.
    untrained = batch["cause_labels"].clone()
    untrained[~trained] = 1
    with torch.no_grad():
        torch.testing.assert_close(model(**{**batch, "cause_labels": untrained}).loss, outputs.loss)

    model.config.cause_positive_weight = 3.0
    with torch.no_grad():
        fixed = model(**batch).loss
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        outputs.cause_logits[trained], targets, pos_weight=torch.tensor(3.0)
    )
    torch.testing.assert_close(fixed, 0.5 * emotion_loss + 2.0 * expected)


# ---------------------------------------------------------------------------------------------------- decoding


def masked_logits(probabilities: torch.Tensor, utterance_mask: torch.Tensor, window: int) -> torch.Tensor:
    """Pair logits as `forward` returns them: logit(p) on candidate pairs, the lowest value elsewhere."""
    real = utterance_mask.bool()
    positions = torch.arange(real.shape[1])
    candidates = real[:, :, None] & real[:, None, :] & ((positions[None, :] - positions[:, None]).abs() <= window)
    return torch.logit(probabilities).masked_fill(~candidates, torch.finfo(torch.float32).min)


def test_decode_pairs_rules():
    model = text_model(cause_window=2, cause_threshold=0.5)
    neutral, anger, fear, joy, surprise = 0, 1, 3, 4, 6
    utterance_mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    emotions = torch.tensor([[neutral, joy, anger, surprise], [fear, joy, joy, joy]])  # padding rows say joy
    emotion_logits = torch.nn.functional.one_hot(emotions, 7).float() * 5
    probabilities = torch.full((2, 4, 4), 0.99)
    probabilities[0, 1] = torch.tensor([0.2, 0.3, 0.1, 0.4])  # nothing passes: the most probable only
    probabilities[0, 2] = torch.tensor([0.9, 0.6, 0.7, 0.55])
    probabilities[0, 3] = torch.tensor([0.99, 0.2, 0.8, 0.6])  # (3, 0) is outside the window
    probabilities[1, 0, 0] = 0.1
    cause_logits = masked_logits(probabilities, utterance_mask, window=2)

    def decode(threshold=None):
        return model.decode_pairs(emotion_logits, cause_logits, utterance_mask, threshold=threshold)

    assert decode() == [[(1, 3), (2, 0), (2, 1), (2, 2), (2, 3), (3, 2), (3, 3)], [(0, 0)]]
    assert decode(0.65) == [[(1, 3), (2, 0), (2, 2), (3, 2)], [(0, 0)]]
    assert decode(0.999) == [[(1, 3), (2, 0), (3, 2)], [(0, 0)]]
    model.config.cause_threshold = 0.65
    assert decode() == decode(0.65)

    # Random outputs: every predicted emotion utterance has a cause, neutral and padding rows have none, every pair
    # passing the threshold is kept, and nothing leaves the window.
    torch.manual_seed(0)
    utterance_mask = torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    emotion_logits = torch.randn(2, 9, 7) * 3
    cause_logits = masked_logits(torch.rand(2, 9, 9), utterance_mask, window=2)
    pairs = model.decode_pairs(emotion_logits, cause_logits, utterance_mask, threshold=0.7)
    predicted = emotion_logits.argmax(-1)
    for conversation, conversation_pairs in enumerate(pairs):
        length = int(utterance_mask[conversation].sum())
        emotion_rows = {i for i in range(length) if predicted[conversation, i] != neutral}
        assert {i for i, _ in conversation_pairs} == emotion_rows
        assert all(abs(i - j) <= 2 and j < length for i, j in conversation_pairs)
        passing = (torch.sigmoid(cause_logits[conversation]) >= 0.7).nonzero().tolist()
        assert {(i, j) for i, j in passing if i in emotion_rows} <= set(conversation_pairs)


# --------------------------------------------------------------------------------------------- save and reload


LOAD_AND_DECODE = textwrap.dedent(
    """
    import importlib.util, json, sys
    import torch
    from transformers import AutoModel

    assert importlib.util.find_spec("modeling_mmemotion") is None, "the repository must not be importable here"
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    batch = torch.load(sys.argv[2])
    with torch.no_grad():
        outputs = model(**batch)
    pairs = model.decode_pairs(outputs.emotion_logits, outputs.cause_logits, batch["utterance_mask"])
    torch.save({"model": type(model).__name__, "emotion_logits": outputs.emotion_logits,
                "cause_logits": outputs.cause_logits, "pairs": pairs, "threshold": model.config.cause_threshold},
               sys.argv[3])
    """
)


def test_save_pretrained_reloads_as_remote_code_in_a_fresh_process(tmp_path):
    model = text_model(context_encoder="bilstm", cause_threshold=0.35).eval()
    batch = ConversationCollator()(random_rows([4, 2]))
    del batch["conversation_id"]
    with torch.no_grad():
        expected = model(**batch)
    model_dir = tmp_path / "joint"
    model.save_pretrained(model_dir)
    auto_map = json.loads((model_dir / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_mmemotion.MMEmotionForEmotionCauseExtraction"
    torch.save(batch, tmp_path / "batch.pt")

    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_DECODE, str(model_dir), str(tmp_path / "batch.pt"), str(tmp_path / "out.pt")],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt")
    assert loaded["model"] == "MMEmotionForEmotionCauseExtraction"
    assert loaded["threshold"] == 0.35
    torch.testing.assert_close(loaded["emotion_logits"], expected.emotion_logits)
    torch.testing.assert_close(loaded["cause_logits"], expected.cause_logits)
    assert loaded["pairs"] == model.decode_pairs(expected.emotion_logits, expected.cause_logits, batch["utterance_mask"])


def test_joint_model_starts_from_an_utterance_classifier_checkpoint(tmp_path):
    torch.manual_seed(0)
    classifier = MMEmotionForEmotionClassification(text_config())
    classifier.save_pretrained(tmp_path)
    joint = MMEmotionForEmotionCauseExtraction.from_pretrained(tmp_path)
    for name, parameter in classifier.mmemotion.state_dict().items():
        torch.testing.assert_close(joint.mmemotion.state_dict()[name], parameter)


def test_joint_model_reading_utterance_embeds_predicts_the_emotions_of_the_classifier_it_starts_from(tmp_path):
    torch.manual_seed(0)
    classifier = MMEmotionForEmotionClassification(text_config()).eval()
    classifier.save_pretrained(tmp_path)
    joint = MMEmotionForEmotionCauseExtraction.from_pretrained(tmp_path, emotion_head_input="utterance_embeds").eval()
    assert not hasattr(joint, "emotion_classifier")
    batch = ConversationCollator()(random_rows([4, 2]))
    del batch["conversation_id"]
    with torch.no_grad():
        outputs = joint(**batch)
        mask = batch["utterance_mask"].bool()
        utterance_logits = classifier(input_ids=batch["input_ids"][mask], attention_mask=batch["attention_mask"][mask]).logits
    torch.testing.assert_close(outputs.emotion_logits[mask], utterance_logits)


def test_joint0_preset_builds_at_real_size_on_meta():
    config = MMEmotionConfig.from_pretrained(os.path.join(PRESETS, "joint0.json"))
    assert (config.modalities, config.pooling, config.context_encoder) == (["text", "video", "audio"], "attention", "bilstm")
    with torch.device("meta"):
        model = MMEmotionForEmotionCauseExtraction(config)
    assert model.context_encoder.lstm.input_size == 3 * 512 and model.context_encoder.lstm.bidirectional
    assert model.mmemotion.poolers["text"].projection.in_features == 5120
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"joint0: trainable {trainable / 1e6:.2f}M")
    assert trainable < 20e6  # the encoders (13B embeddings, EVA ViT-g, ImageBind) stay frozen


# ------------------------------------------------------------------------------------------ ECF data to a submission


def predict_conversations(model, dataset, collator, output_dir, batch_size=8):
    """`trainer.predict` on conversations as train.py runs it, read back as `ConversationPredictions`."""
    # `Trainer` concatenates the batches' (C, U, U) pair logits: every batch padded to one U, as train.py does.
    lengths = [end - start for start, end in zip(dataset.offsets, dataset.offsets[1:])]
    collator = dataclasses.replace(collator, pad_to_utterances=max(lengths))
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_eval_batch_size=batch_size, use_cpu=True, report_to="none",
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, data_collator=collator, preprocess_logits_for_metrics=joint_logits)
    return conversation_predictions(dataset, trainer.predict(dataset))



def test_ecf_sample_to_a_scored_predictions_file(tmp_path):
    """The `--task joint` prediction path: ECF file -> conversation dataset -> predictions file -> official score."""
    conversations = ecf.load_conversations(os.path.join(ROOT, "demo", "sample_train.json"))
    tokenizer = MMEmotionProcessor.from_pretrained(TINY).tokenizer
    utterances = ecf.conversations_to_utterance_dataset(conversations)
    utterance_inputs = utterances.map(lambda row: tokenizer(row["text"]), remove_columns=["speaker", "video_path", "label"])
    dataset = ConversationDataset(ecf.conversations_to_conversation_dataset(conversations), utterance_inputs)
    collator = ConversationCollator(pad_token_id=tokenizer.pad_token_id)
    # The same batches from an utterance-level collator (as train.py's, which also reads clips).
    def pad_tokens(rows):
        tokens = [{"input_ids": row["input_ids"], "attention_mask": row["attention_mask"]} for row in rows]
        return tokenizer.pad(tokens, return_tensors="pt")

    flat_collator = ConversationCollator(utterance_collator=pad_tokens)

    first = collator([dataset[0]])
    gold_pairs = {tuple(pair) for pair in dataset[0]["cause_pairs"]}
    assert {tuple(index) for index in (first["cause_labels"][0] == 1).nonzero().tolist()} == gold_pairs
    assert first["labels"][0].tolist() == [ecf.EMOTION_TO_ID[u["emotion"]] for u in conversations[0]["conversation"]]

    model = text_model(text_config=MMEmotionConfig.from_pretrained(TINY).text_config.to_dict())
    predictions = predict_conversations(model, dataset, collator, tmp_path, batch_size=5)
    from_flat_collator = predict_conversations(model, dataset, flat_collator, tmp_path, batch_size=5)
    torch.testing.assert_close(from_flat_collator.emotion_logits, predictions.emotion_logits)
    torch.testing.assert_close(from_flat_collator.cause_logits, predictions.cause_logits)
    assert predictions.conversation_ids == [c["conversation_ID"] for c in conversations]
    pairs = model.decode_pairs(predictions.emotion_logits, predictions.cause_logits, predictions.utterance_mask)
    path = tmp_path / "predictions.json"
    ecf.write_predictions(path, conversations, predictions.emotion_predictions(), pair_predictions=pairs)
    metric = evaluate.load(ECPE_PAIR_F1)
    references = pair_records(conversations)
    from_file = metric.compute(predictions=pair_records(json.loads(path.read_text())), references=references)
    submission = pairs_to_submission(predictions, pairs, model.config.id2label)
    assert from_file == metric.compute(predictions=submission, references=references)


# ------------------------------------------------------------------------------------- learnable synthetic conversations

TRIGGER, FIRST_EMOTION_TOKEN, FIRST_FILLER = 1, 2, 8


def synthetic_conversations(num_conversations: int, seed: int, first_id: int):
    """Conversations whose pairs follow their structure.

    Each utterance has filler tokens, an emotion token for half of them (the emotion), and a trigger token for 30%.
    The cause of an emotion utterance is the most recent utterance with a trigger among itself and the 3 before it
    (itself about a third of the time), else the previous utterance.
    """
    rng = random.Random(seed)
    rows, utterances, references = [], {"conversation_id": [], "input_ids": []}, []
    for conversation_id in range(first_id, first_id + num_conversations):
        length = rng.randint(3, 12)
        labels, triggers = [], []
        for _ in range(length):
            tokens = [rng.randrange(FIRST_FILLER, VOCAB_SIZE) for _ in range(rng.randint(3, 6))]
            triggers.append(rng.random() < 0.3)
            labels.append(rng.randint(1, 6) if rng.random() < 0.5 else 0)
            if triggers[-1]:
                tokens.insert(rng.randrange(len(tokens) + 1), TRIGGER)
            if labels[-1]:
                tokens.insert(rng.randrange(len(tokens) + 1), FIRST_EMOTION_TOKEN + labels[-1] - 1)
            utterances["conversation_id"].append(conversation_id)
            utterances["input_ids"].append(tokens)
        pairs = []
        for i, label in enumerate(labels):
            if label:
                recent = [j for j in range(max(0, i - 3), i + 1) if triggers[j]]
                pairs.append([i, recent[-1] if recent else max(i - 1, 0)])
        rows.append({
            "conversation_id": conversation_id,
            "utterance_ids": list(range(1, length + 1)),
            "speaker_ids": [rng.randrange(3) for _ in range(length)],
            "labels": labels,
            "cause_pairs": pairs,
        })
        references.append({
            "conversation_ID": conversation_id,
            "emotion-cause_pairs": [[f"{i + 1}_{ECF_EMOTIONS[labels[i]]}", str(j + 1)] for i, j in pairs],
        })
    return datasets.Dataset.from_list(rows), utterances, references


def cached_feature_dataset(model, num_conversations, seed, first_id):
    """The synthetic conversations with cached text features (the frozen encoder's output), as train.py caches them."""
    conversations, utterances, references = synthetic_conversations(num_conversations, seed, first_id)
    with torch.no_grad():
        features = [
            model.mmemotion.get_text_features(torch.tensor([ids]))[0].numpy()
            for ids in utterances["input_ids"]
        ]
    utterance_inputs = datasets.Dataset.from_dict({
        "conversation_id": utterances["conversation_id"],
        "text_features": features,
        "attention_mask": [[1] * len(ids) for ids in utterances["input_ids"]],
    })
    return ConversationDataset(conversations, utterance_inputs.with_format("torch")), references


@pytest.fixture
def one_thread():
    """A tiny model trains fastest on one thread (and is not slowed down by other processes on the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("context_encoder", CONTEXT_ENCODERS)
def test_learns_structural_causes_beyond_the_self_cause_rule(context_encoder, one_thread, tmp_path):
    model = text_model(
        context_encoder=context_encoder, projection_size=32, attention_size=16, classifier_hidden_size=32,
        context_hidden_size=32, cause_window=4, classifier_dropout=0.1,
        text_config={**text_config().text_config.to_dict(), "hidden_size": 32},
    )
    train, _ = cached_feature_dataset(model, 300, seed=0, first_id=0)
    validation, validation_references = cached_feature_dataset(model, 60, seed=1, first_id=1000)
    test, test_references = cached_feature_dataset(model, 60, seed=2, first_id=2000)
    collator = ConversationCollator()
    generator = torch.Generator().manual_seed(0)
    rows = [train[index] for index in range(len(train))]  # read from Arrow once, not every epoch
    loader = torch.utils.data.DataLoader(rows, batch_size=16, shuffle=True, collate_fn=collator, generator=generator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    start = time.perf_counter()
    for _ in range(20):
        model.train()
        for batch in loader:
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    training_seconds = time.perf_counter() - start

    threshold, scores = tune_cause_threshold(model, predict_conversations(model, validation, collator, tmp_path), validation_references)
    assert scores[threshold] == max(scores.values())
    model.config.cause_threshold = threshold
    predictions = predict_conversations(model, test, collator, tmp_path)
    pairs = model.decode_pairs(predictions.emotion_logits, predictions.cause_logits, predictions.utterance_mask)
    metric = evaluate.load(ECPE_PAIR_F1)
    joint = metric.compute(predictions=pairs_to_submission(predictions, pairs, model.config.id2label), references=test_references)
    # The rule with gold emotions: each emotion utterance causes itself.
    self_rule = [
        {"conversation_ID": reference["conversation_ID"],
         "emotion-cause_pairs": [[emotion, emotion.split("_")[0]] for emotion in dict(reference["emotion-cause_pairs"])]}
        for reference in test_references
    ]
    rule = metric.compute(predictions=self_rule, references=test_references)
    gold_emotions = [label for labels in test.conversations["labels"] for label in labels]
    accuracy = sum(p == g for p, g in zip(predictions.emotion_predictions(), gold_emotions)) / len(gold_emotions)
    print(
        f"{context_encoder}: trained {training_seconds:.1f}s; emotion accuracy {accuracy:.3f}; threshold {threshold}; "
        f"pair weighted F1 {joint['weighted_f1']:.3f} vs self-cause rule with gold emotions {rule['weighted_f1']:.3f}"
    )
    assert joint["weighted_f1"] > rule["weighted_f1"] + 0.2


def test_processor_conversations_are_the_collated_batch_of_the_tri_modal_model(tmp_path):
    """`processor(conversations=...)`: the joint model's inputs, the same batch as `ConversationCollator` builds from
    the processor's utterance rows, with real clips and one utterance without any."""
    from test_remote_code import write_clips

    clips = write_clips(tmp_path)
    processor = MMEmotionProcessor.from_pretrained(TINY)
    conversations = [
        [
            {"text": "Oh my God , you got the job !", "speaker": "Monica", "video": clips[0]},
            {"text": "I did !", "speaker": "Rachel", "video": clips[1]},
            {"text": "That is great .", "speaker": "Monica"},
        ],
        [{"text": "Fine .", "speaker": "Joey", "video": clips[0]}],
    ]
    batch = processor(conversations=conversations)
    assert batch["utterance_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["speaker_ids"].tolist() == [[0, 1, 0], [0, 0, 0]]
    assert batch["video_mask"].tolist() == [[1, 1, 0], [1, 0, 0]] and batch["audio_mask"].tolist() == [[1, 0, 0], [1, 0, 0]]
    assert batch["pixel_values_videos"].shape[:2] == (2, 3) and batch["input_ids"].shape[:2] == (2, 3)

    rows = []
    for conversation in conversations:
        flat = processor(text=[u["text"] for u in conversation], videos=[u.get("video") for u in conversation], return_tensors="np")
        rows.append({"utterance_ids": list(range(len(conversation))), "utterances": dict(flat),
                     "speaker_ids": ecf.speaker_ids([u["speaker"] for u in conversation])})
    collated = ConversationCollator(pad_token_id=processor.tokenizer.pad_token_id)(rows)
    assert sorted(collated) == sorted(batch)
    torch.manual_seed(0)
    model = MMEmotionForEmotionCauseExtraction(MMEmotionConfig.from_pretrained(TINY)).eval()
    with torch.no_grad():
        expected = model(**collated)
        outputs = model(**batch)
    torch.testing.assert_close(outputs.emotion_logits, expected.emotion_logits)
    torch.testing.assert_close(outputs.cause_logits, expected.cause_logits)


def test_processor_conversations_bad_input_names_the_utterance():
    processor = MMEmotionProcessor.from_pretrained(TINY)
    with pytest.raises(ValueError, match="Utterance 1 of conversation 0 must be a dict"):
        processor(conversations=[[{"text": "hi"}, "no"]])
    with pytest.raises(ValueError, match=r"Utterances \[1\] of conversation 0 have no speaker"):
        processor(conversations=[[{"text": "hi", "speaker": "A"}, {"text": "yo"}]])
    with pytest.raises(ValueError, match="got one conversation"):
        processor(conversations=[{"text": "hi"}])
