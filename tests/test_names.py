"""Names that are bytes (pipeline.names), the output-naming rule (stages.naming) and content
recognition (stages.sniff): unit and property tests."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline import Ledger, Record, Status
from pipeline.names import from_b64, raw_b64, shown, text_safe
from stages import sniff
from stages.naming import (
    NAME_MAX,
    OUTPUT_EXTENSIONS,
    Folder,
    choose_tag,
    fold,
    name_tag,
    needs_tag,
    output_name,
    written_as,
)

names_as_bytes = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


# -- pipeline.names ---------------------------------------------------------------------------
@given(names_as_bytes)
def test_any_name_round_trips_and_shows_as_utf8(raw: bytes) -> None:
    text = os.fsdecode(raw)
    assert from_b64(raw_b64(text)) == text
    assert base64.b64decode(raw_b64(text)) == raw
    shown(text).encode("utf-8")  # never raises
    if raw.decode("utf-8", "replace") == raw.decode("utf-8", "surrogateescape"):
        assert shown(text) == text  # clean names are untouched


def test_shown_escapes_each_undecodable_byte() -> None:
    assert shown(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert text_safe({"a": [os.fsdecode(b"\xff")], "b": 1}) == {"a": ["\\xff"], "b": 1}


def test_a_record_with_a_non_utf8_key_survives_its_manifest_line() -> None:
    key = os.fsdecode(b"dir\xff/caf\xe9.jpg")
    rec = Record(
        key=key,
        status=Status.FAILED,
        source="/in/" + key,
        error=f"cannot open {key}",
        value={"outputs": [{"path": key}]},
    )
    line = rec.to_line()
    line.encode("utf-8")  # valid UTF-8 text
    doc = json.loads(line)
    assert doc["key"] == "dir\\xff/caf\\xe9.jpg"
    assert doc["error"] == "cannot open dir\\xff/caf\\xe9.jpg"
    back = Record.from_json(doc)
    assert back.key == key
    assert back.source == "/in/" + key


def test_the_ledger_keeps_non_utf8_keys_apart_and_exact(tmp_path: Path) -> None:
    raw = os.fsdecode(b"caf\xe9.jpg")
    lookalike = "caf\\xe9.jpg"  # a real name with a backslash: shown the same, another key

    async def go() -> dict[str, Record]:
        async with Ledger(tmp_path) as ledger:
            await ledger.write(
                [
                    Record(key=raw, status=Status.OK, source="a"),
                    Record(key=lookalike, status=Status.FAILED, source="b"),
                ]
            )
            await ledger.export_manifest()
            return await ledger.lookup([raw, lookalike])

    found = asyncio.run(go())
    assert found[raw].source == "a"
    assert found[lookalike].source == "b"
    lines = (tmp_path / "manifest.jsonl").read_bytes().decode("utf-8").splitlines()
    assert len(lines) == 2
    # a folder whose journal is gone adopts its manifest, non-UTF-8 keys included
    os.unlink(tmp_path / ".pipeline" / "ledger.sqlite")

    async def adopt() -> dict[str, Record]:
        async with Ledger(tmp_path) as ledger:
            return await ledger.lookup([raw, lookalike])

    again = asyncio.run(adopt())
    assert again[raw].status is Status.OK
    assert again[lookalike].status is Status.FAILED


# -- stages.naming ----------------------------------------------------------------------------
def test_the_naming_rules() -> None:
    assert output_name("b.jpg", ".jpg") == "b.jpg"
    assert output_name("b.JPEG", ".jpg") == "b.JPEG"
    assert output_name("b.png", ".jpg") == "b.png.jpg"
    assert output_name("README", ".png") == "README.png"
    assert output_name(".jpg", ".jpg") == ".jpg.jpg"  # a hidden file's dot is not an extension
    tag = name_tag("a.gif")
    assert output_name("a.gif", ".jpg", tag) == f"a.gif~{tag}.jpg"
    assert output_name("a.jpg", ".jpg", tag) == "a.jpg"  # rule 1: its own name, always
    assert needs_tag("a.gif", {"a.gif", "a.gif.jpg"})
    assert needs_tag("A.GIF", {"a.gif", "a.gif.webp"})  # siblings given lower-cased
    assert not needs_tag("a.gif", {"a.gif", "a.gif.jpeg"})  # .jpeg keeps its own name
    # the tag has 8 digits, also for a name written under itself in one output format (a PNG
    # beside x.png.jpg: its PNG output is x.png, its own name, which never asks for a longer tag)
    for name in ("a.gif", "x.png", "y.webp", "z.jpg"):
        folder = Folder([name, f"{name}.jpg", f"{name}.png"])
        assert choose_tag(name, folder) == name_tag(name), name
    # rule 3 compares without normalization too: café.gif (composed) beside café.gif.jpg
    # (decomposed) takes a tag; its output was café.gif.jpg composed, one file with the other
    # on macOS (APFS ignores normalization)
    gif, sibling = "caf\u00e9.gif", "cafe\u0301.gif.jpg"
    folder = Folder([gif, sibling])
    outs = [
        output_name(w, ".jpg", tag) for w, tag in (written_as(n, folder) for n in (gif, sibling))
    ]
    assert outs[0] == f"caf\u00e9.gif~{name_tag(gif)}.jpg"
    assert len({fold(o) for o in outs}) == 2


def test_names_that_differ_only_in_case_or_normalization_are_twins() -> None:
    nfc, nfd = "caf\u00e9.jpg", "cafe\u0301.jpg"
    folder = Folder(["a.jpg", "A.JPG", "b.jpg", nfc, nfd, "c.png"])
    assert fold("A.JPG") == fold("a.jpg")
    assert fold(nfc) == fold(nfd)
    assert [folder.is_twin(n) for n in ("a.jpg", "A.JPG", nfd, "b.jpg", "c.png")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    # each twin is written under its own tagged name; the others keep the rules
    a, a_tag = written_as("a.jpg", folder)
    big_a, _ = written_as("A.JPG", folder)
    assert (a, a_tag) == (f"a~{name_tag('a.jpg')}.jpg", None)
    assert big_a == f"A~{name_tag('A.JPG')}.JPG"
    assert written_as("b.jpg", folder) == ("b.jpg", None)
    outs = [output_name(written_as(n, folder)[0], ".jpg") for n in ["a.jpg", "A.JPG", nfc, nfd]]
    assert len({fold(o) for o in outs}) == 4


CLASHING = [
    *(b"a", b"a.gif", b"a.gif.jpg", b"A.GIF.JPG", b"a.jpg", b"a.png", b"-", b"-.jpg"),
    *(b"A", b"A.JPG", b"A.GIF", b"caf\xc3\xa9.jpg", b"cafe\xcc\x81.jpg"),  # twins
    *(b"caf\xc3\xa9.gif", b"cafe\xcc\x81.gif.jpg"),  # rule 3, normalization apart
    b"a.gif~" + name_tag("a.gif").encode() + b".jpg",  # a sibling named like a tagged output
    b"-~3bc15c8a.jpg",
]


@settings(max_examples=300)
@given(
    st.lists(
        st.one_of(
            names_as_bytes,
            st.sampled_from(CLASHING),
            st.builds(
                lambda n: n * (251 // len(n)) + b".png", st.sampled_from([b"x", b"\xc3\xa9"])
            ),
        ),
        min_size=1,
        max_size=12,
        unique=True,
    ),
    st.sampled_from(OUTPUT_EXTENSIONS),
)
def test_names_in_one_folder_never_share_an_output(raws: list[bytes], ext: str) -> None:
    names = [os.fsdecode(r) for r in raws]
    folder = Folder(names)
    outs = [output_name(w, ext, tag) for w, tag in (written_as(n, folder) for n in names)]
    # distinct on any disk: one that ignores case and Unicode normalization too (macOS)
    assert len({fold(o) for o in outs}) == len(outs)
    own = (".jpeg", ".jpe") if ext == ".jpg" else ()  # rule 1: the format's other spellings
    for o in outs:
        assert len(os.fsencode(o)) <= NAME_MAX
        assert o.lower().endswith((ext, *own))


# -- stages.sniff -----------------------------------------------------------------------------
def _pillow_accepts() -> dict[str, object]:
    from stages import heif
    from stages.imaging import ALLOWED_FORMATS  # imports exactly the plugins the workers use

    Image.preinit()
    heif.register()  # as a worker's first file that may be HEIF does (whatever ran before)
    return {fmt: Image.OPEN[fmt][1] for fmt in ALLOWED_FORMATS}


MAGICS = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"RIFF\0\0\0\0WEBPVP8 ",
    b"RIFF\0\0\0\0WEBPVP8X",
    b"II*\0",
    b"MM\0+",
    b"BM",
    b"\0\0\1\0",
    b"P4",
    b"Pf",
    b"\0\0\0\x1cftypavif",
    b"\0\0\0\x1cftypmif1",
    b"\0\0\0\x1cftypheic",
    b"\0\0\0\x1cftyphevc",
    b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic",
    b"\0\0\0\x18ftypmif1\0\0\0\0mif1avif",
    b"\0\0\0\x18ftypisom\0\0\0\0isomavc1",
    b"\xff\x4f\xff\x51",
    b"\0\0\0\x0cjP  \r\n\x87\n",
    b"\x93NUMPY",
    b"PK\x03\x04",
]


@settings(max_examples=400)
@given(st.sampled_from([b"", *MAGICS]), st.binary(max_size=40))
@example(b"\xff\x4f\xff\x51", b"ftyp")  # a codestream whose Lsiz and Rsiz read "ftyp"
def test_sniffing_agrees_with_the_pillow_plugins_the_workers_open(
    magic: bytes, rest: bytes
) -> None:
    head = magic + rest
    accepted = [fmt for fmt, accept in _pillow_accepts().items() if accept and accept(head)]  # type: ignore[operator]
    got = sniff.image_format(head)
    if got is None:
        assert accepted == [], head
    else:
        assert got in accepted, (head, got, accepted)


@pytest.mark.parametrize(
    ("fmt", "mode", "kw"),
    [
        ("JPEG", "RGB", {}),
        ("PNG", "RGBA", {}),
        ("GIF", "P", {}),
        ("WEBP", "RGB", {"lossless": True}),
        ("WEBP", "RGBA", {}),
        ("TIFF", "I;16", {}),
        ("BMP", "1", {}),
        ("ICO", "RGBA", {}),
        ("PPM", "1", {}),
        ("PPM", "L", {}),
        ("AVIF", "RGB", {}),
        ("JPEG2000", "RGB", {}),
    ],
)
def test_files_pillow_writes_are_recognised(fmt: str, mode: str, kw: dict[str, object]) -> None:
    buf = io.BytesIO()
    Image.new(mode, (16, 16)).save(buf, fmt, **kw)
    head = buf.getvalue()[: sniff.HEAD_BYTES]
    assert sniff.image_format(head) == fmt


def test_other_content_is_described() -> None:
    assert sniff.describe(b"", 0) == "an empty file (0 bytes)"
    assert sniff.describe(b"hello, world\n", 13) == "text"
    assert sniff.describe(b"%PDF-1.7", 8) == "a PDF document"
    assert sniff.image_format(b"\0\0\0\x18ftypheic") == "HEIF"  # an image (test_formats.py)
    assert sniff.describe(bytes(range(256)), 256) == "unrecognised binary data"
