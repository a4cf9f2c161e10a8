# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""PyTorch MMEmotion: VideoLLaMA (v1) encoders, masked pooling and fusion heads for emotion recognition in conversations.

Data flow of one utterance (shapes for the default VideoLLaMA-13B sizes):

- video: frames (T, 3, 224, 224) -> EVA ViT-g (`Blip2VisionModel`) -> BLIP-2 Q-Former (32 queries per frame)
  -> + frame position embedding -> video Q-Former over the T*32 tokens (32 queries) -> `llama_proj` -> (32, 5120)
- audio: fbank clips (S, 1, 128, 204) -> ImageBind audio encoder (one 1024-d embedding per clip)
  -> + clip position embedding -> audio Q-Former over the S clips (8 queries) -> `audio_llama_proj` -> (8, 5120)
- text: token ids (L,) -> LLaMA input embeddings (or a text model's last hidden state) -> (L, 5120)

Each modality: Linear(width -> projection_size) then masked mean or attention pooling -> one vector; a modality absent
for an item (no clip, no audio track, empty transcript) is replaced by a learned "missing" vector of that modality;
the vectors are concatenated in `config.modalities` order and fed to the task head.

The emotion-cause model (`MMEmotionForEmotionCauseExtraction`) does this for every utterance of a conversation, then
runs a conversation encoder (BiLSTM or transformer) over the utterance vectors and scores the emotion of each utterance
and every (emotion utterance, candidate cause) pair within `config.cause_window`.
"""

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn

from transformers import AutoModel, Blip2QFormerModel, Blip2VisionModel, PreTrainedModel
from transformers import initialization as init
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_outputs import ModelOutput
from transformers.utils import logging

try:  # loaded as remote code (a package made by transformers) or as part of the `mmemotion` package
    from .configuration_mmemotion import MMEmotionAudioConfig, MMEmotionConfig, MMEmotionVideoConfig
    from .pipeline_mmemotion import EmotionCauseExtractionPipeline, pipeline_config_entry
except ImportError:  # imported as a top-level module from the repository root (train.py, tests)
    from configuration_mmemotion import MMEmotionAudioConfig, MMEmotionConfig, MMEmotionVideoConfig
    from pipeline_mmemotion import EmotionCauseExtractionPipeline, pipeline_config_entry


logger = logging.get_logger(__name__)

# The processor's argument of each modality (the model's messages name it).
PROCESSOR_ARGUMENTS = {"text": "text", "video": "videos", "audio": "audio"}


@dataclass
class MMEmotionModelOutput(ModelOutput):
    r"""
    pooler_output (`torch.FloatTensor` of shape `(batch_size, num_modalities * projection_size)`):
        The fused utterance vector: the pooled vectors of every modality, concatenated in `config.modalities` order.
    modality_embeds (`torch.FloatTensor` of shape `(batch_size, num_modalities, projection_size)`):
        The pooled vector of each modality (the learned "missing" vector where the modality is absent).
    modality_mask (`torch.LongTensor` of shape `(batch_size, num_modalities)`):
        1 where the modality was observed for the item.
    text_features (`torch.FloatTensor` of shape `(batch_size, text_length, text_hidden_size)`, *optional*):
        Output of the text encoder (what a feature cache stores).
    video_features (`torch.FloatTensor` of shape `(batch_size, num_video_query_tokens, llm_hidden_size)`, *optional*):
        Output of the video branch.
    audio_features (`torch.FloatTensor` of shape `(batch_size, num_audio_query_tokens, llm_hidden_size)`, *optional*):
        Output of the audio branch.
    """

    pooler_output: torch.FloatTensor | None = None
    modality_embeds: torch.FloatTensor | None = None
    modality_mask: torch.LongTensor | None = None
    text_features: torch.FloatTensor | None = None
    video_features: torch.FloatTensor | None = None
    audio_features: torch.FloatTensor | None = None


@dataclass
class MMEmotionClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is provided):
        Cross-entropy of the emotion classification.
    logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
        Emotion scores (before softmax).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, num_modalities * projection_size)`):
        The fused utterance vector the head classified.
    modality_mask (`torch.LongTensor` of shape `(batch_size, num_modalities)`):
        1 where the modality was observed for the item.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    modality_mask: torch.LongTensor | None = None


@dataclass
class MMEmotionEmotionCauseOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` or `cause_labels` is provided):
        `emotion_loss_weight` x the emotion cross-entropy + `cause_loss_weight` x the pair binary cross-entropy.
    emotion_logits (`torch.FloatTensor` of shape `(num_conversations, max_utterances, num_labels)`):
        Emotion scores of every utterance, computed from its context-aware state. Rows of padding utterances are
        meaningless.
    cause_logits (`torch.FloatTensor` of shape `(num_conversations, max_utterances, max_utterances)`):
        `cause_logits[c, i, j]` scores "utterance j causes the emotion of utterance i". Pairs farther apart than
        `config.cause_window` or touching a padding utterance hold the dtype's lowest value (probability 0).
    utterance_states (`torch.FloatTensor` of shape `(num_conversations, max_utterances, context_hidden_size)`):
        Output of the conversation encoder (zeros at padding utterances).
    utterance_embeds (`torch.FloatTensor` of shape `(num_conversations, max_utterances, num_modalities * projection_size)`):
        The fused vector of each utterance, before the conversation encoder (zeros at padding utterances).
    """

    loss: torch.FloatTensor | None = None
    emotion_logits: torch.FloatTensor | None = None
    cause_logits: torch.FloatTensor | None = None
    utterance_states: torch.FloatTensor | None = None
    utterance_embeds: torch.FloatTensor | None = None


def _scatter_rows(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put `values` (one row per true entry of `mask`) back into a zero tensor of shape `mask.shape + values.shape[1:]`."""
    output = values.new_zeros(*mask.shape, *values.shape[1:])
    output[mask] = values
    return output


def _emotion_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, config: MMEmotionConfig) -> torch.Tensor:
    """Cross-entropy over the last dimension of `logits`, -100 labels ignored, with `config.class_weights` if set."""
    weight = None
    if config.class_weights is not None:
        weight = torch.tensor(config.class_weights, dtype=logits.dtype, device=logits.device)
    return nn.functional.cross_entropy(
        logits.flatten(0, -2), labels.to(logits.device).flatten(), weight=weight, ignore_index=-100
    )


def _offset_neutral_logit(logits: torch.Tensor, config: MMEmotionConfig) -> torch.Tensor:
    """`logits` with `config.neutral_logit_offset` added to the neutral label's logit (read at each call: train.py
    sets the offset after training)."""
    if not config.neutral_logit_offset:
        return logits
    offset = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    offset[config.neutral_label_id] = config.neutral_logit_offset
    return logits + offset


class VideoLlamaVideoEncoder(nn.Module):
    """VideoLLaMA's video branch: frames -> EVA ViT -> BLIP-2 Q-Former -> frame positions -> video Q-Former -> projection."""

    def __init__(self, config: MMEmotionVideoConfig):
        super().__init__()
        self.config = config
        qformer_width = config.qformer_config.hidden_size
        video_qformer_width = config.video_qformer_config.hidden_size
        self.vision_model = Blip2VisionModel(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_width))
        self.qformer = Blip2QFormerModel(config.qformer_config)
        self.frame_position_embedding = nn.Embedding(config.max_frame_positions, qformer_width)
        self.video_query_tokens = nn.Parameter(torch.zeros(1, config.num_video_query_tokens, video_qformer_width))
        self.video_qformer = Blip2QFormerModel(config.video_qformer_config)
        self.llama_proj = nn.Linear(video_qformer_width, config.llm_hidden_size)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) frames -> (N, num_query_tokens, qformer width): VideoLLaMA's per-frame BLIP-2 features."""
        image_embeds = self.vision_model(pixel_values=frames).last_hidden_state  # post layer norm = `ln_vision`
        query_tokens = self.query_tokens.expand(frames.shape[0], -1, -1)
        return self.qformer(query_embeds=query_tokens, encoder_hidden_states=image_embeds).last_hidden_state

    def forward(self, pixel_values_videos: torch.Tensor, video_frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, num_frames, 3, height, width)`):
                Normalised frames, zero-padded past each clip's frame count.
            video_frame_mask (`torch.LongTensor` of shape `(batch_size, num_frames)`, *optional*):
                1 for real frames. Padding frames are neither encoded nor attended to.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_video_query_tokens, llm_hidden_size)`.
        """
        batch_size, num_frames = pixel_values_videos.shape[:2]
        if num_frames > self.config.max_frame_positions:
            raise ValueError(
                f"Got {num_frames} frames per item; the branch has positions for {self.config.max_frame_positions}."
            )
        if video_frame_mask is None:
            video_frame_mask = torch.ones(batch_size, num_frames, dtype=torch.long, device=pixel_values_videos.device)

        # step 1: the real frames of the whole batch at once through EVA ViT-g and the BLIP-2 Q-Former
        real_frames = video_frame_mask.bool()
        frame_features = self.encode_frames(pixel_values_videos[real_frames])  # (num_real_frames, num_query_tokens, width)
        frame_features = _scatter_rows(frame_features, real_frames)  # (batch_size, num_frames, num_query_tokens, width)

        # step 2: each frame's position embedding, on all of its tokens
        frame_positions = self.frame_position_embedding(torch.arange(num_frames, device=frame_features.device))
        frame_features = frame_features + frame_positions[None, :, None, :]

        # step 3: the video queries read the tokens of every real frame through the video Q-Former
        num_query_tokens = self.config.num_query_tokens
        frame_tokens = frame_features.flatten(1, 2)  # (batch_size, num_frames * num_query_tokens, width)
        token_mask = video_frame_mask.repeat_interleave(num_query_tokens, dim=1)  # (batch_size, num_frames * num_query_tokens)
        video_query_tokens = self.video_query_tokens.expand(batch_size, -1, -1)
        video_query_output = self.video_qformer(
            query_embeds=video_query_tokens, encoder_hidden_states=frame_tokens, encoder_attention_mask=token_mask
        ).last_hidden_state

        # step 4: projection to the language model's width
        return self.llama_proj(video_query_output)


class ImageBindAudioEmbeddings(nn.Module):
    """ImageBind's audio pre-processor: overlapping 16x16 patches (stride 10) + layer norm, a CLS token, positions."""

    def __init__(self, config: MMEmotionAudioConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            1, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_stride, bias=False
        )
        self.patch_norm = nn.LayerNorm(config.hidden_size)  # torch's default eps, as ImageBind's stem
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embedding = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        patches = self.patch_norm(self.patch_embedding(input_features).flatten(2).transpose(1, 2))
        cls_token = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls_token, patches], dim=1) + self.position_embedding


class ImageBindAudioMLP(nn.Module):
    def __init__(self, config: MMEmotionAudioConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, int(config.hidden_size * config.mlp_ratio))
        self.activation = nn.GELU()
        self.fc2 = nn.Linear(int(config.hidden_size * config.mlp_ratio), config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(hidden_states)))


class ImageBindAudioLayer(nn.Module):
    """A pre-norm block of ImageBind's audio trunk; its attention has learned key/value biases (`add_bias_kv`)."""

    def __init__(self, config: MMEmotionAudioConfig):
        super().__init__()
        self.norm_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # torch's own attention keeps ImageBind's parameter layout (`in_proj_weight`, `bias_k`, `bias_v`, `out_proj`).
        self.attn = nn.MultiheadAttention(
            config.hidden_size, config.num_attention_heads, bias=True, add_bias_kv=True, batch_first=True
        )
        self.norm_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ImageBindAudioMLP(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = self.norm_1(hidden_states)
        hidden_states = hidden_states + self.attn(normed, normed, normed, need_weights=False)[0]
        return hidden_states + self.mlp(self.norm_2(hidden_states))


class ImageBindAudioModel(nn.Module):
    """ImageBind-Huge's audio encoder: (N, 1, 128, 204) filterbanks -> (N, output_size) clip embeddings."""

    def __init__(self, config: MMEmotionAudioConfig):
        super().__init__()
        self.config = config
        self.embeddings = ImageBindAudioEmbeddings(config)
        self.layers = nn.ModuleList([ImageBindAudioLayer(config) for _ in range(config.num_hidden_layers)])
        self.head_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head_proj = nn.Linear(config.hidden_size, config.output_size, bias=False)

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        hidden_states = self.embeddings(input_features)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        clip_embeds = self.head_proj(self.head_norm(hidden_states[:, 0]))
        if self.config.normalize_output:
            clip_embeds = nn.functional.normalize(clip_embeds, dim=-1)
        return clip_embeds


class VideoLlamaAudioEncoder(nn.Module):
    """VideoLLaMA's audio branch: clips -> ImageBind audio encoder -> clip positions -> audio Q-Former -> projection."""

    def __init__(self, config: MMEmotionAudioConfig):
        super().__init__()
        self.config = config
        qformer_width = config.audio_qformer_config.hidden_size
        self.audio_model = ImageBindAudioModel(config)
        self.audio_position_embedding = nn.Embedding(config.max_clip_positions, config.output_size)
        self.audio_query_tokens = nn.Parameter(torch.zeros(1, config.num_audio_query_tokens, qformer_width))
        self.audio_qformer = Blip2QFormerModel(config.audio_qformer_config)
        self.audio_llama_proj = nn.Linear(qformer_width, config.llm_hidden_size)

    def forward(self, audio_values: torch.Tensor, audio_clip_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            audio_values (`torch.FloatTensor` of shape `(batch_size, num_clips, 1, num_mel_bins, target_length)`):
                Normalised filterbank clips, zero-padded past each item's clip count.
            audio_clip_mask (`torch.LongTensor` of shape `(batch_size, num_clips)`, *optional*):
                1 for real clips. Padding clips are neither encoded nor attended to.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_audio_query_tokens, llm_hidden_size)`.
        """
        batch_size, num_clips = audio_values.shape[:2]
        if num_clips > self.config.max_clip_positions:
            raise ValueError(
                f"Got {num_clips} audio clips per item; the branch has positions for {self.config.max_clip_positions}."
            )
        if audio_clip_mask is None:
            audio_clip_mask = torch.ones(batch_size, num_clips, dtype=torch.long, device=audio_values.device)

        # step 1: the real clips of the whole batch at once through the ImageBind audio encoder, one embedding each
        real_clips = audio_clip_mask.bool()
        clip_embeds = self.audio_model(audio_values[real_clips])  # (num_real_clips, output_size)
        clip_embeds = _scatter_rows(clip_embeds, real_clips)  # (batch_size, num_clips, output_size)

        # step 2: each clip's position embedding
        clip_embeds = clip_embeds + self.audio_position_embedding(torch.arange(num_clips, device=clip_embeds.device))

        # step 3: the audio queries read the real clips through the audio Q-Former
        audio_query_tokens = self.audio_query_tokens.expand(batch_size, -1, -1)
        audio_query_output = self.audio_qformer(
            query_embeds=audio_query_tokens, encoder_hidden_states=clip_embeds, encoder_attention_mask=audio_clip_mask
        ).last_hidden_state

        # step 4: projection to the language model's width
        return self.audio_llama_proj(audio_query_output)


class MMEmotionTextEncoder(nn.Module):
    """The text branch: a text model's input embeddings (VideoLLaMA's text embeddings) or its last hidden state."""

    def __init__(self, config: MMEmotionConfig):
        super().__init__()
        self.text_embedding = config.text_embedding
        text_config = config.text_config
        if self.text_embedding == "input_embeddings":
            # Only the embedding table: a 13B LLaMA's transformer layers are never run for this branch.
            self.embed_tokens = nn.Embedding(
                text_config.vocab_size, text_config.hidden_size, padding_idx=getattr(text_config, "pad_token_id", None)
            )
        else:
            self.model = AutoModel.from_config(text_config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.text_embedding == "input_embeddings":
            return self.embed_tokens(input_ids)
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def load_pretrained_text_model(self, text_model: PreTrainedModel):
        """Copy the weights this branch uses from a pretrained text model of the same architecture."""
        if self.text_embedding == "input_embeddings":
            self.embed_tokens.load_state_dict(text_model.get_input_embeddings().state_dict())
        else:
            self.model.load_state_dict(text_model.state_dict())


class MMEmotionPooling(nn.Module):
    """Masked pooling of a token sequence: mean over real tokens, or additive attention restricted to real tokens."""

    def __init__(self, config: MMEmotionConfig):
        super().__init__()
        self.pooling = config.pooling
        if self.pooling == "attention":
            self.attention = nn.Linear(config.projection_size, config.attention_size)
            self.score = nn.Linear(config.attention_size, 1, bias=False)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        if self.pooling == "mean":
            weights = mask.to(hidden_states.dtype)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1)
        else:
            scores = self.score(torch.tanh(self.attention(hidden_states))).squeeze(-1)
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            # An item without any real token (an absent modality) gets zero weights instead of NaN.
            weights = torch.softmax(scores, dim=1) * mask.any(dim=1, keepdim=True)
        return torch.einsum("bl,bld->bd", weights, hidden_states)


class MMEmotionModalityPooler(nn.Module):
    """Normalises one modality's tokens (optional), projects them to `projection_size` and pools them to one vector."""

    def __init__(self, config: MMEmotionConfig, input_size: int):
        super().__init__()
        # Frozen encoders output features at very different scales (LLaMA input embeddings are ~100x smaller than a
        # BERT last hidden state): without the norm, a head on small features barely moves from chance.
        self.feature_norm = nn.LayerNorm(input_size) if config.feature_norm else nn.Identity()
        self.projection = nn.Linear(input_size, config.projection_size)
        self.pooling = MMEmotionPooling(config)

    def forward(self, features: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return self.pooling(self.projection(self.feature_norm(features)), token_mask)


class MMEmotionPreTrainedModel(PreTrainedModel):
    config: MMEmotionConfig
    config_class = MMEmotionConfig
    base_model_prefix = "mmemotion"
    main_input_name = "input_ids"
    input_modalities = ("text", "video", "audio")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = False
    _no_split_modules = ["ImageBindAudioLayer", "Blip2EncoderLayer", "Blip2QFormerLayer"]
    # The forwards return a plain mean loss: Trainer must not rescale it by the number of processes.
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, VideoLlamaVideoEncoder):
            # Learned queries take their Q-Former's range, as BLIP-2's do.
            init.normal_(module.query_tokens, mean=0.0, std=module.config.qformer_config.initializer_range)
            init.normal_(module.video_query_tokens, mean=0.0, std=module.config.video_qformer_config.initializer_range)
        elif isinstance(module, VideoLlamaAudioEncoder):
            init.normal_(module.audio_query_tokens, mean=0.0, std=module.config.audio_qformer_config.initializer_range)
        elif isinstance(module, ImageBindAudioEmbeddings):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.position_embedding, std=std)
        elif isinstance(module, MMEmotionModel):
            init.normal_(module.missing_modality_embeds, mean=0.0, std=std)

    def _set_full_auto_map(self):
        """Record every auto class in the config: `save_pretrained` itself only adds the class being saved.

        `AutoModel` loads the checkpoint's own task model, head included, so that
        `AutoModel.from_pretrained(repo, trust_remote_code=True)` gives a model that predicts emotions.
        """
        self.config.auto_map = {
            "AutoConfig": "configuration_mmemotion.MMEmotionConfig",
            "AutoModel": f"modeling_mmemotion.{type(self).__name__}",
            "AutoModelForSequenceClassification": "modeling_mmemotion.MMEmotionForEmotionClassification",
            "AutoProcessor": "processing_mmemotion.MMEmotionProcessor",
        }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Also ships the `emotion-cause-extraction` pipeline (`pipeline_mmemotion.py`, `config.custom_pipelines`)."""
        self._set_full_auto_map()
        self.config.custom_pipelines = pipeline_config_entry()
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            custom_object_save(EmotionCauseExtractionPipeline, save_directory)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if kwargs.get("output_loading_info") else loaded
        # transformers loads every weight as a trainable parameter: freeze the frozen encoders again, as `__init__` did.
        model.base_model.freeze_encoders()
        return loaded


class MMEmotionModel(MMEmotionPreTrainedModel):
    """The encoders, per-modality pooling and fusion: one vector per utterance (no task head)."""

    def __init__(self, config: MMEmotionConfig):
        super().__init__(config)
        self.modalities = list(config.modalities)
        if "text" in self.modalities:
            self.text_encoder = MMEmotionTextEncoder(config)
        if "video" in self.modalities:
            self.video_encoder = VideoLlamaVideoEncoder(config.video_config)
        if "audio" in self.modalities:
            self.audio_encoder = VideoLlamaAudioEncoder(config.audio_config)
        # The fusion's weights (`fuse`), under the names every saved checkpoint has.
        self.poolers = nn.ModuleDict(
            {modality: MMEmotionModalityPooler(config, config.modality_hidden_size(modality)) for modality in self.modalities}
        )
        self.missing_modality_embeds = nn.Parameter(torch.zeros(len(self.modalities), config.projection_size))
        self.post_init()
        self.freeze_encoders()

    def freeze_encoders(self):
        """Turn off the gradients of every encoder that the config freezes (`freeze_{modality}_encoder`)."""
        for modality in self.modalities:
            if getattr(self.config, f"freeze_{modality}_encoder"):
                self.encoder(modality).requires_grad_(False)

    def encoder(self, modality: str) -> nn.Module:
        return getattr(self, f"{modality}_encoder")

    def get_input_embeddings(self):
        if "text" not in self.modalities:
            return None
        text_encoder = self.text_encoder
        return text_encoder.embed_tokens if text_encoder.text_embedding == "input_embeddings" else text_encoder.model.get_input_embeddings()

    def is_encoder_frozen(self, modality: str) -> bool:
        # Checked live, so LoRA adapters added later (peft) on a frozen encoder still train.
        return not any(parameter.requires_grad for parameter in self.encoder(modality).parameters())

    def train(self, mode: bool = True):
        """Encoders with no trainable parameter stay in eval mode (no dropout) while the fusion and heads train."""
        super().train(mode)
        for modality in self.modalities:
            if self.is_encoder_frozen(modality):
                self.encoder(modality).eval()
        return self

    def get_text_features(
        self, input_ids: torch.LongTensor, attention_mask: torch.LongTensor | None = None
    ) -> torch.FloatTensor:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
            Token ids (the processor's).
        attention_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 for real tokens; read by a contextual text model (`text_embedding="last_hidden_state"`).

        Returns:
            `torch.FloatTensor` of shape `(batch_size, sequence_length, text_hidden_size)`: the text encoder's token
            states, what a feature cache stores.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.is_encoder_frozen("text")):
            return self.text_encoder(input_ids, attention_mask)

    def get_video_features(
        self,
        pixel_values_videos: torch.FloatTensor,
        video_frame_mask: torch.LongTensor | None = None,
        video_mask: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(batch_size, num_frames, 3, height, width)`):
            Normalised frames, zero-padded past each clip's frame count.
        video_frame_mask (`torch.LongTensor` of shape `(batch_size, num_frames)`, *optional*):
            1 for real frames.
        video_mask (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            0 for the items without a usable clip: they are not encoded, and their features are zeros.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_video_query_tokens, llm_hidden_size)`: the video branch's
            query outputs, what a feature cache stores.
        """
        video_config = self.config.video_config
        batch_size = pixel_values_videos.shape[0]
        has_video = pixel_values_videos.new_ones(batch_size, dtype=torch.bool) if video_mask is None else video_mask.bool()
        video_features = pixel_values_videos.new_zeros(
            batch_size, video_config.num_video_query_tokens, video_config.llm_hidden_size
        )
        if not has_video.any():
            return video_features
        # A frozen encoder may run in half precision beside a float32 head: the frames take its dtype.
        frames = pixel_values_videos[has_video].to(next(self.video_encoder.parameters()).dtype)
        frame_mask = None if video_frame_mask is None else video_frame_mask[has_video]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.is_encoder_frozen("video")):
            video_features[has_video] = self.video_encoder(frames, frame_mask).to(video_features.dtype)
        return video_features

    def get_audio_features(
        self,
        audio_values: torch.FloatTensor,
        audio_clip_mask: torch.LongTensor | None = None,
        audio_mask: torch.LongTensor | None = None,
    ) -> torch.FloatTensor:
        r"""
        audio_values (`torch.FloatTensor` of shape `(batch_size, num_clips, 1, num_mel_bins, target_length)`):
            Normalised filterbank clips, zero-padded past each item's clip count.
        audio_clip_mask (`torch.LongTensor` of shape `(batch_size, num_clips)`, *optional*):
            1 for real clips.
        audio_mask (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            0 for the items without audio (no clip, no audio track): they are not encoded, and their features are zeros.

        Returns:
            `torch.FloatTensor` of shape `(batch_size, num_audio_query_tokens, llm_hidden_size)`: the audio branch's
            query outputs, what a feature cache stores.
        """
        audio_config = self.config.audio_config
        batch_size = audio_values.shape[0]
        has_audio = audio_values.new_ones(batch_size, dtype=torch.bool) if audio_mask is None else audio_mask.bool()
        audio_features = audio_values.new_zeros(batch_size, audio_config.num_audio_query_tokens, audio_config.llm_hidden_size)
        if not has_audio.any():
            return audio_features
        clips = audio_values[has_audio].to(next(self.audio_encoder.parameters()).dtype)
        clip_mask = None if audio_clip_mask is None else audio_clip_mask[has_audio]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.is_encoder_frozen("audio")):
            audio_features[has_audio] = self.audio_encoder(clips, clip_mask).to(audio_features.dtype)
        return audio_features

    def fuse(
        self,
        features: dict[str, torch.Tensor | None],
        token_masks: dict[str, torch.Tensor | None],
        item_masks: dict[str, torch.Tensor | None],
    ) -> tuple[torch.FloatTensor, torch.BoolTensor]:
        """
        The fusion: each modality's features pooled to one vector by its pooler (over the real tokens of the items that
        have the modality), and the modality's learned missing vector for the items that do not.

        Args:
            features (`dict[str, torch.FloatTensor]`):
                `(batch_size, num_tokens, hidden_size)` token features per modality, `None` for a branch without input.
            token_masks (`dict[str, torch.LongTensor]`):
                `(batch_size, num_tokens)` masks of the tokens to pool; a modality without one pools every token.
            item_masks (`dict[str, torch.LongTensor]`):
                `(batch_size,)` masks, 0 for the items without the modality; `None` when every item has it.

        Returns:
            The `(batch_size, num_modalities, projection_size)` modality vectors in `config.modalities` order and the
            `(batch_size, num_modalities)` mask of the modalities each item has.
        """
        given = next(value for value in features.values() if value is not None)
        batch_size, device = given.shape[0], given.device
        pooled, present = [], []
        for modality in self.modalities:
            modality_features = features[modality]
            if modality_features is None:
                # A branch without inputs is absent for every item: it contributes its learned missing vector.
                logger.warning_once(
                    f"The model has a {modality} branch but got no {modality} input: {modality} is treated as absent "
                    f"for every item. To use it, pass `{PROCESSOR_ARGUMENTS[modality]}=` to the processor "
                    f"or `{modality}_features`."
                )
                pooled.append(self.missing_modality_embeds.new_zeros(batch_size, self.config.projection_size))
                present.append(torch.zeros(batch_size, dtype=torch.bool, device=device))
                continue
            token_mask = token_masks.get(modality)
            if token_mask is None:
                token_mask = torch.ones(modality_features.shape[:2], dtype=torch.long, device=modality_features.device)
            item_present = token_mask.bool().any(dim=1)
            if item_masks.get(modality) is not None:
                item_present = item_present & item_masks[modality].bool()
            pooler = self.poolers[modality]
            # Features of half-precision encoders (or cache) enter the head in the head's dtype.
            modality_features = modality_features.to(pooler.projection.weight.dtype)
            pooled.append(pooler(modality_features, token_mask * item_present[:, None]))
            present.append(item_present)

        modality_mask = torch.stack(present, dim=1)
        modality_embeds = torch.stack(pooled, dim=1)
        missing = self.missing_modality_embeds.to(modality_embeds.dtype).expand_as(modality_embeds)
        return torch.where(modality_mask[..., None], modality_embeds, missing), modality_mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        text_mask: torch.LongTensor | None = None,
        text_target_mask: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_frame_mask: torch.LongTensor | None = None,
        video_mask: torch.LongTensor | None = None,
        audio_values: torch.FloatTensor | None = None,
        audio_clip_mask: torch.LongTensor | None = None,
        audio_mask: torch.LongTensor | None = None,
        text_features: torch.FloatTensor | None = None,
        video_features: torch.FloatTensor | None = None,
        audio_features: torch.FloatTensor | None = None,
    ) -> MMEmotionModelOutput:
        r"""
        input_ids, attention_mask, pixel_values_videos, video_frame_mask, audio_values, audio_clip_mask:
            The processor's outputs; see `get_text_features`, `get_video_features` and `get_audio_features`.
        text_mask, video_mask, audio_mask (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            0 for the items without the modality (empty transcript, no clip, no audio track): they get the modality's
            learned missing vector, never zeros.
        text_target_mask (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            From a processor with a context window: 1 on the target utterance's tokens. The text encoder reads the
            whole window, the text pooling only these tokens.
        text_features, video_features, audio_features (`torch.FloatTensor`, *optional*):
            Precomputed outputs of `get_{modality}_features` (a feature cache), used instead of the raw inputs of that
            modality; `text_features` come with their `attention_mask`.
        """
        if text_features is None and input_ids is not None and "text" in self.modalities:
            text_features = self.get_text_features(input_ids, attention_mask)
        if video_features is None and pixel_values_videos is not None and "video" in self.modalities:
            video_features = self.get_video_features(pixel_values_videos, video_frame_mask, video_mask)
        if audio_features is None and audio_values is not None and "audio" in self.modalities:
            audio_features = self.get_audio_features(audio_values, audio_clip_mask, audio_mask)
        features = {"text": text_features, "video": video_features, "audio": audio_features}
        if all(value is None for value in features.values()):
            raise ValueError(
                f"The model got no input for any of its branches {self.modalities}: pass the processor's outputs "
                "(`input_ids`, `pixel_values_videos`, `audio_values`) or the cached `*_features`."
            )

        text_token_mask = attention_mask
        if attention_mask is not None and text_target_mask is not None:
            text_token_mask = attention_mask * text_target_mask
        modality_embeds, modality_mask = self.fuse(
            features,
            token_masks={"text": text_token_mask},
            item_masks={"text": text_mask, "video": video_mask, "audio": audio_mask},
        )
        return MMEmotionModelOutput(
            pooler_output=modality_embeds.flatten(1),  # (batch_size, num_modalities * projection_size)
            modality_embeds=modality_embeds,
            modality_mask=modality_mask.long(),
            text_features=text_features,
            video_features=video_features,
            audio_features=audio_features,
        )


class MMEmotionClassificationHead(nn.Module):
    """The seed's head: Linear -> ReLU -> Dropout -> Linear over the fused utterance vector."""

    def __init__(self, config: MMEmotionConfig, input_size: int):
        super().__init__()
        self.dense = nn.Linear(input_size, config.classifier_hidden_size)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.out_proj = nn.Linear(config.classifier_hidden_size, config.num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(self.activation(self.dense(hidden_states))))


class MMEmotionForEmotionClassification(MMEmotionPreTrainedModel):
    """MMEmotion with an utterance-level emotion head: each utterance is classified on its own (seed experiments 0-4)."""

    def __init__(self, config: MMEmotionConfig):
        super().__init__(config)
        self.mmemotion = MMEmotionModel(config)
        self.classifier = MMEmotionClassificationHead(config, len(config.modalities) * config.projection_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.mmemotion.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        text_mask: torch.LongTensor | None = None,
        text_target_mask: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_frame_mask: torch.LongTensor | None = None,
        video_mask: torch.LongTensor | None = None,
        audio_values: torch.FloatTensor | None = None,
        audio_clip_mask: torch.LongTensor | None = None,
        audio_mask: torch.LongTensor | None = None,
        text_features: torch.FloatTensor | None = None,
        video_features: torch.FloatTensor | None = None,
        audio_features: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
    ) -> MMEmotionClassifierOutput:
        r"""
        The inputs of `MMEmotionModel.forward`, and:

        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Emotion ids in `[0, num_labels)`; -100 is ignored.
        """
        outputs = self.mmemotion(
            input_ids=input_ids, attention_mask=attention_mask, text_mask=text_mask, text_target_mask=text_target_mask,
            pixel_values_videos=pixel_values_videos, video_frame_mask=video_frame_mask, video_mask=video_mask,
            audio_values=audio_values, audio_clip_mask=audio_clip_mask, audio_mask=audio_mask,
            text_features=text_features, video_features=video_features, audio_features=audio_features,
        )  # fmt: skip
        logits = _offset_neutral_logit(self.classifier(outputs.pooler_output), self.config)
        loss = None if labels is None else _emotion_cross_entropy(logits, labels, self.config)
        return MMEmotionClassifierOutput(
            loss=loss, logits=logits, pooler_output=outputs.pooler_output, modality_mask=outputs.modality_mask
        )


def _sinusoidal_positions(num_positions: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(num_positions, size) sine/cosine position encodings: any conversation length, no parameter or buffer."""
    positions = torch.arange(num_positions, device=device, dtype=torch.float32)[:, None]
    frequencies = torch.exp(torch.arange(0, size, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / size))
    encodings = torch.zeros(num_positions, size, device=device, dtype=torch.float32)
    encodings[:, 0::2] = torch.sin(positions * frequencies)
    encodings[:, 1::2] = torch.cos(positions * frequencies[: size // 2])
    return encodings.to(dtype)


def _candidate_pairs(utterance_mask: torch.Tensor, cause_window: int) -> torch.Tensor:
    """(C, U, U) bool: both utterances real and at most `cause_window` apart."""
    positions = torch.arange(utterance_mask.shape[1], device=utterance_mask.device)
    in_window = (positions[None, :] - positions[:, None]).abs() <= cause_window
    return utterance_mask[:, :, None] & utterance_mask[:, None, :] & in_window


class MMEmotionConversationEncoder(nn.Module):
    """Utterance vectors + speaker embeddings -> context-aware utterance states, padding utterances excluded.

    `"bilstm"` runs a bidirectional LSTM over packed sequences (as the seed's joint model); `"transformer"` a pre-norm
    transformer encoder with sinusoidal utterance positions and a key padding mask.
    """

    def __init__(self, config: MMEmotionConfig, input_size: int):
        super().__init__()
        self.context_encoder = config.context_encoder
        self.max_speakers = config.max_speakers
        hidden_size = config.context_hidden_size
        self.speaker_embedding = nn.Embedding(config.max_speakers, input_size)
        if self.context_encoder == "bilstm":
            if hidden_size % 2:
                raise ValueError(f"`context_hidden_size` must be even for a BiLSTM (two directions), got {hidden_size}.")
            self.lstm = nn.LSTM(
                input_size,
                hidden_size // 2,
                num_layers=config.context_num_layers,
                batch_first=True,
                bidirectional=True,
                dropout=config.classifier_dropout if config.context_num_layers > 1 else 0.0,
            )
        else:
            self.input_projection = nn.Linear(input_size, hidden_size)
            layer = nn.TransformerEncoderLayer(
                hidden_size,
                config.context_num_heads,
                dim_feedforward=4 * hidden_size,
                dropout=config.classifier_dropout,
                batch_first=True,
                norm_first=True,
            )
            # Nested tensors would drop padding rows from the output; the padding mask already isolates them.
            self.transformer = nn.TransformerEncoder(layer, config.context_num_layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(config.classifier_dropout)

    def forward(self, utterance_embeds: torch.Tensor, speaker_ids: torch.Tensor, utterance_mask: torch.Tensor) -> torch.Tensor:
        """
        Args:
            utterance_embeds (`torch.FloatTensor` of shape `(num_conversations, max_utterances, input_size)`)
            speaker_ids (`torch.LongTensor` of shape `(num_conversations, max_utterances)`):
                Per-conversation speaker numbers; those past `max_speakers - 1` share the last embedding.
            utterance_mask (`torch.BoolTensor` of shape `(num_conversations, max_utterances)`):
                True for real utterances, which come first in each conversation.

        Returns:
            `torch.FloatTensor` of shape `(num_conversations, max_utterances, context_hidden_size)`, zeros at padding.
        """
        hidden_states = utterance_embeds + self.speaker_embedding(speaker_ids.clamp(0, self.max_speakers - 1))
        if self.context_encoder == "bilstm":
            # Packing stops the backward direction from starting on padding utterances.
            packed = nn.utils.rnn.pack_padded_sequence(
                hidden_states, utterance_mask.sum(dim=1).cpu(), batch_first=True, enforce_sorted=False
            )
            states, _ = nn.utils.rnn.pad_packed_sequence(
                self.lstm(packed)[0], batch_first=True, total_length=hidden_states.shape[1]
            )
        else:
            hidden_states = self.input_projection(hidden_states)
            hidden_states = hidden_states + _sinusoidal_positions(
                hidden_states.shape[1], hidden_states.shape[2], hidden_states.device, hidden_states.dtype
            )
            states = self.transformer(hidden_states, src_key_padding_mask=~utterance_mask)
        return self.dropout(states * utterance_mask[..., None])


class MMEmotionCausePairScorer(nn.Module):
    """One logit per (emotion utterance i, candidate cause j) from both states, i's emotion distribution, the clipped
    relative position j - i and a same-speaker flag, through a one-hidden-layer MLP.

    The MLP's first layer over `concat(h_i, h_j, p_i, position(j - i), same_speaker(i, j))` is written as a sum of
    per-part projections (embeddings for the two discrete parts), which is the same function but broadcasts to
    (C, U, U, hidden) instead of materialising the (C, U, U, 2 * context_hidden_size + ...) concatenation.
    """

    def __init__(self, config: MMEmotionConfig):
        super().__init__()
        hidden_size = config.classifier_hidden_size
        self.cause_window = config.cause_window
        self.emotion_state_projection = nn.Linear(config.context_hidden_size, hidden_size)
        self.cause_state_projection = nn.Linear(config.context_hidden_size, hidden_size, bias=False)
        self.emotion_distribution_projection = nn.Linear(config.num_labels, hidden_size, bias=False)
        self.relative_position_embedding = nn.Embedding(2 * config.cause_window + 1, hidden_size)
        self.same_speaker_embedding = nn.Embedding(2, hidden_size)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.out_proj = nn.Linear(hidden_size, 1)

    def forward(self, utterance_states: torch.Tensor, emotion_probabilities: torch.Tensor, speaker_ids: torch.Tensor) -> torch.Tensor:
        """(C, U, H) states, (C, U, num_labels) emotion probabilities, (C, U) speakers -> (C, U, U) pair logits."""
        positions = torch.arange(utterance_states.shape[1], device=utterance_states.device)
        offsets = (positions[None, :] - positions[:, None]).clamp(-self.cause_window, self.cause_window) + self.cause_window
        same_speaker = (speaker_ids[:, :, None] == speaker_ids[:, None, :]).long()
        emotion_part = self.emotion_state_projection(utterance_states) + self.emotion_distribution_projection(emotion_probabilities)
        hidden_states = (
            emotion_part[:, :, None]
            + self.cause_state_projection(utterance_states)[:, None, :]
            + self.relative_position_embedding(offsets)
            + self.same_speaker_embedding(same_speaker)
        )
        return self.out_proj(self.dropout(self.activation(hidden_states))).squeeze(-1)


class MMEmotionForEmotionCauseExtraction(MMEmotionPreTrainedModel):
    """MMEmotion over whole conversations: utterance emotions in context and emotion-cause pairs (SemEval-2024 Task 3
    subtask 2; the seed's `joint_classification_0` with the default BiLSTM).

    Every utterance is encoded by `MMEmotionModel`; the fused vectors plus speaker embeddings go through a conversation
    encoder; the context states (or, with `config.emotion_head_input="utterance_embeds"`, the fused vectors) give the
    emotion logits and, with the emotion distributions, the pair logits.
    """

    # The inputs of `MMEmotionModel`, given here with a leading (num_conversations, max_utterances) shape.
    utterance_input_names = tuple(inspect.signature(MMEmotionModel.forward).parameters)[1:]

    def __init__(self, config: MMEmotionConfig):
        if config.neutral_label_id is None:
            raise ValueError(
                f"The emotion-cause model needs a 'neutral' label (utterances predicted neutral get no cause pairs); "
                f"the labels are {config.id2label}."
            )
        super().__init__(config)
        self.mmemotion = MMEmotionModel(config)
        fused_size = len(config.modalities) * config.projection_size
        self.context_encoder = MMEmotionConversationEncoder(config, fused_size)
        # Two names for two input widths: an emotion classification checkpoint's `classifier` loads only into the
        # head that reads the same fused vectors.
        if config.emotion_head_input == "utterance_embeds":
            self.classifier = MMEmotionClassificationHead(config, fused_size)
        else:
            self.emotion_classifier = MMEmotionClassificationHead(config, config.context_hidden_size)
        self.pair_scorer = MMEmotionCausePairScorer(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.mmemotion.get_input_embeddings()

    def forward(
        self,
        utterance_mask: torch.LongTensor,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        text_mask: torch.LongTensor | None = None,
        text_target_mask: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_frame_mask: torch.LongTensor | None = None,
        video_mask: torch.LongTensor | None = None,
        audio_values: torch.FloatTensor | None = None,
        audio_clip_mask: torch.LongTensor | None = None,
        audio_mask: torch.LongTensor | None = None,
        text_features: torch.FloatTensor | None = None,
        video_features: torch.FloatTensor | None = None,
        audio_features: torch.FloatTensor | None = None,
        speaker_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        cause_labels: torch.LongTensor | None = None,
        conversation_id: torch.LongTensor | None = None,
    ) -> MMEmotionEmotionCauseOutput:
        r"""
        utterance_mask (`torch.LongTensor` of shape `(num_conversations, max_utterances)`):
            1 for real utterances, which come first in each conversation; every conversation has at least one.
        input_ids, attention_mask, text_mask, text_target_mask, pixel_values_videos, video_frame_mask, video_mask,
        audio_values, audio_clip_mask, audio_mask, text_features, video_features, audio_features:
            The inputs of `MMEmotionModel.forward` (`utterance_input_names`), each with a leading
            `(num_conversations, max_utterances)` shape; padding utterances are never encoded.
        speaker_ids (`torch.LongTensor` of shape `(num_conversations, max_utterances)`, *optional*):
            Speaker number of each utterance within its conversation (0, 1, ... in order of first appearance).
            Defaults to one speaker.
        labels (`torch.LongTensor` of shape `(num_conversations, max_utterances)`, *optional*):
            Emotion ids; -100 (padding, unlabelled utterances) is ignored.
        cause_labels (`torch.LongTensor` of shape `(num_conversations, max_utterances, max_utterances)`, *optional*):
            `cause_labels[c, i, j]` is 1 when utterance j causes the emotion of utterance i, 0 when it does not, -100
            when unknown. Pairs outside `config.cause_window` and padding are ignored whatever they hold. When `labels`
            is given, only rows whose gold emotion is not neutral are trained: decoding only reads the rows of
            utterances predicted non-neutral, and a neutral row (no cause by definition) would add a row of negatives
            that teaches nothing about which candidate is the cause. The positive pairs are weighted by
            `config.cause_positive_weight`, or by the batch's ratio of negatives to positives when it is `None`.
        conversation_id (`torch.LongTensor` of shape `(num_conversations,)`, *optional*):
            Not read: the id `ConversationCollator` keeps in each batch to match the predictions to the conversations.
        """
        utterance_mask = utterance_mask.bool()
        lengths = utterance_mask.sum(dim=1)
        positions = torch.arange(utterance_mask.shape[1], device=utterance_mask.device)
        if not torch.equal(utterance_mask, positions[None, :] < lengths[:, None]) or not bool((lengths > 0).all()):
            raise ValueError("`utterance_mask` must mark at least one utterance per conversation, real utterances first.")
        utterance_inputs = dict(
            input_ids=input_ids, attention_mask=attention_mask, text_mask=text_mask, text_target_mask=text_target_mask,
            pixel_values_videos=pixel_values_videos, video_frame_mask=video_frame_mask, video_mask=video_mask,
            audio_values=audio_values, audio_clip_mask=audio_clip_mask, audio_mask=audio_mask,
            text_features=text_features, video_features=video_features, audio_features=audio_features,
        )  # fmt: skip
        # Only the real utterances are encoded, as one flat batch.
        flat_inputs = {name: value[utterance_mask] for name, value in utterance_inputs.items() if value is not None}
        utterance_embeds = _scatter_rows(self.mmemotion(**flat_inputs).pooler_output, utterance_mask)  # (C, U, fused size)
        if speaker_ids is None:
            speaker_ids = torch.zeros_like(utterance_mask, dtype=torch.long)
        utterance_states = self.context_encoder(utterance_embeds, speaker_ids, utterance_mask)
        if self.config.emotion_head_input == "utterance_embeds":
            emotion_logits = self.classifier(utterance_embeds)
        else:
            emotion_logits = self.emotion_classifier(utterance_states)
        # The pair scorer reads the head's own distribution: the offset decides the emotions, not the pair scores.
        cause_logits = self.pair_scorer(utterance_states, emotion_logits.softmax(dim=-1), speaker_ids)
        emotion_logits = _offset_neutral_logit(emotion_logits, self.config)
        candidates = _candidate_pairs(utterance_mask, self.config.cause_window)
        cause_logits = cause_logits.masked_fill(~candidates, torch.finfo(cause_logits.dtype).min)

        loss = None
        if labels is not None:
            loss = self.config.emotion_loss_weight * _emotion_cross_entropy(emotion_logits, labels, self.config)
        if cause_labels is not None:
            cause_loss = self.config.cause_loss_weight * self._cause_loss(cause_logits, cause_labels, candidates, labels)
            loss = cause_loss if loss is None else loss + cause_loss
        return MMEmotionEmotionCauseOutput(
            loss=loss,
            emotion_logits=emotion_logits,
            cause_logits=cause_logits,
            utterance_states=utterance_states,
            utterance_embeds=utterance_embeds,
        )

    def _cause_loss(
        self, cause_logits: torch.Tensor, cause_labels: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        cause_labels = cause_labels.to(cause_logits.device)
        trained = candidates & (cause_labels != -100)
        if labels is not None:
            labels = labels.to(cause_logits.device)
            trained = trained & ((labels != -100) & (labels != self.config.neutral_label_id))[:, :, None]
        logits, targets = cause_logits[trained], cause_labels[trained].to(cause_logits.dtype)
        if targets.numel() == 0:
            return cause_logits.sum() * 0.0  # keeps the graph (and DDP's used-parameter bookkeeping) intact
        positive_weight = self.config.cause_positive_weight
        if positive_weight is None:
            positives = targets.sum()
            positive_weight = torch.where(positives > 0, (targets.numel() - positives) / positives.clamp(min=1), 1.0)
        positive_weight = torch.as_tensor(positive_weight, dtype=logits.dtype, device=logits.device)
        return nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=positive_weight)

    @torch.no_grad()
    def decode_pairs(
        self,
        emotion_logits: torch.Tensor,
        cause_logits: torch.Tensor,
        utterance_mask: torch.Tensor,
        threshold: float | None = None,
    ) -> list[list[tuple[int, int]]]:
        r"""
        The SemEval-2024 Task 3 subtask-2 pairs of each conversation: every utterance predicted non-neutral (argmax of
        `emotion_logits`) gets the candidate causes whose probability (sigmoid of `cause_logits`) is at least
        `threshold`, and always its most probable cause, so that no emotion utterance is left without a cause.

        Args:
            emotion_logits (`torch.FloatTensor` of shape `(num_conversations, max_utterances, num_labels)`)
            cause_logits (`torch.FloatTensor` of shape `(num_conversations, max_utterances, max_utterances)`):
                As returned by `forward` (non-candidate pairs at the lowest value).
            utterance_mask (`torch.LongTensor` of shape `(num_conversations, max_utterances)`)
            threshold (`float`, *optional*):
                Defaults to `config.cause_threshold`.

        Returns:
            One list per conversation of 0-based `(emotion_utterance_index, cause_utterance_index)`, sorted; the
            emotion of a pair is the predicted emotion of its first utterance (what `ecf.write_predictions` writes).
        """
        threshold = self.config.cause_threshold if threshold is None else threshold
        utterance_mask = utterance_mask.bool()
        emotion_utterances = utterance_mask & (emotion_logits.argmax(dim=-1) != self.config.neutral_label_id)
        most_probable = nn.functional.one_hot(cause_logits.argmax(dim=-1), cause_logits.shape[-1]).bool()
        selected = (torch.sigmoid(cause_logits.float()) >= threshold) | most_probable
        selected &= _candidate_pairs(utterance_mask, self.config.cause_window) & emotion_utterances[:, :, None]
        pairs = [[] for _ in range(selected.shape[0])]
        for conversation, emotion_index, cause_index in selected.nonzero().tolist():
            pairs[conversation].append((emotion_index, cause_index))
        return pairs


# `save_pretrained` then copies this file and configuration_mmemotion.py next to the weights (remote code).
MMEmotionModel.register_for_auto_class("AutoModel")
MMEmotionForEmotionClassification.register_for_auto_class("AutoModel")
MMEmotionForEmotionCauseExtraction.register_for_auto_class("AutoModel")


__all__ = [
    "ImageBindAudioModel",
    "MMEmotionForEmotionCauseExtraction",
    "MMEmotionForEmotionClassification",
    "MMEmotionModel",
    "MMEmotionPreTrainedModel",
    "VideoLlamaAudioEncoder",
    "VideoLlamaVideoEncoder",
]
