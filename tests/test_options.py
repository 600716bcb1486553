"""Each option declared once (app.config.ProcessConfig): a flag and a config-file key of the same
name give the same config; lists, workers and yes/no options in every accepted form; unknown keys
and wrong values stop with exit 2 naming the option and where it came from; the README's option
table is the generated one; examples/run.toml runs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from PIL import Image

from app.cli import build_parser
from app.config import ProcessConfig, Workers, config_from_args
from app.options import Needs, declared
from app.readme import BEGIN, END, updated
from pipeline import ConfigError
from tests.conftest import by_key

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"
EDGE = ROOT / "sample_data" / "edge"

#: option -> (flags, TOML lines), each giving the same value, not the default (with what the
#: option needs to do something: ``--pad-color`` with ``--mode pad``). ``{tmp}`` is the test's
#: folder, ``{urls}`` a URL list in it; ``{images}`` / ``{edge}`` the sample folders.
_URLS_FLAGS = ["--urls", "{urls}"]
_URLS_LINE = 'urls = "{urls}"\n'
EXAMPLES: dict[str, tuple[list[str], str]] = {
    "inputs": (["{images}", "{edge}"], 'inputs = ["{images}", "{edge}"]'),
    "output": (["-o", "{tmp}/elsewhere"], 'output = "{tmp}/elsewhere"'),
    "mirror_every": (
        ["-o", "s3://bucket/out", "--mirror-every", "5"],
        'output = "s3://bucket/out"\nmirror-every = 5',
    ),
    "storage_options": (
        ["--storage-options", '{"anon": true, "client_kwargs": {"region_name": "eu-west-1"}}'],
        'storage-options = {anon = true, client_kwargs = {region_name = "eu-west-1"}}',
    ),
    "include": (["--include", "*.jpg", "--include", "*.png"], 'include = ["*.jpg", "*.png"]'),
    "exclude": (["--exclude", "a*"], 'exclude = "a*"'),
    "case_sensitive_globs": (
        ["--exclude", "a*", "--case-sensitive-globs"],
        'exclude = "a*"\ncase-sensitive-globs = true',
    ),
    "follow_symlinks": (["--follow-symlinks"], "follow-symlinks = true"),
    "max_file_size": (["--max-file-size", "10MB"], "max-file-size = 10000000"),
    "size": (["--size", "256", "--size", "64x48"], 'size = ["256", "64x48"]'),
    "mode": (["--mode", "fill"], 'mode = "fill"'),
    "pad_color": (
        ["--mode", "pad", "--pad-color", "#102030"],
        'mode = "pad"\npad-color = [16, 32, 48]',
    ),
    "upscale": (["--upscale"], "upscale = true"),
    "format": (["--format", "webp"], 'format = "webp"'),
    "quality": (["--quality", "70"], "quality = 70"),
    "allow_truncated": (["--allow-truncated"], "allow_truncated = true"),  # _ spelling too
    "max_pixels": (["--max-pixels", "1000"], "max-pixels = 1000"),
    "max_output_pixels": (["--max-output-pixels", "1000"], "max-output-pixels = 1000"),
    "workers": (["--workers", "3", "--workers", "read=4"], "workers = {resize = 3, read = 4}"),
    "timeout": (["--timeout", "7.5"], "timeout = 7.5"),
    "retry_failed": (["--retry-failed"], "retry-failed = true"),
    "force": (["--force"], "force = true"),
    "verify_content": (["--verify-content"], "verify-content = true"),
    "quiet": (["-q"], "quiet = true"),
    "urls": (["--urls", "{urls}"], 'urls = "{urls}"'),
    "allow_private_hosts": (
        [*_URLS_FLAGS, "--allow-private-hosts"],
        _URLS_LINE + "allow-private-hosts = true",
    ),
    "connect_timeout": (
        [*_URLS_FLAGS, "--connect-timeout", "2"],
        _URLS_LINE + "connect-timeout = 2",
    ),
    "read_timeout": ([*_URLS_FLAGS, "--read-timeout", "1.5"], _URLS_LINE + "read-timeout = 1.5"),
    "download_timeout": (
        [*_URLS_FLAGS, "--download-timeout", "60"],
        _URLS_LINE + "download-timeout = 60.0",
    ),
    "download_retries": (
        [*_URLS_FLAGS, "--download-retries", "0"],
        _URLS_LINE + "download-retries = 0",
    ),
    "max_download_size": (
        [*_URLS_FLAGS, "--max-download-size", "1MiB"],
        _URLS_LINE + "max-download-size = 1048576",
    ),
    "limit_per_host": ([*_URLS_FLAGS, "--limit-per-host", "2"], _URLS_LINE + "limit-per-host = 2"),
    "user_agent": ([*_URLS_FLAGS, "--user-agent", "me/1"], _URLS_LINE + 'user-agent = "me/1"'),
    "chunk_size": (["--chunk-size", "0"], 'chunk-size = "0"'),
    "columns": (["--columns", "a,b", "--columns", "c"], 'columns = ["a", "b,c"]'),
    "delimiter": (["--delimiter", "tab"], 'delimiter = "\\t"'),
    "bins": (["--bins", "16"], "bins = 16"),
    "backend": (["--backend", "dask"], 'backend = "dask"'),
    "scheduler": (
        ["--backend", "dask", "--scheduler", "tcp://127.0.0.1:1"],
        'backend = "dask"\nscheduler = "tcp://127.0.0.1:1"',
    ),
    "shard_size": (
        ["--backend", "dask", "--shard-size", "8"],
        'backend = "dask"\nshard-size = 8',
    ),
    "url_col": ([*_URLS_FLAGS, "--url-col", "link"], _URLS_LINE + 'url-col = "link"'),
    "caption_col": ([*_URLS_FLAGS, "--caption-col", "text"], _URLS_LINE + 'caption-col = "text"'),
    "keep_columns": (
        [*_URLS_FLAGS, "--keep-columns", "a,b"],
        _URLS_LINE + 'keep-columns = ["a", "b"]',
    ),
    # shards take URL inputs only: this example has no input folder (see the test)
    "output_format": (
        ["--urls", "{urls}", "--output-format", "webdataset"],
        'urls = "{urls}"\noutput-format = "webdataset"',
    ),
    "samples_per_shard": (
        ["--urls", "{urls}", "--output-format", "webdataset", "--samples-per-shard", "100"],
        'urls = "{urls}"\noutput-format = "webdataset"\nsamples-per-shard = 100',
    ),
    "min_image_size": (
        ["--urls", "{urls}", "--output-format", "parquet", "--min-image-size", "64"],
        'urls = "{urls}"\noutput-format = "parquet"\nmin-image-size = 64',
    ),
    "max_aspect_ratio": (
        ["--urls", "{urls}", "--output-format", "parquet", "--max-aspect-ratio", "2.5"],
        'urls = "{urls}"\noutput-format = "parquet"\nmax-aspect-ratio = 2.5',
    ),
    "ignore_noai": ([*_URLS_FLAGS, "--ignore-noai"], _URLS_LINE + "ignore-noai = true"),
}


def _fill(text: str, tmp: Path) -> str:
    names = {"{tmp}": tmp, "{urls}": tmp / "urls.txt", "{images}": IMAGES, "{edge}": EDGE}
    for name, path in names.items():
        text = text.replace(name, str(path))
    return text


def from_flags(*flags: str) -> ProcessConfig:
    return config_from_args(build_parser().parse_args(["process", *flags]))


def from_file(tmp: Path, text: str, *flags: str) -> ProcessConfig:
    path = tmp / "run.toml"
    path.write_text(text)
    return from_flags("--config", str(path), *flags)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    (tmp_path / "urls.txt").write_text("http://127.0.0.1:1/a.jpg\n")
    return tmp_path


def test_every_option_has_an_example() -> None:
    assert set(EXAMPLES) == {d.name for d in declared(ProcessConfig)}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_flag_and_a_file_key_give_the_same_config(
    name: str, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a storage --output is reached when the config is made (tests/test_storage.py does that)
    monkeypatch.setattr("app.config.check_storage_output", lambda *_: None)
    flags = [_fill(f, tmp) for f in EXAMPLES[name][0]]
    lines = _fill(EXAMPLES[name][1], tmp)
    alone = name in (
        "inputs",
        "output_format",
        "samples_per_shard",
        "min_image_size",
        "max_aspect_ratio",
    )
    base_flags = [] if alone else [str(IMAGES)]
    base_lines = "" if alone else f'inputs = ["{IMAGES}"]\n'
    if name not in ("output", "mirror_every"):  # (those give their own)
        base_flags += ["--output", str(tmp / "out")]
        base_lines += f'output = "{tmp / "out"}"\n'
    by_flags = from_flags(*base_flags, *flags)
    by_file = from_file(tmp, base_lines + lines + "\n")
    by_mapping = ProcessConfig.from_mapping(tomllib.loads(base_lines + lines))
    assert by_flags == by_file == by_mapping
    (default,) = [d.default for d in declared(ProcessConfig) if d.name == name]
    assert getattr(by_flags, name) != default


def test_list_options_take_a_list_repeated_flags_or_one_string(tmp: Path) -> None:
    one = from_flags(str(IMAGES), "--size", "512", "--include", "*.jpg")
    assert one.size == ("512",)
    assert one.include == ("*.jpg",)
    text = f'inputs = "{IMAGES}"\nsize = "512"\ninclude = "*.jpg"\n'
    assert from_file(tmp, text) == one  # not iterated character by character
    assert ProcessConfig(inputs=(str(IMAGES),), size=("512",), include=("*.jpg",)) == one
    many = from_file(tmp, f'inputs = ["{IMAGES}"]\nsize = ["512", "128x128"]\n')
    assert many.size == ("512", "128x128")
    assert many.resize.sizes[1].label == "128"


@pytest.mark.parametrize(
    ("line", "counts", "auto"),
    [
        ("workers = 3", {"resize": 3, "crunch": 3}, False),
        ('workers = "3"', {"resize": 3, "crunch": 3}, False),
        ("workers = {resize = 2, read = 4}", {"resize": 2, "read": 4, "crunch": 2}, False),
        ('workers = "resize=2,read=4"', {"resize": 2, "read": 4}, False),
        ('workers = "auto"', {}, True),
        ('workers = ["auto", "write=1"]', {"write": 1}, True),
    ],
)
def test_workers_in_a_file(line: str, counts: dict[str, int], auto: bool, tmp: Path) -> None:
    cfg = from_file(tmp, f'inputs = ["{IMAGES}"]\n{line}\n')
    assert isinstance(cfg.workers, Workers)
    assert set(cfg.workers) == {"download", "read", "resize", "crunch", "write"}
    assert {k: cfg.workers[k] for k in counts} == counts
    assert cfg.auto_workers is auto


def test_flags_win_over_the_file_and_workers_add_up(tmp: Path) -> None:
    text = (
        f'inputs = ["{IMAGES}"]\nquality = 70\nupscale = true\nsize = ["64"]\n'
        "workers = {resize = 2, read = 4}\n"
    )
    cfg = from_file(tmp, text, "--quality", "90", "--no-upscale", "--workers", "read=8")
    assert (cfg.quality, cfg.upscale, cfg.size) == (90, False, ("64",))
    assert (cfg.workers["resize"], cfg.workers["read"]) == (2, 8)
    assert from_file(tmp, text, "--size", "32").size == ("32",)  # a list is replaced, not added


def test_pad_color_reaches_the_resize_options(tmp: Path) -> None:
    def padded(color: str) -> ProcessConfig:
        return from_flags(str(IMAGES), "--mode", "pad", "--pad-color", color)

    assert padded("black").resize.pad_color == (0, 0, 0)
    assert padded("#abc").resize.pad_color == (170, 187, 204)
    assert padded("1, 2,3").resize.pad_color == (1, 2, 3)
    default = ProcessConfig(inputs=(str(IMAGES),), mode="pad")
    assert default.fingerprint() == padded("white").fingerprint()
    assert default.fingerprint() != padded("grey").fingerprint()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("colour = 'blue'", "run.toml: unknown option 'colour'"),
        ("pad_colour = 'blue'", "unknown option 'pad_colour' (did you mean 'pad-color'?)"),
        ("sizes = ['64']", "unknown option 'sizes' (did you mean 'size'?)"),
        ("quality = 'high'", "run.toml:quality: expected an integer from 1 to 100, got 'high'"),
        ("quality = 0", "run.toml:quality: expected an integer from 1 to 100, got 0"),
        (
            "size = 2.5",
            "run.toml:size: expected sizes (512, 640x480, 640x, x480): a list, or one, got 2.5 "
            "(a number)",
        ),
        ("size = ['64', 'big']", "run.toml:size: invalid size 'big'"),
        ("workers = 3.5", "run.toml:workers: expected N, stage=N"),
        ("workers = {bogus = 2}", "run.toml:workers: unknown stage 'bogus'"),
        ("workers = {resize = 0}", "run.toml:workers: workers must be integers >= 1"),
        ("upscale = 'yes'", "run.toml:upscale: expected true or false, got 'yes'"),
        ("max-file-size = 'lots'", "run.toml:max-file-size: invalid size 'lots'"),
        ("pad-color = '#12'", "run.toml:pad-color: expected a colour"),
        ("mode = 'zoom'", "run.toml:mode: expected one of fit, fill, pad, exact, got 'zoom'"),
        ("timeout = -1", "run.toml:timeout: expected seconds, > 0, got -1"),
        ("bins = 0", "run.toml:bins: expected an integer from 1 to 4096"),
        ("delimiter = ';;'", "run.toml:delimiter: expected one character"),
        ("include = [1, 2]", "run.toml:include: expected a list of glob, got an item 1"),
        ("max_pixels = 1\nmax-pixels = 2", "'max_pixels' and 'max-pixels' are the same option"),
    ],
)
def test_a_bad_file_names_the_file_and_the_key(line: str, message: str, tmp: Path) -> None:
    path = tmp / "run.toml"
    path.write_text(f'inputs = ["{IMAGES}"]\n{line}\n')
    with pytest.raises(ConfigError) as info:
        from_flags("--config", str(path))
    assert message.replace("run.toml", str(path)) in str(info.value)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--quality", "abc"], "--quality: expected an integer from 1 to 100, got 'abc'"),
        (["--size", "abc"], "--size: invalid size 'abc'"),
        (["--workers", "bogus=3"], "--workers: unknown stage 'bogus'"),
        (["--workers", "two"], "--workers: expected N, stage=N"),
        (["--workers", "10" * 10], "--workers: resize workers: at most 1024, got 1010101010"),
        (["--workers", "read=2000"], "--workers: read workers: at most 1024, got 2000"),
        (["--pad-color", "nope"], "--pad-color: expected a colour"),
        (["--timeout", "0"], "--timeout: expected seconds, > 0, got '0'"),
        (["--chunk-size", "-1"], "--chunk-size: invalid size '-1'"),
        (["--retry-failed", "--force"], "--retry-failed and --force exclude each other"),
        (["--scheduler", "tcp://x:1"], "--scheduler does nothing without --backend dask"),
    ],
)
def test_a_bad_flag_is_named(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_flags(str(IMAGES), *flags)
    assert message in str(info.value)


def test_python_values_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="quality: expected an integer from 1 to 100"):
        ProcessConfig(inputs=(str(IMAGES),), quality=101)
    with pytest.raises(ConfigError, match="option 'colour'"):
        ProcessConfig.from_mapping({"inputs": [str(IMAGES)], "colour": "blue"})
    cfg = ProcessConfig.from_mapping({"inputs": [IMAGES], "max_file_size": "1MB"})
    assert cfg.inputs == (str(IMAGES),)
    assert cfg.max_file_size == 10**6
    assert dataclasses.replace(cfg, quality=50) == ProcessConfig(
        inputs=(str(IMAGES),), max_file_size=10**6, quality=50
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "process", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_empty_path_is_a_usage_error(tmp: Path) -> None:
    """``-o ""`` (a shell variable left unset) wrote the run into the working folder."""
    for args in (["-o", ""], [str(IMAGES), "-o", "  "], ["", "-o", str(tmp / "o")]):
        done = _cli(*(args if args[0] != "-o" else [str(IMAGES), *args]))
        assert done.returncode == 2, done.stderr
        assert "an empty path" in done.stderr
        assert "Traceback" not in done.stderr
    assert not (ROOT / "512").exists()
    for argv in (["demo", str(IMAGES), "-o", ""], ["failures", ""], ["process", "--config", ""]):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", *argv],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert done.returncode == 2, (argv, done.stderr)
        assert "an empty path" in done.stderr
    assert not (tmp / "manifest.jsonl").exists()  # demo -o "" wrote its run here
    with pytest.raises(ConfigError, match="output: an empty path"):
        from_file(tmp, f'inputs = ["{IMAGES}"]\noutput = ""\n')


def test_a_size_in_a_file_may_be_a_number(tmp: Path) -> None:
    """``size = 512`` in a file said "expected a list of size, got 512": the value the README's
    table shows, unquoted."""
    assert from_file(tmp, f'inputs = ["{IMAGES}"]\nsize = 512\n').size == ("512",)
    both = from_file(tmp, f'inputs = ["{IMAGES}"]\nsize = [512, "64x64"]\n')
    assert both.size == ("512", "64x64")
    with pytest.raises(ConfigError, match="size"):
        from_file(tmp, f'inputs = ["{IMAGES}"]\nsize = true\n')


def test_usage_errors_exit_2_and_name_the_option(tmp: Path) -> None:
    conf = tmp / "bad.toml"
    conf.write_text(f'inputs = ["{IMAGES}"]\nworkers = {{ resize = "many" }}\n')
    done = _cli("--config", str(conf), "--output", str(tmp / "o"))
    assert done.returncode == 2, done.stderr
    assert f"{conf}:workers:" in done.stderr, done.stderr
    conf.write_text(f'inputs = ["{IMAGES}"]\ncolour = "blue"\n')
    done = _cli("--config", str(conf), "--output", str(tmp / "o"))
    assert done.returncode == 2, done.stderr
    assert "unknown option 'colour'" in done.stderr, done.stderr
    done = _cli(str(IMAGES), "--quality", "high", "--output", str(tmp / "o"))
    assert done.returncode == 2, done.stderr
    assert "--quality: expected an integer" in done.stderr, done.stderr
    # a file saved as UTF-16 (Windows' Notepad, PowerShell's Out-File), read before the backend
    # is chosen too: one line, no traceback
    conf.write_bytes("quality = 80\n".encode("utf-16"))
    for extra in ((), ("--backend", "local")):
        done = _cli(str(IMAGES), "--config", str(conf), "--output", str(tmp / "o"), *extra)
        assert done.returncode == 2, done.stderr
        assert f"config {conf} is not valid TOML: not UTF-8" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp / "o").exists()


def test_download_defaults_are_download_configs() -> None:
    from stages.download import DownloadConfig

    ours = {d.name: d.default for d in declared(ProcessConfig)}
    theirs = DownloadConfig()
    assert ours["connect_timeout"] == theirs.connect_timeout
    assert ours["read_timeout"] == theirs.read_timeout
    assert ours["download_timeout"] == theirs.total_timeout
    assert ours["download_retries"] == theirs.retries
    assert ours["max_download_size"] == theirs.max_bytes
    assert ours["limit_per_host"] == theirs.limit_per_host
    assert ours["allow_private_hosts"] == theirs.allow_private_hosts
    assert ours["user_agent"] == theirs.user_agent


def test_the_readme_option_table_is_the_generated_one() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert BEGIN in text
    assert END in text
    assert updated(text) == text, "README.md is out of step: run python -m app.readme"
    for d in declared(ProcessConfig):
        assert f"`{d.key}`" in text


def test_the_example_config_runs(tmp_path: Path) -> None:
    config = ROOT / "examples" / "run.toml"
    said = tomllib.loads(config.read_text())
    out = tmp_path / "out"
    done = _cli("--config", "examples/run.toml", "--output", str(out), "--quiet")
    assert done.returncode == 0, done.stderr
    records = by_key(out)
    assert records
    assert all(r["status"] == "ok" for r in records.values())
    images = [r for r in records.values() if "outputs" in (r["result"] or {})]
    data = [r for r in records.values() if r["result"].get("kind") in ("array", "csv")]
    n_images = sum(1 for p in (ROOT / said["inputs"][0]).rglob("*") if p.is_file())
    assert len(images) == n_images
    assert data
    boxes = {"256": (256, 256), "128": (128, 128)}  # pad: every output fills its box
    for rec in images:
        outputs = {o["size"]: o for o in rec["result"]["outputs"]}
        assert set(outputs) == set(boxes)
        for label, o in outputs.items():
            assert (o["width"], o["height"]) == boxes[label]
            assert o["format"] == said["format"]
    wide = records["images/640x480_rgb.jpg"]["result"]["outputs"][0]
    with Image.open(out / wide["path"]) as im:  # 4:3 in a square box: padded above and below
        corner = im.convert("RGB").getpixel((0, 0))
    assert all(abs(c - 0x20) <= 8 for c in corner), corner  # pad-color = "#202020"
    grid = records["data/temperature_grid.npy"]["result"]
    assert grid["chunks"] > 1
    assert grid["stats"]["histogram"]["max_bins"] == said["bins"]
    summary = json.loads((out / "summary.json").read_text())
    workers = {s["name"]: s["workers"] for s in summary["stages"]}
    assert workers["read"] == said["workers"]["read"]
    assert workers["resize"] == said["workers"]["resize"]


# --------------------------------------------------------------------------- where options apply


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--shard-size", "8"], "--shard-size does nothing without --backend dask"),
        (["--scheduler", "tcp://x:1"], "--scheduler does nothing without --backend dask"),
        (["--pad-color", "black"], "--pad-color does nothing without --mode pad"),
        (["--mode", "fill", "--pad-color", "black"], "--pad-color does nothing without --mode"),
        (["--connect-timeout", "2"], "--connect-timeout does nothing without --urls"),
        (["--allow-private-hosts"], "--allow-private-hosts does nothing without --urls"),
        (["--no-allow-private-hosts"], "--allow-private-hosts does nothing without --urls"),
        (["--user-agent", "me/1"], "--user-agent does nothing without --urls"),
        (["--case-sensitive-globs"], "does nothing without --include or --exclude"),
        (["--url-col", "link"], "--url-col does nothing without --urls"),
        (["--ignore-noai"], "--ignore-noai does nothing without --urls"),
        (
            ["--samples-per-shard", "9"],
            "does nothing without --output-format webdataset or parquet",
        ),
        (["--min-image-size", "64"], "does nothing without --output-format webdataset or parquet"),
        (["--max-aspect-ratio", "2"], "does nothing without --output-format webdataset or parquet"),
        (["--mirror-every", "5"], "--mirror-every does nothing without a storage --output (s3:"),
    ],
)
def test_a_flag_that_does_nothing_here_is_a_usage_error(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_flags(str(IMAGES), *flags)
    assert message in str(info.value)
    assert "leave" in str(info.value)


def test_a_flag_whose_need_the_file_meets_is_fine(tmp: Path) -> None:
    cfg = from_file(tmp, f'inputs = ["{IMAGES}"]\nbackend = "dask"\n', "--shard-size", "8")
    assert cfg.shard_size == 8
    cfg = from_file(tmp, f'inputs = ["{IMAGES}"]\nmode = "pad"\n', "--pad-color", "black")
    assert cfg.pad_color == (0, 0, 0)
    cfg = from_file(
        tmp, f'inputs = ["{IMAGES}"]\nurls = "{tmp / "urls.txt"}"\n', "--read-timeout", "3"
    )
    assert cfg.download is not None
    assert cfg.download.read_timeout == 3


def test_where_an_option_applies_is_in_its_help_and_the_readme() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    helps = _cli("--help")
    assert helps.returncode == 0, helps.stderr
    shown = " ".join(helps.stdout.split())
    needing = [d for d in declared(ProcessConfig) if d.option.needs is not None]
    assert {d.name for d in needing} >= {"shard_size", "scheduler", "pad_color", "user_agent"}
    for d in needing:
        assert f"{d.option.help} (only with {d.option.needs})" in text
        assert f"only with {d.option.needs}" in shown


def test_inert_options_on_the_command_line_and_in_a_file(tmp: Path) -> None:
    out = tmp / "out"
    done = _cli(str(IMAGES), "-o", str(out), "--shard-size", "8", "--quiet")
    assert done.returncode == 2, done.stderr
    assert "--shard-size does nothing without --backend dask" in done.stderr
    assert not out.exists()
    # a config file may hold settings shared by runs of several kinds: a warning, and the run
    conf = tmp / "shared.toml"
    conf.write_text('shard-size = 8\npad-color = "black"\nconnect-timeout = 5\n')
    done = _cli(str(IMAGES), "-o", str(out), "--config", str(conf), "--quiet")
    assert done.returncode == 0, done.stderr
    for key, need in [
        ("shard-size", "--backend dask"),
        ("pad-color", "--mode pad"),
        ("connect-timeout", "--urls"),
    ]:
        assert f"{conf}:{key} does nothing without {need} (ignored)" in done.stderr
    assert all(r["status"] == "ok" for r in by_key(out).values())


def test_a_need_is_one_option_with_a_value_or_options_to_be_given() -> None:
    assert str(Needs("backend", value="dask")) == "--backend dask"
    assert str(Needs("include", "exclude")) == "--include or --exclude"
    with pytest.raises(ValueError, match="one option with a value"):
        Needs("include", "exclude", value="x")
    with pytest.raises(ValueError, match="one option with a value"):
        Needs()


def test_profile_takes_a_sample_of_one_input_or_more(tmp: Path) -> None:
    """``--sample -1`` was an islice ValueError traceback (exit 1); 0 ran nothing (exit 0)."""
    for bad in ("-1", "0", "many"):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "profile", str(IMAGES), "--sample", bad],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert f"--sample: expected an integer >= 1, got '{bad}'" in done.stderr
        assert "Traceback" not in done.stderr
