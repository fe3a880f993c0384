"""The generators: valid annotations, determinism, idempotent manifest."""

import json
import os
import os.path as osp

import numpy as np

from gpusq_mm.datasets import SHAPE_CLASSES, generate_task
from gpusq_mm.datasets.ade_textures import ADE_IDS, make_ade_image
from gpusq_mm.datasets.cls_folders import make_cls_image
from gpusq_mm.datasets.coco_shapes import make_coco_image
from gpusq_mm.datasets.generate import MANIFEST


def _load(root, split):
    path = osp.join(root, 'annotations', f'instances_{split}2017.json')
    with open(path) as f:
        return json.load(f)


def test_coco_annotations_are_valid(coco_data_root):
    for split, count in (('train', 8), ('val', 4)):
        data = _load(coco_data_root, split)
        assert len(data['images']) == count
        assert [c['name'] for c in data['categories']] == list(SHAPE_CLASSES)
        sizes = {
            im['id']: (im['width'], im['height']) for im in data['images']
        }
        assert len(data['annotations']) >= 2 * count
        for ann in data['annotations']:
            w, h = sizes[ann['image_id']]
            x, y, bw, bh = ann['bbox']
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
            assert ann['iscrowd'] == 0 and 0 < ann['area'] <= bw * bh
            assert 1 <= ann['category_id'] <= len(SHAPE_CLASSES)
            assert ann['segmentation'] and all(
                len(p) >= 6 and len(p) % 2 == 0 for p in ann['segmentation']
            )
            assert osp.isfile(
                osp.join(
                    coco_data_root,
                    f'{split}2017',
                    next(
                        im['file_name']
                        for im in data['images']
                        if im['id'] == ann['image_id']
                    ),
                )
            )


def test_coco_scenes_are_varied():
    shapes, classes, counts = set(), set(), []
    for idx in range(24):
        img, insts = make_coco_image(0, 'train', idx)
        shapes.add(img.shape)
        counts.append(len(insts))
        classes.update(c for c, _ in insts)
        # visible masks are disjoint: occluded parts are not labelled
        total = sum(m.astype(int) for _, m in insts)
        assert total.max() <= 1
    assert classes == set(range(1, len(SHAPE_CLASSES) + 1))
    assert len(shapes) > 5 and max(counts) >= 4 and min(counts) >= 1


def test_ade_labels_use_ade_ids():
    allowed = {0, *ADE_IDS}
    seen = set()
    for idx in range(12):
        img, label = make_ade_image(0, 'training', idx)
        assert img.shape[:2] == label.shape and label.dtype == np.uint8
        values = set(np.unique(label).tolist())
        assert values <= allowed and len(values - {0}) >= 2
        seen |= values
    assert set(ADE_IDS) <= seen


def test_cls_balanced_round_robin():
    labels = [make_cls_image(0, 'train', i)[1] for i in range(12)]
    assert labels == [i % len(SHAPE_CLASSES) for i in range(12)]


def test_generation_is_deterministic():
    a, _ = make_coco_image(3, 'val', 5)
    b, _ = make_coco_image(3, 'val', 5)
    c, _ = make_coco_image(4, 'val', 5)
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_manifest_makes_generation_idempotent(tmp_path):
    root = generate_task('cls', str(tmp_path), 6, 6, seed=1)
    manifest = osp.join(root, MANIFEST)
    some_file = osp.join(root, 'train', SHAPE_CLASSES[0], '000000.JPEG')
    stamp = os.stat(some_file).st_mtime_ns
    assert generate_task('cls', str(tmp_path), 6, 6, seed=1) == root
    assert os.stat(some_file).st_mtime_ns == stamp  # skipped
    # a missing file makes it regenerate
    os.remove(some_file)
    generate_task('cls', str(tmp_path), 6, 6, seed=1)
    assert osp.isfile(some_file)
    # other settings regenerate from scratch
    generate_task('cls', str(tmp_path), 12, 6, seed=1)
    with open(manifest) as f:
        assert json.load(f)['settings']['num_train'] == 12
    n_train = sum(
        len(files) for _, _, files in os.walk(osp.join(root, 'train'))
    )
    assert n_train == 12


def test_class_texture_patterns_and_period():
    """The cls fills: diagonal stripes are constant along x + y, the period
    is drawn from the range given, an unknown pattern is named."""
    import pytest

    from gpusq_mm.datasets.ade_textures import class_texture

    rng = np.random.default_rng(0)
    tex = class_texture(
        rng, 1, 64, 64, period=(16, 16), textures=('dstripes',)
    )
    grey = tex.mean(-1)
    for k in range(0, 120, 7):  # each anti-diagonal x + y = k is one value
        ys = np.arange(max(0, k - 63), min(k, 63) + 1)
        assert np.ptp(grey[ys, k - ys]) < 1e-3
    assert np.ptp(grey) > 10  # and the stripes are visible
    # horizontal stripes of period 16: rows 16 apart are equal, 8 apart not
    tex = class_texture(
        rng, 1, 64, 64, period=(16, 16), textures=('hstripes',)
    )
    rows = tex.mean((1, 2))
    assert np.allclose(rows[:48], rows[16:], atol=1e-3)
    assert not np.allclose(rows[:56], rows[8:], atol=1e-3)
    with pytest.raises(ValueError, match="'zigzag'"):
        class_texture(rng, 1, 8, 8, textures=('zigzag',))


def test_pattern_colours_keep_their_contrast():
    """The two colours of a fill pattern differ by at least ``min_contrast``
    (summed RGB); the classifier's images ask for more than the default,
    which some draws would miss."""
    from gpusq_mm.datasets.ade_textures import class_texture
    from gpusq_mm.datasets.cls_folders import CLS_MIN_CONTRAST

    def spread(min_contrast, seed):
        rng = np.random.default_rng(seed)
        # label 3: checks, exactly the two colours
        tex = class_texture(rng, 3, 16, 16, min_contrast=min_contrast)
        colours = np.unique(tex.reshape(-1, 3), axis=0)
        assert len(colours) == 2
        return np.abs(colours[0] - colours[1]).sum()

    assert CLS_MIN_CONTRAST == 200
    assert min(spread(CLS_MIN_CONTRAST, s) for s in range(40)) >= 200
    default = [spread(120, s) for s in range(40)]
    assert min(default) >= 120 and min(default) < 200
