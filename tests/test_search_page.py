"""The search page in AppTest: update the index, query by text, image and gallery image; Find similar."""


import pytest

import images_zoo as zoo
from captioner.demo.quality import demo_inputs
from conftest import count_decodes, start_app, write_non_utf8_name
from page_text import shown


@pytest.fixture
def gallery(tmp_path):
    folder = tmp_path / "gallery"
    folder.mkdir()
    for item in demo_inputs(40, seed=11)[0]:
        (folder / item.name).write_bytes(item.data)
    (folder / "readme.txt").write_text("not a picture")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    return folder


@pytest.fixture
def search(home, monkeypatch, gallery):
    monkeypatch.setenv("CAPTIONER_SEARCH_MODEL", "demo")
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    monkeypatch.setenv("CAPTIONER_GALLERY", str(gallery))
    return start_app("pages/search.py")


def click(app, label):
    [b for b in app.button if b.label == label][0].click().run()
    assert not app.exception, app.exception


def result_captions(app):
    return [t.value for t in app.text if " · " in t.value and t.value[0].isdigit()]


def test_update_index_then_search_by_text(search):
    assert "no index yet" in search.info[0].value
    click(search, "Update index")
    assert "Index updated" in search.success[0].value and "40 added" in search.success[0].value
    assert any("1 skipped, 1 ignored" in e.label for e in search.expander)
    search.text_input[0].set_value("a red circle").run()
    results = result_captions(search)
    assert len(results) == 12 and all("red-circle" in r for r in results[:3])
    scores = [float(r.split(" · ")[0]) for r in results]
    assert scores == sorted(scores, reverse=True)
    search.slider[0].set_value(3).run()
    assert len(result_captions(search)) == 3
    search.slider[1].set_value(0.99).run()  # relative cut-off
    assert 1 <= len(result_captions(search)) <= 3


def test_update_index_says_why_when_the_gallery_folder_is_missing(home, monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTIONER_SEARCH_MODEL", "demo")
    monkeypatch.setenv("CAPTIONER_GALLERY", str(tmp_path / "no-such-gallery"))
    search = start_app("pages/search.py")  # a fresh install: data/gallery is not there yet
    click(search, "Update index")
    assert len(search.error) == 1 and shown(search.error[0].value).endswith("no-such-gallery does not exist")
    search.run()  # still said on the next rerun, until an update works
    assert len(search.error) == 1


def test_a_first_run_says_what_to_do_when_the_gallery_is_missing_or_holds_no_image(home, monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTIONER_SEARCH_MODEL", "demo")
    gallery = tmp_path / "pictures"
    monkeypatch.setenv("CAPTIONER_GALLERY", str(gallery))
    search = start_app("pages/search.py")
    assert [shown(i.value) for i in search.info] == [
        f"The gallery folder {gallery} does not exist yet: put your images there (or set CAPTIONER_GALLERY to a "
        "folder of images), then press **Update index**."
    ]
    gallery.mkdir()
    (gallery / "notes.txt").write_text("not a picture")
    click(search, "Update index")
    assert "0 added" in search.success[0].value
    assert len(search.info) == 1 and shown(search.info[0].value).startswith(
        f"No images are indexed: the gallery folder {gallery} holds no image the app reads (JPG, JPEG, PNG"
    )
    assert not search.radio and not search.text_input  # no search box that could only answer "No results"
    (gallery / "red.png").write_bytes(zoo.encode(zoo.demo("circle", "red"), "PNG"))
    click(search, "Update index")
    assert not search.info and search.text_input(key="search_text")


def test_search_by_gallery_image_marks_the_near_duplicate(search, gallery):
    click(search, "Update index")
    search.radio[0].set_value("Gallery image").run()
    first = sorted(p.name for p in gallery.glob("*.png") if p.name != "broken.png")[0]
    search.selectbox[0].set_value(first).run()
    results = result_captions(search)
    assert first in results[0] and "near-duplicate" in results[0]


def test_empty_text_and_bad_query_image(search):
    click(search, "Update index")
    search.text_input[0].set_value("   ").run()
    assert result_captions(search) == []
    search.radio[0].set_value("Upload an image").run()
    search.file_uploader[0].set_value(("bad.jpg", b"no picture here", "image/jpeg")).run()
    assert shown(search.error[0].value).startswith("bad.jpg: not an image")
    search.file_uploader[0].set_value(("**BOLD** [click](https:evil.example).png", b"nope", "image/png")).run()
    error = search.error[0].value  # shown as typed, not bold and not a link
    assert error.startswith(r"\*\*BOLD\*\* \[click\]\(https\:evil") and shown(error).startswith("**BOLD** [click](https:evil.example).png")


def test_find_similar_from_the_caption_page(search, gallery):
    click(search, "Update index")
    search.switch_page("pages/caption.py").run()
    search.file_uploader[0].set_value(("mine.png", zoo.encode(zoo.demo("square", "blue"), "PNG"), "image/png")).run()
    click(search, "Find similar")
    assert search.radio[0].value == "Captioned image"
    assert all("blue-square" in r for r in result_captions(search)[:3])
    search.switch_page("pages/search.py")  # where the browser now is (AppTest's next run would go back to the caption page)
    search.radio[0].set_value("Text").run()
    search.text_input(key="search_text").set_value("a red circle").run()
    search.switch_page("pages/caption.py").run()
    search.switch_page("pages/search.py").run()  # back from the sidebar: the person's own query, as left
    assert search.radio[0].value == "Text" and search.text_input(key="search_text").value == "a red circle"
    assert all("red-circle" in r for r in result_captions(search)[:3])
    search.switch_page("pages/caption.py").run()
    click(search, "Clear uploads")  # the captioned image is gone: so is its search
    search.switch_page("pages/search.py").run()
    assert "Captioned image" not in search.radio[0].options and search.radio[0].value == "Text"


def test_a_gallery_image_query_is_kept_across_pages_until_it_is_filtered_out(search, gallery):
    click(search, "Update index")
    search.radio[0].set_value("Gallery image").run()
    search.text_input(key="search_gallery_filter").set_value("yellow").run()
    picked = search.selectbox(key="search_gallery_pick").options[2]
    search.selectbox(key="search_gallery_pick").set_value(picked).run()
    search.switch_page("pages/caption.py").run()
    search.switch_page("pages/search.py").run()  # back from the sidebar: the same query, the same results
    assert search.text_input(key="search_gallery_filter").value == "yellow"
    assert search.selectbox(key="search_gallery_pick").value == picked
    assert picked in result_captions(search)[0] and "near-duplicate" in result_captions(search)[0]
    search.text_input(key="search_gallery_filter").set_value("red-circle").run()  # the pick is no longer offered
    assert not search.error and not search.exception
    first = search.selectbox(key="search_gallery_pick").options[0]
    assert search.selectbox(key="search_gallery_pick").value == first and first in result_captions(search)[0]


def test_the_app_holds_only_the_latest_generation_of_an_index_in_memory(search, gallery):
    import gc

    from captioner.index import GalleryIndex

    def held():
        gc.collect()
        return sorted(len(o) for o in gc.get_objects() if isinstance(o, GalleryIndex) and o.meta["gallery"] == str(gallery))

    for extra in range(4):  # each update makes a new generation, opened by the next search
        (gallery / f"extra-{extra}.png").write_bytes(zoo.encode(zoo.demo("star", "red", 90 + extra), "PNG"))
        click(search, "Update index")
        search.text_input(key="search_text").set_value(f"a red star {extra}").run()
        assert result_captions(search)
    # a flat index holds every vector in memory: only the live generation is kept (and the one the page's
    # previous run still names, until the next run), not one per update
    assert held()[-1] == 44 and len(held()) <= 2


def test_an_uploaded_query_image_is_kept_across_modes_and_pages_until_removed(search):
    click(search, "Update index")
    search.radio[0].set_value("Upload an image").run()
    search.file_uploader[0].set_value(("mine.png", zoo.encode(zoo.demo("square", "blue"), "PNG"), "image/png")).run()
    found = result_captions(search)
    assert found and all("blue-square" in r for r in found[:3])
    search.radio[0].set_value("Text").run()  # a look at a text query, then back
    search.radio[0].set_value("Upload an image").run()
    assert result_captions(search) == found and "Query: mine.png" in [t.value for t in search.text]
    search.switch_page("pages/caption.py").run()
    search.switch_page("pages/search.py").run()
    assert result_captions(search) == found
    search.file_uploader[0].set_value(("other.png", zoo.encode(zoo.demo("circle", "red"), "PNG"), "image/png")).run()
    assert all("red-circle" in r for r in result_captions(search)[:3])  # another upload replaces it
    search.file_uploader[0].set_value(None).run()  # the uploader's x
    assert result_captions(search) == [] and not search.exception


def test_a_file_name_that_is_not_utf8_is_shown_and_searchable(search, gallery):
    write_non_utf8_name(gallery, b"caf\xe9-red-circle.png", zoo.encode(zoo.demo("circle", "red", 120), "PNG"))
    click(search, "Update index")
    assert "41 added" in search.success[0].value
    search.text_input[0].set_value("a red circle").run()
    assert not search.exception, search.exception
    assert any("caf\ufffd-red-circle.png" in r for r in result_captions(search))
    search.radio[0].set_value("Gallery image").run()
    search.text_input[0].set_value("caf").run()
    search.selectbox[0].select_index(0).run()
    assert not search.exception, search.exception
    results = result_captions(search)
    assert "caf\ufffd-red-circle.png" in results[0] and "near-duplicate" in results[0]


def test_a_text_longer_than_the_search_model_reads_says_so(search):
    click(search, "Update index")
    search.text_input(key="search_text").set_value("a red circle").run()
    assert not any("reads only the start" in c.value for c in search.caption)
    search.text_input(key="search_text").set_value("a red circle on a white background " * 10).run()
    assert any("reads only the start of a long text" in c.value for c in search.caption)
    assert result_captions(search)  # still searched, with what the model read


def test_every_picture_has_alt_text_naming_it(search):
    click(search, "Update index")
    search.text_input(key="search_text").set_value("a red circle").run()
    alts = [image.alt for element in search.image for image in element.proto.imgs]
    expected = []
    for result in result_captions(search):  # "0.971 · demo-0008-red-circle.png" is said "demo-0008-red-circle.png, score 0.971"
        score, name = result.split(" · ")[:2]
        expected.append(f"{name}, score {score}")
    assert len(alts) == 12 and alts == expected
    search.radio[0].set_value("Upload an image").run()
    search.file_uploader[0].set_value(("mine.png", zoo.encode(zoo.demo("square", "blue"), "PNG"), "image/png")).run()
    alts = [image.alt for element in search.image for image in element.proto.imgs]
    assert alts[0] == "Query image: mine.png" and all(", score 0." in alt for alt in alts[1:])


def test_a_hundred_results_are_paged_through_each_seen_once(home, monkeypatch, tmp_path):
    monkeypatch.setenv("CAPTIONER_SEARCH_MODEL", "demo")
    gallery = tmp_path / "big"
    gallery.mkdir()
    for item in demo_inputs(110, seed=4)[0]:
        (gallery / item.name).write_bytes(item.data)
    monkeypatch.setenv("CAPTIONER_GALLERY", str(gallery))
    search = start_app("pages/search.py")
    click(search, "Update index")
    search.slider(key="search_top_k").set_value(100).run()
    search.text_input(key="search_text").set_value("a red circle").run()
    assert any(c.value.startswith("100 of 100 results") and c.value.endswith("page 1 of 5") for c in search.caption)
    def listed(app):  # every result shown, those with a score below zero too
        return [t.value for t in app.text if " · demo-" in t.value]

    seen = []
    for page in range(5):
        results = listed(search)
        assert len(results) == (24 if page < 4 else 4)
        seen += results
        assert [b.disabled for b in search.button if b.label in ("Previous page", "Next page")] == [page == 0, page == 4]
        if page < 4:
            click(search, "Next page")
    assert len(seen) == len(set(seen)) == 100  # every result once, best first across the pages
    scores = [float(r.split(" · ")[0]) for r in seen]
    assert scores == sorted(scores, reverse=True)
    click(search, "Previous page")
    assert listed(search) == seen[72:96]
    search.text_input(key="search_text").set_value("a blue square").run()  # a new query starts on its first page
    assert any(c.value.endswith("page 1 of 5") for c in search.caption) and "blue-square" in listed(search)[0]


def test_paging_through_an_uploaded_photos_results_decodes_it_once(search, monkeypatch):
    query = zoo.encode(zoo.demo("square", "blue", 400), "PNG")
    decoded = count_decodes(monkeypatch, query)
    click(search, "Update index")
    search.slider(key="search_top_k").set_value(40).run()
    search.radio[0].set_value("Upload an image").run()
    search.file_uploader[0].set_value(("mine.png", query, "image/png")).run()
    first = result_captions(search)
    made = decoded.count(True)
    click(search, "Next page")
    search.slider(key="search_cutoff").set_value(0.1).run()
    assert decoded.count(True) == made and result_captions(search) != first  # other results, the photo not decoded again


def test_a_bad_query_upload_is_not_kept_for_the_next_visit(search):
    click(search, "Update index")
    search.radio[0].set_value("Upload an image").run()
    search.file_uploader[0].set_value(("notes.jpg", b"just some text", "image/jpeg")).run()
    assert shown(search.error[0].value).startswith("notes.jpg: not an image")
    search.run()  # still said while the uploader shows it
    assert shown(search.error[0].value).startswith("notes.jpg: not an image")
    search.switch_page("pages/caption.py").run()
    search.switch_page("pages/search.py").run()  # the uploader is empty now: no x to make the error go away
    assert not search.error and not search.exception


def test_an_update_after_most_files_left_warns_how_many_are_gone(search, gallery):
    click(search, "Update index")
    for picture in sorted(gallery.glob("*.png"))[:30]:  # a folder moved away, a disk half unplugged
        picture.unlink()
    click(search, "Update index")
    assert "removed" in search.success[0].value and "reused (moved, copied or back)" in search.success[0].value
    assert any("of the 40 indexed files are gone from" in w.value for w in search.warning), [w.value for w in search.warning]
