"""stages.stats and stages.neardups: image statistics against hand-computed numpy, hashes,
grouping, chunk merges."""

from __future__ import annotations

import io
import json
import pathlib
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageFilter

from stages.hashgroups import few_members
from stages.neardups import hamming, near_duplicate_groups, near_duplicate_members
from stages.stats import dhash, image_stats
from tests.images import IMAGES, decode, encode, photo_like

# --------------------------------------------------------------------------- image_stats


def _laplacian_var(lum: npt.NDArray[np.float64]) -> float:
    c = lum[1:-1, 1:-1]
    lap = lum[:-2, 1:-1] + lum[2:, 1:-1] + lum[1:-1, :-2] + lum[1:-1, 2:] - 4 * c
    return float(np.var(lap))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_image_stats_matches_numpy(mode: str) -> None:
    im = photo_like(97, 61, seed=1, grain=8).convert(mode)
    s: dict[str, Any] = image_stats(im)
    px = np.asarray(im, dtype=np.float64).reshape(61 * 97, -1)
    assert (s["width"], s["height"], s["mode"]) == (97, 61, mode)
    np.testing.assert_allclose(s["mean"], px.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s["std"], px.std(axis=0), rtol=1e-12)
    lum = np.asarray(im.convert("L"), dtype=np.float64)
    hist, _ = np.histogram(lum, bins=32, range=(0, 256))
    assert s["histogram"] == hist.tolist()
    assert sum(s["histogram"]) == 97 * 61
    assert s["sharpness"] == pytest.approx(_laplacian_var(lum), rel=1e-12)
    json.dumps(s)


def test_image_stats_excludes_alpha() -> None:
    rgb = photo_like(50, 40, seed=2)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50), np.uint8)))
    s_rgba, s_rgb = image_stats(rgba), image_stats(rgb)
    assert s_rgba["mean"] == s_rgb["mean"]
    assert len(s_rgb["mean"]) == 3  # type: ignore[arg-type]
    for key in ("mean", "std", "histogram", "sharpness", "dhash"):
        assert s_rgba[key] == s_rgb[key], key
    assert s_rgba["mode"] == "RGBA"


@pytest.mark.parametrize(
    ("mode", "colours"), [("LA", "L"), ("La", "L"), ("RGBA", "RGB"), ("RGBa", "RGB")]
)
def test_image_stats_of_every_mode_with_alpha_are_those_of_its_colours(
    mode: str, colours: str
) -> None:
    # the premultiplied modes (La, RGBa) through their straight alpha form, as Pillow converts
    # them: the statistics of the colours the image shows, whatever the alpha
    rgba = photo_like(50, 40, seed=3)
    rgba.putalpha(Image.fromarray(np.random.default_rng(1).integers(1, 256, (40, 50), np.uint8)))
    im = rgba.convert("LA" if colours == "L" else "RGBA").convert(mode)
    straight = im.convert("LA" if colours == "L" else "RGBA")  # La, RGBa: unpremultiplied
    s, expected = image_stats(im), image_stats(straight.convert(colours))
    assert s["mode"] == mode
    for key in ("mean", "std", "histogram", "sharpness", "dhash"):
        assert s[key] == expected[key], key


def test_sharpness_is_exact_over_the_whole_range_of_the_laplacian() -> None:
    """A 0/255 checkerboard with a flat patch: Laplacian values from -1020 to 1020 (every
    256-level window of its histogram) and 0; the variance equals the integer computation's."""
    rng = np.random.default_rng(3)
    px = ((np.indices((40, 53)).sum(axis=0) % 2) * 255).astype(np.uint8)
    px[5:15, 5:20] = 128
    px[20:30, 30:50] = rng.integers(0, 256, (10, 20))
    lap = (px[:-2, 1:-1].astype(np.int64) + px[2:, 1:-1] + px[1:-1, :-2] + px[1:-1, 2:]) - 4 * (
        px[1:-1, 1:-1].astype(np.int64)
    )
    assert (lap.min(), lap.max()) == (-1020, 1020)
    n, s1, s2 = lap.size, int(lap.sum()), int((lap * lap).sum())
    assert image_stats(Image.fromarray(px))["sharpness"] == (n * s2 - s1 * s1) / (n * n)


def test_sharpness_orders_blur() -> None:
    sharp = photo_like(200, 150, seed=3, grain=10)
    blurred = sharp.filter(ImageFilter.GaussianBlur(2))
    flat = Image.new("RGB", (20, 20), (9, 9, 9))
    sharpness: dict[str, Any] = {"sharp": 0.0, "blurred": 0.0}
    sharpness["sharp"] = image_stats(sharp)["sharpness"]
    sharpness["blurred"] = image_stats(blurred)["sharpness"]
    assert sharpness["sharp"] > 5 * sharpness["blurred"]
    assert image_stats(flat)["sharpness"] == 0.0
    assert image_stats(Image.new("L", (2, 2)))["sharpness"] == 0.0


# --------------------------------------------------------------------------- dhash


def _dhash_reference(im: Image.Image) -> str:
    px = np.asarray(im.convert("L").resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int32)
    bits = "".join("1" if b else "0" for b in (px[:, 1:] > px[:, :-1]).ravel())
    return f"{int(bits, 2):016x}"


def test_dhash_construction() -> None:
    im = photo_like(300, 200, seed=4)
    h = dhash(im)
    assert h == _dhash_reference(im)
    assert len(h) == 16
    assert int(h, 16) >= 0


def test_dhash_stable_under_reencoding_and_distinct_between_images() -> None:
    original = decode((IMAGES / "640x480_rgb.jpg").read_bytes())
    reencoded = decode(encode(original, "JPEG", quality=80))
    assert dhash(reencoded) == dhash(original)
    resized = original.resize((320, 240), Image.Resampling.BILINEAR)
    assert hamming(dhash(resized), dhash(original)) <= 2
    other = decode((IMAGES / "1200x800_landscape.jpg").read_bytes())
    assert hamming(dhash(other), dhash(original)) > 12


def test_hamming() -> None:
    assert hamming("0000000000000000", "0000000000000000") == 0
    assert hamming("ffffffffffffffff", "0000000000000000") == 64
    assert hamming("00000000000000f1", "0000000000000000") == 5
    with pytest.raises(ValueError, match="not a hexadecimal hash: 'xyz'"):
        hamming("xyz", "00")


# --------------------------------------------------------------------------- grouping


def _brute_groups(items: list[tuple[str, str]], d: int) -> list[list[str]]:
    """The documented rule, straight from its words, comparing every pair (O(n²))."""
    count: dict[int, int] = {}
    for _, h in items:
        count[int(h, 16)] = count.get(int(h, 16), 0) + 1
    hashes = sorted(count)

    def near(a: int, b: int) -> bool:
        return (a ^ b).bit_count() <= d

    nbrs = {h: [o for o in hashes if o != h and near(h, o)] for h in hashes}
    weight = {h: count[h] + sum(count[o] for o in nbrs[h]) for h in hashes}
    label = {h: h for h in hashes}
    free = set(hashes)
    for seed in sorted((h for h in hashes if nbrs[h]), key=lambda h: (-weight[h], h)):
        if seed not in free:
            continue
        free.discard(seed)
        members = [seed]
        for o in sorted(nbrs[seed], key=lambda o: ((o ^ seed).bit_count(), o)):
            if o in free and all(near(o, m) for m in members):
                members.append(o)
                free.discard(o)
                label[o] = seed
    groups: dict[int, list[str]] = {}
    for key, h in items:
        groups.setdefault(label[int(h, 16)], []).append(key)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def test_near_duplicate_groups_small() -> None:
    items = [
        ("a", "0000000000000000"),
        ("b", "ffffffffffffffff"),
        ("c", "0000000000000003"),  # 2 bits from a
        ("d", "000000000000003f"),  # 6 bits from a, 4 from c
        ("e", "fffffffffffffffe"),  # 1 bit from b
        ("f", "0f0f0f0f0f0f0f0f"),  # alone
        ("g", "0000000000000000"),  # exact duplicate of a
    ]
    assert near_duplicate_groups(items, max_distance=2) == [["a", "c", "g"], ["b", "e"]]
    # d is within 4 bits of c but 6 from a: it does not join a's group through c
    assert near_duplicate_groups(items, max_distance=4) == [["a", "c", "g"], ["b", "e"]]
    assert near_duplicate_groups(items, max_distance=6) == [["a", "c", "d", "g"], ["b", "e"]]
    assert near_duplicate_groups(items, max_distance=0) == [["a", "g"]]
    assert near_duplicate_groups(items, max_distance=64) == [["a", "b", "c", "d", "e", "f", "g"]]
    assert near_duplicate_groups([], 6) == []
    assert near_duplicate_groups(items[:1], 6) == []
    with pytest.raises(ValueError, match="hash of 'x' has more than 64 bits"):
        near_duplicate_groups([("x", "1" * 17)])
    with pytest.raises(ValueError, match="max_distance must be >= 0"):
        near_duplicate_groups(items, max_distance=-1)


def test_a_chain_does_not_make_one_group() -> None:
    """A~B (5 bits) and B~C (5 bits), A and C 10 bits apart: never one group. B is the seed
    (two neighbours); A and C are equally near it, A's smaller hash goes first, and C, too far
    from A, stays out; alone, it is no group."""
    chain = [("A", "0000000000000000"), ("B", "000000000000001f"), ("C", "00000000000003ff")]
    assert near_duplicate_groups(chain, max_distance=5) == [["A", "B"]]
    assert near_duplicate_groups(chain[::-1], max_distance=5) == [["A", "B"]]
    # a longer chain, each link 3 bits: groups of near images, never the whole chain
    links = [(f"x{i}", f"{(1 << (3 * i)) - 1:016x}") for i in range(8)]
    groups = near_duplicate_groups(links, max_distance=3)
    assert groups
    assert all(len(g) <= 2 for g in groups)


def _clustered(n_clusters: int, per: int, flips: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    items: list[tuple[str, str]] = []
    for c in range(n_clusters):
        base = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        for k in range(per):
            value = base
            for bit in rng.choice(64, size=int(rng.integers(0, flips + 1)), replace=False):
                value ^= 1 << int(bit)
            items.append((f"c{c}-{k}", f"{value:016x}"))
    order = rng.permutation(len(items))
    return [items[i] for i in order]


@pytest.mark.parametrize("d", [0, 1, 3, 6, 9])
def test_near_duplicate_groups_follow_the_documented_rule(d: int) -> None:
    items = _clustered(n_clusters=60, per=5, flips=5, seed=d)
    assert near_duplicate_groups(items, max_distance=d) == _brute_groups(items, d)


def _partition(members: Any, labels: Any) -> list[list[int]]:
    """The groups (positions) of a (members, labels) pair, in one canonical order."""
    groups: dict[int, list[int]] = {}
    for i, g in zip(list(members), list(labels), strict=True):
        groups.setdefault(int(g), []).append(int(i))
    return sorted(sorted(g) for g in groups.values())


@pytest.mark.parametrize("d", [0, 1, 3, 6, 9, 64])
def test_the_pure_python_path_makes_numpys_groups(d: int) -> None:
    """few_members (the end of a small run, no numpy) and near_duplicate_members (numpy) agree:
    clustered hashes, equal ones among them, in any order."""
    items = _clustered(n_clusters=60, per=5, flips=5, seed=d)
    values = [int(h, 16) for _, h in items] + [int(items[0][1], 16)] * 2
    few = few_members(values, d)
    members, labels = near_duplicate_members(np.array(values, dtype=np.uint64), d)
    assert _partition(*few) == _partition(members, labels)
    assert few_members([], d) == ([], [])
    assert few_members(values[:1], d) == ([], [])
    with pytest.raises(ValueError, match="max_distance"):
        few_members(values, -1)


def test_a_grouping_child_makes_the_same_groups_both_ways(tmp_path: pathlib.Path) -> None:
    """``python -m stages.groupfile`` (app.grouping's child) over a hash file: pure Python up
    to FEW hashes, numpy above; the groups are few_members' either way."""
    from array import array

    from app.grouping import GroupingChild
    from stages.hashgroups import FEW

    items = _clustered(n_clusters=(FEW + 200) // 5, per=5, flips=5, seed=7)
    values = array("Q", [int(h, 16) for _, h in items])
    expected = _partition(*few_members(values, 6))
    assert len(expected) > 100
    for n, name in ((len(values) // 10, "pure"), (len(values), "numpy")):
        path = tmp_path / name
        path.write_bytes(values[:n].tobytes())
        got = GroupingChild(path, 6).result()
        assert _partition(*got) == _partition(*few_members(values[:n], 6)), name
    assert len(values) > FEW  # the second went the numpy way


_HASHES = st.lists(
    st.sampled_from([0, 1, 3, 7, 0x1F, 0x3FF, 0xFF00, 0xF0F0, 2**64 - 1, 2**63, 0x8000000F])
    | st.integers(0, 2**64 - 1),
    min_size=0,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(values=_HASHES, d=st.integers(0, 12), seed=st.integers(0, 2**32 - 1))
def test_groups_are_complete_and_do_not_depend_on_the_order(
    values: list[int], d: int, seed: int
) -> None:
    items = [(f"k{i}", f"{v:016x}") for i, v in enumerate(values)]
    groups = near_duplicate_groups(items, max_distance=d)
    of = dict(items)
    for g in groups:
        assert len(g) >= 2
        assert all(hamming(of[a], of[b]) <= d for a in g for b in g), g
    keys = [k for g in groups for k in g]
    assert len(keys) == len(set(keys))  # a key in one group at most
    by_hash: dict[str, set[str]] = {}
    for k, h in items:
        by_hash.setdefault(h, set()).add(k)
    for same in (s for s in by_hash.values() if len(s) > 1):  # equal hashes: one group
        assert any(same <= set(g) for g in groups)
    few = few_members(values, d)
    assert sorted(sorted(f"k{i}" for i in g) for g in _partition(*few)) == groups
    shuffled = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    again = near_duplicate_groups(shuffled, max_distance=d)
    assert again == groups  # the same groups, in the same order
    assert groups == _brute_groups(items, d)


@pytest.mark.parametrize("small", [1, 64])
@pytest.mark.parametrize("agree", [1, 2])
@pytest.mark.parametrize("d", [1, 3, 6, 10])
def test_both_bucketings_find_every_close_pair(
    d: int, agree: int, small: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bucketing by one chunk of d + 1 or by every two of d + 2 (the latter chosen for large
    sets), buckets compared one by one or the small ones all at once: the same pairs as
    comparing every two hashes, on clustered hashes."""
    import stages.hashgroups
    import stages.neardups

    monkeypatch.setattr(stages.neardups, "_SMALL_BUCKET", small)
    rng = np.random.default_rng(d * 10 + agree)
    seeds = rng.integers(0, 2**63, 12, dtype=np.int64).astype(np.uint64) * np.uint64(2)
    items = []
    for _ in range(300):  # a seed with up to d + 1 of its bits flipped
        bits = rng.integers(0, 64, rng.integers(0, d + 2)).astype(np.uint64)
        items.append(seeds[rng.integers(12)] ^ np.bitwise_or.reduce(np.uint64(1) << bits))
    hashes = np.unique(np.array(items, dtype=np.uint64))
    monkeypatch.setattr(
        stages.neardups, "_chunking", lambda n, dist: stages.hashgroups.bucketings(dist, agree)
    )
    got = stages.neardups._close_pairs(hashes, d)
    n = len(hashes)
    close = np.bitwise_count(hashes[:, None] ^ hashes[None, :]) <= d
    i, j = np.nonzero(np.triu(close, 1))
    assert got.tolist() == sorted((i * n + j).tolist())
    assert len(got) > 0


def test_near_duplicate_groups_scales() -> None:
    rng = np.random.default_rng(7)
    n = 50_000
    values = rng.integers(0, 2**64, n, dtype=np.uint64)
    items = [(f"k{i}", f"{int(v):016x}") for i, v in enumerate(values)]
    planted = [
        (f"dup{i}", f"{int(values[i]) ^ (1 << (i % 64)) ^ (1 << 7):016x}") for i in range(50)
    ]
    groups = near_duplicate_groups(items + planted, max_distance=6)
    as_sets = {frozenset(g) for g in groups}
    for i in range(50):
        assert any({f"k{i}", f"dup{i}"} <= g for g in as_sets)


# --------------------------------------------------------------------------- shared moments


@settings(max_examples=100, deadline=None)
@given(px=hnp.arrays(np.uint8, st.integers(1, 500)))
def test_band_moments_are_the_numeric_crunch_of_the_pixels(px: npt.NDArray[np.uint8]) -> None:
    from stages.arraystats import array_stats, level_stats

    counts = np.bincount(px, minlength=256).tolist()
    by_levels, by_pixels = level_stats(counts), array_stats(px)
    assert by_levels.histogram == by_pixels.histogram  # the same bins, exactly
    assert (by_levels.count, by_levels.min, by_levels.max) == (px.size, px.min(), px.max())
    assert by_levels.mean == pytest.approx(float(px.mean()), rel=1e-12)
    assert by_levels.std == pytest.approx(float(px.std()), rel=1e-9, abs=1e-9)
    assert by_pixels.mean == pytest.approx(by_levels.mean, rel=1e-12)


def test_stats_roundtrip_through_json() -> None:
    s = image_stats(photo_like(40, 30))
    assert json.loads(json.dumps(s)) == s
    buf = io.BytesIO()
    photo_like(40, 30).save(buf, "PNG")
    assert image_stats(decode(buf.getvalue())) == s


def test_the_statistics_type_names_every_key_they_have() -> None:
    """``ImageStats`` types ``stats["sharpness"]`` as a float for a user's type checker (a
    ``dict[str, object]`` failed ``round(stats["sharpness"], 1)`` under mypy --strict)."""
    import typing

    import stages
    from stages.stats import ImageStats

    hints = typing.get_type_hints(ImageStats)
    stats = stages.image_stats(Image.new("RGB", (16, 16), (200, 10, 10)))
    assert set(stats) == set(hints)
    assert hints["sharpness"] is float
    assert hints["dhash"] is str
    for key, value in stats.items():
        assert isinstance(value, typing.get_origin(hints[key]) or hints[key]), key
