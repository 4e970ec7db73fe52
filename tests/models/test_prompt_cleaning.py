"""Prompt cleaning is Wan's: typographic prompts give the token ids and embeddings Wan's tokenizer gives.

The reference rule is written out here from Wan-Video/Wan2.1@9737cba ``wan/modules/tokenizers.py``
(``HuggingfaceTokenizer(clean='whitespace')``: ``basic_clean`` = ftfy, HTML unescape twice, strip; then
``whitespace_clean`` = ``regex.sub(r'\\s+', ' ')``, strip), and the expected cleaned strings are spelled out
by hand. The tokenizer is a SentencePiece model trained in-process on the *cleaned* (ASCII) forms, so a
typographic character left in place becomes ``<unk>`` and the ids differ.
"""

from __future__ import annotations

import html
import sys

import ftfy
import pytest
import regex
import torch

from memrope.models import text as text_module
from memrope.models.text import UMT5EncoderFactory, clean_prompt

TEXT_LEN = 40
# (raw prompt, what Wan's cleaning makes of it), by hand
CASES = [
    ("the dog\u2019s \u201cred\u201d ball \u2026 \ufb01eld", 'the dog\'s "red" ball \u2026 field'),
    ("\uff32\uff25\uff24 ball on the \ufb02oor", "RED ball on the floor"),  # full-width letters, fl ligature
    ("a cat don\u00e2\u20ac\u2122t jump", "a cat don't jump"),  # mojibake of U+2019 read as cp1252
    ("cats &amp;amp; dogs &lt;3", "cats & dogs <3"),  # HTML entities, unescaped twice
    ("\u00a0 a\u2003red\n\tball\u2028 on\x1cthe field  ", "a red ball onthe field"),  # spaces, control char
    ("the dog's \"red\" ball", "the dog's \"red\" ball"),  # already clean: unchanged
]
CORPUS = [clean for _, clean in CASES] + ["a dog on the red floor", "cats and dogs in the field"]


def wan_clean(text: str) -> str:
    """Wan's ``whitespace_clean(basic_clean(text))``, as released."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = regex.sub(r"\s+", " ", text)
    return text.strip()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from transformers import T5Tokenizer

    from tests.models.tiny_wan_files import tiny_umt5, write_tokenizer

    root = tmp_path_factory.mktemp("cleaning")
    tok = write_tokenizer(root / "tokenizer", corpus=CORPUS)
    tiny_umt5(len(T5Tokenizer.from_pretrained(tok))).save_pretrained(root / "text_encoder")
    return UMT5EncoderFactory.from_diffusers_dir(root, text_len=TEXT_LEN)()


@pytest.mark.parametrize(("raw", "clean"), CASES)
def test_cleaning_is_wans(raw, clean):
    assert wan_clean(raw) == clean
    assert clean_prompt(raw) == clean


def test_token_ids_are_those_of_wans_rules(encoder):
    raw = [r for r, _ in CASES]
    ids, mask = encoder.tokenize(raw)
    wan = encoder.tokenizer([wan_clean(r) for r in raw], padding="max_length", max_length=TEXT_LEN,
                            truncation=True, add_special_tokens=True, return_tensors="pt")
    assert torch.equal(ids, wan["input_ids"]) and torch.equal(mask, wan["attention_mask"])
    uncleaned = encoder.tokenizer(raw, padding="max_length", max_length=TEXT_LEN, truncation=True,
                                  return_tensors="pt")["input_ids"]
    changed = [i for i, (r, c) in enumerate(CASES) if r != c]
    assert all(not torch.equal(uncleaned[i], ids[i]) for i in changed)  # the cleaning matters for every one
    unk = encoder.tokenizer.unk_token_id
    assert (uncleaned[0] == unk).sum() >= (ids[0] == unk).sum() + 3  # ’ “ ” ﬁ are not in the vocabulary


def test_typographic_prompt_embeds_like_its_clean_form(encoder):
    raw, clean = zip(*CASES, strict=True)
    assert torch.equal(encoder.encode(list(raw)), encoder.encode(list(clean)))


def test_whitespace_is_regex_whitespace():
    """Wan's ``\\s`` is the ``regex`` module's (Unicode White_Space); the standard library's differs on
    U+001C..U+001F, which ftfy removes before either sees them."""
    for c in ("\x1c", "\x1f", "\u0085", "\u00a0", "\u1680", "\u2000", "\u200a", "\u2028", "\u202f", "\u3000"):
        assert clean_prompt(f"a{c}b") == wan_clean(f"a{c}b")


def test_missing_ftfy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ftfy", None)  # import ftfy now raises ImportError
    with pytest.raises(ImportError, match=r"needs ftfy; install memrope's real-model dependencies: "
                                          r"pip install 'memrope\[wan\]'"):
        clean_prompt("a cat")


def test_the_cache_key_names_the_ftfy_version(monkeypatch):
    tag = text_module._cleaning_tag()
    assert tag == f"wan-whitespace+ftfy-{ftfy.__version__}"
    monkeypatch.setattr(ftfy, "__version__", "0.0.0")
    assert text_module._cleaning_tag() != tag
