"""Search page: gallery images similar to a text, an uploaded image, a gallery image, or a captioned one."""

from pages import inside_the_app

inside_the_app()  # first: a deep link on a fresh server is rerun inside the app before this page loads anything


import os

import streamlit as st

from captioner.gallery_scan import gallery_file
from captioner.images import UPLOAD_TYPES, ImageError, ImageInput, read_file, thumbnail_jpeg
from captioner.index import (
    IndexProblem, SearchError, search_gallery_image, search_image, search_text, text_is_cut, update_index, waiting_note,
)  # fmt: skip
from pages.ui import shared
from pages.ui.text import plain

PICKER_LIMIT = 500  # gallery paths offered at once; a filter narrows a big gallery down
MAX_RESULTS = 200
PAGE_SIZE = 24  # results drawn at once (6 rows of 4): a long list is paged, its thumbnails not all sent at once
state = st.session_state
st.title("Find similar images")
config = shared.settings()
embedder = shared.search_model()
st.caption(f"Gallery folder: {plain(config.gallery)} (set CAPTIONER_GALLERY to use another)")


@st.cache_data(max_entries=1024, show_spinner=False)
def thumbnail(path: bytes, size: int, mtime_ns: int) -> bytes:
    """A small JPEG of a gallery picture, made once per file version: a rerun neither decodes nor encodes it."""
    return thumbnail_jpeg(read_file(os.fsdecode(path)), 256)


@st.cache_data(max_entries=16, show_spinner=False)
def query_preview(sha256: str, _query: ImageInput) -> bytes:
    """A small JPEG of a query picture, made once per picture: another page of results decodes nothing again."""
    return thumbnail_jpeg(_query, 256)


def shown_name(relative: str) -> str:
    """A gallery path as text a browser can take: bytes of a file name that are not UTF-8 (Linux allows any) show as �."""
    return relative.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def show_thumbnail(column, relative: str, alt: str) -> None:
    """A gallery picture's thumbnail; alt is what a screen reader says for it."""
    try:
        path = gallery_file(config.gallery.resolve(), relative, config.gallery_follow_links)
        stat = path.stat()  # the path goes to the cache as bytes: a name that is not UTF-8 cannot be hashed as text
        column.image(thumbnail(os.fsencode(path), stat.st_size, stat.st_mtime_ns), width="stretch", alt=alt)
    except ImageError as exc:
        column.warning(plain(exc.reason))
    except OSError as exc:
        column.warning(plain(f"cannot be read ({exc.strerror})"))


def uploaded_query() -> ImageInput | None:
    """The uploaded query image, kept while the person searches by text or visits another page (Streamlit empties an
    uploader that a run does not draw); the uploader's x, or another upload, replaces it."""
    upload = st.file_uploader("Query image", type=UPLOAD_TYPES, key="search_upload", on_change=forget_removed_upload)
    if upload is not None and state.get("search_upload_id") != upload.file_id:
        state.search_query_upload, state.search_upload_id = ImageInput(upload.name, upload.getvalue()), upload.file_id
    return state.get("search_query_upload")


def forget_removed_upload() -> None:
    """The person changed the uploader: an empty one means they removed the file (a page switch calls nothing)."""
    if state.get("search_upload") is None:
        state.search_query_upload = state.search_upload_id = None


def run_update() -> None:
    """Embed what is new or changed, with progress; keep the report (or why it failed) to show after the rerun."""
    bar = st.progress(0.0, "Scanning the gallery…")

    def progress(done: int, total: int, rate: float) -> None:
        bar.progress(done / max(total, 1), f"Read {done} of {total} new or changed files · {rate:.1f} images/s")

    try:
        _, state.index_report = update_index(
            embedder, config.gallery, config.data_dir, progress, follow_links=config.gallery_follow_links,
            on_wait=lambda: bar.progress(0.0, plain(waiting_note(config.data_dir, config.gallery, embedder).capitalize())),
        )
        state.index_error = None
    except IndexProblem as exc:
        state.index_report, state.index_error = None, str(exc)
    bar.empty()


try:
    index = shared.gallery_index(embedder)
except IndexProblem as problem:
    index = None
    if str(problem) == "no index yet" and not config.gallery.is_dir():  # a fresh install: nothing to index yet
        st.info(f"The gallery folder {plain(config.gallery)} does not exist yet: put your images there (or set "
                "CAPTIONER_GALLERY to a folder of images), then press **Update index**.")
    elif str(problem) == "no index yet":
        st.info("The gallery has no index yet: press **Update index** to build it.")
    else:
        st.warning(f"The index cannot be used ({plain(str(problem))}); rebuilding it now.")
        run_update()
        index = shared.gallery_index(embedder) if state.get("index_report") else None

if st.button("Update index", help="Embed new and changed images, forget deleted ones"):
    run_update()
    st.rerun()
if state.get("index_error"):
    st.error(f"The index could not be updated: {plain(state.index_error)}")
report = state.get("index_report")
if report:
    summary = (
        f"{report.added} added, {report.changed} changed, {report.removed} removed, {report.unchanged} unchanged; "
        f"{report.embedded} embedded, {report.reused} reused (moved, copied or back)"
        + (f"; {report.resumed} kept from an interrupted update." if report.resumed else ".")
    )
    if report.kept_because:  # its own warning below says why: "updated" would hide that nothing changed
        st.info(f"Index left as it was ({report.seconds:.1f}s).")
    else:
        st.success(f"Index updated in {report.seconds:.1f}s: {summary}")
    for warning in report.warnings:  # many files gone, or a gallery that looks unmounted
        st.warning(plain(warning))
    for note in (report.rebuilt_because and f"The index was rebuilt: {report.rebuilt_because}",
                 report.rewritten_because and f"All vectors were rewritten: {report.rewritten_because}"):  # fmt: skip
        if note:
            st.warning(plain(note))
    if report.skipped or report.ignored:
        with st.expander(f"{len(report.skipped)} skipped, {len(report.ignored)} ignored"):
            st.dataframe([{"file": shown_name(p), "why": r} for p, r in report.skipped + report.ignored], hide_index=True)
if index is None:
    st.stop()
if not len(index):  # the search controls would only ever answer "No results"
    st.info(f"No images are indexed: the gallery folder {plain(config.gallery)} holds no image the app reads "
            f"({', '.join(t.upper() for t in UPLOAD_TYPES)}). Put images there, then press **Update index**.")
    st.stop()
st.caption(f"{len(index)} images indexed ({index.kind} index, updated {plain(index.meta['updated'])})")

handed_over = state.get("search_query")  # from "Find similar" on the Caption page, while that image is still there
on_caption_page = {r.source.sha256 for r in state.get("captions", {}).values() if r.ok}
if handed_over is not None and handed_over.sha256 not in on_caption_page | {s.sha256 for s in state.get("samples", [])}:
    handed_over = state.search_query = None
modes = ["Text", "Upload an image", "Gallery image"] + (["Captioned image"] if handed_over else [])
if state.get("search_mode") not in modes:
    state.search_mode = modes[0]
state.setdefault("search_top_k", 12)  # defaults here, not in the widgets: their values are kept across pages
mode = st.radio("Search by", modes, horizontal=True, key="search_mode")
top_k = st.slider("Results", 1, MAX_RESULTS, key="search_top_k")
cutoff = st.slider("Hide results below this fraction of the best score", 0.0, 1.0, step=0.05, key="search_cutoff")

try:
    if mode == "Text":
        text = st.text_input("Describe what you are looking for", placeholder="a red circle", key="search_text")
        hits = search_text(embedder, index, text, top_k) if text.strip() else None
        if hits is not None and text_is_cut(embedder, text):
            st.caption("The search model reads only the start of a long text: the end of this one was left out.")
    elif mode == "Gallery image":
        needle = st.text_input("Filter gallery files by name", placeholder="part of a file name", key="search_gallery_filter")
        matches = [p for p in index.paths if needle.lower() in p.lower()] if needle else index.paths
        if len(matches) > PICKER_LIMIT:
            st.caption(f"{len(matches):,} files match; the first {PICKER_LIMIT} are listed, type to narrow them down.")
        if not matches:
            st.caption(f"No gallery file name contains “{plain(needle)}”.")
        offered = matches[:PICKER_LIMIT]
        if state.get("search_gallery_pick") not in offered:  # filtered out, or gone from the index: the first one
            state.pop("search_gallery_pick", None)
        picked = st.selectbox("Query image", offered, format_func=shown_name, key="search_gallery_pick")
        if picked:
            show_thumbnail(st.columns(6)[0], picked, f"Query image: {shown_name(picked)}")
        hits = search_gallery_image(index, picked, top_k) if picked else None
    else:
        if mode == "Upload an image":
            query = uploaded_query()
        else:
            query = handed_over
        if query is not None:
            st.image(query_preview(query.sha256, query), width=160, alt=f"Query image: {query.name}")
            st.text(f"Query: {query.name}")
        hits = search_image(embedder, index, query, top_k) if query is not None else None
except (SearchError, ImageError) as exc:
    if mode == "Upload an image":  # said while the uploader shows it; not kept for the next visit, where it has no x
        state.search_query_upload = state.search_upload_id = None
    st.error(plain(str(exc)))
    st.stop()
if hits is None:
    st.stop()
if not hits:
    st.info("No results.")
    st.stop()
best = hits[0].score
shown = [h for h in hits if not cutoff or best <= 0 or h.score >= cutoff * best]
pages = -(-len(shown) // PAGE_SIZE)
listing = hash(tuple(h.path for h in shown))
if state.get("search_listing") != listing:  # another query or other settings: their results from the first page
    state.search_listing, state.search_page = listing, 0
page = min(state.get("search_page", 0), pages - 1)
first = page * PAGE_SIZE
on_page = shown[first : first + PAGE_SIZE]
st.caption(f"{len(shown)} of {len(hits)} results (best score {best:.3f})"
           + (f" · page {page + 1} of {pages}" if pages > 1 else ""))  # fmt: skip
root = config.gallery.resolve()
for start in range(0, len(on_page), 4):
    for column, hit in zip(st.columns(4), on_page[start : start + 4]):
        relative = hit.path.relative_to(root).as_posix()
        show_thumbnail(column, relative, f"{shown_name(relative)}, score {hit.score:.3f}")
        column.text(f"{hit.score:.3f} · {shown_name(relative)}" + (" · near-duplicate" if hit.near_duplicate else ""))
if pages > 1:
    earlier, where, later = st.columns([1, 2, 1], vertical_alignment="center")
    earlier.button("Previous page", disabled=page == 0, on_click=lambda: state.update(search_page=page - 1))
    where.caption(f"Results {first + 1}–{first + len(on_page)} of {len(shown)}")
    later.button("Next page", disabled=page == pages - 1, on_click=lambda: state.update(search_page=page + 1))
