"""Offline calibration inputs for the CLI and benchmarks: deterministic English template sentences (no corpus
ships offline), pad-free token windows, scikit-learn digits resized to a vision model, and random inputs."""

import random

import torch


SUBJECTS = """the old farmer|a young doctor|my neighbour|the small child|our teacher|the quiet engineer|a tired nurse|the
local baker|his sister|the new manager|a famous singer|the careful pilot|her grandfather|the busy student|a
friendly waiter|the city council|the research team|a stray dog|the orchestra|the museum guide""".replace("\n", " ")
VERBS = """repaired|painted|carried|visited|described|photographed|cleaned|ordered|borrowed|delivered|studied|
discovered|returned|explained|designed|sold|watched|built|measured|forgot""".replace("\n", "")
OBJECTS = """the broken bicycle|a wooden table|the red umbrella|an old map of the harbour|the kitchen window|a letter
from abroad|the winter garden|a basket of apples|the train schedule|the ancient bridge|a silver necklace|the
science report|a bowl of soup|the school library|the mountain cabin|a pair of boots|the evening newspaper|a
cup of tea|the football match|the new software""".replace("\n", " ")
PLACES = """near the river|in the village square|at the airport|behind the station|inside the museum|on the
hill|at the market|in the hospital|by the lake|under the bridge|in the classroom|at the beach""".replace("\n", " ")
TIMES = """yesterday morning|last winter|after lunch|before sunrise|during the storm|on Sunday|late at night|every
summer|two weeks ago|this afternoon""".replace("\n", " ")
ADJ = "beautiful|strange|expensive|quiet|crowded|dangerous|peaceful|modern|tiny|famous|boring|delicious".split("|")
TEMPLATES = (
    "{S} {V} {O} {P} {T}.",
    "{T}, {s} {V} {O}.",
    "Why had {s} {V} {O} {P}?",
    "{S} said that the {a} weather {P} was {b}.",
    "It was {a} when {s} {V} {O} {T}.",
    "{S} never {V} {O}, but the view {P} was {b}.",
    "Nobody expected that {s} {V} {O} {T}.",
    "The {a} room {P} smelled of {o}.",
)


def make_sentences(n: int = 640, seed: int = 1234) -> list[str]:
    """`n` distinct template sentences, deterministic for a given seed."""
    subj, verbs, objs = [w.strip() for w in SUBJECTS.split("|")], VERBS.split("|"), OBJECTS.split("|")
    places, times = [w.strip() for w in PLACES.split("|")], [w.strip() for w in TIMES.split("|")]
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        s, o = rng.choice(subj), rng.choice(objs)
        text = rng.choice(TEMPLATES).format(
            S=s[0].upper() + s[1:], s=s, V=rng.choice(verbs), O=o, o=o.split(" ", 1)[1], P=rng.choice(places),
            T=rng.choice(times), a=rng.choice(ADJ), b=rng.choice(ADJ),
        )  # fmt: skip
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


class TokenWindows(torch.utils.data.Dataset):
    """Pad-free calibration samples: `length`-token windows of the concatenated sentences ([CLS] ... [SEP])."""

    def __init__(self, tokenizer, sentences: list[str], length: int = 16):
        ids = [t for s in sentences for t in tokenizer(s, add_special_tokens=False)["input_ids"]]
        body = length - 2
        self.rows = [
            [tokenizer.cls_token_id, *ids[i : i + body], tokenizer.sep_token_id]
            for i in range(0, len(ids) - body + 1, body)
        ]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        ids = torch.tensor(self.rows[i])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def digits_pixels(model_config, num: int = 256) -> list[dict]:
    """scikit-learn digits (8×8, grey) resized to the model's image size and channel count, as pixel_values rows."""
    from sklearn.datasets import load_digits

    size = getattr(model_config, "image_size", 32)
    size = size[0] if isinstance(size, list | tuple) else size
    chans = getattr(model_config, "num_channels", 3)
    x = torch.tensor(load_digits().images[:num], dtype=torch.float32).unsqueeze(1) / 16.0  # (B, 1, 8, 8)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    return [{"pixel_values": row.expand(chans, -1, -1).contiguous()} for row in x]


def random_inputs(model_config, num: int = 128, seq: int = 16, seed: int = 0) -> list[dict]:
    """Random token ids (text models) or Gaussian pixel_values (vision models), seeded."""
    g = torch.Generator().manual_seed(seed)
    if getattr(model_config, "vocab_size", None):
        ids = torch.randint(0, model_config.vocab_size, (num, seq), generator=g)
        return [{"input_ids": r, "attention_mask": torch.ones_like(r)} for r in ids]
    size = getattr(model_config, "image_size", 32)
    size = size[0] if isinstance(size, list | tuple) else size
    x = torch.randn(num, getattr(model_config, "num_channels", 3), size, size, generator=g)
    return [{"pixel_values": r} for r in x]
