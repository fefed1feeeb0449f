"""The data: datasets on the host and the batches a model trains on.

    imageset.py   ImageSet: N labelled 32x32 colour images, uint8 on the host
    svhn.py       the SVHN cropped-digit files: read, write, load (matlab.py vets them first)
    synthetic.py  the default, offline dataset: SVHN-like digits drawn from a seed,
                  with font glyphs rendered by glyphs.py
    download.py   fetching the SVHN files, with a progress bar, resume and checksums
    loader.py     DataLoader: shuffled batches, moved to the device and normalised there
    augment.py    RandomShift: random shifts of each batch's images on the device
    images.py     reading a user's image file (PNG, JPEG, ...) for --predict

The names most code needs are exported here:

>>> from training.data import DataLoader, channel_stats, load_svhn
>>> from training.data.synthetic import make_synthetic

The other modules are imported by their own path, so that ``import training.data`` loads
only what every command needs.
"""
from .imageset import IMAGE_SHAPE, NUM_CLASSES, ImageSet
from .loader import DataLoader, channel_stats
from .svhn import SVHN_SPLIT_FILES, check_svhn_folder, load_svhn, load_svhn_split, read_svhn_mat, write_svhn_mat

__all__ = [
    "DataLoader",
    "IMAGE_SHAPE",
    "ImageSet",
    "NUM_CLASSES",
    "SVHN_SPLIT_FILES",
    "channel_stats",
    "check_svhn_folder",
    "load_svhn",
    "load_svhn_split",
    "read_svhn_mat",
    "write_svhn_mat",
]
