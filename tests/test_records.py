"""A record's manifest line when its result is not JSON: written without it, and the same text
whichever way the line is made (one serialisation, or the checked form)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from pipeline.records import Record, Status, jsonable


class Thing:
    """An object that JSON cannot hold."""


@pytest.mark.parametrize(
    "value",
    [Thing(), {"stats": [1.0, math.nan]}, {"outputs": [{"obj": Thing()}]}, b"bytes", {1, 2}],
    ids=["object", "nan", "nested-object", "bytes", "set"],
)
def test_a_result_that_is_not_json_is_left_out_of_the_line(value: Any) -> None:
    rec = Record(key="k", status=Status.OK, source="s", value=value, meta={"m": 1}, run="r")
    line = rec.to_line()
    data = json.loads(line)
    assert "result" not in data
    assert (data["meta"], data["status"], data["run"]) == ({"m": 1}, "ok", "r")
    # the text json.dumps makes of the checked form: one format, whichever way
    assert line == json.dumps(rec.to_json(), ensure_ascii=False, allow_nan=False)
    assert jsonable(value) is None


@pytest.mark.parametrize("value", [{"a": [1, 2.5, "x", None, True]}, [1, 2], (1, 2), "s", 3, None])
def test_a_json_result_is_in_the_line_as_json_dumps_writes_it(value: Any) -> None:
    rec = Record(key="k", status=Status.OK, source="s", value=value, run="r")
    line = rec.to_line()
    assert line == json.dumps(rec.to_json(), ensure_ascii=False, allow_nan=False)
    assert jsonable(value) is value
    if value is not None:
        assert json.loads(line)["result"] == json.loads(json.dumps(value))
