"""CLIP's byte-level BPE tokenizer from its vocabulary file (`bpe_simple_vocab_16e6.txt.gz`), as
ViCLIP uses it, run by transformers' CLIPTokenizer.

Facts from Vchitect/VBench@45e79ec1 ``vbench/third_party/ViCLIP/simple_tokenizer.py`` (OpenAI's
SimpleTokenizer) and ``viclip_text.py`` (``tokenize``): the vocabulary is the 256 byte symbols, the
same with ``</w>``, one token per merge of lines 1 .. 48894 of the file (49152 - 256 - 2 merges), then
``<|startoftext|>`` and ``<|endoftext|>``; text is cleaned (ftfy.fix_text when ftfy is installed,
HTML unescaped twice, whitespace collapsed, lower-cased), a sequence is [SOT] + tokens + [EOT],
truncated to the context with EOT kept last, zero-padded.

Deviation: without the optional `ftfy` package, ftfy.fix_text (it repairs mojibake; plain prompts are
unchanged by it) is skipped.
"""

from __future__ import annotations

import gzip
import html
import re
from functools import lru_cache
from pathlib import Path

import torch

from memrope.eval.nets.loading import CheckpointMismatch

# simple_tokenizer.py: merges = merges[1:49152-256-2+1]
MERGE_LINES = 49152 - 256 - 2
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        lines = gzip.open(path).read().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointMismatch(f"{path}: not a gzipped BPE merges file ({e})") from None
    merges = [tuple(line.split()) for line in lines[1 : MERGE_LINES + 1] if line.strip()]
    bad = [m for m in merges if len(m) != 2]
    if bad or not merges:
        found = bad[:2] or "none"
        raise CheckpointMismatch(f"{path}: expected one 'a b' merge per line after the header, found {found}")
    return merges


def vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}


def basic_clean(text: str) -> str:
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text)).strip()).strip()


class ClipBpe:
    """Prompt -> (1, context) int token ids, exactly as ViCLIP's CLIP_TEXT.tokenize builds them."""

    def __init__(self, path: Path) -> None:
        from transformers import CLIPTokenizer

        merges = read_merges(Path(path))
        self.vocab = vocabulary(merges)
        self.sot, self.eot = self.vocab[SOT], self.vocab[EOT]
        self._tok = CLIPTokenizer(vocab=self.vocab, merges=merges, unk_token=EOT, bos_token=SOT, eos_token=EOT,
                                  pad_token=EOT)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """BPE ids of the text, without SOT/EOT."""
        return list(self._tok(basic_clean(text).lower(), add_special_tokens=False)["input_ids"])

    def __call__(self, text: str, context: int) -> torch.Tensor:
        ids = [self.sot, *self.encode(text), self.eot]
        if len(ids) > context:
            ids = ids[:context]
            ids[-1] = self.eot
        out = torch.zeros(1, context, dtype=torch.long)
        out[0, : len(ids)] = torch.tensor(ids)
        return out
