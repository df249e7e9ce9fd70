"""Generate DIET Explorer's offline multiple-choice task suite: assets/tasks/<task>.jsonl + suite.json.

Why this file exists: the paper's benchmarks live on the Hugging Face Hub, but the app must work with no network.
So we ship our own small tasks, written for this project (no downloaded data), each exercising a clearly
different skill, so that per-task pruning masks have something to differ about.

Everything is deterministic: a fixed seed per task, no set iteration (string hashing is randomised per process),
sorted keys. `python assets/tasks/build.py` rewrites byte-identical files; tests/test_tasks.py checks that.
Answers that can be computed are computed and asserted here (arithmetic, python_output, reading, plurals
and past tenses by rule); answers from hand-written tables (capitals, element symbols...) are checked for
uniqueness so that every item has exactly one correct choice.

Line format: {"context": str, "choices": [str, ...], "gold": int, "split": "calibration" | "evaluation"}.
Choices carry no leading space: the evaluator adds the target delimiter " " (lm-evaluation-harness style).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20260323  # one seed for the suite; each task derives its own RNG from it and its name
CAL_FRACTION = 0.4  # 40% calibration pool / 60% evaluation, split by group (no fact crosses splits)
LICENSE = "written for DIET Explorer (project-original data, same license as the project)"


@dataclass
class Raw:
    """One item before splitting and shuffling: the correct answer and its distractors kept apart."""

    group: str  # items sharing a group (e.g. a country asked both ways) always land in the same split
    context: str
    correct: str
    distractors: list[str]
    fixed_choices: tuple[str, ...] | None = None  # keep this order (yes/no, sentiment) instead of shuffling


def task_rng(name: str) -> random.Random:
    """A per-task RNG, so adding a task never changes the items of another."""
    return random.Random(f"{SEED}:{name}")


def pick_distractors(rng: random.Random, correct: str, pool: list[str], k: int) -> list[str]:
    """k distinct wrong answers from pool (never the correct one)."""
    candidates = sorted({p for p in pool if p != correct})
    assert len(candidates) >= k, (correct, len(candidates))
    return rng.sample(candidates, k)


# ----------------------------------------------------------------------------------------------------------
# arithmetic: single-digit additions and subtractions, answers computed


def far_numbers(rng: random.Random, answer: int, k: int) -> list[str]:
    """k distinct numbers at least 3 away from the answer, with as many digits as the answer (0..9 or 10..20), so
    that acc_norm's length normalisation cannot favour the shorter numbers (measured: it did, 0.33 vs acc 0.53)."""
    pool = range(10) if answer < 10 else range(10, 21)
    return [str(n) for n in rng.sample([n for n in pool if abs(n - answer) >= 3], k)]


def gen_arithmetic(rng: random.Random) -> list[Raw]:
    """a + b and a - b with one-digit operands, each asked with symbols and with words; distractors far away."""
    facts = [("+", a, b) for a in range(1, 10) for b in range(1, 10)]
    facts += [("-", a, b) for b in range(1, 10) for a in range(b + 1, b + 10)]  # results 1..9
    items: list[Raw] = []
    for op, a, b in facts:
        answer = a + b if op == "+" else a - b
        assert answer == eval(f"{a} {op} {b}")  # noqa: S307 - our own two integers
        group = f"{op}{min(a, b)},{max(a, b)}" if op == "+" else f"-{a},{b}"  # 3+4 and 4+3 are one fact
        word = "plus" if op == "+" else "minus"
        for phrase in (f"{a} {op} {b}", f"{a} {word} {b}"):
            items.append(Raw(group, f"Question: What is {phrase}?\nAnswer:", str(answer),
                             far_numbers(rng, answer, 3)))
    return items


# ----------------------------------------------------------------------------------------------------------
# capitals: country <-> capital, asked in both directions (both directions of a country share a split)

# (country, capital, continent). Only countries with one undisputed capital whose name differs from the country.
COUNTRIES: list[tuple[str, str, str]] = [
    ("Afghanistan", "Kabul", "Asia"), ("Albania", "Tirana", "Europe"), ("Algeria", "Algiers", "Africa"),
    ("Andorra", "Andorra la Vella", "Europe"), ("Angola", "Luanda", "Africa"),
    ("Antigua and Barbuda", "Saint John's", "North America"), ("Argentina", "Buenos Aires", "South America"),
    ("Armenia", "Yerevan", "Asia"), ("Australia", "Canberra", "Oceania"), ("Austria", "Vienna", "Europe"),
    ("Azerbaijan", "Baku", "Asia"), ("the Bahamas", "Nassau", "North America"), ("Bahrain", "Manama", "Asia"),
    ("Bangladesh", "Dhaka", "Asia"), ("Barbados", "Bridgetown", "North America"), ("Belarus", "Minsk", "Europe"),
    ("Belgium", "Brussels", "Europe"), ("Belize", "Belmopan", "North America"), ("Bhutan", "Thimphu", "Asia"),
    ("Bosnia and Herzegovina", "Sarajevo", "Europe"), ("Botswana", "Gaborone", "Africa"),
    ("Brazil", "Brasilia", "South America"), ("Brunei", "Bandar Seri Begawan", "Asia"),
    ("Bulgaria", "Sofia", "Europe"), ("Burkina Faso", "Ouagadougou", "Africa"), ("Cambodia", "Phnom Penh", "Asia"),
    ("Cameroon", "Yaounde", "Africa"), ("Canada", "Ottawa", "North America"), ("Cape Verde", "Praia", "Africa"),
    ("the Central African Republic", "Bangui", "Africa"), ("Chad", "N'Djamena", "Africa"),
    ("Chile", "Santiago", "South America"), ("China", "Beijing", "Asia"), ("Colombia", "Bogota", "South America"),
    ("Comoros", "Moroni", "Africa"), ("Costa Rica", "San Jose", "North America"), ("Croatia", "Zagreb", "Europe"),
    ("Cuba", "Havana", "North America"), ("the Czech Republic", "Prague", "Europe"),
    ("Denmark", "Copenhagen", "Europe"), ("Dominica", "Roseau", "North America"),
    ("the Dominican Republic", "Santo Domingo", "North America"), ("East Timor", "Dili", "Asia"),
    ("Ecuador", "Quito", "South America"), ("Egypt", "Cairo", "Africa"),
    ("El Salvador", "San Salvador", "North America"), ("Eritrea", "Asmara", "Africa"),
    ("Estonia", "Tallinn", "Europe"), ("Ethiopia", "Addis Ababa", "Africa"), ("Fiji", "Suva", "Oceania"),
    ("Finland", "Helsinki", "Europe"), ("France", "Paris", "Europe"), ("Gabon", "Libreville", "Africa"),
    ("the Gambia", "Banjul", "Africa"), ("Georgia", "Tbilisi", "Asia"), ("Germany", "Berlin", "Europe"),
    ("Ghana", "Accra", "Africa"), ("Greece", "Athens", "Europe"), ("Grenada", "St. George's", "North America"),
    ("Guatemala", "Guatemala City", "North America"), ("Guinea", "Conakry", "Africa"),
    ("Guinea-Bissau", "Bissau", "Africa"), ("Guyana", "Georgetown", "South America"),
    ("Haiti", "Port-au-Prince", "North America"), ("Honduras", "Tegucigalpa", "North America"),
    ("Hungary", "Budapest", "Europe"), ("Iceland", "Reykjavik", "Europe"), ("India", "New Delhi", "Asia"),
    ("Iran", "Tehran", "Asia"), ("Iraq", "Baghdad", "Asia"), ("Ireland", "Dublin", "Europe"),
    ("Italy", "Rome", "Europe"), ("Jamaica", "Kingston", "North America"), ("Japan", "Tokyo", "Asia"),
    ("Jordan", "Amman", "Asia"), ("Kazakhstan", "Astana", "Asia"), ("Kenya", "Nairobi", "Africa"),
    ("Kiribati", "Tarawa", "Oceania"), ("Kuwait", "Kuwait City", "Asia"), ("Kyrgyzstan", "Bishkek", "Asia"),
    ("Laos", "Vientiane", "Asia"), ("Latvia", "Riga", "Europe"), ("Lebanon", "Beirut", "Asia"),
    ("Lesotho", "Maseru", "Africa"), ("Liberia", "Monrovia", "Africa"), ("Libya", "Tripoli", "Africa"),
    ("Liechtenstein", "Vaduz", "Europe"), ("Lithuania", "Vilnius", "Europe"),
    ("Madagascar", "Antananarivo", "Africa"), ("Malawi", "Lilongwe", "Africa"),
    ("Malaysia", "Kuala Lumpur", "Asia"), ("the Maldives", "Male", "Asia"), ("Mali", "Bamako", "Africa"),
    ("Malta", "Valletta", "Europe"), ("the Marshall Islands", "Majuro", "Oceania"),
    ("Mauritania", "Nouakchott", "Africa"), ("Mauritius", "Port Louis", "Africa"),
    ("Mexico", "Mexico City", "North America"), ("Moldova", "Chisinau", "Europe"),
    ("Mongolia", "Ulaanbaatar", "Asia"), ("Montenegro", "Podgorica", "Europe"), ("Morocco", "Rabat", "Africa"),
    ("Mozambique", "Maputo", "Africa"), ("Myanmar", "Naypyidaw", "Asia"), ("Namibia", "Windhoek", "Africa"),
    ("Nepal", "Kathmandu", "Asia"), ("the Netherlands", "Amsterdam", "Europe"),
    ("New Zealand", "Wellington", "Oceania"), ("Nicaragua", "Managua", "North America"),
    ("Niger", "Niamey", "Africa"), ("Nigeria", "Abuja", "Africa"), ("North Korea", "Pyongyang", "Asia"),
    ("North Macedonia", "Skopje", "Europe"), ("Norway", "Oslo", "Europe"), ("Oman", "Muscat", "Asia"),
    ("Pakistan", "Islamabad", "Asia"), ("Panama", "Panama City", "North America"),
    ("Papua New Guinea", "Port Moresby", "Oceania"), ("Paraguay", "Asuncion", "South America"),
    ("Peru", "Lima", "South America"), ("the Philippines", "Manila", "Asia"), ("Poland", "Warsaw", "Europe"),
    ("Portugal", "Lisbon", "Europe"), ("Qatar", "Doha", "Asia"), ("Romania", "Bucharest", "Europe"),
    ("Russia", "Moscow", "Europe"), ("Rwanda", "Kigali", "Africa"), ("Saint Lucia", "Castries", "North America"),
    ("Samoa", "Apia", "Oceania"), ("Saudi Arabia", "Riyadh", "Asia"), ("Senegal", "Dakar", "Africa"),
    ("Serbia", "Belgrade", "Europe"), ("Seychelles", "Victoria", "Africa"), ("Sierra Leone", "Freetown", "Africa"),
    ("Slovakia", "Bratislava", "Europe"), ("Slovenia", "Ljubljana", "Europe"),
    ("the Solomon Islands", "Honiara", "Oceania"), ("Somalia", "Mogadishu", "Africa"),
    ("South Korea", "Seoul", "Asia"), ("South Sudan", "Juba", "Africa"), ("Spain", "Madrid", "Europe"),
    ("Sudan", "Khartoum", "Africa"), ("Suriname", "Paramaribo", "South America"),
    ("Sweden", "Stockholm", "Europe"), ("Switzerland", "Bern", "Europe"), ("Syria", "Damascus", "Asia"),
    ("Tajikistan", "Dushanbe", "Asia"), ("Thailand", "Bangkok", "Asia"), ("Togo", "Lome", "Africa"),
    ("Tonga", "Nuku'alofa", "Oceania"), ("Trinidad and Tobago", "Port of Spain", "North America"),
    ("Tunisia", "Tunis", "Africa"), ("Turkey", "Ankara", "Asia"), ("Turkmenistan", "Ashgabat", "Asia"),
    ("Tuvalu", "Funafuti", "Oceania"), ("Uganda", "Kampala", "Africa"), ("Ukraine", "Kyiv", "Europe"),
    ("the United Arab Emirates", "Abu Dhabi", "Asia"), ("the United Kingdom", "London", "Europe"),
    ("the United States", "Washington, D.C.", "North America"), ("Uruguay", "Montevideo", "South America"),
    ("Uzbekistan", "Tashkent", "Asia"), ("Vanuatu", "Port Vila", "Oceania"),
    ("Venezuela", "Caracas", "South America"), ("Vietnam", "Hanoi", "Asia"), ("Zambia", "Lusaka", "Africa"),
    ("Zimbabwe", "Harare", "Africa"), ("the Republic of the Congo", "Brazzaville", "Africa"),
    ("the Democratic Republic of the Congo", "Kinshasa", "Africa"),
    ("Sao Tome and Principe", "Sao Tome", "Africa"), ("Saint Kitts and Nevis", "Basseterre", "North America"),
    ("Saint Vincent and the Grenadines", "Kingstown", "North America"),
]


def country_answer(country: str) -> str:
    """'the Netherlands' reads naturally inside a question; as an answer it starts with a capital letter."""
    return country[0].upper() + country[1:]


def gen_capitals(rng: random.Random) -> list[Raw]:
    """What is the capital of X? / Which country has Y as its capital? Distractors: other capitals / countries."""
    capitals = [cap for _, cap, _ in COUNTRIES]
    countries = [country_answer(c) for c, _, _ in COUNTRIES]
    items = []
    for country, capital, _ in COUNTRIES:
        items.append(Raw(country, f"Question: What is the capital of {country}?\nAnswer:", capital,
                         pick_distractors(rng, capital, capitals, 3)))
        answer = country_answer(country)
        items.append(Raw(country, f"Question: Which country has {capital} as its capital?\nAnswer:", answer,
                         pick_distractors(rng, answer, countries, 3)))
    return items


# ----------------------------------------------------------------------------------------------------------
# facts: element symbols, continents, animal young and sounds, order of days and months

ELEMENTS: list[tuple[str, str]] = [
    ("hydrogen", "H"), ("helium", "He"), ("lithium", "Li"), ("beryllium", "Be"), ("boron", "B"), ("carbon", "C"),
    ("nitrogen", "N"), ("oxygen", "O"), ("fluorine", "F"), ("neon", "Ne"), ("sodium", "Na"), ("magnesium", "Mg"),
    ("aluminium", "Al"), ("silicon", "Si"), ("phosphorus", "P"), ("sulfur", "S"), ("chlorine", "Cl"),
    ("argon", "Ar"), ("potassium", "K"), ("calcium", "Ca"), ("scandium", "Sc"), ("titanium", "Ti"),
    ("vanadium", "V"), ("chromium", "Cr"), ("manganese", "Mn"), ("iron", "Fe"), ("cobalt", "Co"),
    ("nickel", "Ni"), ("copper", "Cu"), ("zinc", "Zn"), ("gallium", "Ga"), ("germanium", "Ge"),
    ("arsenic", "As"), ("selenium", "Se"), ("bromine", "Br"), ("krypton", "Kr"), ("rubidium", "Rb"),
    ("strontium", "Sr"), ("yttrium", "Y"), ("zirconium", "Zr"), ("niobium", "Nb"), ("molybdenum", "Mo"),
    ("ruthenium", "Ru"), ("rhodium", "Rh"), ("palladium", "Pd"), ("silver", "Ag"), ("cadmium", "Cd"),
    ("tin", "Sn"), ("antimony", "Sb"), ("iodine", "I"), ("xenon", "Xe"), ("cesium", "Cs"), ("barium", "Ba"),
    ("lanthanum", "La"), ("cerium", "Ce"), ("neodymium", "Nd"), ("europium", "Eu"), ("gadolinium", "Gd"),
    ("tungsten", "W"), ("osmium", "Os"), ("iridium", "Ir"), ("platinum", "Pt"), ("gold", "Au"),
    ("mercury", "Hg"), ("thallium", "Tl"), ("lead", "Pb"), ("bismuth", "Bi"), ("polonium", "Po"),
    ("radon", "Rn"), ("radium", "Ra"), ("thorium", "Th"), ("uranium", "U"), ("plutonium", "Pu"),
]

ANIMAL_YOUNG: list[tuple[str, str]] = [
    ("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("horse", "foal"), ("sheep", "lamb"),
    ("pig", "piglet"), ("duck", "duckling"), ("frog", "tadpole"), ("kangaroo", "joey"), ("bear", "cub"),
    ("deer", "fawn"), ("swan", "cygnet"), ("goose", "gosling"), ("hen", "chick"), ("owl", "owlet"),
    ("eagle", "eaglet"), ("butterfly", "caterpillar"), ("goat", "kid"),
]

ANIMAL_SOUNDS: list[tuple[str, str]] = [
    ("cow", "moo"), ("dog", "bark"), ("cat", "meow"), ("sheep", "baa"), ("pig", "oink"), ("duck", "quack"),
    ("lion", "roar"), ("horse", "neigh"), ("owl", "hoot"), ("bee", "buzz"),
    ("rooster", "crow"), ("frog", "croak"), ("mouse", "squeak"), ("donkey", "bray"),
]  # no wolf/howl or snake/hiss: dogs howl and cats hiss too, which would make a distractor correct

COLORS: list[tuple[str, str]] = [
    ("coal", "black"), ("fresh snow", "white"), ("milk", "white"), ("a ripe banana", "yellow"),
    ("a ripe tomato", "red"), ("the sky on a clear day", "blue"), ("a carrot", "orange"), ("a flamingo", "pink"),
    ("an elephant", "grey"), ("a crow", "black"), ("a lemon", "yellow"), ("a ripe strawberry", "red"),
    ("blood", "red"), ("an eggplant", "purple"), ("a polar bear", "white"), ("a pumpkin", "orange"),
]
LEGS: list[tuple[str, int]] = [
    ("spider", 8), ("ant", 6), ("bee", 6), ("dog", 4), ("cat", 4), ("horse", 4), ("chicken", 2), ("duck", 2),
    ("snake", 0), ("beetle", 6), ("cow", 4), ("penguin", 2), ("scorpion", 8), ("fly", 6),
]
TRANSCONTINENTAL = {"Russia", "Turkey", "Georgia", "Armenia", "Azerbaijan", "Kazakhstan", "Egypt"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def gen_facts(rng: random.Random) -> list[Raw]:
    """Simple world knowledge a small model may have seen often: symbols, continents, animals, colors, calendar."""
    items = []
    names = [n for n, _ in ELEMENTS]
    symbols = [s for _, s in ELEMENTS]
    assert len(set(names)) == len(names) and len(set(symbols)) == len(symbols)
    for name, symbol in ELEMENTS:
        items.append(Raw(f"el:{name}", f"Question: What is the chemical symbol for {name}?\nAnswer:", symbol,
                         pick_distractors(rng, symbol, symbols, 3)))
        items.append(Raw(f"el:{name}", f"Question: Which chemical element has the symbol {symbol}?\nAnswer:",
                         name, pick_distractors(rng, name, names, 3)))
    continents = sorted({c for _, _, c in COUNTRIES})
    for country, _, continent in COUNTRIES[::2]:  # every other country: enough items, less repetition
        if country in TRANSCONTINENTAL:
            continue
        items.append(Raw(f"co:{country}", f"Question: On which continent is {country}?\nAnswer:", continent,
                         pick_distractors(rng, continent, continents, 3)))
    young = [y for _, y in ANIMAL_YOUNG]
    for animal, baby in ANIMAL_YOUNG:
        items.append(Raw(f"yo:{animal}", f"Question: What is a baby {animal} called?\nAnswer:", baby,
                         pick_distractors(rng, baby, young, 3)))
    sounds = [s for _, s in ANIMAL_SOUNDS]
    for animal, sound in ANIMAL_SOUNDS:
        items.append(Raw(f"so:{animal}", f"Question: What sound does a {animal} make?\nAnswer:", sound,
                         pick_distractors(rng, sound, sounds, 3)))
    colors = sorted({c for _, c in COLORS})
    for thing, color in COLORS:
        items.append(Raw(f"cl:{thing}", f"Question: What color is {thing}?\nAnswer:", color,
                         pick_distractors(rng, color, colors, 3)))
    counts = [str(n) for n in (0, 2, 4, 6, 8)]
    for animal, legs in LEGS:
        items.append(Raw(f"lg:{animal}", f"Question: How many legs does a {animal} have?\nAnswer:", str(legs),
                         pick_distractors(rng, str(legs), counts, 3)))
    for cycle, unit in ((DAYS, "day"), (MONTHS, "month")):
        for i, now in enumerate(cycle):
            after, before = cycle[(i + 1) % len(cycle)], cycle[i - 1]
            items.append(Raw(f"{unit}:{now}", f"Question: Which {unit} comes after {now}?\nAnswer:", after,
                             pick_distractors(rng, after, [d for d in cycle if d != now], 3)))
            items.append(Raw(f"{unit}:{now}", f"Question: Which {unit} comes before {now}?\nAnswer:", before,
                             pick_distractors(rng, before, [d for d in cycle if d != now], 3)))
    return items


# ----------------------------------------------------------------------------------------------------------
# morphology: plurals, past tenses (regular ones computed by rule), opposites

REGULAR_NOUNS = [
    "cat", "dog", "book", "car", "tree", "house", "apple", "chair", "table", "bird", "river", "road", "window",
    "door", "cup", "shoe", "girl", "boy", "hat", "pen", "flower", "garden", "lamp", "ship", "cloud", "bottle",
    "box", "bus", "glass", "dish", "brush", "church", "watch", "fox", "kiss", "dress", "bench", "match",
    "city", "baby", "story", "party", "lady", "country", "berry", "puppy", "family", "cherry",
    "day", "key", "boy", "toy", "monkey", "valley", "chimney", "tray",
    "horse", "bridge", "pencil", "banana", "rabbit", "ticket", "candle", "jacket", "coin", "planet",
    "tax", "wish", "beach", "bush", "lunch", "boss",
]
IRREGULAR_PLURALS = {
    "child": "children", "man": "men", "woman": "women", "mouse": "mice", "goose": "geese", "tooth": "teeth",
    "foot": "feet", "person": "people", "ox": "oxen", "leaf": "leaves", "knife": "knives", "wife": "wives",
    "wolf": "wolves", "half": "halves", "loaf": "loaves", "shelf": "shelves", "thief": "thieves",
    "life": "lives", "calf": "calves", "potato": "potatoes", "tomato": "tomatoes",
    "hero": "heroes", "echo": "echoes", "crisis": "crises", "louse": "lice",
}  # no cactus/fish/deer: "cactuses", "fishes" are also accepted plurals


def plural_by_rule(noun: str) -> str:
    """The regular English plural rule: sibilants take -es, consonant + y -> -ies, else -s."""
    if noun.endswith(("s", "sh", "ch", "x", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


REGULAR_VERBS = [
    "walk", "jump", "play", "talk", "cook", "clean", "open", "help", "look", "want", "call", "ask", "work",
    "watch", "listen", "paint", "climb", "kick", "laugh", "learn", "start", "finish", "visit", "answer",
    "dance", "smile", "bake", "like", "close", "live", "move", "hope", "love", "change",
    "cry", "carry", "study", "try", "hurry", "worry", "marry", "copy",
    "stay", "enjoy", "pray", "obey",
    "wash", "push", "fix", "mix", "pick", "pull", "fill", "rain", "point", "cross", "guess", "touch", "reach",
    "miss", "pass", "jump",
]
IRREGULAR_PAST = {
    "go": "went", "eat": "ate", "see": "saw", "take": "took", "give": "gave", "write": "wrote", "drive": "drove",
    "speak": "spoke", "break": "broke", "choose": "chose", "freeze": "froze", "steal": "stole", "ride": "rode",
    "rise": "rose", "sing": "sang", "drink": "drank", "swim": "swam", "begin": "began", "run": "ran",
    "come": "came", "sit": "sat", "win": "won", "buy": "bought", "bring": "brought",
    "think": "thought", "catch": "caught", "teach": "taught", "fight": "fought", "sell": "sold", "tell": "told",
    "make": "made", "find": "found", "feel": "felt", "keep": "kept", "sleep": "slept", "leave": "left",
    "meet": "met", "send": "sent", "spend": "spent", "build": "built", "lose": "lost", "hold": "held",
    "stand": "stood", "understand": "understood", "fly": "flew", "grow": "grew", "know": "knew", "throw": "threw",
    "draw": "drew", "blow": "blew", "fall": "fell", "forget": "forgot", "get": "got", "do": "did", "have": "had",
    "say": "said", "wear": "wore", "bite": "bit", "hide": "hid", "shake": "shook",
}  # not wake/ring/tear/pay: "waked", "ringed", "teared", "payed" are real words, so a distractor could be right
DOUBLING = {"swim", "begin", "run", "sit", "win", "forget", "get"}  # consonant doubled before -ing


def past_by_rule(verb: str) -> str:
    """Regular past tense: -e -> -ed, consonant + y -> -ied, else -ed (our list avoids CVC doubling verbs)."""
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    return verb + "ed"


def third_person(verb: str) -> str:
    if verb in ("have", "do", "go"):
        return {"have": "has", "do": "does", "go": "goes"}[verb]
    return plural_by_rule(verb)  # same spelling rule as noun plurals


def ing_form(verb: str) -> str:
    if verb in DOUBLING:
        return verb + verb[-1] + "ing"
    if verb.endswith("ie"):
        return verb[:-2] + "ying"
    if verb.endswith("e") and not verb.endswith("ee") and verb != "be":
        return verb[:-1] + "ing"
    return verb + "ing"


OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"), ("open", "closed"),
    ("light", "dark"), ("day", "night"), ("young", "old"), ("rich", "poor"), ("wet", "dry"), ("full", "empty"),
    ("hard", "soft"), ("early", "late"), ("strong", "weak"), ("loud", "quiet"), ("tall", "short"),
    ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("begin", "end"), ("clean", "dirty"), ("thick", "thin"),
    ("heavy", "light"), ("inside", "outside"), ("above", "below"), ("true", "false"), ("left", "right"),
    ("north", "south"), ("east", "west"), ("love", "hate"), ("sweet", "sour"), ("cheap", "expensive"),
    ("safe", "dangerous"), ("easy", "difficult"), ("friend", "enemy"), ("question", "answer"),
    ("remember", "forget"), ("arrive", "leave"), ("always", "never"), ("before", "after"), ("more", "less"),
    ("first", "last"), ("near", "far"), ("awake", "asleep"), ("alive", "dead"), ("smooth", "rough"),
    ("wide", "narrow"), ("deep", "shallow"), ("accept", "refuse"), ("increase", "decrease"),
    ("success", "failure"), ("victory", "defeat"), ("sunrise", "sunset"), ("summer", "winter"),
    ("male", "female"), ("land", "sea"),
]
# Near-synonyms inside the list: the opposite of "easy" is "difficult", but "hard" would be right too.
SIMILAR = [{"hard", "difficult"}, {"soft", "quiet"}, {"success", "victory"}, {"failure", "defeat"}]
AMBIGUOUS_OPPOSITE = {"light"}  # opposite of both "dark" and "heavy": never asked, only answered


def similar(word: str) -> set[str]:
    """The word and its near-synonyms in the list."""
    return set().union({word}, *(g for g in SIMILAR if word in g))


def acceptable_opposites(word: str) -> set[str]:
    """Every answer that would be correct: opposites of the word or of its near-synonyms, and their synonyms."""
    found: set[str] = set()
    for w in similar(word):
        for a, b in OPPOSITES:
            if w in (a, b):
                found |= similar(b if w == a else a)
    return found


def gen_morphology(rng: random.Random) -> list[Raw]:
    """Word forms: plural, past tense, opposite. Distractors are the tempting wrong forms of the same word."""
    items = []
    nouns = list(dict.fromkeys(REGULAR_NOUNS))  # drop repeats, keep order
    for noun in nouns + sorted(IRREGULAR_PLURALS):
        plural = IRREGULAR_PLURALS.get(noun) or plural_by_rule(noun)
        if noun not in IRREGULAR_PLURALS:
            assert plural == plural_by_rule(noun)
        wrong = [noun + "s", noun + "es", noun, noun + "en", (noun[:-1] + "ies") if noun.endswith("y") else noun + "z"]
        wrong = [w for w in dict.fromkeys(wrong) if w != plural]
        items.append(Raw(f"pl:{noun}", f'Question: What is the plural of "{noun}"?\nAnswer:', plural,
                         rng.sample(wrong, 3)))
    for verb in list(dict.fromkeys(REGULAR_VERBS)) + sorted(IRREGULAR_PAST):
        past = IRREGULAR_PAST.get(verb) or past_by_rule(verb)
        wrong = [verb + "ed" if not verb.endswith("e") else verb + "d", third_person(verb), ing_form(verb), verb]
        wrong = [w for w in dict.fromkeys(wrong) if w != past]
        items.append(Raw(f"pa:{verb}", f'Question: What is the past tense of "{verb}"?\nAnswer:', past,
                         rng.sample(wrong, 3)))
    words = sorted({w for pair in OPPOSITES for w in pair})
    for a, b in OPPOSITES:
        for word, answer in ((a, b), (b, a)):
            if word in AMBIGUOUS_OPPOSITE:
                continue
            banned = acceptable_opposites(word) | similar(word)
            assert answer in banned
            pool = [w for w in words if w not in banned]
            items.append(Raw(f"op:{a}-{b}", f'Question: What is the opposite of "{word}"?\nAnswer:', answer,
                             pick_distractors(rng, answer, pool, 3)))
    return items


# ----------------------------------------------------------------------------------------------------------
# sentiment: short reviews composed from clearly positive / clearly negative sentences

PRODUCTS = [
    "blender", "vacuum cleaner", "pair of headphones", "coffee maker", "backpack", "phone case", "desk lamp",
    "kettle", "toaster", "keyboard", "office chair", "water bottle", "umbrella", "tent", "pair of running shoes",
    "laptop stand", "electric toothbrush", "rice cooker", "mattress", "bike helmet", "frying pan", "hair dryer",
    "wireless mouse", "winter jacket", "alarm clock", "suitcase", "speaker", "printer", "camera", "wristwatch",
]
SHOWS = [
    "movie", "film", "documentary", "comedy", "thriller", "cartoon", "musical", "horror movie", "drama",
    "sequel", "TV show", "series", "play", "concert", "opera", "ballet",
]
POS_PRODUCT = [
    "The {x} works perfectly.", "This {x} is excellent.", "I love this {x}.", "The {x} is sturdy and well made.",
    "This is the best {x} I have ever owned.", "The {x} is great value for the money.",
    "My new {x} is fantastic.", "The {x} arrived quickly and works great.",
]
NEG_PRODUCT = [
    "The {x} broke after two days.", "This {x} is terrible.", "I hate this {x}.",
    "The {x} is cheap and poorly made.", "This is the worst {x} I have ever owned.",
    "The {x} is a waste of money.", "My new {x} is useless.", "The {x} arrived damaged and does not work.",
]
POS_SHOW = [
    "The {x} was brilliant.", "I loved this {x}.", "This {x} was wonderful from start to finish.",
    "The {x} was funny, moving and beautiful.", "This {x} is a masterpiece.", "What a delightful {x}.",
    "The {x} was amazing.", "I enjoyed every minute of this {x}.",
]
NEG_SHOW = [
    "The {x} was boring.", "I hated this {x}.", "This {x} was dull from start to finish.",
    "The {x} was stupid, slow and ugly.", "This {x} is a disaster.", "What a dreadful {x}.",
    "The {x} was awful.", "I regretted every minute of this {x}.",
]
POS_CLOSE = ["Highly recommended!", "I am very happy.", "Five stars.", "I would buy it again.", "Absolutely great.",
             "Everyone should try it.", "It made my day.", "Worth every penny."]
NEG_CLOSE = ["Do not buy it.", "I am very disappointed.", "One star.", "I want my money back.", "Absolutely awful.",
             "Nobody should try it.", "It ruined my day.", "Not worth a penny."]
SHOW_POS_CLOSE = ["A must see!", "I would watch it again.", "Highly recommended!", "Five stars.", "Pure joy."]
SHOW_NEG_CLOSE = ["Avoid it.", "A total waste of time.", "I walked out halfway.", "One star.", "Pure misery."]


def gen_sentiment(rng: random.Random) -> list[Raw]:
    """SST-2 style prompt; the two choices keep the harness' fixed order (negative, positive)."""
    items: list[Raw] = []
    seen: set[str] = set()
    subjects = [(x, POS_PRODUCT, NEG_PRODUCT, POS_CLOSE, NEG_CLOSE) for x in PRODUCTS]
    subjects += [(x, POS_SHOW, NEG_SHOW, SHOW_POS_CLOSE, SHOW_NEG_CLOSE) for x in SHOWS]
    per_subject = 7  # 46 subjects x 7 = 322 reviews, alternating polarity
    for x, pos, neg, pos_close, neg_close in subjects:
        made = 0
        while made < per_subject:
            positive = (len(items) % 2) == 0
            first = rng.choice(pos if positive else neg).format(x=x)
            second = rng.choice(pos_close if positive else neg_close)
            text = first[0].upper() + first[1:] + " " + second
            if text in seen:
                continue
            seen.add(text)
            context = f"{text}\nQuestion: Is this sentence positive or negative?\nAnswer:"
            answer = "positive" if positive else "negative"
            other = "negative" if positive else "positive"
            items.append(Raw(f"se:{x}:{answer}", context, answer, [other], fixed_choices=("negative", "positive")))
            made += 1
    return items


# ----------------------------------------------------------------------------------------------------------
# physical: PIQA-like goal -> two solutions; one uses the right object, the other a useless one

# (goal, right solution, wrong solution, objects). {x} is the object.
PHYSICAL: list[tuple[str, str, str, list[str]]] = [
    ("How do you keep the {x} cold?", "Put the {x} in the refrigerator.", "Put the {x} in a warm oven.",
     ["milk", "butter", "cheese", "yogurt", "fish", "salad", "orange juice", "cream", "lemonade", "ham"]),
    ("How do you carry {x} to a friend's house?", "Pour the {x} into a bottle with a tight lid.",
     "Pour the {x} into a paper bag.",
     ["water", "soup", "juice", "coffee", "tea", "olive oil", "milk", "vinegar", "cold lemonade"]),
    ("How do you dry a wet {x}?", "Hang the {x} outside in the sun.", "Put the {x} in a bucket of water.",
     ["towel", "shirt", "pair of socks", "pair of jeans", "swimsuit", "blanket", "scarf", "pillowcase", "apron"]),
    ("How do you clean a dirty {x}?", "Wash the {x} with soap and warm water.", "Rub the {x} with mud.",
     ["plate", "cup", "frying pan", "fork", "bowl", "glass", "pot", "spoon", "baking tray", "cutting board"]),
    ("How do you find something in a dark {x}?", "Turn on a flashlight and look around the {x}.",
     "Put on sunglasses and look around the {x}.",
     ["basement", "attic", "closet", "garage", "tent", "cave", "cellar", "shed", "car trunk"]),
    ("How do you melt {x}?", "Heat the {x} in a pan on the stove.", "Put the {x} in the freezer.",
     ["butter", "chocolate", "cheese", "ice", "candle wax", "snow", "sugar", "coconut oil"]),
    ("How do you make a glass of {x} very cold?", "Add some ice cubes to the {x}.",
     "Add some hot water to the {x}.",
     ["water", "juice", "lemonade", "iced tea", "soda", "apple juice", "milk", "cola"]),
    ("How do you hang a {x} on the wall?", "Attach the {x} to the wall with a nail or tape.",
     "Press the {x} against the wall with a wet sponge.",
     ["poster", "photo", "calendar", "map", "painting", "drawing", "mirror", "clock", "postcard"]),
    ("How do you keep a stack of {x} together?", "Put a rubber band around the {x}.",
     "Put a grape on top of the {x}.",
     ["papers", "letters", "pencils", "cards", "receipts", "envelopes", "tickets", "photos"]),
    ("How do you put out a small {x}?", "Pour a bucket of water on the {x}.", "Throw some dry wood on the {x}.",
     ["campfire", "trash can fire", "fire in the grill", "bonfire", "fire in the fireplace", "burning log"]),
    ("How do you cut {x} into pieces?", "Cut the {x} with a sharp knife.", "Cut the {x} with a feather.",
     ["bread", "tomatoes", "cheese", "apples", "cake", "carrots", "watermelon", "onions", "pizza", "cucumbers",
      "potatoes", "peppers"]),
    ("How do you cut a piece of {x}?", "Cut the {x} with a pair of scissors.", "Cut the {x} with a spoon.",
     ["paper", "ribbon", "string", "fabric", "wrapping paper", "tape", "felt", "yarn"]),
    ("How do you cut through a thick {x}?", "Cut the {x} with a saw.", "Cut the {x} with a paintbrush.",
     ["wooden plank", "tree branch", "log", "wooden board", "broom handle", "bamboo pole", "fence post"]),
    ("How do you water a {x}?", "Pour water from a watering can onto the soil around the {x}.",
     "Pour sand from a bucket onto the leaves of the {x}.",
     ["rose bush", "tomato plant", "cactus", "fern", "young tree", "sunflower", "herb garden", "flower bed"]),
    ("How do you warm up your cold {x}?", "Cover your {x} with a warm blanket.",
     "Put your {x} in a bowl of ice water.",
     ["hands", "feet", "legs", "toes", "shoulders", "arms", "knees"]),
    ("How do you stop a {x} from rolling off the table?", "Put the {x} on a flat spot with a book against it.",
     "Give the {x} a push toward the edge.",
     ["ball", "pencil", "marble", "bottle", "can", "orange", "egg", "rolling pin"]),
    ("How do you cool down a hot {x} on a summer day?", "Open the windows and turn on a fan in the {x}.",
     "Close the windows and turn on the oven in the {x}.",
     ["kitchen", "bedroom", "living room", "office", "classroom", "apartment", "studio"]),
    ("How do you make a {x} float on water?", "Tie the {x} to an empty plastic bottle.",
     "Tie the {x} to a heavy rock.",
     ["toy boat", "small box", "fishing line", "key", "coin purse", "rope"]),
    ("How do you protect your {x} from the rain?", "Cover the {x} with a plastic sheet.",
     "Cover the {x} with a sheet of newspaper with holes in it.",
     ["bicycle", "garden chairs", "firewood", "grill", "motorbike", "wooden table", "sandbox"]),
    ("How do you wake up early for your {x}?", "Set an alarm clock for the morning of your {x} and go to bed early.",
     "Stay up all night before your {x} and unplug the alarm clock.",
     ["flight", "job interview", "school trip", "exam", "train", "race", "meeting", "dentist appointment"]),
    ("How do you open a {x}?", "Use a {y} to open the {x}.", "Use a {z} to open the {x}.",
     []),  # filled per object below: each container needs its own tool
    ("How do you fill a flat {x} with air?", "Use a pump to push air into the {x}.",
     "Use a vacuum cleaner to suck air out of the {x}.",
     ["bicycle tire", "soccer ball", "air mattress", "pool float", "basketball", "beach ball"]),
    ("How do you keep the {x} from burning in the pan?", "Stir the {x} and turn the heat down.",
     "Leave the {x} alone and turn the heat up to the maximum.",
     ["rice", "onions", "sauce", "garlic", "scrambled eggs", "porridge", "soup"]),
    ("How do you read a {x} at night?", "Turn on a bright lamp next to the {x}.",
     "Turn off all the lights and hold the {x} far away.",
     ["book", "newspaper", "map", "recipe", "letter", "magazine", "menu", "comic book"]),
    ("How do you sharpen a dull {x}?", "Rub the blade of the {x} on a sharpening stone.",
     "Rub the blade of the {x} on a soft pillow.",
     ["kitchen knife", "pocket knife", "axe", "chisel", "machete", "garden hoe", "lawn mower blade"]),
    ("How do you bring a pot of {x} to a boil?", "Put the pot of {x} on the stove and turn on the heat.",
     "Put the pot of {x} in the refrigerator.",
     ["water", "soup", "milk", "broth", "pasta water", "tomato sauce", "stew", "chili"]),
    ("How do you remove a fresh stain from a {x}?", "Scrub the stain on the {x} with soap and water.",
     "Rub more ketchup into the stain on the {x}.",
     ["shirt", "carpet", "tablecloth", "couch", "dress", "rug", "pillow", "jacket", "car seat"]),
    ("How do you clean up {x} from the floor?", "Use a broom and a dustpan to collect the {x}.",
     "Use a fork to throw the {x} into the air.",
     ["dust", "crumbs", "sand", "dry leaves", "broken glass", "spilled rice", "dirt", "sawdust", "cat hair"]),
    ("How do you keep {x} from going stale?", "Store the {x} in a sealed bag.",
     "Leave the {x} open on the counter for a week.",
     ["bread", "crackers", "cookies", "chips", "cereal", "biscuits", "tortillas", "pretzels", "nuts"]),
    ("How do you light a {x}?", "Use a match to light the {x}.", "Use a glass of water to light the {x}.",
     ["candle", "campfire", "gas stove", "fireplace", "oil lamp", "barbecue", "lantern", "torch"]),
    ("How do you measure the length of a {x}?", "Hold a tape measure along the {x}.",
     "Weigh the {x} on a kitchen scale.",
     ["table", "room", "rope", "board", "couch", "window", "carpet", "desk", "garden hose"]),
    ("How do you stop a {x} from blowing away in the wind?", "Put a heavy stone on the {x}.",
     "Put a feather on the {x}.",
     ["stack of papers", "tablecloth", "picnic blanket", "map", "beach towel", "pile of napkins", "tarp"]),
    ("How do you get a {x} down from a tall tree?", "Climb a ladder and take the {x} down.",
     "Shout at the {x} until it comes down.",
     ["kite", "ball", "frisbee", "hat", "paper plane", "shoe", "toy drone"]),
    ("How do you keep {x} from melting on a hot day?", "Keep the {x} in a cooler full of ice.",
     "Leave the {x} in the sun on the car seat.",
     ["ice cream", "chocolate bars", "popsicles", "butter", "frozen yogurt", "ice cubes", "a snowman cake"]),
    ("How do you see what is behind you while driving a {x}?", "Look in the mirror of the {x}.",
     "Close your eyes and listen to the {x}.",
     ["car", "truck", "bus", "van", "tractor", "motorbike"]),
    ("How do you make {x} taste sweeter?", "Stir a spoonful of sugar into the {x}.",
     "Stir a spoonful of salt into the {x}.",
     ["tea", "coffee", "lemonade", "oatmeal", "yogurt", "hot chocolate", "plain milk", "fruit salad"]),
    ("How do you keep your {x} dry when it rains?", "Hold an umbrella over your {x}.",
     "Hold a colander over your {x}.",
     ["hair", "phone", "books", "groceries", "laptop bag", "sandwich", "newspaper"]),
    ("How do you carry many {x} at once?", "Put the {x} in a sturdy basket and carry it.",
     "Balance the {x} on top of your head while running.",
     ["eggs", "apples", "oranges", "potatoes", "tomatoes", "plums", "peaches"]),
    ("How do you tie a bundle of {x}?", "Wrap a piece of string around the {x} and knot it.",
     "Pour some water over the {x}.",
     ["sticks", "flowers", "newspapers", "branches", "letters", "carrots", "herbs"]),
    ("How do you move a heavy {x} across the room?", "Put the {x} on a rolling cart and push it.",
     "Balance the {x} on one finger and walk.",
     ["box of books", "sofa", "washing machine", "bookshelf", "fridge", "piano", "filing cabinet"]),
]
OPENERS = [("can of soup", "can opener", "comb"), ("bottle of wine", "corkscrew", "toothbrush"),
           ("coconut", "hammer", "feather"), ("sealed letter", "letter opener", "sponge"),
           ("locked door", "key", "banana"), ("package", "pair of scissors", "cotton ball"),
           ("padlock", "key", "candle"), ("bottle of soda", "bottle opener", "pillow")]


def gen_physical(rng: random.Random) -> list[Raw]:
    """Two solutions, PIQA style (acc_norm in the harness); the wrong one uses an object that cannot work."""
    items = []
    for goal, right, wrong, objects in PHYSICAL:
        if not objects:
            for x, y, z in OPENERS:
                items.append(Raw(f"ph:{goal}:{x}", f"Question: {goal.format(x=x)}\nAnswer:",
                                 right.format(x=x, y=y), [wrong.format(x=x, z=z)]))
            continue
        for x in objects:
            items.append(Raw(f"ph:{goal}:{x}", f"Question: {goal.format(x=x)}\nAnswer:", right.format(x=x),
                             [wrong.format(x=x)]))
    return items


# ----------------------------------------------------------------------------------------------------------
# reading: a short passage about an invented person + a who/what/where question answered by one of its words
#
# Why not BoolQ's yes/no format: SmolLM2-135M answered "no" to every yes/no item we tried (0.50, also with two
# solved examples in the prompt). Here the answer is a word stated in the passage, the three distractors are
# words of the same kind that are not, and the facts are random, so only reading the passage gets it right.

FIRST_NAMES = ["Maria", "John", "Aisha", "Carlos", "Yuki", "Peter", "Fatima", "Liam", "Elena", "Omar", "Sofia",
               "David", "Grace", "Ivan", "Nina", "Samuel", "Laura", "Tom", "Hannah", "Marco", "Chloe", "Ahmed",
               "Emma", "Lucas"]
CITIES = ["Lisbon", "Oslo", "Madrid", "Dublin", "Toronto", "Chicago", "Sydney", "Berlin", "Vienna", "Nairobi",
          "Lima", "Seoul", "Prague", "Boston", "Denver", "Glasgow"]
PETS = ["dog", "cat", "parrot", "rabbit", "hamster", "turtle", "goldfish", "horse"]
COLOR_NAMES = ["red", "blue", "green", "yellow", "black", "white", "orange", "purple"]
JOBS = ["teacher", "doctor", "baker", "pilot", "farmer", "nurse", "lawyer", "painter"]
READING_KINDS = ("city", "pet", "color", "job")


def gen_reading(rng: random.Random) -> list[Raw]:
    """`<name> is a <job> who lives in <city>. <name> has a <pet> and a <color> car.` + one question about it."""
    items: list[Raw] = []
    seen: set[str] = set()
    while len(items) < 320:
        kind = READING_KINDS[len(items) % len(READING_KINDS)]
        name = rng.choice(FIRST_NAMES)
        job, *jobs = rng.sample(JOBS, 4)
        city, *cities = rng.sample(CITIES, 4)
        pet, *pets = rng.sample(PETS, 4)
        color, *colors = rng.sample(COLOR_NAMES, 4)
        article = "an" if job[0] in "aeiou" else "a"
        passage = f"{name} is {article} {job} who lives in {city}. {name} has a {pet} and a {color} car."
        question, answer, wrong = {
            "city": (f"Where does {name} live?", city, cities),
            "pet": (f"What pet does {name} have?", pet, pets),
            "color": (f"What color is {name}'s car?", color, colors),
            "job": (f"What is {name}'s job?", job, jobs),
        }[kind]
        context = f"{passage}\nQuestion: {question}\nAnswer:"
        if context in seen:
            continue
        seen.add(context)
        words = set(re.findall(r"\w+", passage))
        assert answer in words and not words & set(wrong), (passage, wrong)  # exactly one choice is stated
        items.append(Raw(f"rd:{len(items)}", context, answer, wrong))
    return items


# ----------------------------------------------------------------------------------------------------------
# python_output: tiny programs, executed here to get the true output


def run_python(code: str) -> str:
    """Execute our own generated snippet and return what it prints (without the final newline)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(code, {})  # noqa: S102 - code generated just above from integers and fixed words
    out = buf.getvalue()
    assert out.endswith("\n") and out.count("\n") == 1, code
    return out[:-1]


WORDS = ["apple", "house", "tiger", "music", "green", "river", "pizza", "cloud", "robot", "lemon", "train",
         "candy", "stone", "piano", "snake", "chair", "cat", "sun", "book", "fish", "moon", "tree", "star", "bird"]
PY_KINDS = ("literal", "variable", "concat", "upper", "len", "add")


def snippet(rng: random.Random, kind: str) -> tuple[str, list[str]]:
    """One tiny program of the given kind and wrong outputs that are clearly different from the right one."""
    w, v, x, y = rng.sample(WORDS, 4)
    if kind == "literal":
        return f"print('{w}')", [v, x, y]
    if kind == "variable":
        return f"word = '{w}'\nprint(word)", [v, x, y]
    if kind == "concat":
        return f"print('{w}' + '{v}')", [x + y, y + x, x + w]
    if kind == "upper":
        return f"print('{w}'.upper())", [v.upper(), x.upper(), y.upper()]
    if kind == "len":
        return f"print(len('{w}'))", far_numbers(rng, len(w), 3)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"x = {a}\nprint(x + {b})", far_numbers(rng, a + b, 3)


def gen_python_output(rng: random.Random) -> list[Raw]:
    items: list[Raw] = []
    seen: set[str] = set()
    attempt = 0
    while len(items) < 320:
        kind = PY_KINDS[attempt % len(PY_KINDS)]  # kinds with few distinct programs just stop adding
        attempt += 1
        code, wrong = snippet(rng, kind)
        if code in seen:
            continue
        seen.add(code)
        output = run_python(code)
        assert output not in wrong and len(set(wrong)) == 3, (code, wrong)
        context = f"Question: What does this Python code print?\n{code}\nAnswer:"
        items.append(Raw(f"py:{kind}:{code}", context, output, wrong))
    return items


# ----------------------------------------------------------------------------------------------------------
# the suite: split, shuffle, balance, write


@dataclass(frozen=True)
class Spec:
    name: str
    skill: str
    description: str
    metric: str
    generate: Callable[[random.Random], list[Raw]]


SUITE = [
    Spec("arithmetic", "arithmetic", "Additions and subtractions of small numbers.", "acc_norm", gen_arithmetic),
    Spec("capitals", "geography recall", "Country to capital and capital to country.", "acc_norm", gen_capitals),
    Spec("facts", "world knowledge", "Element symbols, continents, animals, colors, days and months.",
         "acc_norm", gen_facts),
    Spec("morphology", "word forms", "Plurals, past tenses and opposites of English words.", "acc_norm",
         gen_morphology),
    Spec("sentiment", "sentiment", "Is a short product or movie review positive or negative?", "acc",
         gen_sentiment),
    Spec("physical", "physical commonsense", "PIQA-like: pick the solution that achieves an everyday goal.",
         "acc_norm", gen_physical),
    Spec("reading", "reading comprehension", "Who/what/where questions about a short generated passage.",
         "acc_norm", gen_reading),
    Spec("python_output", "code execution", "What does a tiny Python program print?", "acc_norm",
         gen_python_output),
]


def finalize(raws: list[Raw], rng: random.Random) -> list[dict]:
    """Split by group (40/60), then place the gold answer so every position is equally often correct."""
    contexts = [r.context for r in raws]
    assert len(set(contexts)) == len(contexts), "duplicate contexts"
    # Fixed-order choices (yes/no, negative/positive) are balanced by stratifying the split by answer.
    strata = sorted({r.correct if r.fixed_choices else "" for r in raws})
    cal_groups: set[str] = set()
    for stratum in strata:
        members = [r for r in raws if (r.correct if r.fixed_choices else "") == stratum]
        groups = list(dict.fromkeys(r.group for r in members))
        rng.shuffle(groups)
        target, n_cal = round(CAL_FRACTION * len(members)), 0
        for g in groups:
            if n_cal >= target:
                break
            cal_groups.add(g)
            n_cal += sum(1 for r in members if r.group == g)
    rows = []
    for split in ("calibration", "evaluation"):
        part = [r for r in raws if (r.group in cal_groups) == (split == "calibration")]
        rng.shuffle(part)
        k = len(part[0].distractors) + 1
        positions = [i % k for i in range(len(part))]
        rng.shuffle(positions)
        for r, pos in zip(part, positions, strict=True):
            if r.fixed_choices is not None:
                choices = list(r.fixed_choices)
                assert sorted(choices) == sorted([r.correct, *r.distractors])
            else:
                assert len(r.distractors) == k - 1
                choices = list(r.distractors)
                rng.shuffle(choices)
                choices.insert(pos, r.correct)
            assert len(set(choices)) == len(choices) and choices.count(r.correct) == 1, r
            assert all(c.strip() == c and c for c in choices), r
            rows.append({"context": r.context, "choices": choices, "gold": choices.index(r.correct),
                         "split": split})
    return rows


def dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=False)


def generate(out_dir: Path) -> dict[str, list[dict]]:
    """Write every <task>.jsonl and suite.json into out_dir; return the rows per task."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suite, all_rows = [], {}
    for spec in SUITE:
        rng = task_rng(spec.name)
        rows = finalize(spec.generate(rng), rng)
        n_cal = sum(r["split"] == "calibration" for r in rows)
        n_eval = len(rows) - n_cal
        assert n_cal >= 120 and n_eval >= 180, (spec.name, n_cal, n_eval)
        cal_texts = {r["context"] for r in rows if r["split"] == "calibration"}
        assert not cal_texts & {r["context"] for r in rows if r["split"] == "evaluation"}
        text = "".join(dumps(r) + "\n" for r in rows)
        (out_dir / f"{spec.name}.jsonl").write_bytes(text.encode("utf-8"))
        suite.append({"name": spec.name, "description": spec.description, "skill": spec.skill,
                      "metric": spec.metric, "n_calibration": n_cal, "n_evaluation": n_eval,
                      "n_choices": len(rows[0]["choices"]), "license": LICENSE})
        all_rows[spec.name] = rows
    meta = {"seed": SEED, "generator": "assets/tasks/build.py", "tasks": suite}
    (out_dir / "suite.json").write_bytes((json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return all_rows


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    rows = generate(out)
    for name, r in rows.items():
        n_cal = sum(x["split"] == "calibration" for x in r)
        print(f"{name:14s} {len(r):4d} items  ({n_cal} calibration / {len(r) - n_cal} evaluation)")


if __name__ == "__main__":
    main()
