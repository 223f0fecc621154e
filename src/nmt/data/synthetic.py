"""A synthetic translation task: whole numbers written as English words -> the same numbers in French words.

It needs no downloads, has one correct translation per input, and is learnable in seconds by a tiny model,
so tests use it to prove that training and decoding work together.
"""

from __future__ import annotations

import random

_EN_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
            "sixteen seventeen eighteen nineteen".split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_FR_UNITS = "zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize " \
            "dix-sept dix-huit dix-neuf".split()
_FR_TENS = "_ _ vingt trente quarante cinquante soixante".split()


def english_words(number: int) -> str:
    """Write 0 <= number < 1000 in English words, for example 342 -> 'three hundred forty two'."""
    if not 0 <= number < 1000:
        raise ValueError(f"number {number} is outside 0..999")
    hundreds, rest = divmod(number, 100)
    words = [_EN_UNITS[hundreds], "hundred"] if hundreds else []
    if rest or not hundreds:
        if rest < 20:
            words.append(_EN_UNITS[rest])
        else:
            tens, units = divmod(rest, 10)
            words.append(_EN_TENS[tens])
            if units:
                words.append(_EN_UNITS[units])
    return " ".join(words)


def _french_below_100(number: int) -> str:
    if number < 20:
        return _FR_UNITS[number]
    tens, units = divmod(number, 10)
    if tens in (7, 9):  # 70-79 = soixante-dix..., 90-99 = quatre-vingt-dix...
        base = "soixante" if tens == 7 else "quatre-vingt"
        joiner = " et " if number == 71 else "-"
        return base + joiner + _FR_UNITS[10 + units]
    if tens == 8:
        return "quatre-vingts" if units == 0 else "quatre-vingt-" + _FR_UNITS[units]
    if units == 0:
        return _FR_TENS[tens]
    if units == 1:
        return _FR_TENS[tens] + " et un"
    return _FR_TENS[tens] + "-" + _FR_UNITS[units]


def french_words(number: int) -> str:
    """Write 0 <= number < 1000 in French words, for example 342 -> 'trois cent quarante-deux'."""
    if not 0 <= number < 1000:
        raise ValueError(f"number {number} is outside 0..999")
    hundreds, rest = divmod(number, 100)
    if not hundreds:
        return _french_below_100(rest)
    head = "cent" if hundreds == 1 else f"{_FR_UNITS[hundreds]} cent{'s' if rest == 0 else ''}"
    return head if rest == 0 else f"{head} {_french_below_100(rest)}"


def number_pairs(numbers: list[int]) -> tuple[list[str], list[str]]:
    """Return (English sentences, French sentences) for ``numbers``."""
    return [english_words(n) for n in numbers], [french_words(n) for n in numbers]


def split_numbers(held_out: int, seed: int = 0, limit: int = 1000) -> tuple[list[int], list[int]]:
    """Shuffle 0..limit-1 with ``seed`` and return (training numbers, ``held_out`` test numbers)."""
    numbers = list(range(limit))
    random.Random(seed).shuffle(numbers)
    return numbers[held_out:], numbers[:held_out]
