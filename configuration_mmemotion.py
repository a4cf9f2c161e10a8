# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""MMEmotion configuration: VideoLLaMA encoders + fusion heads for emotion recognition in conversations."""

from typing import Literal

import transformers
from packaging import version


# Checked before the imports below: on older releases they fail deep inside transformers' dynamic-module loader.
MINIMUM_TRANSFORMERS_VERSION = "5.21.0"
if version.parse(transformers.__version__) < version.parse(MINIMUM_TRANSFORMERS_VERSION):
    raise ImportError(
        f"MMEmotion's remote code needs transformers>={MINIMUM_TRANSFORMERS_VERSION} (found {transformers.__version__}): "
        f'pip install -U "transformers>={MINIMUM_TRANSFORMERS_VERSION},<6"'
    )

from transformers import AutoConfig, Blip2QFormerConfig, Blip2VisionConfig, PreTrainedConfig  # noqa: E402
from transformers.configuration_utils import SubConfigSpec  # noqa: E402
from transformers.utils import logging  # noqa: E402


logger = logging.get_logger(__name__)

ECF_EMOTIONS = ("neutral", "anger", "disgust", "fear", "joy", "sadness", "surprise")
MODALITIES = ("text", "video", "audio")

# LLaMA-2-13B, the text model of the seed experiments (VideoLLaMA's 13B checkpoints).
LLAMA_2_13B = {
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "pad_token_id": 0,
}


class MMEmotionVideoConfig(PreTrainedConfig):
    r"""
    Configuration of the VideoLLaMA (v1) video branch: EVA ViT-g -> BLIP-2 Q-Former -> frame position embedding ->
    video Q-Former -> projection to the LLM width. The defaults are VideoLLaMA's.

    Args:
        vision_config (`dict` or `Blip2VisionConfig`, *optional*):
            The frame encoder (EVA ViT-g/14 as in BLIP-2: 39 layers, width 1408, patch 14, 224x224 frames).
        qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
            The frozen BLIP-2 Q-Former (12 layers, width 768, cross-attention every 2nd layer). Its
            `encoder_hidden_size` is set to the vision width.
        num_query_tokens (`int`, *optional*, defaults to 32):
            Learned queries of the BLIP-2 Q-Former (tokens per frame).
        video_qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
            The video Q-Former (2 layers, cross-attention in every layer). Its `encoder_hidden_size` is set to the
            BLIP-2 Q-Former width.
        num_video_query_tokens (`int`, *optional*, defaults to 32):
            Learned queries of the video Q-Former: the number of tokens the branch outputs per clip.
        max_frame_positions (`int`, *optional*, defaults to 32):
            Size of the frame position embedding, so the largest number of frames per clip.
        llm_hidden_size (`int`, *optional*, defaults to 5120):
            Output width of `llama_proj`: the width of the LLaMA the branch was trained for (4096 for 7B, 5120 for 13B).
    """

    model_type = "mmemotion_video"
    base_config_key = "video_config"
    sub_configs_defaults = {
        "vision_config": Blip2VisionConfig,
        "qformer_config": Blip2QFormerConfig,
        "video_qformer_config": SubConfigSpec(
            config_class=Blip2QFormerConfig, init_kwargs={"num_hidden_layers": 2, "cross_attention_frequency": 1}
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    video_qformer_config: dict | PreTrainedConfig | None = None
    num_video_query_tokens: int = 32
    max_frame_positions: int = 32
    llm_hidden_size: int = 5120

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        self.video_qformer_config.encoder_hidden_size = self.qformer_config.hidden_size


class MMEmotionAudioConfig(PreTrainedConfig):
    r"""
    Configuration of the VideoLLaMA (v1) audio branch: the ImageBind-Huge audio encoder applied to each 2-second clip
    -> clip position embedding -> audio Q-Former -> projection to the LLM width. The defaults are VideoLLaMA's.

    Args:
        num_mel_bins (`int`, *optional*, defaults to 128):
            Mel bins of the input filterbank (its height).
        target_length (`int`, *optional*, defaults to 204):
            Filterbank frames per clip (its width).
        patch_size (`int`, *optional*, defaults to 16):
            Kernel of the patch convolution.
        patch_stride (`int`, *optional*, defaults to 10):
            Stride of the patch convolution (ImageBind's overlapping audio patches: 12 x 19 = 228 patches).
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the audio transformer.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of pre-norm transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Attention heads per block.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            MLP width as a multiple of `hidden_size`.
        output_size (`int`, *optional*, defaults to 1024):
            Width of the embedding of one clip (ImageBind's shared embedding width).
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of every layer norm of the encoder.
        normalize_output (`bool`, *optional*, defaults to `True`):
            Whether the clip embedding is L2-normalised, as ImageBind's audio post-processor does (its x20 logit scale
            only matters for contrastive scores and is not applied).
        audio_qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
            The audio Q-Former (2 layers, cross-attention in every layer). Its `encoder_hidden_size` is set to
            `output_size`.
        num_audio_query_tokens (`int`, *optional*, defaults to 8):
            Learned queries of the audio Q-Former: the number of tokens the branch outputs per utterance.
        max_clip_positions (`int`, *optional*, defaults to 8):
            Size of the clip position embedding, so the largest number of audio clips per utterance.
        llm_hidden_size (`int`, *optional*, defaults to 5120):
            Output width of `audio_llama_proj` (4096 for the 7B checkpoints, 5120 for 13B).
    """

    model_type = "mmemotion_audio"
    base_config_key = "audio_config"
    sub_configs_defaults = {
        "audio_qformer_config": SubConfigSpec(
            config_class=Blip2QFormerConfig, init_kwargs={"num_hidden_layers": 2, "cross_attention_frequency": 1}
        ),
    }

    num_mel_bins: int = 128
    target_length: int = 204
    patch_size: int = 16
    patch_stride: int = 10
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4.0
    output_size: int = 1024
    layer_norm_eps: float = 1e-6
    normalize_output: bool = True
    audio_qformer_config: dict | PreTrainedConfig | None = None
    num_audio_query_tokens: int = 8
    max_clip_positions: int = 8
    llm_hidden_size: int = 5120

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.audio_qformer_config.encoder_hidden_size = self.output_size

    @property
    def num_patches(self) -> int:
        """Patches per clip: the patch-convolution output grid (12 x 19 for 128 x 204)."""
        rows = (self.num_mel_bins - self.patch_size) // self.patch_stride + 1
        columns = (self.target_length - self.patch_size) // self.patch_stride + 1
        return rows * columns


class MMEmotionConfig(PreTrainedConfig):
    r"""
    Configuration of an MMEmotion model: per-utterance text, video and audio encoders (VideoLLaMA's), a pooled
    projection per modality, fusion by concatenation, and task heads (utterance emotion classification, or
    conversation-level emotion-cause pair extraction).

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Any transformers text model config. Defaults to LLaMA-2-13B, whose input embeddings are VideoLLaMA's text
            embeddings.
        video_config (`dict` or `MMEmotionVideoConfig`, *optional*):
            The VideoLLaMA video branch. Defaults to VideoLLaMA's sizes.
        audio_config (`dict` or `MMEmotionAudioConfig`, *optional*):
            The VideoLLaMA audio branch. Defaults to VideoLLaMA's sizes.
        modalities (`list[str]`, *optional*, defaults to `["text", "video", "audio"]`):
            The branches the model has, in fusion order. A branch not listed has its sub-config set to `None` (saved
            as `null`), so the model has no weights for it.
        text_embedding (`str`, *optional*, defaults to `"input_embeddings"`):
            `"input_embeddings"`: the text model's token embeddings only (VideoLLaMA's text embeddings: no
            transformer layer is built). `"last_hidden_state"`: the text model's contextual last hidden state.
        text_context_past (`int`, *optional*, defaults to 0):
            Utterances before the target that the text encoder reads with it (prefixed by their speakers); the
            processor builds the window (`MMEmotionProcessor.context_past`) and pooling reads only the target's tokens.
            Context only helps a contextual encoder (`text_embedding="last_hidden_state"`).
        text_context_future (`int`, *optional*, defaults to 0):
            Utterances after the target read with it (`MMEmotionProcessor.context_future`).
        text_context_speakers (`bool`, *optional*, defaults to `True`):
            Whether every utterance of a context window is prefixed by its speaker (`Ross: ...`;
            `MMEmotionProcessor.context_speakers`). Without a window, utterances are read without speakers.
        freeze_text_encoder (`bool`, *optional*, defaults to `True`):
            Whether the text branch is frozen (no gradient, no optimizer state, eval mode while the heads train).
        freeze_video_encoder (`bool`, *optional*, defaults to `True`):
            Whether the video branch is frozen.
        freeze_audio_encoder (`bool`, *optional*, defaults to `True`):
            Whether the audio branch is frozen.
        pooling (`str`, *optional*, defaults to `"attention"`):
            How each modality's token sequence becomes one vector, honouring padding: `"mean"` (seed experiment 0)
            or `"attention"` (additive attention pooling, seed experiments 1+).
        feature_norm (`bool`, *optional*, defaults to `True`):
            Whether each modality's encoder features go through a layer norm before the projection. The seed's
            experiments had none (their presets set it to `False`); frozen features of very small scale, such as LLaMA
            input embeddings, need it for the head to learn.
        projection_size (`int`, *optional*, defaults to 512):
            Width of the per-modality projection applied before pooling.
        attention_size (`int`, *optional*, defaults to 128):
            Width of the scoring layer of attention pooling.
        classifier_hidden_size (`int`, *optional*, defaults to 512):
            Width of the hidden layer of the emotion classification head.
        classifier_dropout (`float`, *optional*, defaults to 0.3):
            Dropout of the heads.
        class_weights (`list[float]`, *optional*):
            Per-class weights of the emotion cross-entropy (for example inverse label frequencies).
        neutral_logit_offset (`float`, *optional*, defaults to 0.0):
            Added to the `"neutral"` emotion logit by both task models (in training too), so that below 0 fewer
            utterances are predicted neutral (and, in the emotion-cause model, more of them get cause pairs). A model
            trained with cross-entropy predicts neutral at about its training rate; train.py sets this offset on the
            validation conversations after training, when the tuned offset also wins on held-out folds of them.
        context_encoder (`str`, *optional*, defaults to `"bilstm"`):
            Conversation encoder of the emotion-cause model: `"bilstm"` (as the seed's joint model) or
            `"transformer"`.
        context_hidden_size (`int`, *optional*, defaults to 256):
            Width of the context-aware utterance states (both LSTM directions together).
        context_num_layers (`int`, *optional*, defaults to 1):
            Layers of the conversation encoder.
        context_num_heads (`int`, *optional*, defaults to 4):
            Attention heads of the transformer conversation encoder.
        emotion_head_input (`str`, *optional*, defaults to `"utterance_states"`):
            What the emotion head of the emotion-cause model reads: `"utterance_states"`, the conversation encoder's
            context-aware states (head `emotion_classifier`), or `"utterance_embeds"`, the fused utterance vectors
            (head `classifier`, the emotion classification model's own, so the head of an emotion checkpoint loads
            into it). The conversation encoder feeds the pair scorer either way.
        max_speakers (`int`, *optional*, defaults to 16):
            Number of speaker embeddings (speakers are numbered per conversation in order of appearance; later ones
            share the last embedding).
        cause_window (`int`, *optional*, defaults to 8):
            Largest distance between an emotion utterance and a candidate cause utterance (in both directions).
        cause_threshold (`float`, *optional*, defaults to 0.5):
            Probability a pair needs to be predicted; tuned on the validation set by the training script.
        emotion_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the emotion cross-entropy in the joint loss.
        cause_loss_weight (`float`, *optional*, defaults to 1.0):
            Weight of the pair loss in the joint loss.
        cause_positive_weight (`float`, *optional*):
            Weight of the positive pairs in the pair loss (positives are rare). `None` weighs each batch by its ratio
            of negatives to positives.
        num_labels (`int`, *optional*, defaults to 7):
            Number of emotion classes; `id2label` defaults to the ECF emotions. Labels of your own are given as
            `id2label` (`label2id` follows from it); the emotion-cause model needs one of them to be `"neutral"`, the
            emotion without causes.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the initialisation of new weights: the fusion, the heads, the ImageBind audio encoder,
            the branches' position embeddings and projections. The BLIP-2 vision model and Q-Formers (and their query
            tokens) use their own configs' `initializer_range`.

    Example:

    ```python
    >>> from configuration_mmemotion import MMEmotionConfig

    >>> # The seed's experiment 1: text + video, attention pooling
    >>> config = MMEmotionConfig(modalities=["text", "video"], pooling="attention", projection_size=512)
    ```
    """

    model_type = "mmemotion"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", optional=True),
        "video_config": SubConfigSpec(config_class=MMEmotionVideoConfig, optional=True),
        "audio_config": SubConfigSpec(config_class=MMEmotionAudioConfig, optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    video_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    modalities: list[str] | tuple[str, ...] = MODALITIES
    text_embedding: Literal["input_embeddings", "last_hidden_state"] = "input_embeddings"
    text_context_past: int = 0
    text_context_future: int = 0
    text_context_speakers: bool = True
    freeze_text_encoder: bool = True
    freeze_video_encoder: bool = True
    freeze_audio_encoder: bool = True
    pooling: Literal["mean", "attention"] = "attention"
    feature_norm: bool = True
    projection_size: int = 512
    attention_size: int = 128
    classifier_hidden_size: int = 512
    classifier_dropout: float = 0.3
    class_weights: list[float] | None = None
    neutral_logit_offset: float = 0.0
    context_encoder: Literal["bilstm", "transformer"] = "bilstm"
    context_hidden_size: int = 256
    context_num_layers: int = 1
    context_num_heads: int = 4
    emotion_head_input: Literal["utterance_states", "utterance_embeds"] = "utterance_states"
    max_speakers: int = 16
    cause_window: int = 8
    cause_threshold: float = 0.5
    emotion_loss_weight: float = 1.0
    cause_loss_weight: float = 1.0
    cause_positive_weight: float | None = None
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.modalities = list(self.modalities)
        unknown = [modality for modality in self.modalities if modality not in MODALITIES]
        if unknown or not self.modalities or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"`modalities` must be distinct names among {MODALITIES}, got {self.modalities}.")
        for modality in MODALITIES:
            key = f"{modality}_config"
            if modality not in self.modalities:
                setattr(self, key, None)
            elif getattr(self, key) is None:
                setattr(self, key, dict(LLAMA_2_13B) if modality == "text" else {})
        # `id2label` and `label2id` are fields; `num_labels` only sizes generic labels when there is no `id2label`.
        if self.id2label is None and kwargs.get("num_labels", len(ECF_EMOTIONS)) == len(ECF_EMOTIONS):
            self.id2label = dict(enumerate(ECF_EMOTIONS))
        if self.id2label is not None and self.label2id is None:
            self.label2id = {label: int(index) for index, label in self.id2label.items()}
        super().__post_init__(**kwargs)
        if self.text_embedding not in ("input_embeddings", "last_hidden_state"):
            raise ValueError(f"`text_embedding` must be 'input_embeddings' or 'last_hidden_state', got {self.text_embedding!r}.")
        if self.text_context_past < 0 or self.text_context_future < 0:
            raise ValueError(
                f"`text_context_past` and `text_context_future` must be >= 0, got {self.text_context_past} and "
                f"{self.text_context_future}."
            )
        if not isinstance(self.text_context_speakers, bool):
            raise ValueError(f"`text_context_speakers` must be true or false, got {self.text_context_speakers!r}.")
        if self.pooling not in ("mean", "attention"):
            raise ValueError(f"`pooling` must be 'mean' or 'attention', got {self.pooling!r}.")
        if self.context_encoder not in ("bilstm", "transformer"):
            raise ValueError(f"`context_encoder` must be 'bilstm' or 'transformer', got {self.context_encoder!r}.")
        if self.emotion_head_input not in ("utterance_states", "utterance_embeds"):
            raise ValueError(
                f"`emotion_head_input` must be 'utterance_states' or 'utterance_embeds', got {self.emotion_head_input!r}."
            )
        if isinstance(self.neutral_logit_offset, bool) or not isinstance(self.neutral_logit_offset, (int, float)):
            raise ValueError(f"`neutral_logit_offset` must be a number, got {self.neutral_logit_offset!r}.")
        if self.neutral_logit_offset and self.neutral_label_id is None:
            raise ValueError(f"`neutral_logit_offset` is {self.neutral_logit_offset} but no label is 'neutral': {self.id2label}.")
        if self.class_weights is not None and len(self.class_weights) != self.num_labels:
            raise ValueError(f"`class_weights` has {len(self.class_weights)} values for {self.num_labels} labels.")

    @property
    def neutral_label_id(self) -> int | None:
        """Id of the `"neutral"` label (the emotion without causes, whose logit `neutral_logit_offset` moves), or None."""
        return next((int(index) for index, label in self.id2label.items() if label == "neutral"), None)

    def modality_hidden_size(self, modality: str) -> int:
        """Width of the token features the encoder of `modality` outputs (the input width of its projection)."""
        if modality == "text":
            return self.text_config.hidden_size
        return getattr(self, f"{modality}_config").llm_hidden_size


MMEmotionConfig.register_for_auto_class()


__all__ = ["MMEmotionConfig", "MMEmotionVideoConfig", "MMEmotionAudioConfig"]
