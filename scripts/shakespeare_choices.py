"""Writes data/shakespeare-choices.jsonl: 200 multiple-choice questions from the last tenth of
tinyshakespeare.txt (the text a `split = 0.9` corpus holds out). Each gives about 80 characters
of a line and asks which of three 30-character passages comes next: the real one, one taken
from elsewhere in the same tenth (which only sense tells apart), or the real one with each
word's letters shuffled (which spelling does). HellaSwag's layout (`ctx`, `endings`, `label` as
digits). Deterministic: python3 scripts/shakespeare_choices.py
"""
import json
import random
import re

text = open("data/tinyshakespeare.txt", encoding="utf-8").read()
held = text[int(len(text) * 0.9):]
starts = [m.start() for m in re.finditer(r"(?<=\s)\S", held)]
rng = random.Random(7)


def passage(at, n=30):
    """n characters from word start `at`, cut back to the last whole word."""
    s = held[at:at + n + 20]
    cut = s.rfind(" ", 0, n + 1)
    return s[:cut if cut > 10 else n].replace("\n", " ")


with open("data/shakespeare-choices.jsonl", "w", encoding="utf-8") as f:
    for _ in range(200):
        at = rng.choice(starts[:-200])
        ctx = held[at:at + 80]
        ctx = ctx[:ctx.rfind(" ")]
        real = passage(at + len(ctx) + 1)
        other = passage(rng.choice(starts[:-200]))
        scrambled = " ".join("".join(rng.sample(w, len(w))) for w in real.split(" "))
        endings = [real, other, scrambled]
        rng.shuffle(endings)
        f.write(json.dumps({"ctx": ctx, "endings": endings, "label": str(endings.index(real))}) + "\n")
