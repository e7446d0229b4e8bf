from llamaduo.curate import DROP_DUPLICATE, DROP_INVALID, DROP_TEST_OVERLAP, contamination_ngrams, curate, drop_counts

TASK = "Classify this customer support ticket into exactly one queue: billing or shipping. Ticket:"
TEST = [{"instruction": f"{TASK} My parcel has not moved for a week and the tracking page is empty.",
         "response": "shipping"},
        {"instruction": "Summarise the plot of the novel in two sentences please",
         "response": "A young sailor is lost at sea and finds his way home through many trials."}]
TRAIN = [{"instruction": f"{TASK} I was charged twice for my order last night.", "response": "billing"}]


def row(i, r):
    return {"instruction": i, "response": r}


def test_clean_rows_are_kept():
    cands = [row(f"{TASK} The discount code was not applied to my payment today.", "billing"),
             row(f"{TASK} The courier left my package at the wrong address yesterday.", "shipping")]
    kept, dropped = curate(cands, TRAIN, TEST)
    assert len(kept) == 2 and not dropped, "task boilerplate shared with test items is not contamination"


def test_invalid_and_empty():
    kept, dropped = curate([{"invalid": "missing response"}, row("  ", "x"), row("Q", "")], TRAIN, TEST)
    assert not kept and drop_counts(dropped) == {DROP_INVALID: 3}


def test_exact_duplicates_against_existing_and_within_batch():
    dup_existing = row(TRAIN[0]["instruction"].upper() + "  ", "billing")
    new = row(f"{TASK} My invoice shows the wrong amount for March.", "billing")
    kept, dropped = curate([dup_existing, new, dict(new)], TRAIN, TEST)
    assert kept == [new] and drop_counts(dropped) == {DROP_DUPLICATE: 2}


def test_test_overlap_exact_and_ngram():
    copies = [
        row(TEST[0]["instruction"], "shipping"),  # exact copy
        row("  " + TEST[0]["instruction"].lower().replace(" ", "   ") + " ", "shipping"),  # re-cased, spaced
        row("Tell me: my parcel has not moved for a week and the tracking page is empty!", "shipping"),  # 8-gram
        row("Write a story", TEST[1]["response"]),  # response copy
    ]
    kept, dropped = curate(copies, TRAIN, TEST)
    assert not kept and drop_counts(dropped) == {DROP_TEST_OVERLAP: 4}


def test_short_label_responses_are_not_contamination():
    kept, _ = curate([row(f"{TASK} Where is my box, it was due on Monday.", "shipping")], TRAIN, TEST)
    assert len(kept) == 1


def test_contamination_ngrams_exclude_boilerplate():
    grams = contamination_ngrams([TEST[0]["instruction"]], [TRAIN[0]["instruction"]], 8)
    assert grams and all("classify" not in g for g in grams)


# -- quality filters ---------------------------------------------------------------------
import pytest  # noqa: E402

from llamaduo.config import CurateConfig  # noqa: E402
from llamaduo.curate import (DROP_ECHO, DROP_NEAR_DUPLICATE, DROP_REFUSAL, DROP_TEST_NEAR_DUPLICATE,  # noqa: E402
                             DROP_TOO_LONG, DROP_TOO_SHORT, DROP_TRUNCATED, decontaminate, quality_issue)


@pytest.mark.parametrize("r,reason", [
    (row("Explain photosynthesis", "I'm sorry, but I can't help with that."), DROP_REFUSAL),
    (row("Explain photosynthesis", "As an AI language model, I do not have opinions."), DROP_REFUSAL),
    (row("Name the capital of France please", "name the capital of France"), DROP_ECHO),
    (row("Explain photosynthesis", "Plants turn light into energy and"), DROP_TRUNCATED),
    (row("Explain photosynthesis", "```python\nprint(1)"), DROP_TRUNCATED),
    (row("Hi", "A fine answer."), DROP_TOO_SHORT),
    (row("Explain photosynthesis", "x" * 21000), DROP_TOO_LONG),
    ({"invalid": "missing response"}, DROP_INVALID),
])
def test_quality_filters(r, reason):
    assert quality_issue(r, CurateConfig()) == reason


def test_quality_keeps_good_rows_and_respects_switches():
    good = row("Explain photosynthesis briefly", "Plants turn light, water and CO2 into sugar and oxygen.")
    assert quality_issue(good, CurateConfig()) is None
    refusal = row("Explain photosynthesis", "I'm sorry, that is outside what I know.")
    assert quality_issue(refusal, CurateConfig(drop_refusals=False)) is None


def test_near_duplicates_within_batch_and_against_existing():
    base = ("Write a short poem about the sea at night, with the moon over the waves and a lighthouse "
            "blinking far away on the rocks")
    existing = [row(base, "The moon spills silver on the tide, the lighthouse blinks, the waves reply.")]
    near = row(base + " please", "The moon spills silver on the tide, the lighthouse blinks, the waves reply!")
    other = row("Summarise the causes of the French Revolution in three bullet points for a student who is "
                "preparing for an exam next week and needs the essentials only, in plain words",
                "- Royal debt and unfair taxes on the third estate\n- Enlightenment ideas about rights and "
                "government\n- Bad harvests and rising bread prices")
    kept, dropped = curate([near, other, dict(other, instruction=other["instruction"] + " now")], existing, [])
    assert kept == [other] and drop_counts(dropped) == {DROP_NEAR_DUPLICATE: 2}


# -- short test items (any length) and task labels ------------------------------------------
SHORT_TEST = [{"instruction": "Capital of France?", "response": "Paris"},
              {"instruction": "Is 17 prime?", "response": "Yes, 17 is prime."}]


def test_a_verbatim_copy_of_a_short_test_item_is_dropped():
    """Fewer than 4 words used to be exempt from the exact check: a copied short item trained."""
    copies = [row("Capital of France?", "Paris"),  # the whole item
              row("capital  of FRANCE?", "It is Paris, on the Seine."),  # its instruction, re-cased
              row("Which city hosts the Louvre museum?", "Paris"),  # its own answer
              row("Is seventeen a prime number?", "yes, 17 is prime.")]  # another item's own answer
    kept, dropped = curate(copies, TRAIN, SHORT_TEST)
    assert not kept and drop_counts(dropped) == {DROP_TEST_OVERLAP: 4}


@pytest.mark.parametrize("why,train,test", [
    ("answers a coverage train row", [row("Review: I loved every minute of it.", "Positive")],
     [row("Review: Dull and far too long.", "Negative"), row("Review: A joy from start to end.", "Positive")]),
    ("answers more than one test item", [row("Review: I loved every minute of it.", "Happy")],
     [row("Review: Dull and far too long.", "Positive"), row("Review: A joy from start to end.", "Positive")]),
    ("is an option the instruction lists", [row("Positive or negative? I loved it.", "Happy")],
     [row("Positive or negative? A joy from start to end.", "Positive")]),
])
def test_a_shared_label_is_not_a_copy_of_a_test_item(why, train, test):
    cands = [row("Review: the acting was superb and the music lifted every scene.", "Positive"),
             row("Review: my kids begged to watch it again the very next day.", "Positive")]
    kept, dropped = curate(cands, train, test)
    assert kept == cands and not dropped, f"'Positive' {why}: a label, not one item's own answer"
