"""The text encoder reads each utterance with its conversation: the processor's context window (target marking, speaker
prefixes, truncation from the far context), cached context features against live ones, and a synthetic set whose label
is in the previous utterance, which a context model learns and a per-utterance one cannot."""

import json
import os
import random

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import ecf
import train
from configuration_mmemotion import MMEmotionConfig
from modeling_mmemotion import MMEmotionForEmotionClassification
from processing_mmemotion import MMEmotionProcessor
from training.features import FeatureCache, UtteranceCollator, tokenize_utterances
from test_train import CUE_WORDS, FILLERS


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "presets", "tiny")
TEXTS = ["hi there", "how are you doing today", "fine thanks and you", "great"]
SPEAKERS = ["Ross", "Rachel", "Ross", "Joey"]


@pytest.fixture(scope="module")
def bert_tokenizer():
    return MMEmotionProcessor.from_pretrained(TINY).tokenizer


def llama_like_tokenizer():
    """A word-level tokenizer that, like LLaMA's, only puts `<s>` before a text and has no separator token."""
    words = sorted({word for text in TEXTS + SPEAKERS for word in text.lower().split()} | {":"})
    vocab = {"<pad>": 0, "<s>": 1, "<unk>": 2, **{word: index + 3 for index, word in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>", unk_token="<unk>")


def decoded_rows(processor, encoding):
    """(all tokens, target tokens) of each row, as token strings without padding."""
    rows = []
    for ids, attention, target in zip(encoding["input_ids"], encoding["attention_mask"], encoding["text_target_mask"]):
        tokens = processor.tokenizer.convert_ids_to_tokens([i for i, a in zip(ids, attention) if a])
        targets = processor.tokenizer.convert_ids_to_tokens([i for i, t in zip(ids, target) if t])
        rows.append((tokens, targets))
    return rows


def test_window_marks_the_target_with_speakers_first_and_last_utterances(bert_tokenizer):
    processor = MMEmotionProcessor(tokenizer=bert_tokenizer, context_past=1, context_future=1)
    encoding = processor.encode_conversation(TEXTS, SPEAKERS, return_tensors=None)
    rows = decoded_rows(processor, encoding)
    for (tokens, targets), text in zip(rows, TEXTS):
        assert targets == bert_tokenizer.tokenize(text)
    # The first utterance: no past; the target between the separators, then the next one with its speaker.
    assert rows[0][0] == ["[CLS]", "[SEP]", "ross", ":", "hi", "there", "[SEP]", "rachel", ":", "how", "are", "you", "doing", "today", "[SEP]"]
    assert rows[1][0][:6] == ["[CLS]", "ross", ":", "hi", "there", "[SEP]"]
    # The last utterance: no future.
    assert rows[3][0][-7:] == ["you", "[SEP]", "joey", ":", "great", "[SEP]", "[SEP]"]
    # Padded to the longest window, the target mask too; every row is padded with 0s there.
    lengths = {len(ids) for ids in encoding["input_ids"]} | {len(mask) for mask in encoding["text_target_mask"]}
    assert len(lengths) == 1
    assert all(t <= a for ids, a_row, t_row in zip(encoding["input_ids"], encoding["attention_mask"], encoding["text_target_mask"]) for a, t in zip(a_row, t_row))

    without_speakers = MMEmotionProcessor(tokenizer=bert_tokenizer, context_past=1, context_speakers=False)
    tokens, targets = decoded_rows(without_speakers, without_speakers.encode_conversation(TEXTS, SPEAKERS, return_tensors=None))[1]
    assert tokens == ["[CLS]", "hi", "there", "[SEP]", "how", "are", "you", "doing", "today", "[SEP]", "[SEP]"]


def test_one_utterance_conversation_and_empty_transcripts(bert_tokenizer, caplog):
    processor = MMEmotionProcessor(tokenizer=bert_tokenizer, context_past=2, context_future=2)
    tokens, targets = decoded_rows(processor, processor.encode_conversation(["great"], ["Joey"], return_tensors=None))[0]
    assert tokens == ["[CLS]", "[SEP]", "joey", ":", "great", "[SEP]", "[SEP]"] and targets == ["great"]

    encoding = processor.encode_conversation(["hi there", "  ", "great"], SPEAKERS[:3], return_tensors="pt")
    assert encoding["text_mask"].tolist() == [1, 0, 1]
    assert encoding["text_target_mask"][1].sum() == 0  # nothing to pool: the model uses its missing-text vector
    rows = decoded_rows(processor, {k: v.tolist() for k, v in encoding.items()})
    assert "rachel" not in rows[0][0] and "rachel" not in rows[2][0]  # an empty neighbour is left out


def test_truncation_cuts_the_far_context_first_never_the_target(bert_tokenizer):
    processor = MMEmotionProcessor(tokenizer=bert_tokenizer, context_past=2, context_future=1)
    # [CLS] + 2 [SEP] + target "ross : fine thanks and you" (6) + [SEP] = 10: 4 tokens of context fit in 14.
    encoding = processor.encode_conversation(TEXTS, SPEAKERS, max_length=14, return_tensors=None)
    tokens, targets = decoded_rows(processor, encoding)[2]
    assert len(tokens) == 14 and targets == ["fine", "thanks", "and", "you"]
    # The nearest past utterance loses its far beginning; the farther one and the future one do not fit.
    assert tokens == ["[CLS]", "are", "you", "doing", "today", "[SEP]", "ross", ":", "fine", "thanks", "and", "you", "[SEP]", "[SEP]"]
    # A target longer than the budget keeps its beginning, like the per-utterance tokenization.
    tokens, targets = decoded_rows(processor, processor.encode_conversation(TEXTS, SPEAKERS, max_length=6, return_tensors=None))[1]
    assert tokens == ["[CLS]", "[SEP]", "how", "are", "[SEP]", "[SEP]"] and targets == ["how", "are"]
    assert all(len(ids) <= 14 for ids in encoding["input_ids"])


def test_sizes_zero_is_the_per_utterance_tokenization(bert_tokenizer):
    processor = MMEmotionProcessor(tokenizer=bert_tokenizer)
    for kwargs in ({"return_tensors": None}, {"return_tensors": None, "padding": False, "max_length": 4}):
        ours = processor.encode_conversation(TEXTS, SPEAKERS, **kwargs)
        reference = processor(text=TEXTS, **kwargs)
        assert set(ours) == set(reference) == {"input_ids", "attention_mask", "text_mask"}
        for name in ("input_ids", "attention_mask"):
            assert list(ours[name]) == list(reference[name])
        assert ours["text_mask"].tolist() == reference["text_mask"].tolist()
    torch.testing.assert_close(dict(processor.encode_conversation(TEXTS, SPEAKERS)), dict(processor(text=TEXTS)))


def test_llama_like_tokenizer_without_separator():
    processor = MMEmotionProcessor(tokenizer=llama_like_tokenizer(), context_past=1, context_future=1)
    tokens, targets = decoded_rows(processor, processor.encode_conversation(TEXTS, SPEAKERS, return_tensors=None))[1]
    assert tokens == ["<s>", "ross", ":", "hi", "there", "rachel", ":", "how", "are", "you", "doing", "today", "ross", ":", "fine", "thanks", "and", "you"]
    assert targets == ["how", "are", "you", "doing", "today"]


def test_context_settings_are_saved_with_the_processor(bert_tokenizer, tmp_path):
    MMEmotionProcessor(tokenizer=bert_tokenizer, context_past=3, context_future=1, context_speakers=False).save_pretrained(tmp_path)
    with open(tmp_path / "processor_config.json") as file:
        saved = json.load(file)
    assert (saved["context_past"], saved["context_future"], saved["context_speakers"]) == (3, 1, False)
    reloaded = MMEmotionProcessor.from_pretrained(tmp_path)
    assert (reloaded.context_past, reloaded.context_future, reloaded.context_speakers) == (3, 1, False)


def test_cached_context_features_equal_live_ones(tmp_path):
    torch.manual_seed(0)
    config = MMEmotionConfig.from_pretrained(TINY, modalities=["text"], text_embedding="last_hidden_state", pooling="attention")
    model = MMEmotionForEmotionClassification(config).eval()
    processor = MMEmotionProcessor.from_pretrained(TINY)
    processor.context_past, processor.context_future = 2, 1
    conversations = [
        {"conversation_ID": 1, "conversation": [{"utterance_ID": i + 1, "text": t, "speaker": s, "emotion": "joy"} for i, (t, s) in enumerate(zip(TEXTS, SPEAKERS))]},
        {"conversation_ID": 2, "conversation": [{"utterance_ID": 1, "text": "", "speaker": "Ross", "emotion": "neutral"}, {"utterance_ID": 2, "text": "great", "speaker": "Joey", "emotion": "joy"}]},
    ]
    dataset = tokenize_utterances(ecf.conversations_to_utterance_dataset(conversations), processor, max_length=12)
    assert "text_target_mask" in dataset.column_names
    cached = FeatureCache(model, processor, ["text"], str(tmp_path / "cache"), batch_size=4).add_features(dataset, "validation")
    # Only the target tokens' states are kept.
    assert [len(row["text_features"]) for row in cached] == [sum(mask) for mask in dataset["text_target_mask"]]
    rows = [cached[index] for index in range(len(cached))]
    cached_batch = UtteranceCollator(processor, ["text"], ["text"])(rows)
    live_batch = UtteranceCollator(processor, ["text"], [])(rows)
    assert "text_target_mask" in live_batch and "text_features" in cached_batch
    with torch.no_grad():
        live = model(**live_batch).logits
        torch.testing.assert_close(model(**cached_batch).logits, live, atol=1e-5, rtol=1e-5)
        # Pooling reads only the target: the window's other tokens change the logits only through the encoder.
        assert not torch.allclose(model(**{**live_batch, "text_target_mask": None}).logits, live)


def previous_utterance_conversations(path, num_conversations, seed):
    """Conversations whose utterances each hold one cue word among fillers; an utterance's emotion is the one of the
    cue word of the PREVIOUS utterance (neutral for the first): its own words say nothing about it."""
    rng = random.Random(seed)
    emotions = ["joy", "sadness", "anger"]
    conversations = []
    for conversation_id in range(1, num_conversations + 1):
        cues = [rng.choice(emotions) for _ in range(rng.randint(3, 6))]
        utterances = []
        for index, cue in enumerate(cues):
            words = rng.sample(FILLERS, 3)
            words.insert(rng.randint(0, 3), CUE_WORDS[cue])
            emotion = "neutral" if index == 0 else cues[index - 1]
            utterances.append({"utterance_ID": index + 1, "text": " ".join(words), "speaker": rng.choice(["Ross", "Rachel"]), "emotion": emotion})
        conversations.append({"conversation_ID": conversation_id, "conversation": utterances, "emotion-cause_pairs": []})
    with open(path, "w") as file:
        json.dump(conversations, file)
    return str(path)


def train_tiny_text_model(train_file, validation_file, output_dir, cache_dir, *flags):
    """train.py on the tiny preset's text branch, fully fine-tuned; returns the validation accuracy."""
    train.main(
        [
            "--config_name", "tiny", "--modalities", "text", "--text_embedding", "last_hidden_state",
            "--config_overrides", "freeze_text_encoder=false", *flags,
            "--train_file", train_file, "--validation_file", validation_file, "--do_train", "--do_eval",
            "--num_train_epochs", "20", "--learning_rate", "3e-3", "--per_device_train_batch_size", "16",
            "--max_seq_length", "32", "--seed", "0", "--output_dir", str(output_dir), "--disable_tqdm", "true",
            "--save_strategy", "no", "--load_best_model_at_end", "false", "--feature_cache_dir", str(cache_dir),
        ]
    )
    with open(output_dir / "eval_results.json") as file:
        return json.load(file)["eval_accuracy"]


def test_context_model_learns_a_label_in_the_previous_utterance(tmp_path):
    train_file = previous_utterance_conversations(tmp_path / "train.json", 80, seed=0)
    validation_file = previous_utterance_conversations(tmp_path / "validation.json", 20, seed=1)
    accuracies = {}
    for past in (0, 1):
        output_dir = tmp_path / f"past{past}"
        accuracies[past] = train_tiny_text_model(
            train_file, validation_file, output_dir, tmp_path / "cache", "--text_context_past", str(past)
        )
        with open(output_dir / "config.json") as file:
            assert json.load(file)["text_context_past"] == past
    # The utterance alone is chance among three emotions for all but the first utterances.
    assert accuracies[0] < 0.5
    assert accuracies[1] > 0.9, accuracies
    with open(tmp_path / "past1" / "processor_config.json") as file:
        assert json.load(file)["context_past"] == 1


def speaker_label_conversations(path, num_conversations, seed):
    """Conversations of filler words whose emotion is given by the speaker alone (Ross joy, Rachel sadness, Joey
    anger): learnable only from the speaker prefix."""
    rng = random.Random(seed)
    emotions = {"Ross": "joy", "Rachel": "sadness", "Joey": "anger"}
    conversations = []
    for conversation_id in range(1, num_conversations + 1):
        speakers = [rng.choice(list(emotions)) for _ in range(rng.randint(3, 6))]
        utterances = [
            {"utterance_ID": index + 1, "text": " ".join(rng.sample(FILLERS, 4)), "speaker": speaker, "emotion": emotions[speaker]}
            for index, speaker in enumerate(speakers)
        ]
        conversations.append({"conversation_ID": conversation_id, "conversation": utterances, "emotion-cause_pairs": []})
    with open(path, "w") as file:
        json.dump(conversations, file)
    return str(path)


def test_text_context_speakers_flag_decides_whether_the_model_reads_speakers(tmp_path):
    train_file = speaker_label_conversations(tmp_path / "train.json", 80, seed=0)
    validation_file = speaker_label_conversations(tmp_path / "validation.json", 20, seed=1)
    accuracies = {}
    for speakers in ("true", "false"):
        output_dir = tmp_path / f"speakers-{speakers}"
        accuracies[speakers] = train_tiny_text_model(
            train_file, validation_file, output_dir, tmp_path / "cache",
            "--text_context_past", "1", "--text_context_speakers", speakers,
        )
        with open(output_dir / "config.json") as file:
            assert json.load(file)["text_context_speakers"] is (speakers == "true")
        # The saved processor reads new conversations as training did.
        processor = MMEmotionProcessor.from_pretrained(output_dir)
        tokens = processor.tokenizer.convert_ids_to_tokens(processor.encode_conversation(["so i", "you know"], ["Ross", "Joey"], return_tensors=None)["input_ids"][1])
        assert ("ross" in tokens and "joey" in tokens) is (speakers == "true"), tokens
        with open(output_dir / "README.md") as file:
            assert ("each prefixed by its speaker" if speakers == "true" else "without speaker names") in file.read()
    assert accuracies["true"] > 0.9, accuracies
    assert accuracies["false"] < 0.6, accuracies


def test_text_context_speakers_that_is_not_a_bool_is_an_error():
    # `--config_overrides text_context_speakers=yes` reads "yes" as a string, which would silently mean true.
    with pytest.raises(ValueError, match="`text_context_speakers` must be true or false, got 'yes'"):
        MMEmotionConfig(text_context_speakers="yes")
