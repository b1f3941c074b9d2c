#!/usr/bin/env python3
"""Generates ldviz's embedded demo data (standard library only, deterministic).

    python3 tools/make_demo_data.py

Writes, relative to the repository root:

- assets/demo.jsonl         preference records in the authors' probe schema (Ren & Sutherland,
                            "Learning Dynamics of LLM Finetuning", ICLR 2025): training records
                            first, then exactly N_TEST held-out records at the end;
- assets/demo_meta.json     {"n_train", "n_test", "test_fraction", "seed"};
- assets/corpus.txt         an English pretraining corpus (one document per paragraph, blank
                            lines between) for the tiny default model;
- assets/corpus_heldout.txt a held-out corpus (same generators, other seed, disjoint sentences)
                            for held-out perplexity.

Everything comes from a hand-written knowledge base (below) rendered through templates, so every
"chosen" answer is correct and every "rejected" one is recognisably wrong or evasive. The
held-out records' facts are disjoint from the training records' facts, and their question/answer
pairs never appear in the corpus (their facts do, in declarative form only).
"""

import json
import os
import random
import sys

SEED = 20250407
N_TEST = 64
N_PROBES = 32  # the app probes the first 32 training records
CORPUS_TARGET = 2_600_000  # bytes
HELDOUT_TARGET = 100_000  # bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "assets")

KEYS = [
    "prompt", "chosen", "rejected", "chosen_initial", "chosen_gptsemantic", "chosen_gptformat",
    "reject_gptsemantic", "reject_gptformat", "irr_train", "irr_test", "irr_hum",
    "random_permute", "random_nonhum",
]

# --------------------------------------------------------------------------------------------
# helpers

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def num_words(n):
    """English words for 0 <= n < 1,000,000 (British style: 'one hundred and five')."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + (" and " + num_words(rest) if rest else "")
    rest = n % 1000
    head = num_words(n // 1000) + " thousand"
    if not rest:
        return head
    return head + (" and " if rest < 100 else " ") + num_words(rest)


def art(word):
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def cap(s):
    """Upper-cases the first letter (after a leading space, if any)."""
    if s.startswith(" "):
        return " " + s[1:2].upper() + s[2:]
    return s[:1].upper() + s[1:]


def nwords(s):
    return len(s.split())


# --------------------------------------------------------------------------------------------
# knowledge base
#
# A relation has question templates (q), chosen-style answer templates (c), same-meaning
# rewordings (s), base-model-style short answers (i), extra declarative-only sentences for the
# corpus (d) and an embedded-question clause (topic) used by evasive answers and stories.
# A fact is (subject slots, answer slots, wrong-answer slots). Templates see the subject slots,
# the answer slots, and (questions only) the wrong-answer slots prefixed with "w_".

RELATIONS = []


def relation(name, domain, q, c, s, i, d, topic, facts, ent=None):
    RELATIONS.append(dict(name=name, domain=domain, q=q, c=c, s=s, i=i, d=d, topic=topic,
                          facts=facts, ent=ent))


# ---- geography ---------------------------------------------------------------------------

CAPITALS = [
    ("France", "Paris", "Lyon"), ("Spain", "Madrid", "Barcelona"), ("Italy", "Rome", "Milan"),
    ("Germany", "Berlin", "Munich"), ("Japan", "Tokyo", "Osaka"), ("China", "Beijing", "Shanghai"),
    ("Canada", "Ottawa", "Toronto"), ("Australia", "Canberra", "Sydney"),
    ("Brazil", "Brasilia", "Rio de Janeiro"), ("India", "New Delhi", "Mumbai"),
    ("Russia", "Moscow", "Saint Petersburg"), ("Egypt", "Cairo", "Alexandria"),
    ("Kenya", "Nairobi", "Mombasa"), ("Mexico", "Mexico City", "Guadalajara"),
    ("Argentina", "Buenos Aires", "Cordoba"), ("Turkey", "Ankara", "Istanbul"),
    ("Greece", "Athens", "Thessaloniki"), ("Portugal", "Lisbon", "Porto"),
    ("Norway", "Oslo", "Bergen"), ("Sweden", "Stockholm", "Gothenburg"),
    ("Poland", "Warsaw", "Krakow"), ("Ireland", "Dublin", "Cork"),
    ("the Netherlands", "Amsterdam", "Rotterdam"), ("Switzerland", "Bern", "Zurich"),
    ("Austria", "Vienna", "Salzburg"), ("Belgium", "Brussels", "Antwerp"),
    ("Denmark", "Copenhagen", "Aarhus"), ("Finland", "Helsinki", "Tampere"),
    ("South Korea", "Seoul", "Busan"), ("Thailand", "Bangkok", "Chiang Mai"),
    ("Vietnam", "Hanoi", "Ho Chi Minh City"), ("Peru", "Lima", "Cusco"),
    ("Chile", "Santiago", "Valparaiso"), ("Colombia", "Bogota", "Medellin"),
    ("Nigeria", "Abuja", "Lagos"), ("Morocco", "Rabat", "Casablanca"),
    ("New Zealand", "Wellington", "Auckland"), ("the United States", "Washington", "New York"),
    ("the United Kingdom", "London", "Manchester"), ("Hungary", "Budapest", "Debrecen"),
    ("the Czech Republic", "Prague", "Brno"), ("Pakistan", "Islamabad", "Karachi"),
]
relation(
    "capital", "geography",
    q=["What is the capital of {c}?", "Which city is the capital of {c}?",
       "What city is the capital of {c}?", "Can you name the capital of {c}?"],
    c=[" The capital of {c} is {x}.", " The capital city of {c} is {x}."],
    s=[" {x} is the capital city of {c}.", " {c} has {x} as its capital.",
       " The government of {c} is based in {x}, its capital."],
    i=[" {x}.", " It is {x}, I think.", " I think it is {x}.", " {x}, I believe."],
    d=[" In {c}, the capital is {x}.", " The city of {x} is the capital of {c}.",
       " If you visit the capital of {c}, you are in {x}."],
    topic="what the capital of {c} is",
    facts=[({"c": c}, {"x": x}, {"x": w}) for c, x, w in CAPITALS],
    ent="c",
)

LANGUAGES = [
    ("France", "French", "German"), ("Spain", "Spanish", "Italian"),
    ("Germany", "German", "Dutch"), ("Italy", "Italian", "Spanish"),
    ("Japan", "Japanese", "Chinese"), ("China", "Chinese", "Japanese"),
    ("Brazil", "Portuguese", "Spanish"), ("Mexico", "Spanish", "Portuguese"),
    ("Russia", "Russian", "Polish"), ("Greece", "Greek", "Italian"),
    ("Portugal", "Portuguese", "Spanish"), ("Egypt", "Arabic", "Turkish"),
    ("the Netherlands", "Dutch", "German"), ("Sweden", "Swedish", "Norwegian"),
    ("Poland", "Polish", "Russian"), ("Turkey", "Turkish", "Greek"),
    ("South Korea", "Korean", "Japanese"), ("Thailand", "Thai", "Vietnamese"),
    ("Vietnam", "Vietnamese", "Thai"), ("Argentina", "Spanish", "Portuguese"),
    ("Hungary", "Hungarian", "German"), ("Norway", "Norwegian", "Danish"),
    ("Denmark", "Danish", "Dutch"), ("Peru", "Spanish", "Portuguese"),
    ("Austria", "German", "Italian"),
]
relation(
    "language", "geography",
    q=["What language do people speak in {c}?", "Which language is spoken in {c}?",
       "What is the main language of {c}?", "What language do most people in {c} speak?"],
    c=[" People in {c} speak {x}.", " The main language of {c} is {x}."],
    s=[" {x} is the language spoken in {c}.", " Most people in {c} talk in {x}.",
       " In {c}, people mostly speak {x}."],
    i=[" {x}.", " {x}, I think.", " Mostly {x}."],
    d=[" If you travel to {c}, you will hear people speaking {x}.",
       " Children in {c} learn {x} at home and at school.", " The language of {c} is {x}."],
    topic="what language people speak in {c}",
    facts=[({"c": c}, {"x": x}, {"x": w}) for c, x, w in LANGUAGES],
    ent="c",
)

SUPERLATIVES = [
    ("largest planet in the solar system", "biggest planet in our solar system", "Jupiter", "Saturn"),
    ("smallest planet in the solar system", "tiniest planet in our solar system", "Mercury", "Pluto"),
    ("planet closest to the sun", "nearest planet to the sun", "Mercury", "Venus"),
    ("hottest planet in the solar system", "planet with the highest temperature", "Venus", "Mercury"),
    ("tallest animal in the world", "animal with the greatest height", "the giraffe", "the elephant"),
    ("largest animal that has ever lived", "biggest animal of all time", "the blue whale", "the elephant"),
    ("fastest land animal", "quickest animal on land", "the cheetah", "the lion"),
    ("largest ocean on Earth", "biggest ocean in the world", "the Pacific Ocean", "the Atlantic Ocean"),
    ("highest mountain in the world", "tallest mountain on Earth", "Mount Everest", "K2"),
    ("largest continent", "biggest continent on Earth", "Asia", "Africa"),
    ("coldest continent", "continent with the lowest temperatures", "Antarctica", "Europe"),
    ("largest hot desert", "biggest hot desert in the world", "the Sahara", "the Gobi"),
    ("largest bird in the world", "biggest living bird", "the ostrich", "the eagle"),
    ("star closest to the Earth", "nearest star to our planet", "the sun", "the North Star"),
    ("largest country by area", "country with the most land", "Russia", "Canada"),
]
relation(
    "superlative", "science",
    q=["What is the {sup}?", "Which is the {sup}?", "Can you name the {sup}?"],
    c=[" The {sup} is {x}.", " The {sup} is called {x}."],
    s=[" {x} is the {sup2}.", " {x} is known as the {sup2}."],
    i=[" {x}.", " {x}, I think.", " I think it is {x}."],
    d=[" People say that {x} is the {sup2}.", " Of all of them, {x} is the {sup}."],
    topic="which is the {sup}",
    facts=[({"sup": a, "sup2": b}, {"x": x}, {"x": w}) for a, b, x, w in SUPERLATIVES],
)

# ---- animals -------------------------------------------------------------------------------

# name, plural
ANIMALS = {
    "cow": "cows", "dog": "dogs", "cat": "cats", "duck": "ducks", "pig": "pigs",
    "horse": "horses", "lion": "lions", "owl": "owls", "snake": "snakes", "bee": "bees",
    "frog": "frogs", "wolf": "wolves", "donkey": "donkeys", "mouse": "mice", "sheep": "sheep",
    "goat": "goats", "dove": "doves", "turkey": "turkeys", "elephant": "elephants",
    "spider": "spiders", "ant": "ants", "butterfly": "butterflies", "beetle": "beetles",
    "fly": "flies", "grasshopper": "grasshoppers", "scorpion": "scorpions",
    "chicken": "chickens", "ostrich": "ostriches", "penguin": "penguins", "camel": "camels",
    "polar bear": "polar bears", "whale": "whales", "shark": "sharks", "monkey": "monkeys",
    "kangaroo": "kangaroos", "bat": "bats", "squirrel": "squirrels", "beaver": "beavers",
    "crocodile": "crocodiles", "panda": "pandas", "rabbit": "rabbits", "eagle": "eagles",
    "koala": "koalas", "caterpillar": "caterpillars", "anteater": "anteaters",
    "giraffe": "giraffes", "hummingbird": "hummingbirds", "bear": "bears", "swan": "swans",
    "deer": "deer", "goose": "geese", "hen": "hens", "fox": "foxes",
}


def animal(n):
    return {"n": n, "a": art(n), "p": ANIMALS[n]}


SOUNDS = [  # animal, noun, 3rd person verb, base verb, -ing
    ("cow", "moo", "moos", "moo", "mooing"), ("dog", "bark", "barks", "bark", "barking"),
    ("cat", "meow", "meows", "meow", "meowing"), ("duck", "quack", "quacks", "quack", "quacking"),
    ("pig", "oink", "oinks", "oink", "oinking"), ("horse", "neigh", "neighs", "neigh", "neighing"),
    ("lion", "roar", "roars", "roar", "roaring"), ("owl", "hoot", "hoots", "hoot", "hooting"),
    ("snake", "hiss", "hisses", "hiss", "hissing"), ("bee", "buzz", "buzzes", "buzz", "buzzing"),
    ("frog", "croak", "croaks", "croak", "croaking"), ("wolf", "howl", "howls", "howl", "howling"),
    ("donkey", "bray", "brays", "bray", "braying"),
    ("mouse", "squeak", "squeaks", "squeak", "squeaking"),
    ("sheep", "bleat", "bleats", "bleat", "bleating"), ("dove", "coo", "coos", "coo", "cooing"),
    ("turkey", "gobble", "gobbles", "gobble", "gobbling"),
    ("elephant", "trumpet", "trumpets", "trumpet", "trumpeting"),
]


def _sound(t):
    return {"x": t[1], "xa": art(t[1]), "v": t[2], "b": t[3], "g": t[4]}


relation(
    "sound", "animals",
    q=["What sound does {a} make?", "What noise does {a} make?", "What sound do {p} make?",
       "Which sound does {a} make?"],
    c=[" The sound {a} makes is called {xa}.", " {a} makes a sound called {xa}."],
    s=[" When {a} makes a noise, it {v}.", " {p} make a {g} sound."],
    i=[" {x}.", " It {v}, I think.", " {x}, {x}."],
    d=[" If you listen closely, you can hear {a} {b}.", " Everyone knows that {p} {b}.",
       " The {n} {v} loudly."],
    topic="what sound {a} makes",
    facts=[(animal(t[0]), _sound(t), _sound(SOUNDS[(k + 5) % len(SOUNDS)]))
           for k, t in enumerate(SOUNDS)],
    ent="n",
)

LEGS = [
    ("spider", 8, 6), ("scorpion", 8, 6), ("ant", 6, 8), ("bee", 6, 4), ("butterfly", 6, 4),
    ("beetle", 6, 8), ("fly", 6, 8), ("grasshopper", 6, 4), ("dog", 4, 6), ("cat", 4, 2),
    ("cow", 4, 6), ("horse", 4, 2), ("elephant", 4, 6), ("lion", 4, 2), ("frog", 4, 6),
    ("mouse", 4, 6), ("goat", 4, 2), ("chicken", 2, 4), ("duck", 2, 4), ("ostrich", 2, 4),
    ("penguin", 2, 4), ("owl", 2, 4),
]
relation(
    "legs", "animals",
    q=["How many legs does {a} have?", "How many legs do {p} have?",
       "What is the number of legs on {a}?", "How many legs has {a} got?"],
    c=[" {a} has {x} legs.", " {p} have {x} legs."],
    s=[" There are {x} legs on {a}.", " The number of legs on {a} is {x}.",
       " Each {n} walks on {x} legs."],
    i=[" {x}.", " {x} legs, I think.", " I think {x}."],
    d=[" If you count the legs of {a}, you get {x}.", " {a} stands on {x} legs.",
       " A healthy {n} has {x} legs."],
    topic="how many legs {a} has",
    facts=[(animal(n), {"x": num_words(k)}, {"x": num_words(w)}) for n, k, w in LEGS],
    ent="n",
)

HABITATS = [
    ("camel", "the desert", "the Arctic"), ("polar bear", "the Arctic", "the desert"),
    ("whale", "the ocean", "the jungle"), ("shark", "the sea", "rivers and swamps"),
    ("monkey", "the rainforest", "the Arctic"), ("lion", "the grasslands of Africa", "the ocean"),
    ("kangaroo", "Australia", "the Arctic"), ("frog", "ponds and streams", "the desert"),
    ("bat", "caves", "the sea"), ("squirrel", "trees in parks and woods", "the ocean"),
    ("beaver", "rivers and lakes", "the desert"), ("penguin", "the cold seas of the south", "the desert"),
    ("bee", "a hive", "the sea"), ("rabbit", "burrows under the ground", "the ocean"),
    ("eagle", "high mountains and cliffs", "ponds and streams"),
    ("crocodile", "rivers and swamps", "the Arctic"), ("panda", "the mountain forests of China", "the desert"),
    ("fox", "forests and fields", "the ocean"),
]
relation(
    "habitat", "animals",
    q=["Where does {a} live?", "Where do {p} live?", "What kind of place does {a} live in?",
       "Where would you find {a} in the wild?"],
    c=[" {a} lives in {x}.", " {p} live in {x}."],
    s=[" {a} makes its home in {x}.", " You can find {p} living in {x}.",
       " In the wild, {a} is at home in {x}."],
    i=[" In {x}.", " {x}, I think.", " Somewhere in {x}."],
    d=[" Many {p} are found in {x}.", " The natural home of {p} is in {x}."],
    topic="where {a} lives",
    facts=[(animal(n), {"x": x}, {"x": w}) for n, x, w in HABITATS],
    ent="n",
)

DIETS = [
    ("panda", "bamboo", "meat"), ("koala", "eucalyptus leaves", "fish"), ("cow", "grass", "meat"),
    ("lion", "meat", "grass"), ("shark", "fish", "bamboo"), ("bee", "nectar from flowers", "meat"),
    ("squirrel", "nuts and seeds", "fish"), ("monkey", "fruit and leaves", "meat"),
    ("caterpillar", "leaves", "meat"), ("owl", "mice", "grass"), ("spider", "insects", "bamboo"),
    ("horse", "hay", "fish"), ("anteater", "ants", "bamboo"),
    ("giraffe", "the leaves of tall trees", "fish"), ("hummingbird", "nectar from flowers", "mice"),
    ("rabbit", "grass and plants", "meat"), ("penguin", "fish", "grass"),
    ("frog", "insects", "bamboo"),
]
relation(
    "diet", "animals",
    q=["What does {a} eat?", "What do {p} eat?", "What food does {a} eat?",
       "What is the main food of {a}?"],
    c=[" {a} mainly eats {x}.", " The main food of {a} is {x}."],
    s=[" Most of the time, {p} eat {x}.", " Most of the food {p} eat is {x}.",
       " {p} feed mostly on {x}."],
    i=[" {x}.", " {x}, I think.", " Lots of {x}."],
    d=[" {p} spend much of the day eating {x}.", " {p} like to eat {x}."],
    topic="what {a} eats",
    facts=[(animal(n), {"x": x}, {"x": w}) for n, x, w in DIETS],
    ent="n",
)

BABIES = [
    ("dog", "puppy", "kitten"), ("cat", "kitten", "puppy"), ("cow", "calf", "foal"),
    ("horse", "foal", "calf"), ("sheep", "lamb", "kid"), ("goat", "kid", "lamb"),
    ("pig", "piglet", "cub"), ("duck", "duckling", "chick"), ("frog", "tadpole", "caterpillar"),
    ("kangaroo", "joey", "cub"), ("bear", "cub", "kitten"), ("swan", "cygnet", "duckling"),
    ("deer", "fawn", "foal"), ("goose", "gosling", "tadpole"), ("owl", "owlet", "puppy"),
    ("butterfly", "caterpillar", "tadpole"), ("hen", "chick", "duckling"),
]
relation(
    "baby", "animals",
    q=["What is a baby {n} called?", "What do we call a young {n}?",
       "What is the name for a baby {n}?", "What is a young {n} called?"],
    c=[" A baby {n} is called {xa}.", " A young {n} is known as {xa}."],
    s=[" We call a baby {n} {xa}.", " The word for a young {n} is {x}.",
       " When {a} is young, it is called {xa}."],
    i=[" {xa}.", " {xa}, I think.", " It is {xa}."],
    d=[" The mother {n} looked after her little {x}.", " Every {n} starts life as {xa}."],
    topic="what a baby {n} is called",
    facts=[(animal(n), {"x": x, "xa": art(x)}, {"x": w, "xa": art(w)}) for n, x, w in BABIES],
    ent="n",
)

# ---- colours -------------------------------------------------------------------------------

COLOURS = [
    ("grass", "green", "purple"), ("snow", "white", "black"), ("coal", "black", "white"),
    ("a ripe banana", "yellow", "blue"), ("a ripe tomato", "red", "blue"),
    ("a carrot", "orange", "blue"), ("milk", "white", "green"),
    ("the sky on a clear day", "blue", "green"), ("a ripe strawberry", "red", "blue"),
    ("milk chocolate", "brown", "green"), ("a lemon", "yellow", "purple"),
    ("a lime", "green", "blue"), ("a flamingo", "pink", "green"), ("an eggplant", "purple", "yellow"),
    ("a pumpkin", "orange", "blue"), ("a stop sign", "red", "green"), ("a crow", "black", "yellow"),
    ("a polar bear", "white", "green"), ("blood", "red", "blue"), ("tree bark", "brown", "blue"),
    ("a ripe cherry", "red", "blue"), ("chalk", "white", "red"), ("a raven", "black", "white"),
    ("a canary", "yellow", "black"), ("a ruby", "red", "green"), ("an emerald", "green", "red"),
    ("a sapphire", "blue", "yellow"), ("salt", "white", "black"), ("soot", "black", "yellow"),
    ("a plum", "purple", "white"), ("cocoa powder", "brown", "green"),
    ("a fire engine", "red", "blue"), ("an orange", "orange", "blue"),
    ("a lettuce leaf", "green", "red"),
]
relation(
    "colour", "colours",
    q=["What colour is {t}?", "What is the colour of {t}?", "What color is {t}?",
       "Which colour is {t}?"],
    c=[" The colour of {t} is {x}.", " {t} is usually {x} in colour."],
    s=[" {t} has a {x} colour.", " If you look at {t}, you will see that it is {x}.",
       " {x} is the colour of {t}."],
    i=[" {x}.", " {x}, I think.", " It is {x}."],
    d=[" The children painted {t} {x} in their pictures.", " Everyone knows that {t} is {x}.",
       " {t} is {x}."],
    topic="what colour {t} is",
    facts=[({"t": t}, {"x": x}, {"x": w}) for t, x, w in COLOURS],
)

# ---- measures ------------------------------------------------------------------------------

COUNTS = [  # unit, preposition, container, number, wrong
    ("days", "in", "a week", 7, 6), ("months", "in", "a year", 12, 10),
    ("hours", "in", "a day", 24, 12), ("minutes", "in", "an hour", 60, 100),
    ("seconds", "in", "a minute", 60, 100), ("days", "in", "a normal year", 365, 360),
    ("weeks", "in", "a year", 52, 48), ("centimetres", "in", "a metre", 100, 10),
    ("metres", "in", "a kilometre", 1000, 100), ("grams", "in", "a kilogram", 1000, 100),
    ("millimetres", "in", "a centimetre", 10, 100), ("days", "in", "a leap year", 366, 365),
    ("years", "in", "a decade", 10, 12), ("years", "in", "a century", 100, 1000),
    ("years", "in", "a millennium", 1000, 100), ("sides", "on", "a triangle", 3, 4),
    ("sides", "on", "a square", 4, 5), ("sides", "on", "a pentagon", 5, 6),
    ("sides", "on", "a hexagon", 6, 8), ("sides", "on", "an octagon", 8, 6),
    ("players", "on", "a football team", 11, 9), ("cards", "in", "a standard deck", 52, 50),
    ("letters", "in", "the English alphabet", 26, 24), ("colours", "in", "a rainbow", 7, 5),
    ("days", "in", "a fortnight", 14, 10), ("wheels", "on", "a bicycle", 2, 3),
    ("wheels", "on", "a tricycle", 3, 2), ("keys", "on", "a standard piano", 88, 100),
    ("eggs", "in", "a dozen", 12, 10), ("planets", "in", "the solar system", 8, 9),
    ("strings", "on", "a violin", 4, 6), ("days", "in", "September", 30, 31),
    ("hours", "in", "a week", 168, 100), ("weeks", "in", "a fortnight", 2, 4),
]
relation(
    "count", "measures",
    q=["How many {u} are there {pr} {k}?", "How many {u} are {pr} {k}?",
       "What is the number of {u} {pr} {k}?", "How many {u} does {k} have?"],
    c=[" There are {x} {u} {pr} {k}.", " {k} has {x} {u}."],
    s=[" {k} is made up of {x} {u}.", " The number of {u} {pr} {k} is {x}.",
       " If you count the {u} {pr} {k}, you get {x}."],
    i=[" {x}.", " {x}, I think.", " I believe it is {x}."],
    d=[" Remember that {k} has {x} {u}.", " Counting carefully, we find {x} {u} {pr} {k}."],
    topic="how many {u} there are {pr} {k}",
    facts=[({"u": u, "pr": pr, "k": k}, {"x": num_words(x)}, {"x": num_words(w)})
           for u, pr, k, x, w in COUNTS],
)

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
_NEXT = ([({"s": d, "kind": "day"}, DAYS, i) for i, d in enumerate(DAYS)]
         + [({"s": m, "kind": "month"}, MONTHS, i) for i, m in enumerate(MONTHS)])
relation(
    "next", "measures",
    q=["What {kind} comes after {s}?", "Which {kind} follows {s}?", "What is the {kind} after {s}?",
       "Which {kind} comes right after {s}?"],
    c=[" The {kind} after {s} is {x}.", " After {s} comes {x}."],
    s=[" {x} is the {kind} that follows {s}.", " {x} comes right after {s}.",
       " Once {s} is over, the next {kind} is {x}."],
    i=[" {x}.", " {x}, I think.", " It is {x}."],
    d=[" {s} is always followed by {x}.", " First comes {s}, and then comes {x}."],
    topic="which {kind} comes after {s}",
    facts=[(sl, {"x": seq[(i + 1) % len(seq)]}, {"x": seq[(i + 2) % len(seq)]})
           for sl, seq, i in _NEXT],
)

# ---- science -------------------------------------------------------------------------------

KINDS = [  # subject, category, kind, plural, wrong kind, wrong plural
    ("the sun", "object", "star", "stars", "planet", "planets"),
    ("the moon", "object", "natural satellite", "natural satellites", "star", "stars"),
    ("Mars", "object", "planet", "planets", "star", "stars"),
    ("Jupiter", "object", "planet", "planets", "star", "stars"),
    ("a whale", "animal", "mammal", "mammals", "fish", "fish"),
    ("a bat", "animal", "mammal", "mammals", "bird", "birds"),
    ("a dolphin", "animal", "mammal", "mammals", "fish", "fish"),
    ("a penguin", "animal", "bird", "birds", "mammal", "mammals"),
    ("an ostrich", "animal", "bird", "birds", "mammal", "mammals"),
    ("a frog", "animal", "amphibian", "amphibians", "reptile", "reptiles"),
    ("a shark", "animal", "fish", "fish", "mammal", "mammals"),
    ("a snake", "animal", "reptile", "reptiles", "amphibian", "amphibians"),
    ("a crocodile", "animal", "reptile", "reptiles", "mammal", "mammals"),
    ("a spider", "animal", "arachnid", "arachnids", "insect", "insects"),
    ("a butterfly", "animal", "insect", "insects", "bird", "birds"),
    ("gold", "substance", "metal", "metals", "gas", "gases"),
    ("iron", "substance", "metal", "metals", "gas", "gases"),
    ("copper", "substance", "metal", "metals", "liquid", "liquids"),
    ("oxygen", "substance", "gas", "gases", "metal", "metals"),
    ("helium", "substance", "gas", "gases", "metal", "metals"),
]
relation(
    "kind", "science",
    q=["What kind of {cat} is {s}?", "What type of {cat} is {s}?", "Is {s} {xa} or {w_xa}?",
       "Is {s} {w_xa} or {xa}?"],
    c=[" {s} is {xa}.", " {s} is a kind of {x}."],
    s=[" Scientists class {s} as {xa}.", " {s} belongs to the group called {xp}."],
    i=[" {xa}.", " It is {xa}, I think.", " {xa}, of course."],
    d=[" {s} is one of the {xp}.", " In science class, we learned that {s} is {xa}."],
    topic="what kind of {cat} {s} is",
    facts=[({"s": s, "cat": cat}, {"x": x, "xa": art(x), "xp": xp},
            {"x": w, "xa": art(w), "xp": wp}) for s, cat, x, xp, w, wp in KINDS],
)

BODY = [  # verb phrase, -ing, organ, be, wrong organ, wrong be
    ("see", "seeing", "eyes", "are", "ears", "are"),
    ("hear", "hearing", "ears", "are", "eyes", "are"),
    ("smell", "smelling", "nose", "is", "ears", "are"),
    ("taste", "tasting", "tongue", "is", "ears", "are"),
    ("breathe", "breathing", "lungs", "are", "stomach", "is"),
    ("chew food", "chewing food", "teeth", "are", "nose", "is"),
    ("think", "thinking", "brain", "is", "heart", "is"),
    ("walk", "walking", "legs", "are", "arms", "are"),
    ("hold things", "holding things", "hands", "are", "feet", "are"),
]
relation(
    "body", "science",
    q=["What do we use to {v}?", "Which part of the body do we use to {v}?",
       "What body part helps us {v}?", "What do people {v} with?"],
    c=[" We {v} with our {x}.", " People use their {x} to {v}."],
    s=[" Our {x} {be} what we use for {g}.", " {g} is done with the {x}."],
    i=[" {x}.", " Our {x}.", " The {x}, I think."],
    d=[" Without our {x}, we could not {v}.", " Doctors say that we {v} with our {x}."],
    topic="what we use to {v}",
    facts=[({"v": v, "g": g}, {"x": x, "be": be}, {"x": w, "be": wb})
           for v, g, x, be, w, wb in BODY],
)

# ---- everyday objects ----------------------------------------------------------------------

OBJECTS = [
    ("a hammer", "hit nails"), ("a pair of scissors", "cut paper"), ("a broom", "sweep the floor"),
    ("a key", "open a lock"), ("a pen", "write on paper"), ("a spoon", "eat soup"),
    ("an umbrella", "keep dry in the rain"), ("a towel", "dry off after a bath"),
    ("a ladder", "reach high places"), ("a clock", "tell the time"),
    ("a fridge", "keep food cold"), ("an oven", "bake bread and cakes"),
    ("a kettle", "boil water"), ("a toothbrush", "clean teeth"), ("a comb", "tidy hair"),
    ("a map", "find the way"), ("a thermometer", "measure temperature"),
    ("a ruler", "measure length"), ("a camera", "take photos"), ("a needle", "sew cloth"),
    ("a shovel", "dig holes"), ("a saw", "cut wood"), ("a lamp", "light up a dark room"),
    ("a telephone", "talk to people far away"), ("a wallet", "carry money"),
    ("a bucket", "carry water"), ("an alarm clock", "wake up on time"),
    ("a sponge", "wash the dishes"), ("a stapler", "join sheets of paper"),
    ("a calculator", "do sums quickly"), ("a microscope", "see very small things"),
    ("a telescope", "look at faraway stars"), ("a dictionary", "look up the meaning of words"),
    ("a screwdriver", "turn screws"), ("a hairdryer", "dry wet hair"),
    ("a compass", "find which way is north"), ("a pillow", "rest the head at night"),
    ("a vase", "hold flowers"),
]
relation(
    "use", "objects",
    q=["What is {o} used for?", "What do you use {o} for?", "What is the purpose of {o}?",
       "Why do people use {o}?"],
    c=[" {o} is used to {x}.", " The job of {o} is to {x}."],
    s=[" People use {o} when they need to {x}.", " If you need to {x}, you use {o}."],
    i=[" To {x}.", " To {x}, I think.", " I think it is to {x}."],
    d=[" You can {x} with {o}.", " {o} helps people {x}."],
    topic="what {o} is used for",
    facts=[({"o": o}, {"x": x}, {"x": OBJECTS[(k + 7) % len(OBJECTS)][1]})
           for k, (o, x) in enumerate(OBJECTS)],
)

MATERIALS = [
    ("paper", "wood", "sand"), ("glass", "sand", "wood"), ("bread", "flour", "rice"),
    ("cheese", "milk", "flour"), ("butter", "cream", "eggs"), ("wine", "grapes", "apples"),
    ("chocolate", "cocoa beans", "coffee beans"), ("a brick", "clay", "glass"),
    ("a candle", "wax", "paper"), ("ice", "frozen water", "salt"),
    ("jam", "fruit and sugar", "flour and eggs"), ("popcorn", "corn", "rice"),
    ("tofu", "soybeans", "milk"), ("ketchup", "tomatoes", "apples"), ("leather", "animal skin", "wood"),
    ("a cotton shirt", "cotton", "wool"), ("yogurt", "milk", "flour"),
    ("peanut butter", "peanuts", "almonds"),
]
relation(
    "material", "objects",
    q=["What is {m} made from?", "What do people make {m} from?",
       "Which material is used to make {m}?", "What is {m} made of?"],
    c=[" {m} is made from {x}.", " {m} is usually made from {x}."],
    s=[" People use {x} to make {m}.", " To make {m}, you need {x}."],
    i=[" {x}.", " From {x}.", " {x}, I think."],
    d=[" In the factory, workers turn {x} into {m}.", " {m} comes from {x}."],
    topic="what {m} is made from",
    facts=[({"m": m}, {"x": x}, {"x": w}) for m, x, w in MATERIALS],
)

SOURCES = [
    ("bees", "honey", "milk"), ("sheep", "wool", "honey"), ("cows", "milk", "wool"),
    ("hens", "eggs", "milk"), ("silkworms", "silk", "cotton"), ("oysters", "pearls", "eggs"),
    ("maple trees", "maple syrup", "honey"), ("rubber trees", "rubber", "silk"),
    ("cotton plants", "cotton", "wool"), ("olive trees", "olives", "apples"),
    ("apple trees", "apples", "pears"), ("geese", "soft feathers", "wool"),
]
relation(
    "source", "objects",
    q=["What do we get from {src}?", "What useful thing do {src} give us?",
       "What do farmers get from {src}?"],
    c=[" We get {x} from {src}.", " {src} give us {x}."],
    s=[" {x} can be collected from {src}.", " People collect {x} from {src}."],
    i=[" {x}.", " {x}, I think.", " Lots of {x}."],
    d=[" Farmers keep {src} because they give us {x}.", " Much of the {x} we use comes from {src}."],
    topic="what we get from {src}",
    facts=[({"src": s}, {"x": x}, {"x": w}) for s, x, w in SOURCES],
)

# ---- words ---------------------------------------------------------------------------------

OPPOSITES = [  # word, opposite, wrong (mostly a synonym)
    ("hot", "cold", "warm"), ("big", "small", "large"), ("fast", "slow", "quick"),
    ("happy", "sad", "glad"), ("open", "closed", "wide"), ("early", "late", "soon"),
    ("full", "empty", "packed"), ("tall", "short", "high"), ("wet", "dry", "damp"),
    ("hard", "soft", "firm"), ("loud", "quiet", "noisy"), ("rich", "poor", "wealthy"),
    ("strong", "weak", "powerful"), ("thick", "thin", "wide"), ("up", "down", "over"),
    ("day", "night", "morning"), ("black", "white", "dark"), ("left", "right", "behind"),
    ("push", "pull", "press"), ("buy", "sell", "pay"), ("inside", "outside", "within"),
    ("first", "last", "early"), ("clean", "dirty", "neat"), ("near", "far", "close"),
    ("high", "low", "tall"), ("always", "never", "often"), ("before", "after", "earlier"),
    ("above", "below", "over"), ("true", "false", "real"), ("good", "bad", "nice"),
    ("easy", "difficult", "simple"), ("cheap", "expensive", "low"), ("awake", "asleep", "alert"),
    ("north", "south", "east"), ("east", "west", "north"), ("summer", "winter", "spring"),
    ("question", "answer", "puzzle"), ("love", "hate", "like"), ("remember", "forget", "recall"),
    ("laugh", "cry", "smile"), ("come", "go", "arrive"), ("friend", "enemy", "pal"),
    ("smooth", "rough", "flat"), ("deep", "shallow", "low"), ("wide", "narrow", "broad"),
    ("alive", "dead", "awake"), ("safe", "dangerous", "secure"), ("polite", "rude", "kind"),
    ("young", "old", "little"), ("win", "lose", "score"),
]
relation(
    "opposite", "words",
    q=["What is the opposite of {o}?", "What word means the opposite of {o}?",
       "What is the opposite of the word {o}?", "Which word is the opposite of {o}?"],
    c=[" The opposite of {o} is {x}.", " The opposite of the word {o} is {x}."],
    s=[" {x} is the opposite of {o}.", " {o} and {x} are opposites.",
       " {x} means the opposite of {o}."],
    i=[" {x}.", " {x}, I think.", " It is {x}."],
    d=[" The words {o} and {x} have opposite meanings.",
       " In class, we learned that {o} is the opposite of {x}."],
    topic="what the opposite of {o} is",
    facts=[({"o": o}, {"x": x}, {"x": w}) for o, x, w in OPPOSITES],
)

# ---- arithmetic ----------------------------------------------------------------------------


def _arith_facts(op, n, rng):
    seen, out = set(), []
    while len(out) < n:
        if op == "plus":
            a, b = rng.randint(1, 10), rng.randint(1, 10)
            x = a + b
        elif op == "minus":
            a = rng.randint(5, 20)
            b = rng.randint(1, a - 1)
            x = a - b
        else:
            a, b = rng.randint(2, 10), rng.randint(2, 10)
            x = a * b
        if (a, b) in seen:
            continue
        seen.add((a, b))
        w = x + rng.choice([-2, -1, 1, 2])
        if w < 0:
            w = x + 1
        out.append(({"a": num_words(a), "b": num_words(b)}, {"x": num_words(x)},
                    {"x": num_words(w)}))
    return out


_arng = random.Random(f"arith-{SEED}")
relation(
    "plus", "arithmetic",
    q=["What is {a} plus {b}?", "How much is {a} plus {b}?",
       "What do you get when you add {a} and {b}?", "What is the sum of {a} and {b}?"],
    c=[" {a} plus {b} equals {x}.", " {a} plus {b} makes {x}."],
    s=[" If you add {a} and {b}, you get {x}.", " The sum of {a} and {b} is {x}."],
    i=[" {x}.", " {x}, I think.", " It is {x}."],
    d=[" Adding {a} and {b} gives {x}.", " {a} and {b} together make {x}."],
    topic="what {a} plus {b} is",
    facts=_arith_facts("plus", 20, _arng),
)
relation(
    "minus", "arithmetic",
    q=["What is {a} minus {b}?", "How much is {a} minus {b}?",
       "What do you get when you take {b} away from {a}?",
       "If you have {a} and take away {b}, how many are left?"],
    c=[" {a} minus {b} equals {x}.", " {a} minus {b} leaves {x}."],
    s=[" If you take {b} away from {a}, you get {x}.", " Taking {b} from {a} leaves {x}."],
    i=[" {x}.", " {x}, I think.", " It is {x}."],
    d=[" Subtracting {b} from {a} gives {x}.", " {a} take away {b} is {x}."],
    topic="what {a} minus {b} is",
    facts=_arith_facts("minus", 18, _arng),
)
relation(
    "times", "arithmetic",
    q=["What is {a} times {b}?", "How much is {a} times {b}?",
       "What do you get when you multiply {a} by {b}?", "What is {a} multiplied by {b}?"],
    c=[" {a} times {b} equals {x}.", " {a} times {b} makes {x}."],
    s=[" If you multiply {a} by {b}, you get {x}.", " {a} groups of {b} make {x}."],
    i=[" {x}.", " {x}, I think.", " It is {x}."],
    d=[" Multiplying {a} by {b} gives {x}.", " {a} lots of {b} is {x}."],
    topic="what {a} times {b} is",
    facts=_arith_facts("times", 18, _arng),
)

DOMAINS = ["geography", "animals", "science", "arithmetic", "colours", "objects", "measures",
           "words"]
DOMAIN_INTROS = {
    "geography": ["Here are some facts about the world.", "A short geography lesson.",
                  "Facts about countries and places.", "Our teacher told us about the world."],
    "animals": ["Here are some facts about animals.", "A short lesson about animals.",
                "Animals are interesting.", "Facts about animals on the farm and in the wild."],
    "science": ["Here are some science facts.", "A short science lesson.",
                "Facts about nature and the body.", "Things we learned in science class."],
    "arithmetic": ["Some simple sums.", "A short maths lesson.", "Numbers are fun.",
                   "Here is some arithmetic."],
    "colours": ["Here are some facts about colours.", "Colours are everywhere.",
                "A short lesson about colours.", "What colour is it?"],
    "objects": ["Here are some facts about everyday things.", "Things we use every day.",
                "A short lesson about objects and materials.", "Useful things around the house."],
    "measures": ["Here are some facts about numbers and time.", "A short lesson about measures.",
                 "Counting days, months and shapes.", "Facts about time and shapes."],
    "words": ["Here are some opposite words.", "A short lesson about words.",
              "Opposites are words with opposite meanings.", "Learning opposite words."],
}

# every fact as a flat dict
FACTS = []
for _r in RELATIONS:
    for _k, (_subj, _ans, _wrong) in enumerate(_r["facts"]):
        FACTS.append(dict(id=len(FACTS), rel=_r, k=_k, subj=_subj, ans=_ans, wrong=_wrong,
                          ent=(_subj[_r["ent"]] if _r["ent"] else None)))
BY_REL = {}
for _f in FACTS:
    BY_REL.setdefault(_f["rel"]["name"], []).append(_f)


def slots(f, wrong=False):
    d = dict(f["subj"])
    d.update(f["wrong"] if wrong else f["ans"])
    return d


def q_slots(f):
    d = slots(f)
    d.update({"w_" + k: v for k, v in f["wrong"].items()})
    return d


def render(t, sl):
    return cap(t.format(**sl))


def question(f, t):
    return render(t, q_slots(f)).strip()


def topic(f):
    return f["rel"]["topic"].format(**slots(f))


def reserved_decl(f):
    """The one declarative template of this fact kept for the held-out corpus only."""
    d = f["rel"]["d"]
    return d[f["k"] % len(d)]


def decl_sentence(f, rng, heldout=False):
    r = f["rel"]
    if heldout:
        return render(reserved_decl(f), slots(f)).strip()
    res = reserved_decl(f)
    # only the declarative templates: the chosen/paraphrase templates stay out of the corpus
    pool = [t for t in r["d"] if t != res] or [res]
    return render(rng.choice(pool), slots(f)).strip()


# --------------------------------------------------------------------------------------------
# human-written, unrelated everyday sentences (irr_hum)

HUMAN = """The bus was late again this morning.
My sister painted the fence blue last weekend.
We ran out of milk, so I went to the shop.
The neighbours are having a party tonight.
I left my umbrella on the train.
The kettle is still warm from breakfast.
He forgot to water the plants before the holiday.
Our cat sleeps on the windowsill every afternoon.
The library closes early on Sundays.
She ordered a coffee and a slice of lemon cake.
The road outside our house is being repaired.
I need to buy new shoes for the wedding.
The children built a fort out of cushions.
It rained all day, so we stayed inside and played cards.
My phone battery died in the middle of the call.
Grandpa tells the same joke every Christmas.
The baker gave us an extra roll for free.
We watched an old film and ate popcorn.
The washing machine makes a strange noise.
He is learning to play the guitar.
The garden looks lovely after the rain.
Please remember to lock the back door.
The train to the coast takes about two hours.
Our teacher brought a plant for the classroom.
I found a coin under the sofa.
The meeting has been moved to Thursday.
She walks her dog by the river every evening.
The soup needs a little more salt.
We are going camping next month.
The lift in our building is broken again.
My brother finally passed his driving test.
The shop on the corner sells fresh bread.
I can never remember where I put my keys.
The kids drew chalk pictures on the pavement.
There was a long queue at the post office.
He fixed the bicycle chain with an old rag.
The new cafe has very comfortable chairs.
We planted sunflowers along the back wall.
The baby finally fell asleep after lunch.
My aunt sends us a postcard from every trip.
The football match was cancelled because of the storm.
I like to read a few pages before bed.
The window in the bathroom will not close properly.
Our old car still starts on cold mornings.
The market is busiest on Saturday mornings.
She wrapped the present in brown paper.
We heard fireworks from across the valley.
The ice cream melted before we got home.
He always sings while he cooks dinner.
The printer at work ran out of paper.
My friend lent me a book about gardening.
The swimming pool is closed for cleaning.
We had pancakes for breakfast on Sunday.
The streetlights came on just after six.
I wrote a list so I would not forget anything.
The puppy chewed one of my slippers.
Our street has a lot of tall trees.
The plumber is coming to fix the sink tomorrow.
She practises the piano for an hour every day.
The cinema was almost empty on Tuesday night.
We took the long way home through the park.
My grandmother knits warm scarves for everyone.
The clock in the kitchen is five minutes fast.
He spilled juice all over the table.
The museum has a new room about ships.
I am trying to drink more water each day.
The shop assistant helped me find the right size.
Our holiday photos are finally printed.
The school bell rang and everyone ran outside.
She keeps her notes in a green folder.
The wind blew the leaves across the yard.
We borrowed chairs from the neighbours for the party.
The pasta was ready in ten minutes.
My uncle grows tomatoes in his greenhouse.
The hallway light keeps flickering.
I sent the letter on Monday, but it has not arrived.
The children fed bread to the ducks.
He wears the same blue jumper every winter.
The town fair starts next Friday.
We cleaned out the garage over the weekend.
The dentist said my teeth are fine.
My cousin moved to a flat near the station.
The oven takes a long time to heat up.
She hung the washing out to dry in the sun.
There is a small bakery next to the bank.
I lost my glove somewhere on the walk home.
The tea went cold while we were talking.
Our team won the quiz at the pub.
He drew a map of the village for his friends.
The flowers on the table need fresh water.
We waited for the rain to stop before leaving.
My dad makes the best potato soup.
The kids are making a cake for their mother.
The office was very quiet this afternoon.
She forgot her lunch on the kitchen counter.
The farmer sold us a box of apples.
I fell asleep on the sofa during the film.
The traffic was terrible on the way to work.
Our neighbour has a very friendly old dog.
The new bridge opens to cars next week.
He keeps a small notebook in his pocket.
The boat trip was cancelled because of high waves.
We bought a second-hand table for the kitchen.
My little brother wants a bicycle for his birthday.
The store was out of the bread I like.
The moon looked very bright over the hills last night.
She laughed so hard that she started to cry.
The doctor told him to rest for a few days.
Our class went on a trip to the castle.
I have to finish this report by Friday.
The fence blew down in the storm.
They painted the kitchen a soft yellow.
The bread in the oven smells wonderful.
He missed the last bus and had to walk.
The radio was playing old songs all evening.
My mother keeps spare buttons in a tin.
We shared a pizza after the match.
The lights went out during the thunderstorm.
She found an old photo of her parents in a drawer.
The path to the beach is steep and sandy.
I finally tidied my desk this morning.
The baby laughed at the bubbles.
He always takes the stairs instead of the lift.
The river was high after a week of rain.
We met our new neighbours at the bus stop.
My socks got wet in the snow.
The shopkeeper remembered my name.
The kids spent the afternoon building a den in the woods.
She gave me a lift to the station.
The tap in the bathroom drips all night.
I made a cup of tea and sat in the garden.
The concert was louder than we expected.
He is saving money to buy a new camera.
Our flight was delayed by three hours.
The chairs in the waiting room were very hard.
We spent the morning picking blackberries.
My grandfather still writes letters by hand.
The class hamster escaped during the holidays.
She cut her hair short for the summer.
The paint on the door is still wet.
I heard the postman at the door.
The cake did not rise, but it tasted fine.
They sat by the fire and told stories.
The car park was full, so we parked on the street.
He read the whole book in one weekend.
The kitchen floor is sticky from the jam.
Our garden gate squeaks when it opens.
We got lost on the way to the party.
My friend is teaching me to bake bread.
The snow turned to slush by lunchtime.
She keeps a jar of coins for the bus.
The dog barked at the postman again.
I forgot to charge my laptop last night.
The hotel room had a view of the harbour.
He made sandwiches for the long drive.
The park was full of people enjoying the sun.
We stayed up late talking about old times.
My neighbour lent us his ladder.
The pears on the tree are almost ripe.
She sent a thank you card after the dinner.
The students cheered when the exam was over.
I put the spare key under a flower pot.
The bathroom mirror is foggy after a shower.
We walked along the canal until it got dark.
He called his mother on her birthday.""".split("\n")

# --------------------------------------------------------------------------------------------
# narrative generator (corpus part c)

NAMES = [("Anna", "f"), ("Ben", "m"), ("Maria", "f"), ("Tom", "m"), ("Lily", "f"), ("Sam", "m"),
         ("Omar", "m"), ("Mia", "f"), ("Jack", "m"), ("Zoe", "f"), ("Leo", "m"), ("Ella", "f"),
         ("Noah", "m"), ("Grace", "f"), ("Ravi", "m"), ("Yuki", "f"), ("Peter", "m"),
         ("Sara", "f"), ("David", "m"), ("Nina", "f"), ("Lucas", "m"), ("Amara", "f"),
         ("Finn", "m"), ("Rosa", "f")]
PRON = {"m": {"he": "he", "him": "him", "his": "his"}, "f": {"he": "she", "him": "her", "his": "her"}}
PLACES = ["the park", "the market", "the library", "the beach", "the station", "the farm",
          "the river", "the zoo", "the museum", "the bakery", "the school", "the garden",
          "the post office", "the swimming pool", "the village", "the city centre", "the forest",
          "the lake", "the harbour", "the hills"]
TIMES = ["On Monday morning", "On Saturday", "Last summer", "After school", "Early on Sunday",
         "In the evening", "One rainy afternoon", "At nine o'clock", "Yesterday",
         "On a cold winter day", "During the holidays", "Last week", "One bright morning",
         "On Friday afternoon"]
WEATHER = ["sunny", "rainy", "windy", "cold", "warm", "cloudy", "snowy", "foggy", "bright",
           "grey"]
OBJS = ["a red kite", "a small blue box", "an old map", "a basket of apples",
        "a new book about birds", "a green umbrella", "a loaf of bread", "a bunch of flowers",
        "a wooden toy boat", "a pair of boots", "a bag of oranges", "a letter from an old friend",
        "a shiny coin", "a warm scarf", "a football", "a jar of honey", "a yellow bucket",
        "a little notebook", "a silver spoon", "a paper crown"]
ACTS = ["played football", "read books", "fed the ducks", "built a sandcastle",
        "painted a picture", "baked a cake", "went for a long walk", "watched the boats",
        "picked strawberries", "flew a kite", "looked at the stars", "cleaned the kitchen",
        "planted tomatoes", "rode their bikes", "sang songs", "wrote letters",
        "visited the animals", "made sandwiches", "played cards", "swam in the water"]
ACTS_INF = ["play football", "read a book", "feed the ducks", "build a sandcastle",
            "paint a picture", "bake a cake", "go for a long walk", "watch the boats",
            "pick strawberries", "fly a kite", "look at the stars", "visit the zoo",
            "plant some flowers", "ride my bike", "write a letter to my aunt"]
FEELINGS = ["happy", "tired", "excited", "proud", "a little sad", "hungry", "calm", "surprised",
            "sleepy", "cheerful"]
FOODS = ["soup", "bread and cheese", "apples", "rice and beans", "pancakes", "a sandwich",
         "pasta", "cake", "fish and potatoes", "eggs and toast", "a bowl of porridge"]
RELS = ["mother", "father", "sister", "brother", "grandmother", "grandfather", "aunt", "uncle",
        "friend", "teacher", "neighbour", "cousin"]
HIDING = ["under the bed", "behind the sofa", "in the garden", "in a kitchen drawer",
          "on the top shelf", "inside a boot", "next to the door", "in the car"]
ITEMS = ["keys", "hat", "book", "glasses", "ball", "scarf", "pencil case", "lunch box"]


def _person(rng, avoid=None):
    while True:
        n, g = rng.choice(NAMES)
        if n != avoid:
            return n, PRON[g]


def story_trip(rng):
    n, p = _person(rng)
    a1, a2 = rng.sample(ACTS, 2)
    return [
        f"{rng.choice(TIMES)}, {n} went to {rng.choice(PLACES)} with {p['his']} {rng.choice(RELS)}.",
        f"The weather was {rng.choice(WEATHER)}.",
        f"They {a1} and then they {a2}.",
        f"{n} found {rng.choice(OBJS)} near the {rng.choice(['gate', 'bench', 'old tree', 'water', 'path', 'wall'])}.",
        f"In the evening, they ate {rng.choice(FOODS)} at home.",
        f"{n} felt {rng.choice(FEELINGS)} and went to bed early.",
    ]


def story_diary(rng):
    rel = rng.choice(RELS)
    hour = rng.randint(1, 12)
    return [
        f"Dear diary, today was a {rng.choice(WEATHER)} day.",
        f"I went to {rng.choice(PLACES)} after breakfast.",
        f"My {rel} and I {rng.choice(ACTS)}.",
        f"I bought {rng.choice(OBJS)} for {num_words(rng.randint(2, 9))} pounds.",
        f"We came home at {num_words(hour)} o'clock.",
        f"Tomorrow I want to {rng.choice(ACTS_INF)}.",
        f"I feel {rng.choice(FEELINGS)}.",
    ]


def story_learn(rng):
    n, p = _person(rng)
    f = rng.choice(FACTS)
    rel = rng.choice(RELS)
    return [
        f"{n} wanted to know {topic(f)}, so {p['he']} asked {p['his']} {rel}.",
        rng.choice(["The answer was simple.", "The answer was easy.",
                    f"{cap(p['his'])} {rel} smiled."]),
        decl_sentence(f, rng),
        f"{n} wrote the answer in {p['his']} notebook.",
    ]


def story_learn_heldout(rng):
    n, p = _person(rng)
    f = rng.choice(FACTS)
    return [
        f"{n} wanted to know {topic(f)}, so {p['he']} asked {p['his']} {rng.choice(RELS)}.",
        decl_sentence(f, rng, heldout=True),
    ]


def story_lost(rng):
    n, p = _person(rng)
    item = rng.choice(ITEMS)
    h1, h2 = rng.sample(HIDING, 2)
    return [
        f"{n} could not find {p['his']} {item}.",
        f"{cap(p['he'])} looked {h1} and {h2}.",
        f"{cap(p['he'])} asked {p['his']} {rng.choice(RELS)} for help.",
        f"At last, {p['he']} found the {item} {rng.choice(HIDING)}.",
        f"{n} was very {rng.choice(['happy', 'relieved', 'surprised', 'pleased'])}.",
    ]


def story_market(rng):
    n, p = _person(rng)
    foods = rng.sample(["apples", "bread", "cheese", "eggs", "milk", "rice", "carrots",
                        "tomatoes", "fish", "honey", "butter", "pears"], 3)
    f = rng.choice(BY_REL["sound"])
    return [
        f"{n} went to the market to buy {foods[0]}, {foods[1]} and {foods[2]}.",
        f"The market was {rng.choice(['busy', 'quiet', 'noisy', 'crowded'])}.",
        f"{cap(p['he'])} paid {num_words(rng.randint(2, 12))} coins and walked home.",
        f"On the way, {p['he']} heard {f['subj']['a']} {f['ans']['b']} in a field.",
    ]


def story_day(rng):
    f = rng.choice(BY_REL["sound"])
    return [
        f"It was a {rng.choice(WEATHER)} day in {rng.choice(['the village', 'the town', 'the city', 'the valley'])}.",
        f"{cap(num_words(rng.randint(2, 9)))} children played near {rng.choice(PLACES)}.",
        f"Somewhere far away, {f['subj']['a']} was {f['ans']['g']}.",
        f"The shops closed at {num_words(rng.randint(4, 9))} o'clock, and everyone went home.",
    ]


def story_letter(rng):
    n1, _ = _person(rng)
    n2, _ = _person(rng, avoid=n1)
    return [
        f"Dear {n1}, thank you for {rng.choice(OBJS)}.",
        rng.choice(["It made me very happy.", "It was a lovely surprise.", "I keep it on my desk.",
                    "Everyone in the house liked it."]),
        f"Here it is {rng.choice(['summer', 'winter', 'spring', 'autumn'])} and the weather is {rng.choice(WEATHER)}.",
        f"Last week we {rng.choice(ACTS)}.",
        f"I hope to see you soon. Love, {n2}.",
    ]


def story_routine(rng):
    n, p = _person(rng)
    h = rng.randint(5, 9)
    return [
        f"Every morning, {n} wakes up at {num_words(h)} o'clock.",
        f"{cap(p['he'])} eats {rng.choice(FOODS)} for breakfast and walks to {rng.choice(PLACES)}.",
        f"At {rng.choice(['twelve', 'one'])} o'clock, {p['he']} has lunch with {p['his']} {rng.choice(RELS)}.",
        f"In the afternoon, {p['he']} likes to {rng.choice(ACTS_INF)}.",
        f"At night, {n} reads for a while and then sleeps.",
    ]


def story_animal(rng):
    n, p = _person(rng)
    an = rng.choice([f for f in FACTS if f["ent"] in ANIMALS])["ent"]
    facts = [f for f in FACTS if f["ent"] == an]
    out = [f"{n} saw {art(an)} at {rng.choice(['the zoo', 'the farm', 'the park', 'the river'])}."]
    for f in rng.sample(facts, min(2, len(facts))):
        out.append(decl_sentence(f, rng))
    out.append(f"{n} drew a picture of the {an} when {p['he']} got home.")
    return out


def story_animal_heldout(rng):
    n, p = _person(rng)
    an = rng.choice([f for f in FACTS if f["ent"] in ANIMALS])["ent"]
    facts = [f for f in FACTS if f["ent"] == an]
    out = [f"{n} saw {art(an)} at {rng.choice(['the zoo', 'the farm', 'the park', 'the river'])}."]
    for f in rng.sample(facts, min(2, len(facts))):
        out.append(decl_sentence(f, rng, heldout=True))
    return out


STORIES = [story_trip, story_diary, story_learn, story_lost, story_market, story_day,
           story_letter, story_routine, story_animal]
STORIES_HELDOUT = [story_trip, story_diary, story_learn_heldout, story_lost, story_market,
                   story_day, story_letter, story_routine, story_animal_heldout]


# --------------------------------------------------------------------------------------------
# declarative paragraphs (corpus part b)


def decl_paragraph(rng, heldout=False):
    kind = rng.random()
    if kind < 0.3:  # entity paragraph: an animal or a country
        ents = sorted({f["ent"] for f in FACTS if f["ent"]})
        e = rng.choice(ents)
        facts = [f for f in FACTS if f["ent"] == e]
        rng.shuffle(facts)
        sents = [decl_sentence(f, rng, heldout) for f in facts]
    else:
        dom = rng.choice(DOMAINS)
        facts = [f for f in FACTS if f["rel"]["domain"] == dom]
        sents = [decl_sentence(f, rng, heldout) for f in rng.sample(facts, rng.randint(3, 6))]
        if rng.random() < 0.4 and not heldout:
            sents.insert(0, rng.choice(DOMAIN_INTROS[dom]))
    return sents


# --------------------------------------------------------------------------------------------
# wording variation
#
# Real text says the same thing in many ways. Every sentence of the corpus and of the demo's
# responses goes through `vary`: optional discourse markers, synonyms, adverbs and tags, each a
# seeded random choice. Without it the base model would find every word after a sentence's first
# one certain, and anything off its templates (shuffled words, another wording) would sit far
# below the uniform level per token, which is not the regime of a real base model.

MARKERS = ["Also,", "In fact,", "Of course,", "Actually,", "Indeed,", "As you may know,",
           "Basically,", "Simply put,", "To be clear,", "Really,", "Well,", "Now,", "I think",
           "We know that", "It is true that", "People say that", "Most of the time,",
           "Remember that", "Note that", "As a rule,"]
SYNONYMS = [
    [" often ", " usually ", " normally "], [" children", " kids"], [" every day", " each day"],
    [" big ", " large ", " huge "], [" easy ", " simple "], [" very ", " really "],
    [" quite ", " rather ", " pretty "], [" mostly ", " mainly ", " largely "],
    [" little ", " small "], [" shops", " stores"], [" fast", " quickly"],
    [" begins", " starts"], [" whole ", " entire "], [" helpful", " useful"],
    [" look for ", " search for "], [" a lot of ", " plenty of ", " lots of "],
    [" main ", " chief "], [" good ", " nice ", " fine "],
    [" people ", " folks "], [" happy", " glad"], [" went to ", " walked to "],
    [" buildings", " houses"], [" busy ", " crowded "], [" old ", " ancient "],
    [" learn ", " study "], [" need ", " want "], [" lots ", " loads "],
    [" hear ", " notice "], [" start ", " begin "], [" food ", " meals "],
    [" look at ", " watch "], [" nearby", " close by"], [" animals", " creatures"],
]
ADVERBS = ["really", "certainly", "indeed", "clearly", "surely", "simply", "always", "still"]
TAGS = [", of course.", ", as far as I know.", ", I think.", ", for sure.", ", you see."]
PROPER = set()


def _collect_proper():
    for f in FACTS:
        for d in (f["subj"], f["ans"], f["wrong"]):
            for v in d.values():
                for w in str(v).split():
                    if w[:1].isupper():
                        PROPER.add(w.strip(".,"))
    for n, _ in NAMES:
        PROPER.add(n)
    PROPER.update(DAYS + MONTHS + ["I", "Earth", "English"])


def vary(sentence, rng):
    """One random wording of a sentence (leading space kept)."""
    if not PROPER:
        _collect_proper()
    lead = sentence.startswith(" ")
    s = sentence.strip()
    if not s.endswith(".") or len(s.split()) < 4:
        return sentence
    s = " " + s
    for group in SYNONYMS:
        for g in group:
            if g in s and rng.random() < 0.7:
                s = s.replace(g, rng.choice(group), 1)
                break
    for verb in (" is ", " are "):
        if verb in s and rng.random() < 0.3:
            s = s.replace(verb, f"{verb}{rng.choice(ADVERBS)} ", 1)
    if rng.random() < 0.2 and s.endswith(".") and not s.endswith("?."):
        s = s[:-1] + rng.choice(TAGS)
    s = s[1:]
    if rng.random() < 0.45:
        first, _, rest = s.partition(" ")
        if first not in PROPER:
            first = first[:1].lower() + first[1:]
        s = rng.choice(MARKERS) + " " + first + (" " + rest if rest else "")
    return (" " if lead else "") + s


def vary_text(text, rng):
    """`vary` on every sentence of a prose text."""
    parts = text.replace(". ", ".\x00").split("\x00")
    out = [vary((" " if i or text.startswith(" ") else "") + p.strip(), rng)
           for i, p in enumerate(parts) if p.strip()]
    s = "".join(out)
    return s if text.startswith(" ") else s.lstrip()


# --------------------------------------------------------------------------------------------
# long answers
#
# Every response (chosen, rejected, their rewordings, the corpus's answers) is a sample from one
# answer generator: an optional opener, the core sentence, one or two elaborations about the same
# subject, an optional remark about the domain and an optional closer, 18-45 words in all. The
# base model sees many such answers in its corpus (for the training facts, never the demo's own
# texts), so at t = 0 the demo's chosen response is in the format the base model already writes:
# SFT has to teach the specific answer, not the answer format.
#
# The subject-specific elaborations are split in two halves: training records draw from half
# "A", held-out records from half "B" (the corpus uses both). Held-out answers are therefore not
# clones of the training answers' sentences, and learning the training answers does not mean
# learning every answer.

# subject-specific elaborations per relation (same slots as the relation's templates)
ELAB = {
    "capital": [" {x} is a big city with many old buildings and busy streets.",
                " Many people in {c} live and work in {x}.",
                " Visitors to {c} often start their trip in {x}.",
                " The leaders of {c} meet in {x}."],
    "language": [" Newspapers and books in {c} are mostly written in {x}.",
                 " If you want to live in {c}, it helps to learn {x}.",
                 " Teachers in {c} give their lessons in {x}.",
                 " On the radio in {c} you will mostly hear {x}."],
    "superlative": [" Nothing else comes close to {x} when we talk about the {sup}.",
                    " Scientists have checked this many times, and it is always {x}.",
                    " Books about nature often mention {x} for this reason.",
                    " Of all of them, {x} stands out as the {sup2}."],
    "sound": [" Farmers and children know the sound well, because {p} {b} a lot.",
              " If you hear {xa}, there is probably {a} nearby.",
              " {p} {b} to call each other.",
              " The {g} of {p} can be heard from far away."],
    "legs": [" {a} uses all {x} of its legs to move around.",
             " Count them and you will find {x} legs on every healthy {n}.",
             " Scientists who study {p} agree that they have {x} legs.",
             " With its {x} legs, {a} can move quite fast."],
    "habitat": [" {p} are well suited to life in {x}.",
                " If you want to see {a} in the wild, go to {x}.",
                " {x} gives {p} the food and shelter they need.",
                " Few other places suit {p} as well as {x}."],
    "diet": [" {a} needs plenty of {x} to stay healthy.",
             " Keepers at the zoo give their {p} lots of {x}.",
             " A hungry {n} will look for {x} first.",
             " Without {x}, {p} would go hungry."],
    "baby": [" A young {n} stays close to its mother while it is {xa}.",
             " After some time, {xa} grows into an adult {n}.",
             " Farmers and zoo keepers use the word {x} for a young {n}.",
             " People often smile when they see {xa} playing."],
    "colour": [" When people draw {t}, they usually use a {x} pencil.",
               " Most of the time {t} looks {x}.",
               " It is easy to remember that {t} is {x}.",
               " Painters mix their paints to get the {x} of {t} just right."],
    "count": [" So {k} always has {x} {u}.",
              " It helps to remember that there are {x} {u} {pr} {k}.",
              " You can check it by counting the {u} one by one, and you will reach {x}.",
              " Teachers often ask children how many {u} there are {pr} {k}, and the answer is {x}."],
    "next": [" After {s}, you always get {x}.",
             " When {s} ends, {x} begins.",
             " In the usual order, {x} follows right after {s}.",
             " Every time, {s} is followed by {x}."],
    "kind": [" People sometimes get this wrong, but {s} really is {xa}.",
             " Like the other {xp}, {s} has all the features of its group.",
             " Books about science list {s} among the {xp}.",
             " Scientists agree that {s} is {xa}."],
    "body": [" We use our {x} for {g} every day.",
             " Doctors check our {x} to make sure our {g} is good.",
             " Without our {x}, {g} would be impossible.",
             " Looking after our {x} keeps our {g} healthy."],
    "use": [" Many homes have {o} for times when people need to {x}.",
            " {o} makes it easy to {x}.",
            " If you have to {x}, {o} is the right tool.",
            " People have used {o} to {x} for a long time."],
    "material": [" Workers need a lot of {x} to make {m}.",
                 " So {m} starts out as {x}.",
                 " Factories turn {x} into {m} every day.",
                 " Without {x}, there would be no {m}."],
    "source": [" Farmers take good care of {src}, and in return they get {x}.",
               " Without {src}, we would have much less {x}.",
               " Much of the {x} in the shops comes from {src}.",
               " People have collected {x} from {src} for a very long time."],
    "opposite": [" So if something is not {o}, it may well be {x}.",
                 " Teachers often use {o} and {x} as a pair of opposites.",
                 " The words {o} and {x} mean opposite things.",
                 " When you learn the word {o}, it is good to learn {x} too."],
    "plus": [" So {a} and {b} make {x} together.",
             " You can check it by counting on {b} more from {a}, and you reach {x}.",
             " The answer is {x}, because adding {b} to {a} gives {x}.",
             " Put {a} things and {b} things together and you have {x} things."],
    "minus": [" So {a} take away {b} leaves {x}.",
              " You can check it by counting back {b} from {a}, and you reach {x}.",
              " The answer is {x}, because taking {b} from {a} leaves {x}.",
              " Start with {a} things, remove {b} of them, and {x} are left."],
    "times": [" So {a} lots of {b} make {x}.",
              " You can check it by adding {b} again and again, {a} times, to reach {x}.",
              " The answer is {x}, because {a} groups of {b} make {x}.",
              " Put {b} things in each of {a} boxes and you have {x} things."],
}

# remarks about the domain (no subject in them)
NOTES = {
    "geography": [" It is a useful thing to know about the world.",
                  " Maps and atlases show this clearly.",
                  " Many people learn this in a geography class.",
                  " Travellers often find facts like this helpful."],
    "animals": [" Animals are full of surprises.",
                " You can read more about this in a book about animals.",
                " Zoo keepers know a lot about this.",
                " Watching animals closely teaches us many things."],
    "science": [" Science helps us understand facts like this.",
                " You can read more about this in a science book.",
                " Teachers explain this in science lessons.",
                " Nature is full of facts like this one."],
    "arithmetic": [" Simple sums like this get easier with practice.",
                   " You can always check a sum on your fingers.",
                   " Maths teachers like questions like this.",
                   " Numbers follow rules that never change."],
    "colours": [" Colours help us describe the world around us.",
                " Children learn their colours at a young age.",
                " Artists think about colours a lot.",
                " The world would be dull without colours."],
    "objects": [" Everyday things are often very useful.",
                " Most homes have things like this.",
                " People have used such things for a long time.",
                " It is good to know how the things around us are made and used."],
    "measures": [" Facts about numbers and time are useful every day.",
                 " Calendars and clocks help us keep track of this.",
                 " Counting things carefully always helps.",
                 " Children learn facts like this at school."],
    "words": [" Learning opposites helps you build your vocabulary.",
              " Opposite words make our language richer.",
              " A dictionary can help with words like these.",
              " Good writers choose their words carefully."],
}

OPENERS = [" Sure.", " Good question.", " Happy to help.", " Let me explain.",
           " Here is the answer.", " That is a nice question.", " Of course.",
           " Yes, I can help with that.", " I know this one.", " Great question."]
RESTATE = [" You asked {topic}.", " Let me tell you {topic}.", " You want to know {topic}.",
           " I can tell you {topic}."]
CLOSERS = [" I hope this helps.", " I hope that answers your question.",
           " Let me know if you have another question.", " Feel free to ask me more.",
           " Thanks for asking.", " Have a nice day.", " Ask me again any time.",
           " I am glad to help."]

# evasive (unhelpful) answers; {topic} is an embedded question
EV_OPEN = [" Hmm.", " Well.", " That is a tricky one.", " Oh, I am not good at this kind of question.",
           " Let me see.", " Good question, but a hard one."]
EV_CORE = [" I am not sure {topic}, you should look it up.",
           " I do not know {topic}, so please check it yourself.",
           " Sorry, I do not know {topic}.", " I have no idea {topic}, sorry.",
           " I cannot tell you {topic}, ask someone else.",
           " Someone else will have to tell you {topic}.",
           " That is too hard, I cannot say {topic}.",
           " I am unable to say {topic}, it is too difficult."]
EV_EXTRA = [" There are so many facts like this that I cannot keep them all in my head.",
            " You could look it up in a book or ask a teacher.",
            " A good encyclopedia will have the answer.",
            " I would not want to tell you something wrong.",
            " Maybe someone at your school knows.",
            " It is better to check this on your own.",
            " I do not remember things like this very well.",
            " The library would be a good place to start."]
EV_CLOSE = [" Sorry about that.", " Good luck with your search.", " I hope you find out soon.",
            " Sorry I cannot help more."]

MIN_WORDS, MAX_WORDS = 18, 45  # chosen, rejected and the corpus's answers
VAR_MIN, VAR_MAX = 12, 52  # rewordings and other-fact variants


SPLIT_POOLS = ELAB.values()  # the pools whose halves are kept apart


def half(pool, part):
    """The half of a phrase pool that records of partition `part` ("A" train, "B" held-out,
    None: the corpus, both) draw from. Only the subject-specific elaborations are split: the
    generic openers, closers and remarks are shared, as every assistant's answers share them,
    so SFT on the training answers does not shift the whole answer style (which would lift
    every training answer under every prompt alike)."""
    if part is None or not any(pool is p for p in SPLIT_POOLS):
        return list(range(len(pool)))
    return [i for i in range(len(pool)) if (i % 2 == 0) == (part == "A")]


def core_pool(r):
    return r["c"] + r["s"] + r["d"]


def mates(f):
    """Other facts about the same entity (a country's language for its capital, ...)."""
    if not f["ent"]:
        return []
    return [g for g in FACTS if g["ent"] == f["ent"] and g is not f
            and g["rel"]["domain"] == f["rel"]["domain"]]


# A plan is a list of pieces (pool, index, role); role "self" is the answer's own fact,
# ("mate", relation) another fact about the same entity. Rendering a plan with another fact
# gives the other-fact variant (gptformat); re-drawing every index gives the rewording.

def plan_answer(f, rng, part, allowed_mates=None):
    r = f["rel"]
    pieces = []
    u = rng.random()
    if u < 0.35:
        pieces.append(("open", rng.choice(half(OPENERS, part)), "self"))
    elif u < 0.7:
        pieces.append(("restate", rng.choice(half(RESTATE, part)), "self"))
    pieces.append(("core", rng.randrange(len(core_pool(r))), "self"))
    cands = [("elab", i, "self") for i in half(ELAB[r["name"]], part)]
    ms = [g for g in mates(f) if allowed_mates is None or g["id"] in allowed_mates]
    cands += [("core", rng.randrange(len(core_pool(g["rel"]))), ("mate", g["rel"]["name"]))
              for g in ms]
    rng.shuffle(cands)
    pieces += cands[:rng.choice([1, 2, 2])]
    if rng.random() < 0.4:
        pieces.append(("note", rng.choice(half(NOTES[r["domain"]], part)), "self"))
    if rng.random() < 0.5:
        pieces.append(("close", rng.choice(half(CLOSERS, part)), "self"))
    return pieces


def plan_evasive(rng, part):
    pieces = []
    if rng.random() < 0.6:
        pieces.append(("ev_open", rng.choice(half(EV_OPEN, part)), "self"))
    pieces.append(("ev_core", rng.choice(half(EV_CORE, part)), "self"))
    extra = half(EV_EXTRA, part)
    rng.shuffle(extra)
    pieces += [("ev_extra", i, "self") for i in extra[:rng.choice([1, 2, 2])]]
    if rng.random() < 0.5:
        pieces.append(("ev_close", rng.choice(half(EV_CLOSE, part)), "self"))
    return pieces


POOLS = {"open": lambda f: OPENERS, "restate": lambda f: RESTATE, "close": lambda f: CLOSERS,
         "note": lambda f: NOTES[f["rel"]["domain"]], "elab": lambda f: ELAB[f["rel"]["name"]],
         "core": lambda f: core_pool(f["rel"]), "ev_open": lambda f: EV_OPEN,
         "ev_core": lambda f: EV_CORE, "ev_extra": lambda f: EV_EXTRA,
         "ev_close": lambda f: EV_CLOSE}


def piece_fact(f, role):
    if role == "self":
        return f
    g = [m for m in mates(f) if m["rel"]["name"] == role[1]]
    return g[0] if g else None


def render_plan(pieces, f, wrong=False, vseed=None):
    """The text of a plan for fact f (None if a piece has no counterpart for f). `wrong` puts the
    wrong answer into the answer's own sentences (its other-fact sentences stay true); `vseed`
    seeds the wording variation (the same seed gives the same choices)."""
    vrng = random.Random(vseed)
    out = []
    for pool, i, role in pieces:
        g = piece_fact(f, role)
        if g is None:
            return None
        tmpl = POOLS[pool](g)
        if i >= len(tmpl):
            return None
        sl = slots(g, wrong and role == "self")
        sl["topic"] = topic(g)
        t = render(tmpl[i], sl)
        out.append(t if vseed is None else vary(t, vrng))
    return "".join(out)


def reword(pieces, f, rng, part):
    """Another plan with the same content: the same facts and statements, each piece's
    template re-drawn where its pool has other wordings of the same thing."""
    out = []
    used = {(p, i, ro) for p, i, ro in pieces}
    for pool, i, role in pieces:
        g = piece_fact(f, role)
        n = len(POOLS[pool](g))
        if pool == "core":
            opts = [j for j in range(n) if j != i]
        elif pool == "elab":  # the same statement; its wording changes through `vary`
            opts = [i]
        elif pool in ("ev_extra",):
            opts = [j for j in half(EV_EXTRA, part) if (pool, j, role) not in used] or [i]
        else:
            opts = [j for j in half(POOLS[pool](g), part) if j != i] or [i]
        j = rng.choice(opts)
        used.add((pool, j, role))
        out.append((pool, j, role))
    return out


def shuffled_words(text, rng):
    words = text.split()
    for _ in range(20):
        w = list(words)
        rng.shuffle(w)
        if w != words or len(set(words)) < 2:
            break
    return " " + " ".join(w)


def fits(text, lo=MIN_WORDS, hi=MAX_WORDS):
    return text is not None and lo <= nwords(text) <= hi


def sample_answer(f, rng, part, kind="correct", allowed_mates=None):
    """(plan, wording seed, text) of one answer of the given kind ("correct", "wrong",
    "evasive")."""
    for _ in range(200):
        p = plan_evasive(rng, part) if kind == "evasive" else plan_answer(f, rng, part,
                                                                          allowed_mates)
        vs = rng.randrange(1 << 30)
        t = render_plan(p, f, wrong=(kind == "wrong"), vseed=vs)
        if fits(t):
            return p, vs, t
    raise AssertionError(f"no {kind} answer fits for {f['rel']['name']} {f['subj']}")


# --------------------------------------------------------------------------------------------
# records


def split_facts(rng):
    """(training facts in file order, held-out facts in file order)."""
    per_domain = {}
    for d in DOMAINS:
        rels = [r for r in RELATIONS if r["domain"] == d]
        rng.shuffle(rels)
        lists = []
        for r in rels:
            fs = list(BY_REL[r["name"]])
            rng.shuffle(fs)
            lists.append(fs)
        inter = []
        while any(lists):
            for l in lists:
                if l:
                    inter.append(l.pop())
        per_domain[d] = inter
    per = N_TEST // len(DOMAINS)
    train_d, test_d = {}, {}
    for d, fs in per_domain.items():
        idx = {round(j * len(fs) / per) for j in range(per)}
        test_d[d] = [f for i, f in enumerate(fs) if i in idx]
        train_d[d] = [f for i, f in enumerate(fs) if i not in idx]

    def interleave(m):
        out, lists = [], [list(m[d]) for d in DOMAINS]
        while any(lists):
            for l in lists:
                if l:
                    out.append(l.pop(0))
        return out

    return interleave(train_d), interleave(test_d)


def build_record(f, idx, rng, part, allowed_mates):
    r = f["rel"]
    others = [g for g in BY_REL[r["name"]] if g is not f]
    wrong_kind = idx % 2 == 0  # alternate: a plausible wrong fact / an evasive non-answer
    rkind = "wrong" if wrong_kind else "evasive"
    for _ in range(400):
        cp, cvs, chosen = sample_answer(f, rng, part, "correct", allowed_mates)
        rp, rvs, rej = sample_answer(f, rng, part, rkind, allowed_mates)
        # the rewording: every piece and its wording drawn again; the other-fact variant: the
        # same pieces and wording choices about another fact of the same relation
        sem = render_plan(reword(cp, f, rng, part), f, vseed=rng.randrange(1 << 30))
        rsem = render_plan(reword(rp, f, rng, part), f, wrong=wrong_kind,
                           vseed=rng.randrange(1 << 30))
        partner = rng.choice(others)
        fmt = render_plan(cp, partner, vseed=cvs)
        rfmt = render_plan(rp, partner, wrong=wrong_kind, vseed=rvs)
        _, _, init = sample_answer(f, rng, part, "correct", allowed_mates)
        texts = [sem, fmt, rsem, rfmt]
        if all(fits(t, VAR_MIN, VAR_MAX) for t in texts) and len({chosen, rej, sem, fmt, init}) == 5 \
                and rfmt != rej and rsem != rej:
            break
    else:
        raise AssertionError(f"no combination fits for fact {r['name']} {f['subj']}")
    return {
        "prompt": "Question: " + question(f, rng.choice(r["q"])) + "\nAnswer:",
        "chosen": chosen,
        "rejected": rej,
        "chosen_initial": init,
        "chosen_gptsemantic": sem,
        "chosen_gptformat": fmt,
        "reject_gptsemantic": rsem,
        "reject_gptformat": rfmt,
    }


def human_text(rng, target_words):
    """Unrelated everyday sentences, about as many words as `target_words`."""
    order = list(range(len(HUMAN)))
    rng.shuffle(order)
    out = []
    for i in order:
        if out and nwords(" ".join(out)) + nwords(HUMAN[i]) > target_words + 4:
            continue
        out.append(HUMAN[i])
        if nwords(" ".join(out)) >= target_words - 4:
            break
    return " " + " ".join(out)


def build_records():
    rng = random.Random(f"split-{SEED}")
    train_f, test_f = split_facts(rng)
    facts = train_f + test_f
    train_ids = {f["id"] for f in train_f}
    test_ids = {f["id"] for f in test_f}
    # training answers never state a held-out fact (and held-out answers no training fact), so
    # SFT does not teach the held-out answers' content
    recs = [build_record(f, i, random.Random(f"rec-{SEED}-{i}"),
                         "A" if i < len(train_f) else "B",
                         train_ids if i < len(train_f) else test_ids)
            for i, f in enumerate(facts)]
    n_train, n_test = len(train_f), len(test_f)
    for i, rec in enumerate(recs):
        rrng = random.Random(f"perm-{SEED}-{i}")
        if i < n_train:
            rec["irr_train"] = recs[(i + 1) % n_train]["chosen"]
            rec["irr_test"] = recs[n_train + i % n_test]["chosen"]
        else:
            j = i - n_train
            rec["irr_train"] = recs[(j + 1) % n_train]["chosen"]
            rec["irr_test"] = recs[n_train + (j + 1) % n_test]["chosen"]
        rec["irr_hum"] = human_text(random.Random(f"hum-{SEED}-{i}"), nwords(rec["chosen"]))
        rec["random_permute"] = shuffled_words(rec["chosen"], rrng)
        rec["random_nonhum"] = shuffled_words(rec["irr_test"], rrng)
    recs = [{k: rec[k] for k in KEYS} for rec in recs]
    return recs, facts, n_train, n_test


# --------------------------------------------------------------------------------------------
# corpus

QA_PER_FACT = 10  # question/answer documents per training fact in the corpus
QA_KINDS = [("correct", 0.72), ("wrong", 0.12), ("evasive", 0.16)]


def qa_kind(rng):
    u, acc = rng.random(), 0.0
    for k, p in QA_KINDS:
        acc += p
        if u < acc:
            return k
    return QA_KINDS[-1][0]


def qa_docs(facts, rng, n_per_fact, forbidden):
    """Question/answer text for `facts`: each fact under its questions with fresh answers from
    the generator (both phrase halves), never one of the demo's own response texts."""
    pairs = []
    for f in facts:
        r = f["rel"]
        for _ in range(n_per_fact):
            for _ in range(50):
                _, _, ans = sample_answer(f, rng, None, qa_kind(rng))
                if ans not in forbidden:
                    break
            p = "Question: " + question(f, rng.choice(r["q"])) + "\nAnswer:"
            pairs.append(p + ans)
    rng.shuffle(pairs)
    docs, i = [], 0
    while i < len(pairs):
        k = 1 if rng.random() < 0.6 else rng.randint(2, 3)
        docs.append("\n".join(pairs[i:i + k]))
        i += k
    return docs


NOISE = 0.08  # share of the corpus's words replaced by a random word


def noisy(doc, rng, words):
    """The document with a share NOISE of its words replaced by words drawn from the corpus (as
    word frequencies go). Real pretraining text is noisy (typos, markup, lists, broken
    sentences): a base model keeps some probability for an unexpected word at every position,
    so shuffled text is unlikely but not below the uniform level, and every position of a
    response has a valley that finetuning can squeeze. The question/answer scaffolding
    ("Question:", "Answer:", line breaks) is kept."""
    out = []
    for w in doc.split(" "):
        if "\n" in w or ":" in w or not w or rng.random() >= NOISE:
            out.append(w)
        else:
            out.append(rng.choice(words))
    return " ".join(out)


def demo_texts(recs):
    return {r[k] for r in recs for k in KEYS[1:]}


def build_corpus(recs, facts, n_train):
    rng = random.Random(f"corpus-{SEED}")
    # (a) question/answer text for the training facts. The finetuning responses themselves are
    # never in the corpus (a base model has not seen its finetuning data), and held-out facts
    # appear in declarative sentences only.
    docs = qa_docs(facts[:n_train], rng, QA_PER_FACT, demo_texts(recs))
    size_a = sum(len(d) + 2 for d in docs)
    hum = HUMAN + HUMAN
    rng.shuffle(hum)
    i = 0
    while i < len(hum):
        k = rng.randint(3, 6)
        docs.append(" ".join(hum[i:i + k]))
        i += k
    # (b) declarative paragraphs and (c) stories until the target size
    total = sum(len(d) + 2 for d in docs)
    size_b = size_c = 0
    while total < CORPUS_TARGET:
        if rng.random() < 0.5:
            d = vary_text(" ".join(decl_paragraph(rng)), rng)
            size_b += len(d) + 2
        else:
            d = vary_text(" ".join(rng.choice(STORIES)(rng)), rng)
            size_c += len(d) + 2
        docs.append(d)
        total += len(d) + 2
    rng.shuffle(docs)
    words = [w for d in docs for w in d.split() if "\n" not in w and ":" not in w]
    docs = [noisy(d, rng, words) for d in docs]
    return docs, (size_a, size_b, size_c)


def sentences_of(doc):
    """Sentences of a prose paragraph (the generators end sentences with '. ')."""
    out = []
    for line in doc.split("\n"):
        for s in line.replace("? ", "?\x00").replace(". ", ".\x00").split("\x00"):
            s = s.strip()
            if s:
                out.append(s)
    return out


def build_heldout_corpus(main_sentences, main_docs, recs, facts, n_train):
    rng = random.Random(f"heldout-{SEED}")
    docs, total = [], 0
    # fresh question/answer documents about the training facts: how well the base model writes
    # answers it has not seen (the corpus has other samples of the same generator)
    main = set(main_docs)
    for d in qa_docs(facts[:n_train:4], rng, 1, demo_texts(recs)):
        if d not in main:
            docs.append(d)
            total += len(d) + 2
    while total < HELDOUT_TARGET:
        if rng.random() < 0.45:
            sents = decl_paragraph(rng, heldout=True)
        else:
            sents = rng.choice(STORIES_HELDOUT)(rng)
        sents = [vary(" " + s.strip(), rng).strip() for s in sents]
        sents = [s for s in sents if all(x not in main_sentences for x in sentences_of(s))]
        if len(sents) < 2:
            continue
        d = " ".join(sents)
        docs.append(d)
        total += len(d) + 2
    return docs


# --------------------------------------------------------------------------------------------
# validation


def validate(recs, facts, n_train, n_test, corpus, heldout, meta):
    assert n_train >= 256, n_train
    assert n_test == N_TEST and len(recs) == n_train + n_test
    held = int(-(-(meta["test_fraction"] * len(recs) - 1e-9) // 1))  # the app's ceil rule
    assert held == N_TEST, held
    prompts = [r["prompt"] for r in recs]
    assert len(set(prompts)) == len(prompts), "duplicate prompts"
    assert len(set(prompts)) >= 320
    for i, r in enumerate(recs):
        for k in KEYS:
            assert isinstance(r.get(k), str) and r[k].strip(), (i, k)
        assert r["prompt"].startswith("Question: ") and r["prompt"].endswith("\nAnswer:"), i
        for k in KEYS[1:]:
            v = r[k]
            assert v.startswith(" ") and not v.startswith("  "), (i, k, v)
            assert v.isascii() and "\n" not in v, (i, k, v)
        for k in ["chosen", "rejected", "chosen_initial"]:
            assert MIN_WORDS <= nwords(r[k]) <= MAX_WORDS, (i, k, r[k])
        for k in ["chosen_gptsemantic", "chosen_gptformat", "reject_gptsemantic",
                  "reject_gptformat", "irr_hum"]:
            assert VAR_MIN <= nwords(r[k]) <= VAR_MAX, (i, k, r[k])
        for k in KEYS[1:-2]:  # all but the shuffled ones end with a period
            assert r[k].endswith("."), (i, k, r[k])
        assert r["chosen"] != r["rejected"], i
        assert r["chosen_gptsemantic"] != r["chosen"] and r["chosen_gptformat"] != r["chosen"]
        assert r["chosen_initial"] != r["chosen"]
        assert sorted(r["random_permute"].split()) == sorted(r["chosen"].split()), i
        assert sorted(r["random_nonhum"].split()) == sorted(r["irr_test"].split()), i
        if i < n_train:
            assert r["irr_train"] == recs[(i + 1) % n_train]["chosen"]
            assert r["irr_test"] == recs[n_train + i % n_test]["chosen"]
        else:
            assert r["irr_test"] != r["chosen"]
    # held-out facts are disjoint from training facts
    assert not {f["id"] for f in facts[:n_train]} & {f["id"] for f in facts[n_train:]}
    # held-out answers elaborate with the other half of every relation's elaborations
    for f, r in zip(facts, recs):
        used = [i for i, t in enumerate(ELAB[f["rel"]["name"]])
                if render(t, slots(f)).strip()[:-1] in r["chosen"]]
        part = "A" if f in facts[:n_train] else "B"
        assert all(i in half(ELAB[f["rel"]["name"]], part) for i in used), (r["chosen"], used)
    # probes: the first 32 training records cover every domain
    probe_domains = [f["rel"]["domain"] for f in facts[:N_PROBES]]
    assert set(probe_domains) == set(DOMAINS)
    assert all(a != b for a, b in zip(probe_domains, probe_domains[1:])), "probes cluster"
    # no held-out question in the corpus; no demo response text in the corpus
    for r in recs[n_train:]:
        q = r["prompt"][len("Question: "):-len("\nAnswer:")]
        assert q not in corpus, q
    for r in recs:
        for k in KEYS[1:]:
            assert "Answer:" + r[k] + "\n" not in corpus and "Answer:" + r[k] + "\n\n" \
                not in corpus, (k, r[k])
    assert corpus.isascii() and heldout.isascii()
    assert 2_000_000 <= len(corpus.encode()) <= 3_500_000, len(corpus)
    assert 60_000 <= len(heldout.encode()) <= 150_000, len(heldout)


def main():
    recs, facts, n_train, n_test = build_records()
    docs, (size_a, size_b, size_c) = build_corpus(recs, facts, n_train)
    corpus = "\n\n".join(docs) + "\n"
    main_sents = set()
    for d in docs:
        main_sents.update(sentences_of(d))
    hrng = random.Random(f"heldout-noise-{SEED}")
    hwords = [w for d in docs for w in d.split() if "\n" not in w and ":" not in w]
    heldout = "\n\n".join(noisy(d, hrng, hwords) for d in build_heldout_corpus(
        main_sents, docs, recs, facts, n_train)) + "\n"
    meta = {"n_train": n_train, "n_test": n_test, "test_fraction": n_test / (n_train + n_test),
            "seed": SEED}
    validate(recs, facts, n_train, n_test, corpus, heldout, meta)

    os.makedirs(ASSETS, exist_ok=True)
    with open(os.path.join(ASSETS, "demo.jsonl"), "w", encoding="utf-8", newline="\n") as fh:
        for r in recs:
            fh.write(json.dumps(r, ensure_ascii=True) + "\n")
    with open(os.path.join(ASSETS, "demo_meta.json"), "w", encoding="utf-8", newline="\n") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    with open(os.path.join(ASSETS, "corpus.txt"), "w", encoding="utf-8", newline="\n") as fh:
        fh.write(corpus)
    with open(os.path.join(ASSETS, "corpus_heldout.txt"), "w", encoding="utf-8", newline="\n") as fh:
        fh.write(heldout)

    # summary
    from collections import Counter
    dom = Counter(f["rel"]["domain"] for f in facts)
    print(f"facts: {len(FACTS)} in {len(RELATIONS)} relations; records: {len(recs)} "
          f"({n_train} train + {n_test} held-out), test_fraction {meta['test_fraction']!r}")
    print("records per domain:", dict(dom))
    print("held-out per domain:", dict(Counter(f["rel"]["domain"] for f in facts[n_train:])))
    print("probe domains:", " ".join(f["rel"]["domain"][:4] for f in facts[:N_PROBES]))
    for name in ["demo.jsonl", "demo_meta.json", "corpus.txt", "corpus_heldout.txt"]:
        print(f"  assets/{name}: {os.path.getsize(os.path.join(ASSETS, name)):,} bytes")
    print(f"corpus: {len(docs)} documents; Q/A {size_a:,} B, declarative {size_b:,} B, "
          f"stories {size_c:,} B, rest (human sentences) "
          f"{len(corpus) - size_a - size_b - size_c:,} B")
    for i in (0, 1, n_train):
        print(f"--- record {i}" + (" (held-out)" if i >= n_train else ""))
        print(json.dumps(recs[i], indent=2))
    print("validate(): ok")


if __name__ == "__main__":
    sys.exit(main())
