# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Utterance rows for training: tokens with their context window, the on-disk cache of frozen-encoder outputs, and the
collator that batches rows into model inputs."""

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader
from transformers import BatchFeature, PreTrainedModel

import ecf
from processing_mmemotion import MMEmotionProcessor


logger = logging.getLogger(__name__)

# Bump when the layout of the cached features changes, so that old cache files are never read.
FEATURE_CACHE_VERSION = 1


def process_media(processor: MMEmotionProcessor, modality: str, video_paths: list[str | None]) -> BatchFeature:
    """Processor outputs (tensors) of one modality (`video` or `audio`) read from the utterances' clips."""
    if modality == "video":
        return processor(videos=video_paths, use_audio_from_video=False, return_tensors="pt")
    return processor(audio=video_paths, return_tensors="pt")


def tokenize_utterances(dataset: datasets.Dataset, processor: MMEmotionProcessor, max_length: int) -> datasets.Dataset:
    """Adds `input_ids`, `attention_mask`, `text_mask` (unpadded), `text_target_mask` with a context window, and
    `length` (tokens, for `group_by_length`). Each conversation is tokenized at once, so that every utterance gets its
    window (`processor.context_past` / `context_future`)."""

    def tokenize(conversation_ids, speakers, texts):
        encoding = {}
        boundaries = np.flatnonzero(np.diff(conversation_ids)) + 1
        for rows in np.split(np.arange(len(texts)), boundaries):
            part = processor.encode_conversation(
                [texts[row] for row in rows],
                [speakers[row] for row in rows],
                padding=False,
                truncation=True,
                max_length=max_length,
                return_tensors=None,
            )
            for name, values in part.items():
                encoding.setdefault(name, []).extend(list(values))
        return {**encoding, "length": [len(input_ids) for input_ids in encoding["input_ids"]]}

    # One batch: a conversation must not be split between two.
    return dataset.map(
        tokenize, batched=True, batch_size=None, input_columns=["conversation_id", "speaker", "text"], desc="Tokenizing"
    )


def pad_target_masks(masks: list, padding_side: str) -> torch.Tensor:
    """Pads `text_target_mask` rows with 0 on the tokenizer's padding side, as `tokenizer.pad` pads the tokens."""
    masks = [torch.as_tensor(mask, dtype=torch.long) for mask in masks]
    return torch.nn.utils.rnn.pad_sequence(masks, batch_first=True, padding_side=padding_side)


def _state_dict_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# The dtypes the cache stores features in, and how: Arrow has no bfloat16, so bfloat16 features are stored as their
# bits in int16 and viewed back as bfloat16 when batched (`cached_features`).
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.int16}


def cached_features(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Cached feature tensors of some rows in the dtype they were stored in (bfloat16 comes out of the cache as int16)."""
    return [row.view(torch.bfloat16) if row.dtype == torch.int16 else row for row in rows]


@dataclass(eq=False, repr=False)  # it holds the model: compared by identity, not printed
class FeatureCache:
    """On-disk cache of the outputs of frozen encoders, one Arrow file per (modality, encoder, inputs).

    A file's name is a fingerprint of everything the features depend on, so any change gives a miss and a new file:

    - the modality's encoder config (and `text_embedding` for text), a sha256 of the encoder's weights (hence their
      dtype) and the dtype the features are stored in;
    - for text, the token ids themselves (they capture the tokenizer, its settings, `--max_seq_length` and the
      transcripts); for video and audio, the processor's feature-extractor config and each clip's path, size and
      modification time.

    Labels, speakers and the rest of the data are not part of it: they are joined to the cached columns at every run.
    Only frozen encoders are cached; one with trainable weights (LoRA adapters, `freeze_*_encoder=False`) runs live.

    On a miss with several processes (`accelerate launch`, torchrun), every process encodes a contiguous share of the
    utterances into a shard file, then the main process joins the shards in order into the one cache file and the
    others wait for it. Every file appears under its name only once it is whole (datasets' `map` and the join write
    to a temporary file first): a process killed while encoding leaves no file a later run would take, and that run
    encodes the missing shard again.

    Args:
        model: the task model; its encoders compute the features (in eval mode, without gradients).
        processor: prepares the clips of the video / audio encoders (text arrives tokenized).
        modalities: the modalities to cache.
        cache_dir: the cache folder; files go to `cache_dir/<modality>/<fingerprint>.arrow`.
        batch_size: utterances encoded at once.
        num_workers: DataLoader worker processes of each process that read and preprocess the clips (0: the process
            itself does).
        cache_dtype: the dtype features are stored in, a key of `CACHE_DTYPES` (`bfloat16` / `float16` halve the cache).
    """

    model: PreTrainedModel
    processor: MMEmotionProcessor
    modalities: list[str]
    cache_dir: str
    batch_size: int
    num_workers: int = 0
    cache_dtype: str = "float32"

    def __post_init__(self):
        if self.cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {list(CACHE_DTYPES)}, got {self.cache_dtype!r}.")
        self.state = PartialState()
        # The encoder part of each fingerprint, computed once for all splits (hashing the weights reads all of them).
        self.encoder_keys = {modality: self._encoder_key(modality) for modality in self.modalities}

    def _encoder_key(self, modality: str) -> str:
        config = self.model.config
        encoder_config = getattr(config, f"{modality}_config").to_dict()
        # Where it was loaded from, not what it computes; `dtype` is set by loading, and the digest has the weights' dtypes.
        for volatile in ("_name_or_path", "transformers_version", "dtype"):
            encoder_config.pop(volatile, None)
        encoder = self.model.base_model.encoder(modality)
        parts = [FEATURE_CACHE_VERSION, modality, encoder_config, _state_dict_digest(encoder), self.cache_dtype]
        if modality == "text":
            parts.append(config.text_embedding)
        else:
            parts.append(getattr(self.processor, f"{modality}_feature_extractor").to_dict())
        return Hasher.hash(parts)

    def fingerprint(self, dataset: datasets.Dataset, modality: str) -> str:
        if modality == "text":
            inputs = [dataset["input_ids"][:], dataset["text_mask"][:]]  # lists: a `Column` would hash its dataset
            if "text_target_mask" in dataset.column_names:
                inputs.append(dataset["text_target_mask"][:])
        else:
            inputs = [
                None if path is None else (path, os.stat(path).st_size, os.stat(path).st_mtime_ns)
                for path in dataset["video_path"]
            ]
        return Hasher.hash([self.encoder_keys[modality], inputs])

    def _features(self, modality: str) -> datasets.Features:
        width = self.model.config.modality_hidden_size(modality)
        dtype = str(CACHE_DTYPES[self.cache_dtype]).removeprefix("torch.")
        if modality == "text":  # one row per real token of the target utterance
            return datasets.Features(text_features=datasets.Array2D(shape=(None, width), dtype=dtype))
        modality_config = getattr(self.model.config, f"{modality}_config")
        num_tokens = modality_config.num_video_query_tokens if modality == "video" else modality_config.num_audio_query_tokens
        return datasets.Features(
            {
                f"{modality}_features": datasets.Array2D(shape=(num_tokens, width), dtype=dtype),
                f"{modality}_mask": datasets.Value("int64"),
            }
        )

    def _to_cache_dtype(self, features: torch.Tensor) -> np.ndarray:
        features = features.to(getattr(torch, self.cache_dtype)).cpu()
        return (features.view(torch.int16) if self.cache_dtype == "bfloat16" else features).numpy()

    @torch.inference_mode()
    def _encode(self, batch: dict[str, list], modality: str) -> dict[str, Any]:
        """Encodes one `datasets.map` batch in sub-batches of `batch_size`; text in order of token count, so that a
        sub-batch holds transcripts of similar lengths (on ECF, 2.5x fewer padded tokens than in data order)."""
        num_rows = len(batch["video_path"])
        order = np.argsort(batch["length"], kind="stable") if modality == "text" else np.arange(num_rows)
        sub_batches = [order[start : start + self.batch_size] for start in range(0, num_rows, self.batch_size)]
        if modality == "text":
            sub_batch_inputs = (
                self.processor.tokenizer.pad(
                    [{"input_ids": batch["input_ids"][row], "attention_mask": batch["attention_mask"][row]} for row in rows],
                    return_tensors="pt",
                )
                for rows in sub_batches
            )
        else:
            # Workers decode the next clips while this process runs the encoders, which otherwise wait for them
            # (benchmarks/results/speed-work.md).
            sub_batch_inputs = DataLoader(
                [[batch["video_path"][row] for row in rows] for rows in sub_batches],
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=partial(process_media, self.processor, modality),
            )
        features, masks = [None] * num_rows, [None] * num_rows
        for rows, inputs in zip(sub_batches, sub_batch_inputs):
            inputs = inputs.to(self.model.device)
            encoded = self._to_cache_dtype(getattr(self.model.base_model, f"get_{modality}_features")(**inputs))
            if modality == "text":  # one row per real token of the target (the pooled ones: the cache stays small)
                token_masks = inputs["attention_mask"].bool()
                if "text_target_mask" in batch:
                    token_masks &= pad_target_masks(
                        [batch["text_target_mask"][row] for row in rows], self.processor.tokenizer.padding_side
                    ).bool()
                for row, item, token_mask in zip(rows, encoded, token_masks.cpu().numpy()):
                    features[row] = item[token_mask]
            else:  # a fixed number of query tokens, zeros for an absent clip
                for row, item, mask in zip(rows, encoded, inputs[f"{modality}_mask"].tolist()):
                    features[row], masks[row] = item, mask
        if modality == "text":
            return {"text_features": features}
        return {f"{modality}_features": features, f"{modality}_mask": masks}

    def _encode_into(self, dataset: datasets.Dataset, modality: str, path: str, fingerprint: str, desc: str) -> datasets.Dataset:
        """The encoded `modality` of `dataset`, read from `path`, written there first unless it exists."""
        return dataset.map(
            self._encode,
            fn_kwargs={"modality": modality},
            batched=True,
            batch_size=self.batch_size * 16,
            remove_columns=dataset.column_names,
            features=self._features(modality),
            cache_file_name=path,
            load_from_cache_file=True,
            new_fingerprint=fingerprint,
            desc=desc,
        )

    def _encode_sharded(self, dataset: datasets.Dataset, modality: str, path: str, fingerprint: str, split: str) -> None:
        """Writes the cache file `path` with every process encoding a contiguous share of `dataset`."""
        num_shards, index = self.state.num_processes, self.state.process_index
        bounds = [len(dataset) * shard // num_shards for shard in range(num_shards + 1)]
        shard_paths = [path.removesuffix(".arrow") + f"-{shard:05d}-of-{num_shards:05d}.arrow" for shard in range(num_shards)]
        # `map` writes no file for no rows (more processes than utterances): such a shard has none.
        if bounds[index] < bounds[index + 1]:
            # A shard that an earlier, interrupted run finished is whole (it gets its name only once written): reused.
            self._encode_into(
                dataset.select(range(bounds[index], bounds[index + 1])), modality, shard_paths[index],
                f"{fingerprint}-{index}-{num_shards}", desc=f"Encoding {modality} ({split}, shard {index + 1}/{num_shards})",
            )
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            shard_paths = [shard_path for shard, shard_path in enumerate(shard_paths) if bounds[shard] < bounds[shard + 1]]
            shards = [datasets.Dataset.from_file(shard_path) for shard_path in shard_paths]
            with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".arrow.tmp", delete=False) as joined:
                with ArrowWriter(features=self._features(modality), path=joined.name, fingerprint=fingerprint) as writer:
                    for shard in shards:
                        writer.write_table(shard.data.table)
                    writer.finalize()
            os.replace(joined.name, path)  # only now a complete cache file
            del shards
            for shard_path in shard_paths:
                os.remove(shard_path)
        self.state.wait_for_everyone()

    def add_features(self, dataset: datasets.Dataset, split: str) -> datasets.Dataset:
        """`dataset` (tokenized utterance rows) with the cached feature columns of every cached modality added,
        encoding them on a miss. With several processes, each calls it on the same dataset."""
        if not self.modalities:
            return dataset
        self.model.eval()  # dropout off: the features are those of the frozen encoders, which train in eval mode
        columns = [dataset]
        for modality in self.modalities:
            fingerprint = self.fingerprint(dataset, modality)
            path = os.path.join(self.cache_dir, modality, f"{fingerprint}.arrow")
            found = [(fingerprint, os.path.exists(path))]
            if self.state.num_processes > 1:
                # One decision for all: a process alone on a miss would wait for the others forever.
                found = gather_object(found)
                if len({process_fingerprint for process_fingerprint, _ in found}) > 1:
                    raise ValueError(
                        f"The {self.state.num_processes} processes disagree on the {modality} features of the {split} "
                        f"split (fingerprints {sorted({f for f, _ in found})}): their {modality} encoder weights or "
                        "inputs differ."
                    )
            if all(exists for _, exists in found):
                logger.info(f"Feature cache hit: {split} {modality} features of {len(dataset)} utterances from {path}")
            else:
                logger.info(
                    f"Feature cache miss: encoding the {modality} of {len(dataset)} {split} utterances into {path}"
                    + (f" in {self.state.num_processes} shards" if self.state.num_processes > 1 else "")
                )
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if self.state.num_processes > 1:
                    self._encode_sharded(dataset, modality, path, fingerprint, split)
            columns.append(self._encode_into(dataset, modality, path, fingerprint, desc=f"Encoding {modality} ({split})"))
        feature_columns = [column for part in columns[1:] for column in part.column_names if column.endswith("_features")]
        # Tensors straight from Arrow (python lists of floats would cost seconds per epoch), in the stored dtype (the
        # torch format would give float32 and int64).
        return datasets.concatenate_datasets(columns, axis=1).with_format(
            "torch", columns=feature_columns, output_all_columns=True, dtype=CACHE_DTYPES[self.cache_dtype]
        )


@dataclass
class UtteranceCollator:
    """Batches utterance rows into model inputs: cached features of the cached modalities, processor outputs for the
    live ones, and `labels` when the rows have a `label`.

    Args:
        processor: pads the tokens and reads the clips of live modalities.
        modalities: the model's modalities.
        cached_modalities: those whose features are columns of the rows (`FeatureCache`).
    """

    processor: MMEmotionProcessor
    modalities: list[str]
    cached_modalities: list[str]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        if "text" in self.modalities:
            batch["text_mask"] = torch.tensor([row["text_mask"] for row in rows])
            if "text" in self.cached_modalities:
                features = cached_features([row["text_features"] for row in rows])
                batch["text_features"] = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
                token_masks = [torch.ones(len(item), dtype=torch.long) for item in features]
                batch["attention_mask"] = torch.nn.utils.rnn.pad_sequence(token_masks, batch_first=True)
            else:
                tokens = [{"input_ids": row["input_ids"], "attention_mask": row["attention_mask"]} for row in rows]
                batch.update(self.processor.tokenizer.pad(tokens, return_tensors="pt"))
                if "text_target_mask" in rows[0]:
                    masks = [row["text_target_mask"] for row in rows]
                    batch["text_target_mask"] = pad_target_masks(masks, self.processor.tokenizer.padding_side)
        for modality in ("video", "audio"):
            if modality not in self.modalities:
                continue
            if modality in self.cached_modalities:
                batch[f"{modality}_features"] = torch.stack(cached_features([row[f"{modality}_features"] for row in rows]))
                batch[f"{modality}_mask"] = torch.tensor([row[f"{modality}_mask"] for row in rows])
            else:
                batch.update(process_media(self.processor, modality, [row["video_path"] for row in rows]))
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([row["label"] for row in rows])
        return batch


def utterance_dataset(
    conversations: list[dict],
    processor: MMEmotionProcessor,
    feature_cache: FeatureCache,
    split: str,
    video_dir: str | None,
    max_length: int,
) -> datasets.Dataset:
    """One row per utterance: ECF fields, tokens, and the cached features of the frozen encoders."""
    dataset = ecf.conversations_to_utterance_dataset(conversations, video_dir=video_dir)
    if all(label == ecf.IGNORE_INDEX for label in dataset["label"]):
        dataset = dataset.remove_columns("label")  # an unlabelled test file: predict without a loss
    dataset = tokenize_utterances(dataset, processor, max_length)
    return feature_cache.add_features(dataset, split)
