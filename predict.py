# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Predicts emotions (and emotion-cause pairs) of SemEval-2024 Task 3 conversations with one or more checkpoints.

    python predict.py --model_name_or_path DIR_OR_REPO [MORE ...] --input_file conversations.json \
        --output_file predictions.json [--video_dir clips/] [--batch_size 8] [--device cpu|cuda] [--dtype float32|bfloat16]

The input is an ECF / SemEval JSON file, with or without labels. The output is the format of `train.py --do_predict`
(each utterance's predicted `emotion` and `emotion_probabilities`, and for emotion-cause checkpoints the conversation's
`emotion-cause_pairs`: a subtask-2 submission). With several checkpoints (all of the same kind and labels), their
emotion probabilities and pair probabilities are averaged (an ensemble) and the first one's pair threshold decodes the
pairs. When the input has labels, the official metrics are logged and written next to the output.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import evaluate
import torch
from tqdm.auto import tqdm

from transformers import AutoModel, AutoProcessor, HfArgumentParser

import ecf
from training.evaluation import ECPE_PAIR_F1, EMOTION_METRIC, ConversationPredictions, pair_records


logger = logging.getLogger(__name__)


@dataclass
class PredictArguments:
    model_name_or_path: list[str] = field(
        metadata={"help": "One or more checkpoints (folders or Hub ids); several are averaged (an ensemble)."}
    )
    input_file: str = field(metadata={"help": "SemEval-2024 Task 3 / ECF JSON conversations; labels optional."})
    output_file: str = field(metadata={"help": "Where to write the predictions (train.py --do_predict's format)."})
    video_dir: str | None = field(
        default=None, metadata={"help": "Folder of the clips (`video_name`, or dia{c}utt{u}.mp4) for video / audio models."}
    )
    batch_size: int = field(default=8, metadata={"help": "Conversations per forward pass."})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"choices": ["cpu", "cuda"]})
    dtype: str = field(default="float32", metadata={"choices": ["float32", "bfloat16"]})


def load_models(args: PredictArguments) -> list[tuple[torch.nn.Module, object]]:
    """(model, processor) of every checkpoint; they must be of one kind (emotion or emotion-cause) with one label set."""
    loaded = []
    for path in args.model_name_or_path:
        model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=getattr(torch, args.dtype))
        loaded.append((model.to(args.device).eval(), AutoProcessor.from_pretrained(path, trust_remote_code=True)))
    first = loaded[0][0]
    for path, (model, _) in zip(args.model_name_or_path, loaded):
        if hasattr(model, "decode_pairs") != hasattr(first, "decode_pairs") or model.config.id2label != first.config.id2label:
            raise ValueError(
                f"{path} ({type(model).__name__}, labels {model.config.id2label}) cannot be averaged with "
                f"{args.model_name_or_path[0]} ({type(first).__name__}, labels {first.config.id2label})."
            )
    return loaded


@torch.no_grad()
def probabilities(model, processor, conversations: list[list[dict]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Emotion probabilities (C, U, labels) and, for emotion-cause models, pair probabilities (C, U, U) of a batch."""
    uses_media = any(modality in model.config.modalities for modality in ("video", "audio"))
    inputs = processor(
        conversations=[[u if uses_media else {k: v for k, v in u.items() if k != "video"} for u in c] for c in conversations]
    )
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    if hasattr(model, "decode_pairs"):
        outputs = model(**inputs)
        return outputs.emotion_logits.float().softmax(-1).cpu(), torch.sigmoid(outputs.cause_logits.float()).cpu()
    utterance_mask = inputs.pop("utterance_mask").bool()
    inputs.pop("speaker_ids")
    logits = model(**{key: value[utterance_mask] for key, value in inputs.items()}).logits.float()
    emotion = logits.new_zeros(*utterance_mask.shape, logits.shape[-1])
    emotion[utterance_mask] = logits.softmax(-1)
    return emotion.cpu(), None


def utterance_inputs(conversations: list[dict], video_dir: str | None) -> list[list[dict]]:
    """ECF records -> the processor's conversations (`text`, `speaker`, `video`)."""
    return [
        [
            {"text": utterance["text"], "speaker": utterance["speaker"], "video": path}
            for utterance, path in zip(conversation["conversation"], paths)
        ]
        for conversation, paths in zip(conversations, ecf.video_paths(conversations, video_dir))
    ]


def predict(args: PredictArguments, conversations: list[dict]) -> tuple[ConversationPredictions, torch.nn.Module]:
    """The ensemble's averaged probabilities as `ConversationPredictions` (log-probabilities and pair logits, which
    `decode_pairs` reads like a single model's logits), and the first model (its labels and pair threshold)."""
    models = load_models(args)
    inputs = utterance_inputs(conversations, args.video_dir)
    num_utterances = max(len(conversation) for conversation in inputs)
    emotion = torch.zeros(len(inputs), num_utterances, models[0][0].config.num_labels)
    cause = torch.zeros(len(inputs), num_utterances, num_utterances)
    progress = tqdm(total=len(models) * len(inputs), desc="conversations", unit="conv")
    for model, processor in models:
        for start in range(0, len(inputs), args.batch_size):
            batch = inputs[start : start + args.batch_size]
            emotion_batch, cause_batch = probabilities(model, processor, batch)
            size = emotion_batch.shape[1]
            emotion[start : start + len(batch), :size] += emotion_batch / len(models)
            if cause_batch is not None:
                cause[start : start + len(batch), :size, :size] += cause_batch / len(models)
            progress.update(len(batch))
    progress.close()
    lengths = torch.tensor([len(conversation) for conversation in inputs])
    return ConversationPredictions(
        conversation_ids=[conversation["conversation_ID"] for conversation in conversations],
        emotion_logits=emotion.log(),
        cause_logits=torch.logit(cause),
        utterance_mask=(torch.arange(num_utterances)[None, :] < lengths[:, None]).long(),
    ), models[0][0]


def score(conversations: list[dict], predicted: list[dict], model) -> dict[str, float]:
    """The official emotion metrics (and the pair metric for emotion-cause models) of a labelled input."""
    def label_ids(records):
        return [model.config.label2id[u["emotion"]] for c in records for u in c["conversation"]]

    scores = evaluate.load(EMOTION_METRIC).compute(predictions=label_ids(predicted), references=label_ids(conversations))
    if hasattr(model, "decode_pairs"):
        pair_scores = evaluate.load(ECPE_PAIR_F1).compute(predictions=pair_records(predicted), references=pair_records(conversations))
        scores.update({f"pair_{name}": value for name, value in pair_scores.items()})
    return scores


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    (args,) = HfArgumentParser(PredictArguments).parse_args_into_dataclasses(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stdout)
    # Empty transcripts are masked, as train.py --do_predict masks them.
    conversations = ecf.load_conversations(args.input_file, require_labels=False, allow_empty_text=True)
    if args.video_dir is not None:
        names, missing = ecf.missing_clips(conversations, args.video_dir)
        if missing:
            logger.warning(
                f"{len(missing)} of the {len(names)} clips are not in {args.video_dir}, their utterances run without "
                f"video and audio: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}"
            )
    predictions, model = predict(args, conversations)
    mask = predictions.utterance_mask.bool()
    pairs = model.decode_pairs(predictions.emotion_logits, predictions.cause_logits, mask) if hasattr(model, "decode_pairs") else None
    ecf.write_predictions(
        args.output_file, conversations, predictions.emotion_predictions(), pair_predictions=pairs,
        probabilities=predictions.emotion_logits.exp()[mask].tolist(),
    )
    logger.info(f"Predictions of {len(conversations)} conversations written to {args.output_file}")
    if not all("emotion" in u for c in conversations for u in c["conversation"]):
        return None
    with open(args.output_file) as file:
        scores = score(conversations, json.load(file), model)
    path = os.path.splitext(args.output_file)[0] + "_metrics.json"
    with open(path, "w") as file:
        json.dump(scores, file, indent=2)
    logger.info(f"Scores (written to {path}): {json.dumps({k: v for k, v in scores.items() if isinstance(v, float)})}")
    return scores


if __name__ == "__main__":
    main()
