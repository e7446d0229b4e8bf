"""Property tests: invisible characters, look-alike letters, accents, case and whitespace do not
hide a copy of a test item from duplicate collapsing or decontamination (`similarity.match_key`)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamaduo.config import CurateConfig
from llamaduo.curate import DROP_DUPLICATE, DROP_TEST_OVERLAP, collapse_duplicates, curate, overlapping_test
from llamaduo.data import Example
from llamaduo.similarity import match_key, normalize, words

# Written out here rather than read from similarity.py, so the test checks behaviour, not a table
# against itself: Cyrillic (first) and Greek (second) letters that render like the Latin key.
LOOKALIKES = {"a": "аα", "c": "сϲ", "e": "е", "i": "іι", "j": "ј", "o": "оο", "p": "рρ", "s": "ѕ", "x": "хχ",
              "y": "у", "A": "АΑ", "B": "ВΒ", "C": "С", "E": "ЕΕ", "H": "НΗ", "I": "ІΙ", "K": "КΚ",
              "M": "МΜ", "N": "Ν", "O": "ОΟ", "P": "РΡ", "T": "ТΤ", "X": "ХΧ", "Y": "ҮΥ", "Z": "Ζ"}
INVISIBLE = ("\u200b\u200c\u200d\u2060\ufeff\u00ad\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068"
             "\u2069\u180e\u034f\ufe0f")  # zero-width space/joiners, BOM, soft hyphen, bidi marks, CGJ, VS16
COMBINING = [chr(c) for c in range(0x0300, 0x0334)]  # grave, acute, circumflex, tilde, ... (category Mn)
SPACES = " \t\n\u00a0\u2003\u3000"

TASK = "Classify this customer support ticket into exactly one queue: billing or shipping. Ticket:"
TEST = [
    {"instruction": f"{TASK} My parcel has not moved for a week and the tracking page is empty.",
     "response": "shipping"},
    {"instruction": "Summarise the plot of the novel in two sentences please",
     "response": "A young sailor is lost at sea and finds his way home through many trials."},
    {"instruction": "Capital of France?", "response": "Paris"},  # a short item (fewer than 4 words)
    {"instruction": "Define entropy.", "response": "Expected surprise of a random variable."},
]
TRAIN = [{"instruction": f"{TASK} I was charged twice for my order last night.", "response": "billing"}]
FRESH_ANSWER = "An answer written for this row alone, sharing nothing with the test split."


@st.composite
def disguised(draw, text: str) -> str:
    """`text` with case flips, look-alike letters, full-width letters, combining accents,
    invisible characters anywhere and different whitespace runs: it reads the same to a person."""
    out = [draw(st.text(SPACES + INVISIBLE, max_size=3))]
    for ch in text:
        if ch == " ":
            out.append(draw(st.text(SPACES, min_size=1, max_size=3)))
            continue
        out.append(draw(st.text(INVISIBLE, max_size=2)))
        if ch.isascii() and ch.isalpha():
            how = draw(st.sampled_from(["keep", "swapcase", "lookalike", "fullwidth"]))
            if how == "swapcase":
                ch = ch.swapcase()
            elif how == "lookalike" and ch in LOOKALIKES:
                ch = draw(st.sampled_from(LOOKALIKES[ch]))
            elif how == "fullwidth":
                ch = chr(ord(ch) + 0xFEE0)
            out.append(ch)
            out.append(draw(st.text(st.sampled_from(COMBINING), max_size=2)))
        else:
            out.append(ch)
    out.append(draw(st.text(SPACES + INVISIBLE, max_size=3)))
    return "".join(out)


def item_and_disguise(part: str = "instruction"):
    return st.sampled_from(TEST).flatmap(lambda t: st.tuples(st.just(t), disguised(t[part])))


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(item_and_disguise())
def test_a_disguised_text_has_the_same_match_key_and_words(pair):
    item, variant = pair
    assert match_key(variant) == match_key(item["instruction"])
    assert words(variant) == words(item["instruction"])  # n-grams and MinHash shingles are made of these


@FAST
@given(st.text())
def test_match_key_is_idempotent(text):
    assert match_key(match_key(text)) == match_key(text)


@FAST
@given(st.text(st.characters(max_codepoint=127)))
def test_ascii_text_keeps_its_exact_match_form(text):
    """Plain ASCII compares as before (case and whitespace only), as answers do in `exact_match`."""
    assert match_key(text) == normalize(text)


@FAST
@given(item_and_disguise())
def test_curate_drops_a_disguised_copy_of_a_test_instruction_at_any_length(pair):
    _, variant = pair
    kept, dropped = curate([{"instruction": variant, "response": FRESH_ANSWER}], TRAIN, TEST)
    assert not kept and dropped[0]["drop_reason"] == DROP_TEST_OVERLAP


@FAST
@given(st.sampled_from([t for t in TEST if t["response"] != "shipping"]).flatmap(
    lambda t: st.tuples(st.just(t), disguised(t["response"]))))
def test_curate_drops_a_disguised_copy_of_a_test_items_own_answer(pair):
    _, variant = pair
    kept, dropped = curate([{"instruction": "Tell me something you know well.", "response": variant}], TRAIN, TEST)
    assert not kept and dropped[0]["drop_reason"] == DROP_TEST_OVERLAP


@FAST
@given(disguised("my parcel has not moved for a week and the tracking page is empty"))
def test_ngram_decontamination_sees_through_a_disguised_span(variant):
    """A long content span of a test item inside other words is caught by the n-gram path."""
    row = {"instruction": f"Please help, {variant} - what now?", "response": FRESH_ANSWER}
    kept, dropped = curate([row], TRAIN, TEST)
    assert not kept and dropped[0]["drop_reason"] == DROP_TEST_OVERLAP


def ex(instruction: str, response: str) -> Example:
    return Example(id=match_key(instruction)[:16], instruction=instruction, response=response)


@FAST
@given(item_and_disguise())
def test_coverage_split_removes_a_disguised_copy_of_a_test_row(pair):
    item, variant = pair
    test = [ex(item["instruction"], item["response"])]
    kept, removed = overlapping_test([ex(variant, "A different answer altogether.")], test, CurateConfig())
    assert kept == [] and removed == 1


@FAST
@given(item_and_disguise())
def test_collapse_duplicates_sees_a_disguised_copy(pair):
    item, variant = pair
    rows = [ex(item["instruction"], item["response"]), ex(variant, "A different answer altogether.")]
    kept, counts = collapse_duplicates(rows, CurateConfig())
    assert len(kept) == 1 and counts == {DROP_DUPLICATE: 1}
