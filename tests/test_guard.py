"""spnrefine.guard: a sure coarse map comes out as it is, a narrow band of doubt is kept, a
wide one (a ×4 or ×8 mask's ramp included) is refined, and islands and holes with no trace
in a binary coarse map go."""

from __future__ import annotations

import numpy as np
import pytest

from spnrefine.guard import guard, trust, untraced_parts


def binary(fg: np.ndarray) -> np.ndarray:
    fg = fg.astype(np.float32)
    return np.stack([1 - fg, fg])


def ramp_map(width: float, shape=(40, 80)) -> np.ndarray:
    """A vertical boundary at x = 40 whose foreground probability ramps over `width` px."""
    x = np.arange(shape[1], dtype=np.float32)
    fg = np.clip((x - 40) / width + 0.5, 0, 1)
    return binary(np.broadcast_to(fg, shape))


def test_a_sure_coarse_map_comes_out_unchanged_whatever_the_refiner_says():
    coarse = binary(np.arange(80)[None, :].repeat(40, 0) >= 37)
    refined = binary(np.random.default_rng(0).random((40, 80)) > 0.5)
    assert np.array_equal(guard(coarse, refined), coarse)


def test_trust_ramps_from_sure_to_twice_sure():
    coarse = binary(np.full((5, 5), 0.5))
    for fg, expected in [
        (1.0, 0.0),
        (0.99, 0.0),
        (0.98, 0.0),
        (0.97, 0.5),
        (0.96, 1.0),
        (0.6, 1.0),
    ]:
        coarse = binary(np.full((5, 5), fg))
        assert trust(coarse, sure=0.02, narrow=0) == pytest.approx(expected, abs=1e-5)


def test_a_narrow_band_of_doubt_is_kept_and_a_wide_one_refined():
    refined = binary(np.arange(80)[None, :].repeat(40, 0) >= 42)  # the refiner moves 2 px right
    narrow = ramp_map(2)  # doubt over ~2 px, as a ×2 map has
    assert np.array_equal(guard(narrow, refined), narrow)
    wide = ramp_map(16)  # doubt over ~16 px, as a soft ×8 map has
    out = guard(wide, refined)
    assert (out.argmax(0) == refined.argmax(0)).all()
    # Where the coarse map is sure, outside the band, it stays the coarse map's.
    assert np.allclose(out[:, :, :30], wide[:, :, :30])


def test_many_narrow_bands_side_by_side_are_kept_as_narrow_ones():
    """Strokes 2 px wide, 2 px apart (a page's text), as a ×2 map has them: the doubt covers
    the whole striped area, wider than `narrow`, but it is made of narrow bands, each kept
    (the refined map thickening every stroke is not taken)."""
    import cv2

    x = np.arange(160)
    strokes = ((x >= 40) & (x < 120) & (x % 4 < 2)).astype(np.float32)[None].repeat(80, 0)
    small = cv2.resize(strokes, (80, 40), interpolation=cv2.INTER_AREA)
    coarse = binary(cv2.resize(small, (160, 80), interpolation=cv2.INTER_LINEAR))
    thick = (x >= 40) & (x < 120) & (x % 4 < 3)
    refined = binary(thick[None].repeat(80, 0))
    doubt = trust(coarse, narrow=0) > 0
    assert doubt[:, 44:116].all()  # unsure from the first stroke to the last
    assert np.array_equal(guard(coarse, refined, factor=2.0), coarse)
    # One wide band, as gentle as the strokes are steep, is refined.
    ramp = ramp_map(16, (80, 160))
    moved = binary(np.arange(160)[None, :].repeat(80, 0) >= 42)
    assert (guard(ramp, moved, factor=2.0).argmax(0) == moved.argmax(0)).all()


@pytest.mark.parametrize("factor", [4, 8])
def test_a_hard_masks_upsampling_ramp_is_refined_across_its_width(factor: int):
    """A 0/1 mask at 1/factor upsampled bilinearly (as `refine` does) leaves doubt over about
    `factor` px; the refiner may put the edge anywhere in it."""
    import cv2

    fg = np.zeros((8, 16), np.float32)
    fg[:, 8:] = 1.0
    up = cv2.resize(fg, (16 * factor, 8 * factor), interpolation=cv2.INTER_LINEAR)
    coarse = binary(up)
    edge = 8 * factor
    for shift in (-(factor // 2) + 1, factor // 2 - 1):
        refined = binary(np.arange(16 * factor)[None, :].repeat(8 * factor, 0) >= edge + shift)
        out = guard(coarse, refined, factor=factor)
        assert (out.argmax(0) == refined.argmax(0)).all(), shift
    # Told nothing of the factor, the guard takes the map as sharp and keeps the ramp.
    assert np.array_equal(guard(coarse, refined).argmax(0), coarse.argmax(0))


def test_a_hole_with_no_trace_in_the_coarse_map_is_filled_and_a_traced_one_kept():
    fg = np.full((60, 60), 0.8, np.float32)  # unsure foreground, as a soft segmenter map
    fg[:, :10] = 0.0
    fg[40:50, 40:50] = 0.6  # here the coarse map has some background: a trace
    coarse = binary(fg)
    cut = fg > 0.5
    cut[15:25, 15:25] = False  # a hole where the coarse map saw no background
    cut[42:48, 42:48] = False  # a hole where it gave background 0.4
    cut[5:8, 2:5] = True  # an island in the background
    out = guard(coarse, binary(cut), narrow=0)
    labels = out.argmax(0)
    assert labels[15:25, 15:25].all()
    assert not labels[42:48, 42:48].any()
    assert not labels[5:8, 2:5].any()
    assert np.allclose(out[:, 15:25, 15:25], coarse[:, 15:25, 15:25])


def test_a_speck_only_half_traced_goes_where_a_coarse_pixel_is_large_and_stays_where_small():
    fg = np.full((80, 80), 0.8, np.float32)
    fg[:, :40] = 0.4  # a faint trace of foreground, never the coarse arg-max
    coarse = binary(fg)
    cut = fg > 0.5
    cut[10:12, 10:13] = True  # a 6 px island on the faint trace
    cut[30:38, 10:18] = True  # a 64 px one
    at_8 = guard(coarse, binary(cut), narrow=0, factor=8.0).argmax(0)
    assert not at_8[10:12, 10:13].any()  # under a quarter of a ×8 coarse pixel (16 px)
    assert at_8[30:38, 10:18].all()
    at_2 = guard(coarse, binary(cut), narrow=0, factor=2.0).argmax(0)
    assert at_2[10:12, 10:13].all()  # a ×2 coarse pixel is 4 px: 6 px is no speck


def test_a_background_pocket_cut_off_but_for_a_diagonal_step_counts_as_a_hole():
    fg = np.full((40, 40), 0.8, np.float32)  # unsure foreground, no trace of background
    fg[:, :8] = 0.0
    coarse = binary(fg)
    cut = fg > 0.5
    cut[10:20, 10:20] = False  # a pocket of background...
    cut[9, 9] = cut[8, 8] = False  # ...joined to the outside by diagonal steps alone
    labels = guard(coarse, binary(cut), narrow=0).argmax(0)
    assert labels[10:20, 10:20].all() and labels[9, 9]  # 4-connected: holes, filled
    assert not labels[8, 8]  # 4-connected to the background outside


def test_crumbs_broken_off_a_part_go_to_the_class_around_them():
    fg = np.full((80, 80), 0.0, np.float32)
    fg[20:60, 20:60] = 0.7  # a soft square the coarse map takes for foreground
    coarse = binary(fg)
    cut = np.zeros((80, 80), bool)
    cut[20:60, 20:50] = True  # the refined square is narrower...
    cut[30:32, 55:57] = True  # ...and left a 4 px crumb of it behind
    at_8 = guard(coarse, binary(cut.astype(np.float32)), narrow=0, factor=8.0).argmax(0)
    assert not at_8[30:32, 55:57].any()  # under a quarter of a ×8 coarse pixel: gone
    assert at_8[20:60, 20:50].all()
    at_1 = guard(coarse, binary(cut.astype(np.float32)), narrow=0, factor=1.0).argmax(0)
    assert at_1[30:32, 55:57].all()  # at the map's own resolution nothing is a crumb


def test_a_crumb_inside_a_dropped_island_does_not_become_an_island_of_its_own():
    fg = np.full((80, 80), 0.1, np.float32)  # no trace of foreground anywhere
    fg[60:, 60:] = 0.9  # but a part the coarse map does take, elsewhere
    coarse = binary(fg)
    refined = np.full((80, 80), 0.1, np.float32)
    refined[60:, 60:] = 0.95
    refined[10:30, 10:30] = 0.9  # an island with no trace in the coarse map: dropped...
    refined[19:21, 19:21] = 0.2  # ...around a 4 px crumb of background
    labels = guard(coarse, binary(refined), narrow=0, factor=8.0).argmax(0)
    assert not labels[:40, :40].any()  # the crumb stays background with the island gone
    assert labels[60:, 60:].all()
    # A crumb whose surroundings stay is still given to them.
    refined[10:30, 10:30] = 0.9
    refined[19:21, 19:21] = 0.2
    fg[10:30, 10:30] = 0.7  # now the coarse map takes the island too
    kept = guard(binary(fg), binary(refined), narrow=0, factor=8.0).argmax(0)
    assert kept[10:30, 10:30].all()


def test_a_crumb_inside_a_fragment_that_flips_does_not_become_an_island():
    fg = np.full((100, 100), 0.1, np.float32)
    fg[50:90, 50:90] = 0.9  # the object
    fg[10:20, 10:20] = 0.55  # a small part the coarse map takes, unsure...
    fg[14:16, 14:16] = 0.3  # ...with a speck of background in it
    refined = fg.copy()
    refined[50:90, 50:90] = 0.95
    # The model is unsure of the fragment (under FRAGMENT_SURE): it goes to the background
    # around it, and the speck inside it, a crumb of background, stays background.
    labels = guard(binary(fg), binary(refined), narrow=0, factor=8.0).argmax(0)
    assert not labels[:40, :40].any()
    assert labels[50:90, 50:90].all()
    # The speck alone, in a part that stays, is still given to the class around it.
    refined[10:20, 10:20] = 0.9
    refined[14:16, 14:16] = 0.3
    labels = guard(binary(fg), binary(refined), narrow=0, factor=8.0).argmax(0)
    assert labels[10:20, 10:20].all()
    # A speck of background the coarse map has no trace of goes back to the coarse map's
    # foreground, and then with the fragment around it to the background.
    fg[14:16, 14:16] = 0.55
    refined[10:20, 10:20] = 0.55
    refined[14:16, 14:16] = 0.2
    labels = guard(binary(fg), binary(refined), narrow=0, factor=8.0).argmax(0)
    assert not labels[:40, :40].any()


def test_a_part_neither_the_coarse_map_nor_the_model_is_sure_of_goes_back():
    fg = np.zeros((60, 60), np.float32)
    fg[:, 30:] = 0.4  # a faint trace of foreground on the right, never the coarse arg-max
    coarse = binary(fg)
    refined = np.zeros((60, 60), np.float32)
    refined[10:20, 35:45] = 0.6  # an island the model is unsure of
    refined[40:50, 35:45] = 0.9  # one it is sure of
    labels = guard(coarse, binary(refined), narrow=0, factor=8.0).argmax(0)
    assert not labels[10:20, 35:45].any()
    assert labels[40:50, 35:45].all()
    kept = guard(coarse, binary(refined), narrow=0, factor=8.0, part_sure=0.0).argmax(0)
    assert kept[10:20, 35:45].all()


def test_label_maps_keep_a_class_the_coarse_map_lost():
    coarse = np.zeros((3, 30, 30), np.float32)
    coarse[0] = 0.75
    coarse[1] = 0.2
    coarse[2] = 0.05
    refined = np.zeros_like(coarse)
    refined[0] = 1.0
    refined[:, 10:20, 14:16] = [[[0.0]], [[0.0]], [[1.0]]]  # a thin pole of class 2
    out = guard(coarse, refined, narrow=0)
    assert (out.argmax(0)[10:20, 14:16] == 2).all()


def test_untraced_parts_looks_at_each_class_of_the_labels():
    labels = np.zeros((10, 10), np.uint8)
    labels[2:4, 2:4] = 1
    labels[6:8, 6:8] = 1
    coarse = binary(np.zeros((10, 10)))
    coarse[:, 6, 6] = [0.5, 0.5]
    expected = np.zeros((10, 10), bool)
    expected[2:4, 2:4] = True
    assert np.array_equal(untraced_parts(labels, coarse, 0.3), expected)


def test_the_predictor_keeps_a_sure_mask_unless_told_not_to():
    from spnrefine.model import ModelConfig, SPNRefiner
    from spnrefine.predictor import Predictor

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = SPNRefiner(ModelConfig(hidden=2, gate_groups=2, widths=(8, 16), readout=4))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    mask = binary(np.arange(64)[None, :].repeat(48, 0) >= 30)
    guarded = Predictor(model, tile=32, overlap=8, device="cpu")
    assert np.array_equal(guarded.refine_probs(image, mask), mask)
    unguarded = Predictor(model, tile=32, overlap=8, device="cpu", guard=False)
    assert not np.allclose(unguarded.refine_probs(image, mask), mask, atol=1e-3)


def test_the_predictor_tells_the_guard_how_much_the_coarse_map_was_upsampled(monkeypatch):
    from spnrefine.io.coarse import CoarseMap
    from spnrefine.model import ModelConfig, SPNRefiner
    from spnrefine.predictor import Predictor

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = SPNRefiner(ModelConfig(hidden=2, gate_groups=2, widths=(8, 16), readout=4))
    import spnrefine.predictor as predictor

    seen = []
    for name in ("binary_parts", "_trust_rows"):
        original = getattr(predictor, name)

        def spy(*args, original=original, name=name, **kwargs):
            seen.append((name, args[4]))  # both take the factor fifth
            return original(*args, **kwargs)

        monkeypatch.setattr(predictor, name, spy)
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    small = binary(np.arange(12)[None, :].repeat(8, 0) >= 6)  # 1/8 of the image
    coarse = CoarseMap(small, [0, 255], "binary", None, None, "test")
    Predictor(model, tile=32, overlap=8, device="cpu").predict(image, coarse)
    assert {factor for _, factor in seen} == {8.0}
    assert {name for name, _ in seen} == {"binary_parts", "_trust_rows"}


def _parts_by_hand(labels, coarse, trace, speck, background, probs, sure, fragments=None):
    """untraced_parts written out part by part, for the test below; `fragments`: (sure,
    area) of the fragment rule, read from probs[1] in float16."""
    import cv2

    out = np.zeros(labels.shape, bool)
    crumbs = np.zeros(labels.shape, bool)
    top = coarse.argmax(0)
    fg16 = probs[1].astype(np.float16).astype(np.float32)
    for c in np.unique(labels):
        connectivity = 4 if c == background else 8
        count, parts = cv2.connectedComponents(
            (labels == c).view(np.uint8), connectivity=connectivity
        )
        areas = [(parts == i).sum() for i in range(count)]
        largest = 1 + int(np.argmax(areas[1:])) if count > 1 else None
        for i in range(1, count):
            part = parts == i
            held = (top[part] == c).any()
            traced = (coarse[c][part] >= trace).any()
            small = part.sum() < speck
            sure_enough = probs[c][part].mean() >= sure
            fragment = False
            if fragments is not None and held and i != largest and part.sum() < fragments[1]:
                mean = fg16[part].sum(dtype=np.float64) / part.sum()
                fragment = (mean if c == 1 else 1 - mean) < fragments[0]
            if not (traced and (held or not small) and (held or sure_enough)):
                out |= part
            elif held and (small or fragment):
                crumbs |= part
    return out, crumbs


@pytest.mark.parametrize("fragments", [None, (0.6, 40.0)])
@pytest.mark.parametrize("seed", range(4))
def test_untraced_parts_equals_the_rule_written_out_part_by_part(seed, fragments):
    import cv2

    rng = np.random.default_rng(seed)
    fg = cv2.GaussianBlur(rng.random((60, 70)).astype(np.float32), (0, 0), 2)
    fg = (fg - fg.min()) / (fg.max() - fg.min())
    coarse = binary(fg)
    refined_fg = np.clip(fg + rng.normal(0, 0.25, fg.shape), 0, 1).astype(np.float32)
    probs = binary(refined_fg)
    labels = (refined_fg > 0.5).astype(np.uint8)
    crumbs = np.zeros(labels.shape, bool)
    rule = {}
    if fragments is not None:
        rule = {"foreground": refined_fg, "fragment_sure": fragments[0]}
        rule["fragment_area"] = fragments[1]
    got = untraced_parts(
        labels, coarse, 0.3, 6.0, background=0, crumbs=crumbs, probs=probs, sure=0.65, **rule
    )
    want, want_crumbs = _parts_by_hand(labels, coarse, 0.3, 6.0, 0, probs, 0.65, fragments)
    assert want.any() and want_crumbs.any()  # the case exercises both rules
    assert np.array_equal(got, want)
    assert np.array_equal(crumbs, want_crumbs)
    if fragments is not None and seed < 2:  # these two hold fragments the rule flips
        _, speck_crumbs = _parts_by_hand(labels, coarse, 0.3, 6.0, 0, probs, 0.65)
        assert (crumbs & ~speck_crumbs).any()


def test_a_small_fragment_the_model_is_unsure_of_goes_to_the_class_around_it():
    from spnrefine.guard import binary_parts

    # The coarse map takes the whole middle for foreground; the refined map cut it into a
    # large part and a small one (the model at 0.55 there), the rest background.
    top = np.zeros((40, 60), np.uint8)
    top[5:35, 5:55] = 1
    labels = np.zeros_like(top)
    labels[5:35, 5:40] = 1  # the largest part
    labels[15:20, 45:50] = 1  # a fragment of 25 px, under 16 coarse pixels at ×4 (256 px)
    refined = np.where(labels == 1, 0.9, 0.2).astype(np.float32)
    refined[15:20, 45:50] = 0.55
    coarse = np.where(top == 1, 0.55, 0.1).astype(np.float32)
    planes = (None, coarse), (None, refined)
    back, swap = binary_parts(labels, *planes, top, 4.0, foreground=refined)
    assert len(back) == 0
    expected = np.flatnonzero(np.pad(np.ones((5, 5), bool), ((15, 20), (45, 10))))
    assert np.array_equal(swap, expected)
    # Sure enough (0.7), not given the foreground, or in a map upsampled ×2: it stays.
    refined[15:20, 45:50] = 0.7
    assert len(binary_parts(labels, *planes, top, 4.0, foreground=refined)[1]) == 0
    refined[15:20, 45:50] = 0.55
    assert len(binary_parts(labels, *planes, top, 4.0)[1]) == 0
    assert len(binary_parts(labels, *planes, top, 2.0, foreground=refined)[1]) == 0
    # The largest part is never a fragment, however unsure.
    refined[labels == 1] = 0.55
    swapped = binary_parts(labels, *planes, top, 4.0, foreground=refined)[1]
    assert np.array_equal(swapped, expected)


def test_many_crumbs_are_found_as_a_few_are():
    labels = np.zeros((50, 50), np.uint8)
    fg = np.full((50, 50), 0.45, np.float32)
    labels[2::5, 2::5] = 1  # 100 lone pixels the coarse map takes for foreground
    fg[2::5, 2::5] = 0.6
    coarse = binary(fg)
    crumbs = np.zeros(labels.shape, bool)
    untraced_parts(labels, coarse, 0.3, 4.0, background=0, crumbs=crumbs)
    assert np.array_equal(crumbs, labels == 1)
    few = np.zeros(labels.shape, bool)
    untraced_parts(
        labels[:20, :20], coarse[:, :20, :20], 0.3, 4.0, background=0, crumbs=few[:20, :20]
    )
    assert np.array_equal(few[:20, :20], labels[:20, :20] == 1)


def test_crumbs_are_judged_alike_with_16_and_32_bit_part_numbers():
    from spnrefine.guard import _still_surrounded

    rng = np.random.default_rng(0)
    crumbs = np.zeros((600, 1000), bool)
    crumbs[:200, :200] = rng.random((200, 200)) < 0.05
    labels = np.zeros((600, 1000), np.uint8)
    labels[:200, :200] = rng.random((200, 200)) < 0.5
    few = _still_surrounded(crumbs, labels)  # under 65,536 crumbs: 16-bit part numbers
    many_crumbs = crumbs.copy()
    many_crumbs[::2, 210::2] = True  # 118,500 more, one pixel each, apart: 32-bit
    many = _still_surrounded(many_crumbs, labels)
    assert np.count_nonzero(crumbs) < 2**16 <= np.count_nonzero(many_crumbs)
    assert np.array_equal(many[:, :205], few[:, :205])
    assert 0 < few.sum() < crumbs.sum()


@pytest.mark.parametrize("seed", range(3))
def test_the_part_rules_read_the_planes_only_where_labels_and_coarse_arg_max_differ(seed):
    # Labels alone keep the planes only there (AtOdd): the same parts go back and flip.
    import cv2

    from spnrefine.guard import AtOdd, binary_parts

    rng = np.random.default_rng(seed)
    fg = cv2.GaussianBlur(rng.random((60, 70)).astype(np.float32), (0, 0), 2)
    fg = (fg - fg.min()) / (fg.max() - fg.min())
    refined_fg = np.clip(fg + rng.normal(0, 0.25, fg.shape), 0, 1).astype(np.float32)
    labels = (refined_fg > 0.5).astype(np.uint8)
    top = (fg > 0.5).astype(np.uint8)
    whole = refined_fg.astype(np.float16)  # what labels alone keep for the fragment rule
    back, swap = binary_parts(
        labels, (None, fg), (None, refined_fg), top, 8.0, foreground=refined_fg
    )
    assert len(back) and len(swap)  # the case exercises both rules
    moved = np.flatnonzero(labels != top)
    sparse = (None, AtOdd(moved, fg.reshape(-1)[moved]))
    sparse_probs = (None, AtOdd(moved, refined_fg.reshape(-1)[moved]))
    got_back, got_swap = binary_parts(labels, sparse, sparse_probs, top, 8.0, foreground=whole)
    assert np.array_equal(got_back, back) and np.array_equal(got_swap, swap)
    with pytest.raises(ValueError, match="read only there"):  # a rule that needs it all
        binary_parts(labels, sparse, sparse_probs, top, 8.0, trace=0.6)


def test_parts_are_numbered_in_16_bits_where_they_fit_and_in_32_past_that():
    from spnrefine.guard import _components

    few = np.zeros((40, 40), bool)
    few[5:10, 5:10] = few[20:30, 20:30] = True
    count, parts, stats = _components(few, 8)
    assert count == 3 and parts.dtype == np.uint16 and stats[1:, 4].tolist() == [25, 100]
    many = np.zeros((600, 600), bool)
    many[::2, ::2] = True  # 90,000 lone pixels: past 16 bits
    count, parts, _ = _components(many, 8)
    assert count == 90_001 and parts.dtype == np.int32 and parts.max() == 90_000


def test_the_ids_a_label_map_holds_are_those_np_unique_finds():
    from spnrefine.io.coarse import ids_in

    rng = np.random.default_rng(0)
    for dtype, top in ((np.uint8, 255), (np.uint16, 700), (np.int32, 70_000)):
        ids = rng.choice([0, 3, top], size=(40, 30)).astype(dtype)
        assert ids_in(ids).tolist() == np.unique(ids).tolist()
        assert ids_in(ids[::2, 1::3]).tolist() == np.unique(ids[::2, 1::3]).tolist()  # a view


@pytest.mark.parametrize("seed", range(4))
def test_components_label_a_box_alone_and_give_opencvs_numbers(seed):
    """guard._components labels only the box the True (or the False) pixels lie in, and fills
    in the rest: the same count, part numbers and statistics as OpenCV over the image."""
    import cv2

    from spnrefine.guard import _components, _label

    rng = np.random.default_rng(seed)
    for trial in range(300):
        h, w = rng.integers(1, 60, 2)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0, h + 1), rng.integers(x0, w + 1)
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.random()
        if trial % 2:
            mask = ~mask  # False pixels in the box: holes, and the outside one part
        for connectivity in (4, 8):
            count, parts, stats = _components(mask, connectivity)
            want_count, want_parts, want_stats = _label(mask, connectivity)
            assert count == want_count
            np.testing.assert_array_equal(parts, want_parts)
            assert parts.dtype == want_parts.dtype
            np.testing.assert_array_equal(stats[1:], want_stats[1:])
            assert stats[0, cv2.CC_STAT_AREA] == want_stats[0, cv2.CC_STAT_AREA]


@pytest.mark.parametrize("factor", [2, 8])
def test_the_trust_weight_of_some_rows_is_that_of_the_whole_map(factor):
    """`_trust_rows` makes a band's weight from its rows and the few around that it depends
    on (`trust_reach`): the same values as `trust` over the whole upsampled map, at any rows
    and columns; at ×2 with steps (read by their slope) everywhere."""
    from spnrefine.io.coarse import CoarseMap
    from spnrefine.predictor import _trust_rows
    from spnrefine.upsample import upsample_probs

    rng = np.random.default_rng(factor)
    small = rng.random((24, 30)).astype(np.float32)
    small[small < 0.3] = 0.0  # sure patches, unsure ones, and steps between them
    small[small > 0.7] = 1.0
    small[4:12, 6:20] = np.linspace(0.1, 0.9, 14)  # a gentle ramp
    coarse = CoarseMap(binary(small), [0, 255], "binary", None, None, "test")
    size = (24 * factor, 30 * factor)
    whole = trust(upsample_probs(coarse.probs, size), factor=float(factor))
    assert 0 < (whole > 0).mean() < 0.9
    for start, stop in [(0, 7), (7, 20), (13, 14), (20, size[0])]:
        rows = upsample_probs(coarse.probs, size)[:, start:stop]
        # (rows upsampled alone may differ from the whole map's by a rounding: 1e-7 × 1/sure)
        got = _trust_rows(coarse, size, start, stop, factor)
        np.testing.assert_allclose(got, whole[start:stop], atol=1e-4)
        for columns in [(0, size[1]), (9, 31), (40, size[1])]:
            a, b = columns
            got = _trust_rows(coarse, size, start, stop, factor, rows, columns)
            np.testing.assert_allclose(got, whole[start:stop, a:b], atol=1e-4)
