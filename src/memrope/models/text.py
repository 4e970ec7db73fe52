"""umT5 text encoder for Wan-based video models: prompts in, ``[B, 512, 4096]`` context out.

Wan2.1 conditions on umT5-XXL's last hidden state, padded to ``text_len`` tokens with *zeros* past each
prompt's true length (Wan's ``T5EncoderModel`` trims to the mask length, the pipelines pad back with
zeros; Self-Forcing zeroes ``u[len:]``). We run the encoder through transformers' ``UMT5EncoderModel``
and load either Wan's original ``models_t5_umt5-xxl-enc-bf16.pth`` (key layout converted in
:mod:`memrope.models.text_convert`) or a diffusers-format ``text_encoder/`` folder.

umT5-XXL is ~5.7 B parameters, too big to share a modest GPU with the video model, so encoders are made
by a *factory* that knows a cheap :attr:`UMT5EncoderFactory.identity` without loading anything; the
prompt cache (:mod:`memrope.models.prompt_cache`) only calls the factory for prompts it has not seen.
"""

from __future__ import annotations

import gc
import hashlib
import html
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from memrope.models.text_convert import umt5_to_wan_t5_key, wan_t5_config_kwargs
from memrope.models.weight_files import WeightFileError, check_state_dict, read_state_dict, read_weight_folder

# Wan2.1 shared config: ``text_len = 512`` (umT5 context length the DiT cross-attends to).
WAN_TEXT_LEN = 512
# File names inside a Wan2.1-T2V folder (Wan-Video/Wan2.1@9737cba ``wan/configs``: ``t5_checkpoint``, ``t5_tokenizer``).
WAN_T5_CHECKPOINT = "models_t5_umt5-xxl-enc-bf16.pth"
WAN_T5_TOKENIZER = "google/umt5-xxl"
# Sub-folders of a diffusers Wan pipeline folder.
DIFFUSERS_TEXT_ENCODER, DIFFUSERS_TOKENIZER = "text_encoder", "tokenizer"

ORIGINAL_T5_FORMAT = (
    "Wan's original umT5 encoder state dict (models_t5_umt5-xxl-enc-bf16.pth; keys like "
    "token_embedding.weight, blocks.0.attn.q.weight, blocks.0.ffn.fc1.weight, norm.weight)"
)
DIFFUSERS_T5_FORMAT = "a transformers UMT5EncoderModel folder (config.json + model.safetensors)"

# Identity hashing: enough of each weight file to tell files apart without reading 11 GB.
_IDENTITY_CHUNK_BYTES = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".json")


WAN_EXTRA_HINT = "install memrope's real-model dependencies: pip install 'memrope[wan]'"


def _cleaners():
    """ftfy and regex, the two libraries Wan's cleaning calls; both come with the ``wan`` extra."""
    try:
        import ftfy
        import regex
    except ImportError as err:
        raise ImportError(f"prompt cleaning as Wan does it needs {err.name}; {WAN_EXTRA_HINT}") from err
    return ftfy, regex


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'`` prompt cleaning, step for step (Wan-Video/Wan2.1@9737cba
    ``wan/modules/tokenizers.py``: ``whitespace_clean(basic_clean(text))``): ``ftfy.fix_text``, HTML
    unescaping twice, strip; then every run of whitespace (``regex``'s ``\\s``) becomes one space, strip.

    ftfy is not a mojibake fixer only: with its default configuration it also straightens typographic
    quotes and apostrophes (``’`` -> ``'``, ``“red”`` -> ``"red"``), splits ligatures (``ﬁ`` -> ``fi``),
    narrows full-width characters (``Ａ`` -> ``A``) and removes control characters, so skipping it
    changes the token ids of ordinary prompts (prompt lists such as MovieGen's are full of ``’``).
    Self-Forcing, LongLive and the MemRoPE reference tokenize through the same Wan class.
    """
    ftfy, regex = _cleaners()
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip()


def _cleaning_tag() -> str:
    """Names the cleaning in the prompt cache's key: embeddings cleaned by another ftfy are not reused."""
    ftfy, _ = _cleaners()
    return f"wan-whitespace+ftfy-{ftfy.__version__}"


def _file_fingerprint(path: Path, digest: hashlib._Hash, whole: bool) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}\0{size}\0".encode())
    with path.open("rb") as f:
        if whole or size <= 2 * _IDENTITY_CHUNK_BYTES:
            digest.update(f.read())
        else:
            digest.update(f.read(_IDENTITY_CHUNK_BYTES))
            f.seek(size - _IDENTITY_CHUNK_BYTES)
            digest.update(f.read(_IDENTITY_CHUNK_BYTES))


def encoder_identity(kind: str, weights: Path, tokenizer: Path, text_len: int) -> str:
    """A cheap, path-independent name for (encoder weights, tokenizer, text_len, prompt cleaning).

    Weight files are fingerprinted by name, size and their first and last MiB (cheap even for 11 GB);
    tokenizer files are hashed whole. Two copies of the same files in different places share an identity.
    """
    weights, tokenizer = Path(weights), Path(tokenizer)
    digest = hashlib.sha256(f"umt5\0{kind}\0{text_len}\0{_cleaning_tag()}\0".encode())
    weight_files = (
        [weights]
        if weights.is_file()
        else sorted(p for p in weights.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    )
    for path in weight_files:
        _file_fingerprint(path, digest, whole=False)
    digest.update(b"\0tokenizer\0")
    for path in sorted(p for p in tokenizer.iterdir() if p.is_file()):
        _file_fingerprint(path, digest, whole=True)
    return f"umt5-{kind}-{digest.hexdigest()[:32]}"


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not folder.is_dir():
        raise WeightFileError(f"{folder}: no such tokenizer folder (expected the umT5 tokenizer files)")
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise WeightFileError(f"{folder}: not a loadable umT5 tokenizer folder ({err})") from err


def _meta_model(config):
    from transformers import UMT5EncoderModel

    with torch.device("meta"):  # allocate nothing: the checkpoint's tensors are assigned afterwards
        return UMT5EncoderModel(config)


def _finish(model, state: dict[str, torch.Tensor], device, dtype):
    model.load_state_dict(state, strict=True, assign=True)
    model.set_input_embeddings(model.shared)  # re-tie encoder.embed_tokens to shared (one tensor, not two)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class UMT5TextEncoder:
    """A loaded umT5 encoder + tokenizer; ``encode`` gives float32 ``[B, text_len, text_dim]`` on the CPU."""

    def __init__(self, model, tokenizer, identity: str, text_len: int = WAN_TEXT_LEN) -> None:
        if text_len <= 0:
            raise ValueError(f"text_len must be positive, got {text_len}")
        self.model = model
        self.tokenizer = tokenizer
        self.identity = identity
        self.text_len = text_len
        self.text_dim = int(model.config.d_model)

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, ``[B, text_len]`` each, as Wan's ``HuggingfaceTokenizer(seq_len=512,
        clean='whitespace')`` makes them: cleaned prompts, padded to ``text_len`` on the right, truncated."""
        tokens = self.tokenizer(
            [clean_prompt(p) for p in prompts],
            padding="max_length",
            max_length=self.text_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return tokens["input_ids"], tokens["attention_mask"]  # mask: 1 for real tokens (right padding)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Encode prompts; positions past each prompt's true token length are exactly zero."""
        if self.model is None:
            raise RuntimeError("this UMT5TextEncoder was closed; make a new one")
        if isinstance(prompts, str) or not prompts:
            raise ValueError("encode takes a non-empty list of prompt strings")
        ids, mask = self.tokenize(prompts)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()  # [B, L, D]
        lengths = mask.sum(dim=1)  # [B]
        keep = torch.arange(ids.shape[1], device=device)[None, :] < lengths[:, None]  # [B, L]
        return (hidden * keep[..., None]).cpu()

    def close(self) -> None:
        """Free the encoder's weights (host and device memory); the object cannot encode afterwards."""
        on_cuda = self.model is not None and next(self.model.parameters()).is_cuda
        self.model = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    @classmethod
    def from_wan_pth(
        cls,
        checkpoint: str | Path,
        tokenizer_dir: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        text_len: int = WAN_TEXT_LEN,
    ) -> UMT5TextEncoder:
        """Load Wan's original ``models_t5_umt5-xxl-enc-bf16.pth`` and a tokenizer folder."""
        from transformers import UMT5Config

        checkpoint, tokenizer_dir = Path(checkpoint), Path(tokenizer_dir)
        state = read_state_dict(checkpoint, ORIGINAL_T5_FORMAT)
        try:
            config = UMT5Config(**wan_t5_config_kwargs(state))
        except KeyError as err:
            raise WeightFileError(
                f"{checkpoint}: does not match {ORIGINAL_T5_FORMAT}; missing key {err.args[0]} "
                f"(first keys found: {', '.join(sorted(state)[:5])})"
            ) from err
        tokenizer = _load_tokenizer(tokenizer_dir)
        model = _meta_model(config)
        to_original = {k: umt5_to_wan_t5_key(k) for k in model.state_dict()}
        shapes = {to_original[k]: v.shape for k, v in model.state_dict().items()}
        check_state_dict(state, shapes, checkpoint, ORIGINAL_T5_FORMAT)
        model = _finish(model, {k: state[o] for k, o in to_original.items()}, device, dtype)
        identity = encoder_identity("wan", checkpoint, tokenizer_dir, text_len)
        return cls(model, tokenizer, identity, text_len)

    @classmethod
    def from_diffusers_dir(
        cls,
        text_encoder_dir: str | Path,
        tokenizer_dir: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        text_len: int = WAN_TEXT_LEN,
    ) -> UMT5TextEncoder:
        """Load a diffusers-format ``text_encoder/`` folder (transformers ``UMT5EncoderModel``) offline."""
        from transformers import UMT5Config

        text_encoder_dir, tokenizer_dir = Path(text_encoder_dir), Path(tokenizer_dir)
        config_file = text_encoder_dir / "config.json"
        if not config_file.is_file():
            raise WeightFileError(f"{config_file}: no such file (expected {DIFFUSERS_T5_FORMAT})")
        try:
            config = UMT5Config.from_json_file(str(config_file))
        except (OSError, ValueError) as err:
            raise WeightFileError(
                f"{config_file}: not a readable config ({err}); expected {DIFFUSERS_T5_FORMAT}"
            ) from err
        described = config.architectures or [config.model_type]
        if config.model_type != "umt5" or described not in (["UMT5EncoderModel"], ["umt5"]):
            raise WeightFileError(f"{config_file}: describes {described}, expected UMT5EncoderModel")
        state = read_weight_folder(text_encoder_dir, ("model",), DIFFUSERS_T5_FORMAT)
        # transformers saves tied weights once: either name may stand for both.
        tied = ("shared.weight", "encoder.embed_tokens.weight")
        for a, b in (tied, tied[::-1]):
            if a in state and b not in state:
                state[b] = state[a]
        tokenizer = _load_tokenizer(tokenizer_dir)
        model = _meta_model(config)
        check_state_dict(
            state, {k: v.shape for k, v in model.state_dict().items()}, text_encoder_dir, DIFFUSERS_T5_FORMAT
        )
        model = _finish(model, state, device, dtype)
        identity = encoder_identity("diffusers", text_encoder_dir, tokenizer_dir, text_len)
        return cls(model, tokenizer, identity, text_len)


@dataclass(frozen=True)
class UMT5EncoderFactory:
    """Where an umT5 encoder lives, with a cheap :attr:`identity`; calling it loads the encoder.

    The prompt cache keys embeddings by ``identity`` and only calls the factory on a miss, so a run whose
    prompts are all cached never reads the 11 GB checkpoint.
    """

    kind: str  # "wan" (original .pth) or "diffusers" (text_encoder/ folder)
    weights: Path
    tokenizer: Path
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    text_len: int = WAN_TEXT_LEN

    def __post_init__(self) -> None:
        if self.kind not in ("wan", "diffusers"):
            raise ValueError(f"UMT5EncoderFactory.kind must be 'wan' or 'diffusers', got {self.kind!r}")
        if self.text_len <= 0:
            raise ValueError(f"text_len must be positive, got {self.text_len}")
        object.__setattr__(self, "weights", Path(self.weights))
        object.__setattr__(self, "tokenizer", Path(self.tokenizer))

    @classmethod
    def from_wan_dir(cls, wan_dir: str | Path, **kwargs) -> UMT5EncoderFactory:
        """A Wan2.1-T2V folder: ``models_t5_umt5-xxl-enc-bf16.pth`` + ``google/umt5-xxl/``."""
        wan_dir = Path(wan_dir)
        return cls("wan", wan_dir / WAN_T5_CHECKPOINT, wan_dir / WAN_T5_TOKENIZER, **kwargs)

    @classmethod
    def from_diffusers_dir(cls, root: str | Path, **kwargs) -> UMT5EncoderFactory:
        """A diffusers Wan pipeline folder: ``text_encoder/`` + ``tokenizer/``."""
        root = Path(root)
        return cls("diffusers", root / DIFFUSERS_TEXT_ENCODER, root / DIFFUSERS_TOKENIZER, **kwargs)

    @cached_property
    def identity(self) -> str:
        for path in (self.weights, self.tokenizer):
            if not path.exists():
                raise WeightFileError(f"{path}: not found (umT5 {self.kind} encoder files)")
        return encoder_identity(self.kind, self.weights, self.tokenizer, self.text_len)

    def __call__(self) -> UMT5TextEncoder:
        load = UMT5TextEncoder.from_wan_pth if self.kind == "wan" else UMT5TextEncoder.from_diffusers_dir
        return load(
            self.weights, self.tokenizer, device=self.device, dtype=self.dtype, text_len=self.text_len
        )
