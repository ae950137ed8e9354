"""Fix similar: a correction is offered to the look-alikes whose captions make the same mistake, and confirmed as
linked rows. The demo captioner calls some red stars "a red triangle" (it never saw a star)."""

import io

import pytest

from captioner.caption import caption_images
from captioner.demo.world import render
from captioner.embed import load_embedder
from captioner.feedback import FeedbackLog
from captioner.images import ImageInput
from captioner.index import update_index
from captioner.models import load_captioner
from captioner.options import GenerationOptions
from captioner.settings import Settings
from captioner.similar import confirm, find_similar, mistake_edits, propose

WRONG, RIGHT = "a red triangle", "a red star"


def shape_png(shape, color, side, corner, extent) -> bytes:
    buffer = io.BytesIO()
    render(shape, color, side, (side * corner, side * corner, side * (corner + extent), side * (corner + extent))).save(buffer, "PNG")
    return buffer.getvalue()


CORRECTED = ("star", "red", 128, 0.2, 0.55)
LOOK_ALIKE = ("star", "red", 160, 0.1, 0.5)  # a star drawn a little larger: also "a red triangle"
GALLERY_LOOK_ALIKE = ("star", "red", 96, 0.1, 0.5)
REAL_TRIANGLE = ("triangle", "red", 128, 0.2, 0.55)  # rightly "a red triangle", and it does not look alike
OTHER_STAR = ("star", "red", 128, 0.2, 0.6)  # looks alike, but captioned "a red cross": another mistake
UNRELATED = ("square", "blue", 128, 0.2, 0.55)


def item(name, spec) -> ImageInput:
    return ImageInput(name, shape_png(*spec))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("home"))
    return load_embedder("demo", settings), load_captioner("demo", settings)


@pytest.fixture(scope="module")
def session(models):
    _, captioner = models
    inputs = [item("corrected.png", CORRECTED), item("look-alike.png", LOOK_ALIKE), item("triangle.png", REAL_TRIANGLE),
              item("other-star.png", OTHER_STAR), item("square.png", UNRELATED)]  # fmt: skip
    results = caption_images(captioner, inputs, GenerationOptions(), thumbnails=True)
    captions = [r.caption for r in results]
    assert captions == [WRONG, WRONG, WRONG, "a red cross", "a blue square"], "the demo captioner changed; pick new shapes"
    return results


def test_the_mistake_is_the_changed_words_with_a_neighbour_and_is_applied_only_where_it_is_made():
    assert mistake_edits("a red circle", "a red star") == [("red circle", "red star")]
    assert mistake_edits("a dog on the grass", "a dog on the sand") == [("the grass", "the sand")]
    assert mistake_edits("a red circle", "a red circle") == []
    edits = mistake_edits("a red circle on white", "a red star on white")
    assert propose("A red  circle on white.", edits) == "A red star on white."
    assert propose("a big red circle on white", edits) == "a big red star on white"
    assert propose("a blue circle", edits) is None and propose("a red circles", edits) is None
    both = mistake_edits("a red circle and a blue square", "a red star and a blue heart")
    assert propose("a red circle and a blue square", both) == "a red star and a blue heart"
    assert propose("a red circle and a green square", both) is None  # one of the two mistakes is not made


def test_session_look_alikes_with_the_same_wrong_caption_are_proposed_and_nothing_else(models, session):
    embedder, captioner = models
    corrected, *others = session
    found = find_similar(embedder, captioner, corrected.source, WRONG, RIGHT, others)
    assert [(c.name, c.proposed, c.origin) for c in found] == [("look-alike.png", RIGHT, "session")]
    assert found[0].similarity > 0.8 and found[0].result.caption == WRONG
    assert find_similar(embedder, captioner, corrected.source, WRONG, WRONG, others) == []  # a confirmation spreads nothing


def test_gallery_look_alikes_are_captioned_and_proposed_by_their_gallery_path(models, session, tmp_path):
    embedder, captioner = models
    gallery = tmp_path / "gallery"
    (gallery / "shapes").mkdir(parents=True)
    (gallery / "shapes" / "star.png").write_bytes(shape_png(*GALLERY_LOOK_ALIKE))
    (gallery / "triangle.png").write_bytes(shape_png("triangle", "red", 160, 0.2, 0.55))
    (gallery / "square.png").write_bytes(shape_png(*UNRELATED))
    (gallery / "same-as-corrected.png").write_bytes(session[0].source.data)  # the corrected image itself: not offered
    index, _ = update_index(embedder, gallery, tmp_path / "data")
    corrected, *others = session
    found = find_similar(embedder, captioner, corrected.source, WRONG, RIGHT, others, index)
    assert [(c.name, c.origin, c.proposed) for c in found] == [
        ("shapes/star.png", "gallery", RIGHT), ("look-alike.png", "session", RIGHT),
    ]  # fmt: skip
    assert found[0].result.extension == "png" and found[0].result.thumbnail is not None


def test_confirming_a_proposal_logs_one_linked_row_and_stores_its_image(models, session, tmp_path):
    embedder, captioner = models
    log = FeedbackLog(tmp_path / "data")
    corrected, *others = session
    original, _ = log.record(corrected.source.data, "png", task="caption", model_output=WRONG, correction=RIGHT)
    [candidate] = find_similar(embedder, captioner, corrected.source, WRONG, RIGHT, others)
    row, created = confirm(log, candidate, original, GenerationOptions())
    again, created_again = confirm(log, candidate, original, GenerationOptions())  # a double click, a rerun
    rows, problems = log.read()
    assert created and not created_again and again.id == row.id and problems == []
    assert [(r.linked_to, r.model_output, r.correction) for r in rows] == [("", WRONG, RIGHT), (original.id, WRONG, RIGHT)]
    assert (log.data_dir / rows[1].image_path).read_bytes() == candidate.result.source.data
