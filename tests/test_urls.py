"""URL-list source tests: formats, gzip, comments, bad lines, laziness."""

from __future__ import annotations

import gzip
import itertools
import json
import sys
from pathlib import Path

import psutil
import pytest

from stages import urls
from stages.urls import UrlEntry, UrlListError, detect_format, iter_url_list


def write(path: Path, text: str, *, compress: bool = False) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def good(entries: list[UrlEntry]) -> list[str]:
    return [e.url for e in entries if e.ok]


# --- plain text ----------------------------------------------------------------------------------


def test_text_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "list.txt",
        "# header comment\n"
        "http://a.example/1.jpg\n"
        "\n"
        "   \n"
        "  http://a.example/2.jpg  \n"
        "   # indented comment\n"
        "http://a.example/3.jpg#fragment-kept\n",
    )
    assert list(iter_url_list(path)) == [
        UrlEntry(url="http://a.example/1.jpg", line=2),
        UrlEntry(url="http://a.example/2.jpg", line=5),
        UrlEntry(url="http://a.example/3.jpg#fragment-kept", line=7),
    ]


def test_text_crlf_bom_and_no_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "list.lst"
    path.write_bytes(b"\xef\xbb\xbfhttp://a.example/1.jpg\r\nhttp://a.example/2.jpg")
    assert good(list(iter_url_list(path))) == ["http://a.example/1.jpg", "http://a.example/2.jpg"]


def test_invalid_utf8_line_becomes_an_error_entry(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"http://a.example/1.jpg\nhttp://a.example/\xff.jpg\nhttp://a.example/3.jpg\n")
    entries = list(iter_url_list(path))
    assert [e.line for e in entries] == [1, 2, 3]
    assert entries[1].error == "invalid UTF-8"
    assert entries[1].url == "http://a.example/\ufffd.jpg"
    assert entries[0].ok
    assert entries[2].ok


def test_overlong_line_is_skipped_as_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(urls, "MAX_LINE_BYTES", 100)
    path = write(
        tmp_path / "list.txt", "http://a.example/1\nhttp://x/" + "a" * 1000 + "\nhttp://b/2\n"
    )
    entries = list(iter_url_list(path))
    assert [(e.line, e.ok) for e in entries] == [(1, True), (2, False), (3, True)]
    assert entries[1].error is not None
    assert "longer than 100" in entries[1].error
    assert entries[2].url == "http://b/2"


def test_missing_file_raises_on_first_next(tmp_path: Path) -> None:
    entries = iter_url_list(tmp_path / "nope.txt")  # nothing happens yet: lazy
    with pytest.raises(FileNotFoundError):
        next(entries)


# --- CSV / TSV -----------------------------------------------------------------------------------


def test_csv_url_column_and_extras(tmp_path: Path) -> None:
    path = write(
        tmp_path / "list.csv",
        "id,URL,label\n"
        "1,http://a.example/1.jpg,cat\n"
        "\n"
        '2,http://a.example/2.jpg,"multi\nline, with comma"\n'
        "3, http://a.example/3.jpg ,dog\n",
    )
    assert list(iter_url_list(path)) == [
        UrlEntry(url="http://a.example/1.jpg", line=2, extra={"id": "1", "label": "cat"}),
        UrlEntry(
            url="http://a.example/2.jpg",
            line=4,
            extra={"id": "2", "label": "multi\nline, with comma"},
        ),
        UrlEntry(url="http://a.example/3.jpg", line=6, extra={"id": "3", "label": "dog"}),
    ]


def test_tsv(tmp_path: Path) -> None:
    path = write(tmp_path / "list.tsv", "url\tw\th\nhttp://a.example/1.jpg\t640\t480\n")
    assert list(iter_url_list(path)) == [
        UrlEntry(url="http://a.example/1.jpg", line=2, extra={"w": "640", "h": "480"})
    ]


def test_csv_without_url_column_raises(tmp_path: Path) -> None:
    path = write(tmp_path / "list.csv", "id,link\n1,http://a.example/1.jpg\n")
    with pytest.raises(UrlListError, match="missing url column"):
        list(iter_url_list(path))


def test_csv_bad_rows_become_error_entries(tmp_path: Path) -> None:
    path = write(
        tmp_path / "list.csv",
        "url,label\n"
        "http://a.example/1.jpg,ok\n"
        ",no url\n"
        "http://a.example/a,b.jpg,unquoted comma\n"
        "http://a.example/4.jpg\n",  # a short row is fine: the url is there
    )
    entries = list(iter_url_list(path))
    assert [(e.line, e.ok) for e in entries] == [(2, True), (3, False), (4, False), (5, True)]
    assert entries[1].error == "empty or missing url"
    assert entries[2].error == "3 fields but the header has 2"
    assert entries[2].url == "http://a.example/a,b.jpg,unquoted comma"
    assert entries[3].extra == {}


def test_a_quote_left_open_is_said_with_the_lines_it_took(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A quote opened by mistake reads the rows after it into one field, as CSV allows: a
    warning names the lines; past the csv module's field limit the error does too (the rows
    in between were gone with one error at the first line, no word of how many)."""
    rows = "".join(f"http://h.example/{i}.jpg,row {i}\n" for i in range(1, 4))
    path = write(tmp_path / "q.csv", 'url,label\nhttp://h.example/0.jpg,"5"" tall\n' + rows)
    got = list(iter_url_list(path))
    assert [e.line for e in got] == [2]  # the other rows are inside its label
    (said,) = [r.getMessage() for r in caplog.records if "line breaks" in r.getMessage()]
    assert "1 row(s) read across line breaks" in said
    assert "the first at lines 2-5" in said
    many = "".join(f"http://h.example/{i}.jpg,row {i}\n" for i in range(4000))
    path = write(tmp_path / "big.csv", 'url,label\nhttp://h.example/x.jpg,"open\n' + many)
    errors = [e for e in iter_url_list(path) if e.error]
    assert errors[0].line == 2
    assert "field larger than field limit" in (errors[0].error or "")
    assert "read as one field: a quote left open?" in (errors[0].error or "")


def test_csv_invalid_utf8_line_reported_in_place(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(
        b"url\nhttp://a.example/1.jpg\nhttp://a.example/\xfe.jpg\nhttp://a.example/3\n"
    )
    entries = list(iter_url_list(path))
    assert [(e.line, e.ok) for e in entries] == [(2, True), (3, False), (4, True)]


# --- JSON lines ----------------------------------------------------------------------------------


def test_jsonl_scalars_kept_nested_dropped(tmp_path: Path) -> None:
    records = [
        {"url": "http://a.example/1.jpg", "id": 7, "ok": True, "score": 0.5, "note": None},
        {"url": "http://a.example/2.jpg", "tags": ["x"], "meta": {"a": 1}, "name": "two"},
    ]
    path = write(tmp_path / "list.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n")
    assert list(iter_url_list(path)) == [
        UrlEntry(
            url="http://a.example/1.jpg",
            line=1,
            extra={"id": "7", "ok": "true", "score": "0.5", "note": "null"},
        ),
        UrlEntry(url="http://a.example/2.jpg", line=2, extra={"name": "two"}),
    ]


def test_jsonl_bad_lines_become_error_entries(tmp_path: Path) -> None:
    path = write(
        tmp_path / "list.ndjson",
        '{"url": "http://a.example/1.jpg"}\n'
        "{not json\n"
        '["http://a.example/2.jpg"]\n'
        '{"link": "http://a.example/3.jpg"}\n'
        '{"url": 5}\n'
        '{"url": "http://a.example/6.jpg"}\n',
    )
    entries = list(iter_url_list(path))
    assert [e.line for e in entries] == [1, 2, 3, 4, 5, 6]
    assert [e.ok for e in entries] == [True, False, False, False, False, True]
    errors = [e.error or "" for e in entries]
    assert errors[1].startswith("invalid JSON")
    assert entries[1].url == "{not json"  # the raw line, for the failure record
    assert errors[2] == "not a JSON object"
    assert errors[3] == "missing url field"
    assert errors[4] == "url is not a non-empty string"


# --- gzip, detection -----------------------------------------------------------------------------

SAMPLES = {
    "list.txt": "http://a.example/1.jpg\n# c\nhttp://a.example/2.jpg\n",
    "list.csv": "url,k\nhttp://a.example/1.jpg,a\nhttp://a.example/2.jpg,b\n",
    "list.tsv": "url\tk\nhttp://a.example/1.jpg\ta\nhttp://a.example/2.jpg\tb\n",
    "list.jsonl": '{"url": "http://a.example/1.jpg"}\n{"url": "http://a.example/2.jpg"}\n',
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_gzip_by_suffix(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / f"{name}.gz", SAMPLES[name], compress=True)
    assert good(list(iter_url_list(path))) == ["http://a.example/1.jpg", "http://a.example/2.jpg"]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_gzip_by_magic_bytes_without_suffix(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, SAMPLES[name], compress=True)
    assert good(list(iter_url_list(path))) == ["http://a.example/1.jpg", "http://a.example/2.jpg"]


def test_gz_suffix_on_plain_text_is_read_as_plain(tmp_path: Path) -> None:
    path = write(tmp_path / "list.txt.gz", SAMPLES["list.txt"])
    assert len(good(list(iter_url_list(path)))) == 2


def test_corrupt_gzip_raises_url_list_error(tmp_path: Path) -> None:
    data = gzip.compress(("http://a.example/x.jpg\n" * 5000).encode())
    path = tmp_path / "list.txt.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UrlListError, match="unreadable"):
        list(iter_url_list(path))


def test_detect_format_and_override(tmp_path: Path) -> None:
    assert detect_format("a.CSV") == "csv"
    assert detect_format("a.tsv.gz") == "tsv"
    assert detect_format("a.ndjson") == "jsonl"
    assert detect_format("a.txt") == detect_format("a") == "text"
    assert detect_format("a.json") == detect_format("a.json.gz") == "jsonl"  # as tables read it
    path = write(tmp_path / "list.txt", '{"url": "http://a.example/1.jpg", "k": "v"}\n')
    assert list(iter_url_list(path, fmt="jsonl")) == [
        UrlEntry(url="http://a.example/1.jpg", line=1, extra={"k": "v"})
    ]


# --- laziness ------------------------------------------------------------------------------------


def _position(path: Path) -> int:
    for f in psutil.Process().open_files():
        if Path(f.path) == path:
            return int(f.position)
    raise AssertionError(f"{path} is not open")


def _is_open(path: Path) -> bool:
    return any(Path(f.path) == path for f in psutil.Process().open_files())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="file positions via /proc")
@pytest.mark.parametrize(("name", "compress"), [("big.txt", False), ("big.csv.gz", True)])
def test_lazy_reads_only_what_it_needs(tmp_path: Path, name: str, compress: bool) -> None:
    header = "url,i\n" if name.startswith("big.csv") else ""
    body = "".join(f"http://a.example/{i:07d}.jpg,{i}\n" for i in range(200_000))
    if not header:
        body = body.replace(",", "#")  # plain text: one URL per line
    path = write(tmp_path / name, header + body, compress=compress).resolve()
    size = path.stat().st_size
    entries = iter_url_list(path)
    first = list(itertools.islice(entries, 3))
    assert [e.line for e in first] == ([2, 3, 4] if header else [1, 2, 3])
    assert _position(path) < size / 10  # a buffer or two, not the file
    entries.close()
    assert not _is_open(path)  # closing the iterator closes the file
