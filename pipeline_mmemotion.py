# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""The `emotion-cause-extraction` pipeline, shipped as remote code with every MMEmotion checkpoint.

    from transformers import pipeline

    extractor = pipeline("emotion-cause-extraction", model="path/or/repo", trust_remote_code=True)
    extractor([{"text": "You got the job!", "speaker": "Monica", "video": "dia1utt1.mp4"}, ...])

One conversation (a list of utterance dicts `{"text", "speaker", "video"?, "audio"?}`) gives one list with a dict per
utterance, in order: `emotion`, `score` (its probability), `scores` (every label's probability) and, for an
emotion-cause checkpoint (`MMEmotionForEmotionCauseExtraction`), `causes` (the 1-based positions of its cause
utterances, ECF's `utterance_ID` numbering) with `cause_scores` (their probabilities, same order; both empty for a
neutral utterance). A list of conversations gives one such list per conversation.
"""

import torch

from transformers import Pipeline


TASK = "emotion-cause-extraction"


def _is_conversation(inputs) -> bool:
    return isinstance(inputs, (list, tuple)) and len(inputs) > 0 and isinstance(inputs[0], dict)


class EmotionCauseExtractionPipeline(Pipeline):
    """Emotions (and emotion-cause pairs for joint checkpoints) of the utterances of conversations."""

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    @property
    def predicts_causes(self) -> bool:
        return hasattr(self.model, "decode_pairs")

    def _sanitize_parameters(self, threshold: float | None = None, **kwargs):
        return {}, {}, {"threshold": threshold}

    def __call__(self, inputs, **kwargs):
        """
        Args:
            inputs (`list[dict]` or `list[list[dict]]`):
                One conversation (a list of utterance dicts `{"text", "speaker", "video"?, "audio"?}`, `video` and
                `audio` a file path or decoded frames / waveform) or a list of them.
            threshold (`float`, *optional*):
                Cause probability from which a candidate pair is kept (joint checkpoints); defaults to the checkpoint's
                tuned `config.cause_threshold`.

        Returns:
            One list of utterance dicts per conversation (just the list for a single conversation).
        """
        if _is_conversation(inputs):
            return super().__call__([inputs], **kwargs)[0]
        if not isinstance(inputs, (list, tuple)) or not all(_is_conversation(conversation) for conversation in inputs):
            raise ValueError(
                "Pass one conversation (a non-empty list of utterance dicts with a \"text\") or a list of them."
            )
        return super().__call__(list(inputs), **kwargs)

    def preprocess(self, conversation):
        # `conversations=` checks the utterances and reads the media, for both models.
        inputs = self.processor(conversations=[conversation], return_tensors="pt")
        if self.predicts_causes:
            return inputs
        # The utterance model takes the utterances flat.
        return {key: value[0] for key, value in inputs.items() if key not in ("utterance_mask", "speaker_ids")}

    def _forward(self, model_inputs):
        outputs = self.model(**model_inputs)
        if self.predicts_causes:
            return {
                "emotion_logits": outputs.emotion_logits,
                "cause_logits": outputs.cause_logits,
                "utterance_mask": model_inputs["utterance_mask"],
            }
        return {"emotion_logits": outputs.logits[None]}

    def postprocess(self, model_outputs, threshold: float | None = None):
        emotion_logits = model_outputs["emotion_logits"].float()
        probabilities = emotion_logits.softmax(dim=-1)[0]
        id2label = self.model.config.id2label
        utterances = []
        for utterance_probabilities in probabilities.tolist():
            label_id = max(range(len(utterance_probabilities)), key=utterance_probabilities.__getitem__)
            utterances.append(
                {
                    "emotion": id2label[label_id],
                    "score": utterance_probabilities[label_id],
                    "scores": {id2label[index]: score for index, score in enumerate(utterance_probabilities)},
                }
            )
        if self.predicts_causes:
            cause_logits = model_outputs["cause_logits"].float()
            pairs = self.model.decode_pairs(emotion_logits, cause_logits, model_outputs["utterance_mask"], threshold=threshold)[0]
            cause_probabilities = torch.sigmoid(cause_logits[0])
            for utterance in utterances:
                utterance["causes"], utterance["cause_scores"] = [], []
            for emotion_index, cause_index in pairs:
                utterances[emotion_index]["causes"].append(cause_index + 1)
                utterances[emotion_index]["cause_scores"].append(cause_probabilities[emotion_index, cause_index].item())
        return utterances


def pipeline_config_entry() -> dict:
    """The checkpoint config's `custom_pipelines` entry for this pipeline (what `pipeline(...)` reads)."""
    return {TASK: {"impl": f"pipeline_mmemotion.{EmotionCauseExtractionPipeline.__name__}", "pt": ["AutoModel"], "type": "multimodal"}}


__all__ = ["EmotionCauseExtractionPipeline", "pipeline_config_entry"]
