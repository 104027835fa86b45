"""Datasets held in memory: CIFAR-10/100, ImageFolder (folder or tar), Fashion-MNIST idx, synthetic.

Every dataset is one ``uint8`` tensor ``(N, C, H, W)`` plus labels, batched and augmented on the
training device. Modules, from the bottom up: :mod:`~edgenas.data.spec` (what ``--data`` names),
:mod:`~edgenas.data.sources` (built-in readers), :mod:`~edgenas.data.imagefolder` (image folders and
their decode cache), :mod:`~edgenas.data.prepare` (label checks, statistics, subsets, resizing),
:mod:`~edgenas.data.tensors` (in-memory images and batch augmentation), :mod:`~edgenas.data.loaders`
(deterministic batches per seed, epoch and rank) and :mod:`~edgenas.data.load` (``load_data`` and
the :class:`~edgenas.data.load.DataBundle` it returns).
"""
