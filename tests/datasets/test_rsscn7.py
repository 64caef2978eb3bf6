"""RSSCN7 in its on-disk layout: seven class folders, files numbered in level blocks."""

from pathlib import Path

import pytest
import torch
from rsscn7_layout import write_rsscn7
from torchgeo.datasets import DatasetNotFoundError

from torchgeo_xscale.datasets import RSSCN7
from torchgeo_xscale.datasets.rsscn7 import scale_level_of
from torchgeo_xscale.evaluation.datasets import build_classification_dataset


@pytest.fixture(scope='module')
def rsscn7_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rsscn7(tmp_path_factory.mktemp('rsscn7') / 'RSSCN7')


def test_scale_level_from_the_file_number() -> None:
    assert [scale_level_of(f'a{n:03d}.jpg') for n in (1, 100, 101, 200, 301, 400)] == [
        1,
        1,
        2,
        2,
        4,
        4,
    ]
    assert scale_level_of('gParking/g250.jpg') == 3
    for bad in ('a000.jpg', 'a401.jpg', 'grass_1.jpg'):
        with pytest.raises(ValueError, match='not an RSSCN7 image name'):
            scale_level_of(bad)


def test_dataset_samples_labels_and_levels(rsscn7_root: Path) -> None:
    everything = RSSCN7(rsscn7_root)
    assert len(everything) == 7 * 4 * 8
    assert everything.classes == list(RSSCN7.folders)
    assert sorted(set(everything.scale_levels)) == [1, 2, 3, 4]
    sample = everything[9]  # aGrass/a102.jpg: the 10th file of class 0
    assert (
        sample['image'].shape == (3, 32, 32) and sample['image'].dtype == torch.float32
    )
    assert int(sample['label']) == 0 and int(sample['scale_level']) == 2
    for index in (0, 100, 223):
        path, label = everything.samples[index]
        assert everything.scale_levels[index] == scale_level_of(path)
        assert RSSCN7.folders[label] == Path(path).parent.name


def test_splits_are_disjoint_and_balanced(rsscn7_root: Path) -> None:
    train = RSSCN7(rsscn7_root.parent, 'train', levels=[2, 3])  # parent/RSSCN7 found
    test = RSSCN7(rsscn7_root.parent, 'test', levels=[2, 3])
    assert not {p for p, _ in train.samples} & {p for p, _ in test.samples}
    assert len(train) == len(test) == 7 * 2 * 4
    assert set(train.scale_levels) == set(test.scale_levels) == {2, 3}
    assert [s for s, _ in RSSCN7(rsscn7_root, 'train', seed=1).samples] != [
        s for s, _ in RSSCN7(rsscn7_root, 'train', seed=0).samples
    ]
    fig = train.plot({**train[0], 'prediction': torch.tensor(3)})
    assert 'scale level 2' in fig.axes[0].get_title()
    assert 'Prediction: dRiverLake' in fig.axes[0].get_title()


def test_bad_arguments_and_no_download(rsscn7_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='without a licence'):
        RSSCN7(tmp_path, download=True)
    with pytest.raises(DatasetNotFoundError, match='Dataset not found'):
        RSSCN7(tmp_path)
    with pytest.raises(ValueError, match='levels=\\[0, 5\\]'):
        RSSCN7(rsscn7_root, levels=[0, 5])
    with pytest.raises(ValueError, match="split='val'"):
        RSSCN7(rsscn7_root, 'val')  # type: ignore[arg-type]


def test_build_classification_dataset_resizes(rsscn7_root: Path) -> None:
    dataset = build_classification_dataset('rsscn7', rsscn7_root, 'val', size=48)
    assert len(dataset) == 7 * 4 * 4  # the test half of every class and level
    assert dataset[0]['image'].shape == (3, 48, 48)
