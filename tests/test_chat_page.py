"""The chat page in AppTest: ask, see the answer, a second turn, Regenerate, Clear, corrections, bad input."""


import pytest

import images_zoo as zoo
from captioner.feedback import FeedbackLog
from conftest import count_decodes, start_app
from page_text import shown


@pytest.fixture
def chat(home, monkeypatch, tiny_blip2_dir):
    monkeypatch.setenv("CAPTIONER_QA_MODEL", "demo")
    monkeypatch.setenv("CAPTIONER_CHAT_MODELS", f"./no/such/model,{tiny_blip2_dir}")
    return start_app("pages/chat.py")


def ask(app, question):
    app.chat_input[0].set_value(question).run()
    assert not app.exception, app.exception


def conversation(app):
    """(role, text) of every chat message on the page, user text and assistant markdown."""
    said = []
    for message in app.get("chat_message"):
        texts = [t.value for t in message.text] + [shown(m.value) for m in message.markdown]
        said.append((message.name, texts[0] if texts else ""))
    return said


def with_image(app, shape="circle", color="red"):
    app.file_uploader[0].set_value(("pic.png", zoo.encode(zoo.demo(shape, color), "PNG"), "image/png")).run()
    return app


def test_no_image_chosen_says_so(chat):
    assert "Choose an image first" in chat.info[0].value
    assert not chat.chat_input


def test_ask_two_turns_regenerate_and_clear(chat):
    with_image(chat)
    ask(chat, "what color is the shape?")
    assert conversation(chat) == [("user", "what color is the shape?"), ("assistant", "red")]
    assert any("demo · version demo-" in c.value for c in chat.caption)
    ask(chat, "is it a circle?")
    assert conversation(chat)[2:] == [("user", "is it a circle?"), ("assistant", "yes")]
    [b for b in chat.button if b.label == "Regenerate the last answer"][0].click().run()
    assert [role for role, _ in conversation(chat)] == ["user", "assistant"] * 2
    assert conversation(chat)[2:] == [("user", "is it a circle?"), ("assistant", "yes")]  # drawn again, the same:
    assert any("The same answer came again: the model is sure of it" in shown(i.value) for i in chat.info)  # said so
    chat.run()
    assert not any("same answer came again" in shown(i.value) for i in chat.info)  # once, under the redrawn answer
    [b for b in chat.button if b.label == "Clear the conversation"][0].click().run()
    assert conversation(chat) == []


def test_an_answer_can_be_corrected_into_the_feedback_log(chat, home):
    with_image(chat, "square", "green")
    ask(chat, "what shape is it?")
    chat.text_input(key=[w.key for w in chat.text_input if w.key.startswith("fix-")][0]).set_value("a cube")
    [b for b in chat.button if b.label == "Save correction"][0].click().run()
    rows, problems = FeedbackLog(home / "data").read()
    assert problems == [] and len(rows) == 1
    row = rows[0]
    assert (row.task, row.prompt, row.model_output, row.correction) == ("qa", "what shape is it?", "square", "a cube")
    assert "Correction saved." in [s.value for s in chat.success]


def test_empty_and_overlong_questions(chat):
    with_image(chat)
    ask(chat, "   ")
    assert "The question is empty" in chat.warning[0].value
    ask(chat, "what color is the shape? " * 420)
    assert any("cut to its first" in i.value for i in chat.info)
    assert conversation(chat)[-1][0] == "assistant"


def test_switching_models_and_a_model_that_fails_to_load(chat, tiny_blip2_dir):
    with_image(chat)
    chat.sidebar.selectbox[0].set_value("./no/such/model").run()
    assert any("Still answering with demo" in e.value for e in chat.error)
    ask(chat, "what color is the shape?")
    assert conversation(chat)[-1] == ("assistant", "red")
    chat.sidebar.selectbox[0].set_value(str(tiny_blip2_dir)).run()
    ask(chat, "what is it?")
    assert any(str(tiny_blip2_dir) in c.value for c in chat.caption)
    assert len(conversation(chat)) == 4


def test_a_bad_image_gets_one_clear_error(chat):
    chat.file_uploader[0].set_value(("bad.png", b"\x89PNG\r\n\x1a\n broken", "image/png")).run()
    assert shown(chat.error[0].value).startswith("bad.png: ")


def test_a_regenerate_that_fails_keeps_the_answer_it_was_to_replace(chat, monkeypatch):
    from transformers import BlipForQuestionAnswering

    with_image(chat)
    ask(chat, "what color is the shape?")
    working = BlipForQuestionAnswering.generate

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(BlipForQuestionAnswering, "generate", out_of_memory)  # the model fails while drawing again
    [b for b in chat.button if b.label == "Regenerate the last answer"][0].click().run()
    assert not chat.exception, chat.exception
    assert any("failed to answer: CUDA out of memory" in shown(e.value) for e in chat.error)
    monkeypatch.setattr(BlipForQuestionAnswering, "generate", working)
    chat.run()
    assert conversation(chat) == [("user", "what color is the shape?"), ("assistant", "red")]


def save_answer_correction(chat, text):
    chat.text_input(key=[w.key for w in chat.text_input if w.key.startswith("fix-")][0]).set_value(text)
    [b for b in chat.button if b.label == "Save correction"][0].click().run()
    assert not chat.exception, chat.exception


def test_a_refused_or_failed_save_is_an_error_and_clear_forgets_the_notices(chat, home):
    with_image(chat, "square", "green")
    ask(chat, "what shape is it?")
    save_answer_correction(chat, "   ")
    assert [shown(e.value) for e in chat.error] == ["Not saved: the correction is empty"] and not chat.success
    (home / "data").mkdir(exist_ok=True)
    (home / "data" / "images").write_text("a file where the image folder should be")  # as a full or broken disk refuses
    save_answer_correction(chat, "a cube")
    assert len(chat.error) == 1 and shown(chat.error[0].value).startswith("Not saved: ")
    (home / "data" / "images").unlink()
    save_answer_correction(chat, "a cube ")
    assert [s.value for s in chat.success] == ["Correction saved."] and not chat.error
    [b for b in chat.button if b.label == "Clear the conversation"][0].click().run()
    ask(chat, "what shape is it?")  # the same question again: a fresh answer, not called saved
    assert conversation(chat)[-1] == ("assistant", "square") and not chat.success
    rows, _ = FeedbackLog(home / "data").read()
    assert [row.correction for row in rows] == ["a cube"]


def test_two_photos_with_the_same_file_name_can_both_be_picked(chat):
    chat.switch_page("pages/caption.py").run()
    one, two = zoo.encode(zoo.demo("circle", "red"), "PNG"), zoo.encode(zoo.demo("square", "blue"), "PNG")
    chat.file_uploader[0].set_value([("IMG_0001.PNG", one, "image/png"), ("IMG_0001.PNG", two, "image/png")]).run()
    assert [t.value for t in chat.text_area] == ["a red circle", "a blue square"]  # two cameras, one file name
    chat.switch_page("pages/chat.py").run()
    labels = chat.main.selectbox[0].options[1:]
    assert len(labels) == 2 and all(label.startswith("IMG_0001.PNG · ") for label in labels)
    for index, colour in ((1, "red"), (2, "blue")):
        chat.main.selectbox[0].select_index(index).run()
        ask(chat, "what color is the shape?")
        assert conversation(chat)[-1] == ("assistant", colour)


def test_an_answer_is_shown_as_written_never_as_markdown_or_links(chat):
    from captioner.chat import Turn
    from captioner.images import ImageInput

    data = zoo.encode(zoo.demo("circle", "red"), "PNG")
    chat.file_uploader[0].set_value(("pic.png", data, "image/png")).run()
    written = "see https://example.com or www.example.com, **bold**\n    indented <b>tag</b>"
    chat.session_state["chats"] = {ImageInput("pic.png", data).sha256: [Turn("where?", written, "m", "v")]}
    chat.run()
    [assistant] = [m for m in chat.get("chat_message") if m.name == "assistant"]
    assert [t.value for t in assistant.text] == [written] and not assistant.markdown  # st.text: no autolink, no bold


def alt_texts(app):
    return [image.alt for element in app.image for image in element.proto.imgs]


def test_the_picture_has_alt_text_a_screen_reader_can_say(chat):
    chat.switch_page("pages/caption.py").run()  # captioned there: its caption describes it here
    chat.file_uploader[0].set_value(("seen.png", zoo.encode(zoo.demo("square", "blue"), "PNG"), "image/png")).run()
    chat.switch_page("pages/chat.py").run()
    chat.main.selectbox[0].select_index(1).run()
    assert alt_texts(chat) == ["seen.png: a blue square"]
    with_image(chat)
    assert alt_texts(chat) == ["The image to ask about: pic.png"]


def test_questions_about_a_photo_decode_it_once(chat, monkeypatch):
    picture = zoo.encode(zoo.demo("circle", "red", 300), "PNG")
    decoded = count_decodes(monkeypatch, picture)
    chat.file_uploader[0].set_value(("photo.png", picture, "image/png")).run()
    for question in ("what color is the shape?", "what shape is it?", "is it a circle?"):
        ask(chat, question)
    assert conversation(chat)[-1] == ("assistant", "yes") and decoded.count(True) == 1


def test_the_uploaded_picture_and_its_conversation_are_there_after_visiting_another_page(chat):
    with_image(chat, "square", "blue")
    ask(chat, "what color is the shape?")
    chat.switch_page("pages/search.py").run()
    chat.switch_page("pages/chat.py").run()  # Streamlit has emptied the uploader
    assert conversation(chat) == [("user", "what color is the shape?"), ("assistant", "blue")]
    assert not chat.info  # not "Choose an image first"
    chat.switch_page("pages/caption.py").run()
    chat.file_uploader[0].set_value(("seen.png", zoo.encode(zoo.demo("circle", "green"), "PNG"), "image/png")).run()
    chat.switch_page("pages/chat.py").run()
    chat.main.selectbox[0].select_index(1).run()  # a pick after the upload: the pick is asked about
    ask(chat, "what shape is it?")
    assert conversation(chat) == [("user", "what shape is it?"), ("assistant", "circle")]
    chat.switch_page("pages/caption.py").run()
    chat.switch_page("pages/chat.py").run()  # the pick is kept too
    assert conversation(chat)[-1] == ("assistant", "circle")
    with_image(chat, "triangle", "red")  # an upload after the pick: the upload is asked about
    assert conversation(chat) == []
    ask(chat, "what color is the shape?")
    assert conversation(chat)[-1] == ("assistant", "red")
    chat.file_uploader[0].set_value(None).run()  # the uploader's x: back to the pick
    assert conversation(chat)[-1] == ("assistant", "circle")


def test_a_bad_upload_is_not_kept_for_the_next_visit(chat):
    chat.file_uploader[0].set_value(("notes.jpg", b"just some text", "image/jpeg")).run()
    assert shown(chat.error[0].value).startswith("notes.jpg: not an image")
    chat.switch_page("pages/search.py").run()
    chat.switch_page("pages/chat.py").run()
    assert not chat.error and "Choose an image first" in chat.info[0].value
