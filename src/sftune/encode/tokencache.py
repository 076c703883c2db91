"""Exact batched tokenization that pays the tokenizer once per distinct word, not once per text.

A fast tokenizer spends most of its time on per-text bookkeeping (normalized strings, alignments),
not on BPE. SFT data repeats the same words and template markers over and over, so this cuts each
text at the places where the tokenizer's own pre-tokenizer always cuts, tokenizes each distinct
piece once with the real tokenizer, and assembles every text from cached pieces with numpy.

Where it cuts: before a single ASCII space that has a non-whitespace character on each side
(" word" then starts the next piece). For the pre-tokenizer regexes of GPT-2, Llama 3 and Qwen 2
no pre-token ever runs across such a space (every alternative that contains a non-space character
ends before a following space), the match at the space only looks forward, and the piece before it
ends in a non-space, so no lookahead sees past the cut. BPE never merges across pre-tokens, and
added tokens without whitespace cannot straddle the cut either. Hence the ids (and offsets) of the
pieces, joined, are the ids of the whole text. `why_not` accepts only tokenizers whose pipeline
is exactly one of those (byte-level BPE, no normalizer or NFC, no stripping added tokens); others
go through the tokenizer as a whole.

Pieces are found by a 64-bit polynomial hash and then compared character by character with the
stored piece, so a hash collision can cost time but never give a wrong id.
"""

from __future__ import annotations

import json
from itertools import chain
from typing import Any

import numpy as np

# The pre-tokenizer regexes the cut rule above was checked against, as tokenizer.json spells them.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
KNOWN_PATTERNS = (LLAMA3_PATTERN, QWEN2_PATTERN)

# Characters next to which no cut is made: everything Python counts as whitespace (a superset of
# Unicode's White_Space, which the regexes' \s means), and, in case a regex engine's Unicode tables
# are older, the invisible characters once or elsewhere classed as spaces. All lie below U+FF00.
_WS_LIMIT = 0xFF00
_WHITESPACE = np.array([chr(c).isspace() or c in (0x180E, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF)
                        for c in range(_WS_LIMIT)] + [False])
_P = np.uint64(0x9E3779B97F4A7C15)
_P_INV = np.uint64(pow(int(_P), -1, 1 << 64))
_MAX_ENTRIES = 2_000_000


def why_not(backend: Any) -> str | None:
    """Why `backend` (a `tokenizers.Tokenizer`) cannot be cut into cached pieces, or None if it can."""
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout"):
        return "not a BPE model without dropout"
    if spec.get("normalizer") not in (None, {"type": "NFC"}):
        return f"normalizer {spec['normalizer'].get('type')!r}"
    if not _known_pre_tokenizer(spec.get("pre_tokenizer")):
        return "pre-tokenizer is not GPT-2, Llama 3 or Qwen 2 byte-level"
    for added in spec.get("added_tokens") or []:
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word") or any(
                c.isspace() for c in added["content"]):
            return f"added token {added['content']!r} strips or holds whitespace"
    return None


def _known_pre_tokenizer(pre: dict | None) -> bool:
    def byte_level(p: dict, regex: bool) -> bool:
        return p.get("type") == "ByteLevel" and not p.get("add_prefix_space") and bool(p.get("use_regex", True)) == regex

    if pre is None:
        return False
    if pre.get("type") == "ByteLevel":
        return byte_level(pre, regex=True)  # its built-in regex is GPT2_PATTERN
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not steps or len(steps) != 2:
        return False
    split, last = steps
    return (split.get("type") == "Split" and (split.get("pattern") or {}).get("Regex") in KNOWN_PATTERNS
            and split.get("behavior") == "Isolated" and not split.get("invert") and byte_level(last, regex=False))


class PieceCache:
    """Tokenizes batches of texts through a cache of pieces; ids and offsets equal the tokenizer's.

    State: a table of distinct pieces (their characters, ids and offsets relative to the piece),
    grown from the tokenizer on misses and cleared past a couple of million pieces.
    """

    def __init__(self, backend: Any):
        self.backend = backend
        self._powers = np.ones(1, dtype=np.uint64)
        self._inverse_powers = np.ones(1, dtype=np.uint64)
        self.clear()

    def clear(self) -> None:
        self._hashes = np.zeros(0, dtype=np.uint64)   # sorted, distinct
        self._entry_of_hash = np.zeros(0, dtype=np.int64)
        self._chars = np.zeros(0, dtype=np.uint32)    # every entry's code points, one after another
        self._char_start = np.zeros(1, dtype=np.int64)
        self._ids = np.zeros(0, dtype=np.int32)       # every entry's tokens, one after another
        self._rel_start = np.zeros(0, dtype=np.int64)
        self._rel_end = np.zeros(0, dtype=np.int64)
        self._token_start = np.zeros(1, dtype=np.int64)
        self._collided: dict[str, int] = {}
        self.hits = self.misses = 0

    @property
    def size(self) -> int:
        """How many distinct pieces the cache holds."""
        return len(self._char_start) - 1

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids, starts, ends, counts): flat token ids with character offsets into each text, and tokens per text.

        starts/ends are what the tokenizer's offsets give (character positions within the text).
        """
        if self.size > _MAX_ENTRIES:  # start over rather than grow without bound
            self.clear()
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
        text_start = np.cumsum(lengths) - lengths
        big = "".join(texts)
        cp = np.frombuffer(big.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        piece_start = self._cuts(cp, text_start, lengths)
        piece_end = np.append(piece_start[1:], len(cp))
        hashes = self._hash(cp, piece_start, piece_end)
        entries = self._find(cp, piece_start, piece_end, hashes)
        missing = np.flatnonzero(entries < 0)
        if len(missing):
            self._add(big, cp, piece_start[missing], piece_end[missing], hashes[missing])
            entries[missing] = self._find(cp, piece_start[missing], piece_end[missing], hashes[missing])
            still = missing[entries[missing] < 0]  # true hash collisions: looked up by their text
            entries[still] = [self._by_text(big[s:e]) for s, e in zip(piece_start[still].tolist(),
                                                                     piece_end[still].tolist())]
        self.misses += len(missing)
        self.hits += len(entries) - len(missing)
        first = self._token_start[entries]
        counts_per_piece = self._token_start[entries + 1] - first
        source = np.repeat(first - (np.cumsum(counts_per_piece) - counts_per_piece), counts_per_piece)
        source += np.arange(len(source), dtype=np.int64)
        pieces_per_text = np.diff(np.append(np.searchsorted(piece_start, text_start), len(piece_start)))
        piece_row = np.repeat(np.arange(len(texts)), pieces_per_text)
        base = np.repeat(piece_start - text_start[piece_row], counts_per_piece)
        counts = np.bincount(piece_row, weights=counts_per_piece, minlength=len(texts)).astype(np.int64)
        return self._ids[source], base + self._rel_start[source], base + self._rel_end[source], counts

    # --- cutting and hashing ---------------------------------------------------------------------

    @staticmethod
    def _cuts(cp: np.ndarray, text_start: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Piece starts: every text start, and every single space between two non-space characters."""
        ws = _WHITESPACE[np.minimum(cp, _WS_LIMIT)]
        inside = np.ones(len(cp), dtype=bool)  # position has a neighbour on both sides in its own text
        inside[text_start[lengths > 0]] = False
        ends = (text_start + lengths - 1)[lengths > 0]
        inside[ends] = False
        cut = (cp == 32) & inside
        cut[1:] &= ~ws[:-1]
        cut[:-1] &= ~ws[1:]
        cut[text_start[lengths > 0]] = True
        return np.flatnonzero(cut)

    def _hash(self, cp: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        n = len(cp)
        if len(self._powers) < n + 1:
            size = max(n + 1, 2 * len(self._powers))
            self._powers, self._inverse_powers = (np.full(size, base, dtype=np.uint64) for base in (_P, _P_INV))
            self._powers[0] = self._inverse_powers[0] = 1
            np.cumprod(self._powers, out=self._powers)  # wraps modulo 2**64, as intended
            np.cumprod(self._inverse_powers, out=self._inverse_powers)
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(cp.astype(np.uint64) * self._powers[:n], out=prefix[1:])
        return (prefix[end] - prefix[start]) * self._inverse_powers[start] + (end - start).astype(np.uint64)

    # --- the table of pieces ---------------------------------------------------------------------

    def _find(self, cp: np.ndarray, start: np.ndarray, end: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """The entry of each piece, -1 where none holds exactly its characters."""
        entries = np.full(len(hashes), -1, dtype=np.int64)
        if not len(self._hashes):
            return entries
        at = np.minimum(np.searchsorted(self._hashes, hashes), len(self._hashes) - 1)
        candidate = self._entry_of_hash[at]
        size = end - start
        found = (self._hashes[at] == hashes) & (self._char_start[candidate + 1] - self._char_start[candidate] == size)
        # Compare every character with the stored piece's (a matching hash is only a candidate).
        owner = np.repeat(np.arange(len(size)), size)
        position = np.arange(len(owner), dtype=np.int64) + np.repeat(start - (np.cumsum(size) - size), size)
        stored_at = position + np.where(found, self._char_start[candidate] - start, 0)[owner]
        differs = self._chars[np.minimum(stored_at, len(self._chars) - 1)] != cp[position]
        found[owner[differs]] = False
        entries[found] = candidate[found]
        return entries

    def _add(self, big: str, cp: np.ndarray, start: np.ndarray, end: np.ndarray, hashes: np.ndarray) -> None:
        """Tokenize each distinct missing piece once and store it under its hash."""
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        keep = np.ones(len(ordered), dtype=bool)
        keep[1:] = ordered[1:] != ordered[:-1]
        new, first = ordered[keep], order[keep]
        at = np.minimum(np.searchsorted(self._hashes, new), max(len(self._hashes) - 1, 0))
        taken = self._hashes[at] == new if len(self._hashes) else np.zeros(len(new), dtype=bool)
        new, first = new[~taken], first[~taken]  # a taken hash belongs to another piece: found by text instead
        if not len(new):
            return
        lo, hi = start[first], end[first]
        entries = self._store([big[s:e] for s, e in zip(lo.tolist(), hi.tolist())], cp[_ranges(lo, hi)], hi - lo)
        at = np.searchsorted(self._hashes, new)
        self._hashes = np.insert(self._hashes, at, new)
        self._entry_of_hash = np.insert(self._entry_of_hash, at, entries)

    def _by_text(self, piece: str) -> int:
        if piece not in self._collided:
            chars = np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            self._collided[piece] = int(self._store([piece], chars, np.array([len(piece)]))[0])
        return self._collided[piece]

    def _store(self, pieces: list[str], chars: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """Append pieces (their text, their code points one after another, their lengths) as new entries."""
        ids, starts, ends, counts = _tokenize_pieces(self.backend, pieces)
        first = len(self._char_start) - 1
        self._chars = np.concatenate([self._chars, chars])
        self._char_start = np.concatenate([self._char_start, self._char_start[-1] + np.cumsum(sizes)])
        self._ids = np.concatenate([self._ids, ids.astype(np.int32)])
        self._rel_start = np.concatenate([self._rel_start, starts])
        self._rel_end = np.concatenate([self._rel_end, ends])
        self._token_start = np.concatenate([self._token_start, self._token_start[-1] + np.cumsum(counts)])
        return np.arange(first, first + len(pieces), dtype=np.int64)


def tokenize_whole(backend: Any, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, starts, ends, counts): texts tokenized whole by the fast tokenizer (its threads, no GIL),
    flat over the texts, with each token's character offsets within its text."""
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    counts = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
    total = int(counts.sum())
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=total)
    offsets = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)), dtype=np.int64,
                          count=2 * total).reshape(-1, 2)
    return ids, offsets[:, 0], offsets[:, 1], counts


_PIECES_PER_TEXT = 16


def _tokenize_pieces(backend: Any, pieces: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Like `tokenize_whole`, with far fewer tokenizer calls for short pieces.

    A piece that starts with a space and a non-space and ends in a non-space can follow another such
    piece with a cut between them (the rule of this module), so they are tokenized 16 to a text (the
    fastest grouping measured; see bench/results) and split back by offsets. The
    others (a text's first piece, a last piece ending in whitespace) go alone.
    """
    joinable = [k for k, p in enumerate(pieces) if len(p) > 1 and p[0] == " " and not p[1].isspace()
                and not p[-1].isspace()]
    alone = sorted(set(range(len(pieces))) - set(joinable))
    groups = [joinable[i:i + _PIECES_PER_TEXT] for i in range(0, len(joinable), _PIECES_PER_TEXT)]
    ids, starts, ends, counts = tokenize_whole(backend, ["".join(pieces[k] for k in group) for group in groups]
                                               + [pieces[k] for k in alone])
    # Each token's piece: in a joined text, the last piece starting at or before the token.
    sizes = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    order = np.asarray([k for group in groups for k in group] + alone, dtype=np.int64)
    text_of_piece = np.concatenate([np.full(len(group), g) for g, group in enumerate(groups)]
                                   + [np.arange(len(groups), len(groups) + len(alone))]).astype(np.int64)
    piece_start = np.zeros(len(order), dtype=np.int64)  # within its text
    if len(order):
        ordered = sizes[order]
        piece_start = np.cumsum(ordered) - ordered
        first_of_text = np.searchsorted(text_of_piece, text_of_piece)  # index of the text's first piece
        piece_start -= piece_start[first_of_text]
    text_of_token = np.repeat(np.arange(len(counts)), counts)
    key = text_of_piece * (int(sizes.sum()) + 1) + piece_start  # sorted: texts in order, pieces in order
    slot = np.searchsorted(key, text_of_token * (int(sizes.sum()) + 1) + starts, side="right") - 1
    piece_of_token = order[slot]
    tokens_per_piece = np.bincount(piece_of_token, minlength=len(pieces))
    by_piece = np.argsort(piece_of_token, kind="stable")  # entries are stored in the order of `pieces`
    base = piece_start[slot]
    return (ids[by_piece], (starts - base)[by_piece], (ends - base)[by_piece], tokens_per_piece)


def _ranges(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The positions start[0]..end[0]-1, start[1]..end[1]-1, ... as one array."""
    size = end - start
    return np.arange(int(size.sum()), dtype=np.int64) + np.repeat(start - (np.cumsum(size) - size), size)
