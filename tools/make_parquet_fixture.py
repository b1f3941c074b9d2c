#!/usr/bin/env python3
"""Writes the small parquet fixtures of ldviz's parquet reader (tests/fixtures/*.parquet).

    python3 tools/make_parquet_fixture.py     # needs pyarrow (pip install pyarrow); deterministic

- ultrafeedback_tiny.parquet: 6 rows in the exact schema of Hugging Face's
  HuggingFaceH4/ultrafeedback_binarized (prompt string, prompt_id string, chosen / rejected /
  messages as lists of {content, role} structs, score_chosen / score_rejected doubles), snappy,
  with the `huggingface` schema metadata the `datasets` library writes. UltraFeedback's
  conversations are single-turn (user, assistant) without system messages; chosen and rejected
  repeat the prompt as their first message.
- conversational_tiny.parquet: 3 rows of TRL's conversational preference format (prompt,
  chosen, rejected as message lists, prompt-only messages in `prompt`), one with a system
  message and one multi-turn prompt; snappy.
- standard_tiny.parquet: 4 rows of TRL's standard format (prompt, chosen, rejected strings) plus
  an int64 `id` column; snappy.
- not_preferences.parquet: columns `text` (string) and `label` (int64), no preference columns.
- wrong_types.parquet: `prompt` string, `chosen` and `rejected` int64.
- gzip_standard.parquet and zstd_standard.parquet: standard_tiny's rows, gzip- and
  zstd-compressed.
"""

import hashlib
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

MESSAGE = pa.struct([("content", pa.string()), ("role", pa.string())])
MESSAGES = pa.list_(MESSAGE)

UF_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("prompt_id", pa.string()),
        ("chosen", MESSAGES),
        ("rejected", MESSAGES),
        ("messages", MESSAGES),
        ("score_chosen", pa.float64()),
        ("score_rejected", pa.float64()),
    ]
)

# The `datasets` library's description of the features, stored in the schema metadata.
MSG_FEATURE = [{"content": {"dtype": "string", "_type": "Value"}, "role": {"dtype": "string", "_type": "Value"}}]
UF_FEATURES = {
    "info": {
        "features": {
            "prompt": {"dtype": "string", "_type": "Value"},
            "prompt_id": {"dtype": "string", "_type": "Value"},
            "chosen": MSG_FEATURE,
            "rejected": MSG_FEATURE,
            "messages": MSG_FEATURE,
            "score_chosen": {"dtype": "float64", "_type": "Value"},
            "score_rejected": {"dtype": "float64", "_type": "Value"},
        }
    }
}

UF_ROWS = [
    (
        "What is the capital of France?",
        "The capital of France is Paris.",
        "France's capital is Lyon, a city on the Rhone.",
        9.0,
        2.0,
    ),
    (
        "Write a haiku about the sea.",
        "Grey waves fold and break\nsalt wind combs the empty shore\nthe tide keeps its time",
        "The sea is big and blue and wet.",
        8.5,
        4.0,
    ),
    (
        "Explain in one sentence why the sky is blue.",
        "Air molecules scatter short blue wavelengths of sunlight far more than red ones, so blue light reaches us from every direction.",
        "Because it reflects the ocean.",
        9.5,
        3.0,
    ),
    (
        "Translate 'good morning' into Spanish.",
        "Buenos días.",
        "Buenas noches.",
        10.0,
        1.0,
    ),
    (
        "List three prime numbers greater than 10.",
        "11, 13 and 17.",
        "12, 15 and 21.",
        9.0,
        1.5,
    ),
    (
        "How many legs does a spider have?",
        "A spider has eight legs.",
        "Spiders have six legs, like other insects.",
        8.0,
        2.5,
    ),
]


def conv(prompt, answer):
    return [{"content": prompt, "role": "user"}, {"content": answer, "role": "assistant"}]


def ultrafeedback():
    cols = {name: [] for name in UF_SCHEMA.names}
    for prompt, chosen, rejected, sc, sr in UF_ROWS:
        cols["prompt"].append(prompt)
        cols["prompt_id"].append(hashlib.sha256(prompt.encode()).hexdigest())
        cols["chosen"].append(conv(prompt, chosen))
        cols["rejected"].append(conv(prompt, rejected))
        cols["messages"].append(conv(prompt, chosen))
        cols["score_chosen"].append(sc)
        cols["score_rejected"].append(sr)
    schema = UF_SCHEMA.with_metadata({"huggingface": json.dumps(UF_FEATURES)})
    table = pa.table(cols, schema=schema)
    pq.write_table(table, os.path.join(OUT, "ultrafeedback_tiny.parquet"), compression="snappy")


def conversational():
    rows = [
        (
            [
                {"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": "Name a colour of the rainbow."},
            ],
            "Green.",
            "Rainbows have no colours.",
        ),
        (
            [
                {"role": "user", "content": "I have 3 apples."},
                {"role": "assistant", "content": "Noted: 3 apples."},
                {"role": "user", "content": "I eat one. How many are left?"},
            ],
            "2 apples are left.",
            "You have 4 apples.",
        ),
        (
            [{"role": "user", "content": "What is 2 + 2?"}],
            "2 + 2 = 4.",
            "2 + 2 = 5.",
        ),
    ]
    msgs = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    table = pa.table(
        {
            "prompt": pa.array([p for p, _, _ in rows], type=msgs),
            "chosen": pa.array([[{"role": "assistant", "content": c}] for _, c, _ in rows], type=msgs),
            "rejected": pa.array([[{"role": "assistant", "content": r}] for _, _, r in rows], type=msgs),
        }
    )
    pq.write_table(table, os.path.join(OUT, "conversational_tiny.parquet"), compression="snappy")


STANDARD = {
    "id": pa.array([0, 1, 2, 3], type=pa.int64()),
    "prompt": ["Q: the boiling point of water at sea level?\nA:", "Q: the largest planet?\nA:", "Q: who wrote Hamlet?\nA:", "Q: the chemical symbol of gold?\nA:"],
    "chosen": [" 100 degrees Celsius.", " Jupiter.", " William Shakespeare.", " Au."],
    "rejected": [" 50 degrees Celsius.", " Mars.", " Charles Dickens.", " Ag."],
}


def standard():
    table = pa.table(STANDARD)
    pq.write_table(table, os.path.join(OUT, "standard_tiny.parquet"), compression="snappy")
    pq.write_table(table, os.path.join(OUT, "gzip_standard.parquet"), compression="gzip")
    pq.write_table(table, os.path.join(OUT, "zstd_standard.parquet"), compression="zstd")


def bad():
    table = pa.table({"text": ["a", "b"], "label": pa.array([0, 1], type=pa.int64())})
    pq.write_table(table, os.path.join(OUT, "not_preferences.parquet"), compression="snappy")
    table = pa.table(
        {
            "prompt": ["a", "b"],
            "chosen": pa.array([1, 2], type=pa.int64()),
            "rejected": pa.array([3, 4], type=pa.int64()),
        }
    )
    pq.write_table(table, os.path.join(OUT, "wrong_types.parquet"), compression="snappy")


if __name__ == "__main__":
    ultrafeedback()
    conversational()
    standard()
    bad()
    for name in sorted(os.listdir(OUT)):
        if name.endswith(".parquet"):
            print(name, os.path.getsize(os.path.join(OUT, name)), "bytes")
