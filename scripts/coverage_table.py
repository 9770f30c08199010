"""Graph coverage of ``mudsc.trace`` over torchvision, timm and ``torch.nn`` architectures, as a markdown table.

Per architecture (random weights, ``pretrained=False``, 10 classes, 64x64 images; timm models that take an
``img_size`` get 64): a strict ``mudsc.trace`` (on failure its reason, then a ``strict=False`` trace for the
coverage it still reaches), ``mudsc.check_spec`` of the spec (random permutations must leave the outputs unchanged),
the groups and ``mudsc.spec.permuted_share``, and a ``mudsc.merge([a, b], loader, method="zipit")`` of two models
from different seeds on 2 batches of 4 (``strict=False`` where the strict trace failed), whose result must run and
load (``load_state_dict(strict=True)``) into a fresh instance computing the same outputs.

    python scripts/coverage_table.py [--only NAME ...] [--write-readme] [--threads 1]

``--write-readme`` replaces the lines between ``<!-- coverage-table:start -->`` and ``<!-- coverage-table:end -->``
in README.md with the table. Only the public API is used.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mudsc  # noqa: E402
from mudsc.spec import permuted_share  # noqa: E402

START, END = "<!-- coverage-table:start -->", "<!-- coverage-table:end -->"
IMAGE = (3, 64, 64)
CLASSES = 10


class TextClassifier(nn.Module):
    """Token ids -> embedding -> 2-layer ``nn.TransformerEncoder`` -> mean over tokens -> class logits."""

    def __init__(self, vocab: int = 100, width: int = 64, classes: int = CLASSES):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, 128, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        """Class logits of ``tokens`` (``int64[B, T]``)."""
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def _tv(name: str, **kw) -> Callable[[], nn.Module]:
    """A builder of torchvision's ``name`` with random weights."""
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=CLASSES, **kw)
    return build


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    """A builder of timm's ``name`` with random weights."""
    def build():
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES, **kw)
    return build


def _images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, *IMAGE, generator=torch.Generator().manual_seed(seed))


def _tokens(batch: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 100, (batch, 12), generator=torch.Generator().manual_seed(seed))


# (row name, builder, inputs(batch, seed)); Swin and grouped convolutions (ResNeXt, RegNet) are listed as they are
MODELS: List[Tuple[str, Callable[[], nn.Module], Callable[[int, int], torch.Tensor]]] = [
    ("torchvision resnet18", _tv("resnet18"), _images),
    ("torchvision resnet50", _tv("resnet50"), _images),
    ("torchvision wide_resnet50_2", _tv("wide_resnet50_2"), _images),
    ("torchvision convnext_tiny", _tv("convnext_tiny"), _images),
    ("torchvision efficientnet_b0", _tv("efficientnet_b0"), _images),
    ("torchvision mobilenet_v3_small", _tv("mobilenet_v3_small"), _images),
    ("torchvision densenet121", _tv("densenet121"), _images),
    ("torchvision squeezenet1_1", _tv("squeezenet1_1"), _images),
    ("torchvision swin_t", _tv("swin_t"), _images),
    ("torchvision resnext50_32x4d", _tv("resnext50_32x4d"), _images),
    ("torchvision regnet_y_400mf", _tv("regnet_y_400mf"), _images),
    ("timm resnet50", _timm("resnet50"), _images),
    ("timm convnext_atto", _timm("convnext_atto"), _images),
    ("timm efficientnet_b0", _timm("efficientnet_b0"), _images),
    ("timm mobilenetv3_small_100", _timm("mobilenetv3_small_100"), _images),
    ("timm vit_tiny_patch16_224 (img 64)", _timm("vit_tiny_patch16_224", img_size=64), _images),
    ("timm vit_tiny_patch16_224 (img 64, drop_path 0.1)",
     _timm("vit_tiny_patch16_224", img_size=64, drop_path_rate=0.1), _images),
    ("timm deit_tiny_patch16_224 (img 64)", _timm("deit_tiny_patch16_224", img_size=64), _images),
    ("timm pvt_v2_b0", _timm("pvt_v2_b0"), _images),
    ("timm mixer_s16_224 (img 64)", _timm("mixer_s16_224", img_size=64), _images),
    ("timm swin_tiny_patch4_window7_224 (img 64)", _timm("swin_tiny_patch4_window7_224", img_size=64), _images),
    ("torch.nn TransformerEncoder text classifier", TextClassifier, _tokens),
]


def _reason(exc) -> str:
    """The first line of an error, short enough for a table cell."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^cannot derive a permutation spec through ", "", text)
    text = re.sub(r" with tensor input shapes \[.*?\]", "", text)
    text = re.sub(r" \(call_(function|method) [^)]*\)", "", text)
    text = text.split(" (pass strict=False")[0].split(". torch.fx runs the code")[0]
    return (text[:157] + "...") if len(text) > 160 else text


def _build(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make().eval()


def _trace(model: nn.Module, x: torch.Tensor) -> Tuple[Optional[mudsc.PermSpec], Optional[str], Optional[str]]:
    """``(spec or None, strict failure or None, non-strict failure or None)``: a strict trace, else a non-strict
    one; neither runs the check (it is timed apart). A strict trace that warned (a construct traced conservatively,
    its channels left unpermuted) has ``"warned: ..."`` as its strict failure and the spec."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            spec = mudsc.trace(model, x, check=False)
        if caught:
            first = re.sub(r"^fx node '[^']*': ", "", str(caught[0].message).splitlines()[0])
            return spec, f"warned: {len(caught)} warnings, the first: {_reason(first)}", None
        return spec, None, None
    except mudsc.SpecTraceError as exc:
        strict_error = _reason(exc)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mudsc.trace(model, x, strict=False, check=False), strict_error, None
    except Exception as exc:  # noqa: BLE001  (the table reports whatever stops the trace)
        return None, strict_error, _reason(exc)


def _merge(make, inputs, strict: bool) -> str:
    """``"yes"`` when the zipit merge of two seeds runs, loads into a fresh instance strictly and computes the same
    outputs there; else the reason."""
    a, b = _build(make, 0), _build(make, 1)
    loader = [inputs(4, 10 + i) for i in range(2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = mudsc.merge([a, b], loader, method="zipit", strict=strict, progress=False)
    fresh = _build(make, 2)
    fresh.load_state_dict(result.model.state_dict(), strict=True)
    with torch.no_grad():
        out, again = result.model.eval()(loader[0]), fresh.eval()(loader[0])
    if not torch.isfinite(out).all():
        return "no: non-finite outputs"
    torch.testing.assert_close(again, out)
    share = result.report["coverage"]["permuted_share"]
    return "yes" if strict else f"yes (strict=False, {share:.3f})"


def measure(name: str, make, inputs) -> Dict[str, str]:
    """One row of the table."""
    t0 = time.perf_counter()
    row = {"architecture": name}
    model = _build(make, 0)
    x = inputs(2, 0)
    spec, strict_error, error = _trace(model, x)
    warned = strict_error is not None and strict_error.startswith("warned: ")
    row["strict"] = "yes" if strict_error is None else (f"yes, {strict_error[8:]}" if warned else f"no: {strict_error}")
    if spec is None:
        row.update(groups="-", share="-", check="-", merge=f"no: {error}")
    else:
        row.update(groups=str(len(spec.groups)), share=f"{permuted_share(model, spec):.3f}")
        try:
            mudsc.check_spec(model, spec, x[:1])
            row["check"] = "yes"
        except Exception as exc:  # noqa: BLE001
            row["check"] = f"no: {_reason(exc)}"
        try:
            row["merge"] = _merge(make, inputs, strict=strict_error is None or warned)
        except Exception as exc:  # noqa: BLE001
            row["merge"] = f"no: {type(exc).__name__}: {_reason(exc)}"
    row["seconds"] = f"{time.perf_counter() - t0:.0f}"
    return row


COLUMNS = [("architecture", "architecture"), ("strict", "strict trace"), ("groups", "groups"),
           ("share", "permuted share"), ("check", "check_spec"), ("merge", "zipit merge"), ("seconds", "s")]


def table(rows: List[Dict[str, str]]) -> str:
    """The rows as a markdown table (``|`` in cells escaped)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(row[key].replace("|", "\\|") for key, _ in COLUMNS) + " |")
    return "\n".join(lines)


def write_readme(text: str, path: Path = ROOT / "README.md") -> None:
    """Replace the marked section of ``path`` with ``text``; ValueError when the markers are missing."""
    source = path.read_text()
    if source.count(START) != 1 or source.count(END) != 1 or source.index(START) > source.index(END):
        raise ValueError(f"{path} needs one {START} line followed by one {END} line around the table")
    head, rest = source.split(START)
    _, tail = rest.split(END)
    path.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main(argv: Optional[List[str]] = None) -> int:
    """Measure every listed architecture (or those ``--only`` names), print the table, optionally into README."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="substrings of the architectures to measure (default: all)")
    parser.add_argument("--write-readme", action="store_true", help="rewrite README.md's coverage table")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine two OpenMP threads made the float64 "
                        "convolutions of check_spec 10-100x slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = [m for m in MODELS if not args.only or any(s in m[0] for s in args.only)]
    if not chosen:
        raise SystemExit(f"no architecture matches {args.only}; the list: {[m[0] for m in MODELS]}")
    rows = []
    t0 = time.perf_counter()
    for name, make, inputs in chosen:
        try:
            rows.append(measure(name, make, inputs))
        except Exception as exc:  # noqa: BLE001  (building the model itself failed)
            traceback.print_exc()
            rows.append({"architecture": name, "strict": f"no: {_reason(exc)}", "groups": "-", "share": "-",
                         "check": "-", "merge": "-", "seconds": "-"})
        print(" | ".join(rows[-1].values()), flush=True)
    text = table(rows)
    print(f"\n{text}\n\n({len(rows)} architectures in {time.perf_counter() - t0:.0f} s, torch "
          f"{torch.__version__}, mudsc {mudsc.__version__}, {args.threads} threads)")
    if args.write_readme:
        write_readme(text)
        print("README.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
