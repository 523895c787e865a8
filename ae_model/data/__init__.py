"""Detection data: where datasets keep their files, reading them, checking them, augmenting and
loading them, and generating them.

- ``layout``: the dataset layouts (COCO, darknet list, YOLO folders) and darknet's label paths.
- ``datasets``: :class:`~ae_model.data.datasets.CocoDetection`,
  :class:`~ae_model.data.datasets.YoloDataset` and ``open_dataset``.
- ``augment``: darknet's augmentation (``AugmentParams``, jitter, flip, HSV, mosaic) and the
  evaluation letterbox.
- ``loader``: seeded, resumable batch samplers, darknet's multi-scale sizes, ``build_loader``.
- ``check``: a dataset's problems, by file and line, before anyone trains on it.
- ``archive``: safe extraction of an uploaded zip.
- ``synthetic``: generated datasets (digits, shapes) for tests, demos and benchmarks.

This file imports nothing: ``layout``, ``augment``, ``check``, ``archive`` and ``synthetic``
are torch-free, and the API imports them without loading torch; ``datasets`` and ``loader``
import torch.
"""
