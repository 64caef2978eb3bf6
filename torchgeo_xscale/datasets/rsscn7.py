"""RSSCN7: 7 scene classes, each photographed at 4 scale levels (Zou et al., GRSL 2015).

RSSCN7 has 2,800 Google Earth images of 400 x 400 px in 7 classes of 400 images. Each
class is sampled at four scale levels of 100 images, numbered in blocks: in class
folder ``aGrass`` the files ``a001.jpg`` ... ``a100.jpg`` are level 1, ``a101.jpg`` ...
``a200.jpg`` level 2, and so on to ``a400.jpg`` (level 4). That makes it a labelled
benchmark for scale invariance: train on one level, test on another
(:mod:`torchgeo_xscale.evaluation.scale_transfer`).

The images are published at https://github.com/palewithout/RSSCN7 **without a
licence**. Nothing here downloads or bundles them: fetch them yourself (e.g.
``git clone https://github.com/palewithout/RSSCN7``), check that your use is
permitted, and pass the folder as ``root``.

Reference: Q. Zou, L. Ni, T. Zhang, Q. Wang, "Deep Learning Based Feature Selection for
Remote Sensing Scene Classification", IEEE Geoscience and Remote Sensing Letters
12(11), 2015.
"""

import os
import random
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal, cast

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torchgeo.datasets import DatasetNotFoundError
from torchgeo.datasets.geo import NonGeoClassificationDataset

__all__ = ('RSSCN7', 'scale_level_of')

#: Images per scale level and class, and the number of levels.
IMAGES_PER_LEVEL = 100
NUM_LEVELS = 4

_FILE = re.compile(r'^([a-g])(\d{3})\.jpe?g$', re.IGNORECASE)


def scale_level_of(filename: str | os.PathLike[str]) -> int:
    """The scale level (1 to 4) of an RSSCN7 file, from its number.

    Args:
        filename: A file name or path such as ``aGrass/a137.jpg``.

    Returns:
        ``(number - 1) // 100 + 1``: 1 for ``001``-``100``, ..., 4 for ``301``-``400``.

    Raises:
        ValueError: If the name is not ``<letter><3 digits>.jpg`` numbered 001-400.
    """
    name = os.path.basename(os.fspath(filename))
    match = _FILE.match(name)
    number = int(match.group(2)) if match else 0
    if not 1 <= number <= IMAGES_PER_LEVEL * NUM_LEVELS:
        msg = (
            f'{filename}: not an RSSCN7 image name; expected e.g. a001.jpg ... a400.jpg'
        )
        raise ValueError(msg)
    return (number - 1) // IMAGES_PER_LEVEL + 1


class RSSCN7(NonGeoClassificationDataset):
    """RSSCN7 scene classification with the scale level of every image.

    Each sample holds ``image`` (float32 ``(3, H, W)``, 0-255 RGB, 400 px in the
    original data), ``label`` (int64 class index in :attr:`classes` order) and
    ``scale_level`` (int64, 1 to 4, from the file number: blocks of 100, see the
    module docstring).

    RSSCN7 has no official train/test split. Here every class and level is split on
    its own: its files, sorted by name, are shuffled with *seed* and the first
    ``round(train_fraction * n)`` form ``train``, the rest ``test`` (``all``: every
    file). Levels are thus balanced in both splits, and a model trained on level i's
    ``train`` images can be tested on any level's ``test`` images without overlap.

    The data has **no licence**; it is never downloaded here (see the module
    docstring).
    """

    #: Class folders on disk, in label order.
    folders: ClassVar[tuple[str, ...]] = (
        'aGrass',
        'bField',
        'cIndustry',
        'dRiverLake',
        'eForest',
        'fResident',
        'gParking',
    )
    url = 'https://github.com/palewithout/RSSCN7'
    splits = ('train', 'test', 'all')
    levels_all = tuple(range(1, NUM_LEVELS + 1))

    def __init__(
        self,
        root: str | os.PathLike[str] = 'data/RSSCN7',
        split: Literal['train', 'test', 'all'] = 'all',
        levels: Sequence[int] | None = None,
        train_fraction: float = 0.5,
        seed: int = 0,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        download: bool = False,
    ) -> None:
        """Index the images of *split* and *levels*.

        Args:
            root: Folder holding the seven class folders (``aGrass`` ...), or its
                parent with an ``RSSCN7`` or ``RSSCN7-master`` folder.
            split: ``train``, ``test`` or ``all``.
            levels: Scale levels to keep (1 to 4; default all).
            train_fraction: Share of each class and level in ``train``.
            seed: Seed of the split.
            transforms: Function applied to each sample dict.
            download: Must be False: RSSCN7 has no licence and is never downloaded.

        Raises:
            ValueError: If *split*, *levels* or *train_fraction* is invalid, or if
                *download* is True (the message says where to get the data).
            DatasetNotFoundError: If the class folders are not found under *root*.
        """
        if split not in self.splits:
            raise ValueError(f'split={split!r}; expected one of {self.splits}')
        chosen = tuple(sorted(set(levels))) if levels is not None else self.levels_all
        if not chosen or not set(chosen) <= set(self.levels_all):
            msg = f'levels={levels!r}; expected levels among {list(self.levels_all)}'
            raise ValueError(msg)
        if not 0 < train_fraction < 1:
            raise ValueError(f'train_fraction={train_fraction}; expected in (0, 1)')
        if download:
            msg = (
                f'download=True: RSSCN7 is published at {self.url} without a licence, '
                'so it is not downloaded here; fetch it yourself (git clone '
                f'{self.url}), check your use is permitted, and pass its folder as root'
            )
            raise ValueError(msg)
        self.root = os.fspath(root)
        self.download = download
        self.split = split
        self.levels = chosen
        folder = self._find_folder()
        keep: set[str] = set()
        for name in self.folders:
            by_level: dict[int, list[str]] = {level: [] for level in chosen}
            for file in sorted(os.listdir(os.path.join(folder, name))):
                if _FILE.match(file) and scale_level_of(file) in by_level:
                    by_level[scale_level_of(file)].append(file)
            for level, files in by_level.items():
                random.Random(f'{seed}:{name}:{level}').shuffle(files)
                n_train = min(len(files), max(1, round(train_fraction * len(files))))
                part = {
                    'train': files[:n_train],
                    'test': files[n_train:],
                    'all': files,
                }[split]
                keep.update(
                    os.path.normpath(os.path.join(folder, name, f)) for f in part
                )
        super().__init__(
            folder,
            transforms,
            is_valid_file=lambda p: os.path.normpath(os.fspath(p)) in keep,
        )
        self.scale_levels = [scale_level_of(path) for path, _ in self.samples]

    def _find_folder(self) -> str:
        """The folder holding the class folders: *root* or ``root/RSSCN7[-master]``."""
        for candidate in ('', 'RSSCN7', 'RSSCN7-master'):
            folder = os.path.join(self.root, candidate)
            if all(os.path.isdir(os.path.join(folder, n)) for n in self.folders):
                return folder
        raise DatasetNotFoundError(self)

    def find_classes(
        self, directory: str | os.PathLike[str]
    ) -> tuple[list[str], dict[str, int]]:
        """The seven class folders in label order (other folders are ignored).

        Args:
            directory: The folder holding the class folders.

        Returns:
            Class folder names and their indices.
        """
        classes = list(self.folders)
        return classes, {name: i for i, name in enumerate(classes)}

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The image, its label and its scale level.

        Args:
            index: Index of the image.

        Returns:
            ``{'image': (3, H, W) float32, 'label': (), 'scale_level': ()}``.
        """
        image, label = self._load_image(index)
        sample = {
            'image': image,
            'label': label,
            'scale_level': torch.tensor(self.scale_levels[index]),
        }
        if self.tg_transforms is not None:
            sample = self.tg_transforms(sample)
        return sample

    def plot(
        self,
        sample: dict[str, Any],
        show_titles: bool = True,
        suptitle: str | None = None,
    ) -> Figure:
        """Plot a sample, titled with its class, scale level and any prediction.

        Args:
            sample: A sample from :meth:`__getitem__` (optionally with
                ``prediction``).
            show_titles: Show the title.
            suptitle: Optional figure title.

        Returns:
            The figure.
        """
        image: Tensor = sample['image']
        array = np.rollaxis(image.numpy(), 0, 3).astype(np.float32)
        if array.max() > 1:
            array = array / 255.0
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(np.clip(array, 0, 1))
        ax.axis('off')
        if show_titles:
            label = self.classes[cast(int, sample['label'].item())]
            title = f'{label} (scale level {int(sample["scale_level"])})'
            if 'prediction' in sample:
                title += f'\nPrediction: {self.classes[int(sample["prediction"])]}'
            ax.set_title(title)
        if suptitle is not None:
            fig.suptitle(suptitle)
        return fig
