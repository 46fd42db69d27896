"""Synthesize a target sequence for every case of a folder, whatever sequences each case has."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose

from ..data import list_cases
from ..errors import DataError, find_data_error
from ..handlers.progress import CaseProgress
from ..io import save_json, save_nifti
from ..sequences import sequence_index
from ..transforms import PAPER, LoadSequencesd, ScalePercentiled, invert_range, scaled_signed, signed_range
from .conditioning import Conditioning, TargetCode, TargetCodeFusion

__all__ = ["SynthesisInference", "synthesize", "synthesize_volume", "load_weights"]

logger = logging.getLogger(__name__)


def load_weights(network: torch.nn.Module, path, map_location="cpu", hint: str | None = None) -> torch.nn.Module:
    """Load a state dict saved by a bundle (``models/model.pt``) into ``network`` and return it.

    Args:
        hint: what to do when the file is missing (default: train this bundle or pass --ckpt_path).

    Raises:
        FileNotFoundError: naming the path and ``hint``, when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no trained weights. {hint or 'Train the bundle first (configs/train.json) or pass --ckpt_path'}"
        )
    state = torch.load(str(path), map_location=map_location, weights_only=True)
    if isinstance(state, dict) and "model" in state and not any(k.endswith("weight") for k in state):
        state = state["model"]  # a full training checkpoint
    network.load_state_dict(state)
    return network


@torch.no_grad()
def synthesize_volume(network, inferer, volume: torch.Tensor, code: int, device, mask=None) -> torch.Tensor:
    """Translate one normalised volume ``(1, H, W, D)`` into the sequence ``code``; returns
    ``(1, H, W, D)`` on the CPU.

    For a many-to-one network, ``volume`` is ``(N, H, W, D)`` (one per sequence, zeros where
    absent) and ``mask`` the ``(N,)`` availability: the network is called as
    ``network(slabs, mask, code)``."""
    x = torch.as_tensor(volume).float()[None].to(device)
    c = torch.tensor([code], device=device)
    if mask is None:
        return inferer(x, network, c)[0].cpu()
    m = torch.as_tensor(mask, dtype=torch.float32, device=device)[None]
    return inferer(x, network, m, c)[0].cpu()


@torch.no_grad()
def synthesize(network, inferer, condition, d: dict, sources: list[str], sequences, device) -> torch.Tensor:
    """The synthesis that ``condition`` (:mod:`mrsynth.workflows.conditioning`) asks for, from the
    preprocessed case ``d``: one call with every source for a many-to-one condition, else the
    mean of one call per source. Returns ``(1, *output_spatial)`` on the CPU."""
    groups = [sources] if condition.many_to_one else [[s] for s in sources]
    preds = []
    for group in groups:
        x, args, kwargs = condition.inputs(d, group, sequences, device)
        preds.append(inferer(x, network, *args, **kwargs)[0].float().cpu())
    return torch.stack(preds).mean(0)


class SynthesisInference:
    """For every case under ``dataset_dir``, synthesize ``target`` and write
    ``<output_dir>/<case>/<case>_<target>_syn.nii.gz`` in the input's intensity scale, on the grid
    the conditioning asks for (the input's, unless a new voxel size is asked for).

    Args:
        network: the synthesis network (weights loaded from ``ckpt_path`` at :meth:`run`).
        inferer: whole-volume inferer, ``inferer(x (1, 1, H, W, D), network, code)``.
        sequences: the bundle's sequence names in code order.
        target: the sequence to synthesize (with ``condition``: only its name in file names).
        dataset_dir: a BraTS- or nnSeq2Seq-layout folder.
        output_dir: where the syntheses go.
        source: ``"all"`` (default: the mean of the syntheses from every available sequence
            other than the target), a sequence name, or a list of names in order of preference
            (the first available one is used). A case that has only the target itself is
            reconstructed from it.
        ckpt_path: the weights; ``None`` uses the network as it is.
        device: torch device.
        preprocessing: loading and normalisation (default: :class:`LoadSequencesd` and the
            papers' [-1, 1] scaling); the output is mapped back with the first source's scale.
        many_to_one: the network fuses all sources in one call (TSF-Seq2Seq): it gets every
            source volume (zeros for the absent ones) and the availability mask, instead of one
            synthesis per source averaged (:class:`~mrsynth.workflows.TargetCodeFusion`).
        condition: what the network is asked for (:mod:`mrsynth.workflows.conditioning`);
            default :class:`~mrsynth.workflows.TargetCode` of ``target`` (or
            :class:`~mrsynth.workflows.TargetCodeFusion` with ``many_to_one``). TUMSyn passes a
            :class:`~mrsynth.workflows.TargetPrompt`.
        output_grid: a sequence name: write each synthesis on the grid of that input image of the
            case (its voxel size, orientation and field of view; trilinear resampling from the
            grid the network ran on). ``None``: the first source's grid (or the conditioning's).

    A source file that cannot be used (unreadable, 4D, constant, NaN) is left out of its case with
    a warning naming it (``source="all"``; the sidecar lists it under ``left_out``) and the case is
    synthesized from the others; a case with no usable source is skipped with a warning naming the
    file; the others are written, then :meth:`run` raises :class:`DataError` listing the skipped
    cases.
    """

    def __init__(self, network, inferer, sequences, target, dataset_dir, output_dir, source="all",
                 ckpt_path=None, device="cpu", preprocessing=None, layout="auto", many_to_one: bool = False,
                 condition: Conditioning | None = None, output_grid: str | None = None):
        self.sequences = [s.lower() for s in sequences]
        if condition is None:
            condition = (TargetCodeFusion if many_to_one else TargetCode)(target, self.sequences)
        self.condition = condition
        self.target = str(target).lower() if target else condition.name
        if not isinstance(source, str) or source != "all":
            for s in [source] if isinstance(source, str) else source:
                sequence_index(s, self.sequences)
        self.network, self.inferer, self.source = network, inferer, source
        self.dataset_dir, self.output_dir, self.layout = Path(dataset_dir), Path(output_dir), layout
        self.ckpt_path, self.device = ckpt_path, torch.device(device)
        self.output_grid = None if output_grid in (None, "", "none") else str(output_grid).lower()
        self.preprocessing = preprocessing or Compose(
            [LoadSequencesd(self.sequences), ScalePercentiled(self.sequences, **PAPER)]
        )
        #: the target is a signed map (ScalePercentiled signed_keys): mapped back on (-h, h) of the source's bound h
        self.signed_target = scaled_signed(self.preprocessing, self.target)

    def sources_for(self, case: dict) -> list[str]:
        """The sequences used as sources for ``case``."""
        present = [s for s in self.sequences if s in case]
        others = [s for s in present if s != self.target]
        if self.source == "all":
            return others or present
        prefs = [self.source] if isinstance(self.source, str) else list(self.source)
        for s in prefs:
            if s in present:
                return [s]
        raise DataError(f"none of the requested source sequence(s) {prefs} is present (has {present})", case.get("case"))

    def output_path(self, case_id: str) -> Path:
        return self.output_dir / case_id / f"{case_id}_{self.target}_syn.nii.gz"

    def run(self) -> list[Path]:
        if self.ckpt_path is not None:
            load_weights(self.network, self.ckpt_path, map_location=self.device)
        self.network.to(self.device).eval()
        cases = list_cases(self.dataset_dir, self.sequences, layout=self.layout, check_geometry=False)
        written, failed = [], []
        progress = CaseProgress(len(cases))
        for case in cases:
            try:
                written.append(self._one(case))
                progress.step(case["case"], "written")
            except Exception as e:
                err = find_data_error(e)
                if err is None:
                    raise
                warnings.warn(f"case {case['case']} skipped: {err}", stacklevel=2)
                failed.append(str(err))
                progress.step(case["case"], "skipped")
        if failed:
            raise DataError(f"{len(failed)} case(s) skipped, {len(written)} written:\n  " + "\n  ".join(failed),
                            self.dataset_dir)
        return written

    def _load(self, case: dict, sources: list[str]) -> tuple[dict, list[str], list[str]]:
        """Preprocess ``sources`` of ``case``. With ``source="all"``, a source whose file cannot be
        used (unreadable, 4D, constant, NaN) is dropped with a warning naming it and the case goes on
        with the others; returns ``(data, sources used, what was dropped and why)``."""
        sources, dropped = list(sources), []
        while True:
            keys = ["case", *sources, *(k for s in sources for k in (f"{s}_meta",) if k in case)]
            try:
                return self.preprocessing({k: case[k] for k in keys}), sources, dropped
            except Exception as e:
                err = find_data_error(e)
                bad = [s for s in sources if err is not None and err.path is not None
                       and Path(err.path) == Path(case[s])]
                if self.source != "all" or not bad or len(sources) == 1:
                    raise
                logger.warning("case %s: source %s left out: %s", case["case"], bad[0], err)
                dropped.append(f"{bad[0]}: {err}")
                sources.remove(bad[0])

    def _on_grid_of(self, case: dict, image: np.ndarray, affine) -> tuple[np.ndarray, np.ndarray]:
        """``image`` (on ``affine``) resampled onto the grid of the case's ``output_grid`` image."""
        import nibabel as nib
        from monai.data import MetaTensor
        from monai.transforms import ResampleToMatch

        name = self.output_grid
        if name not in case:
            present = [s for s in self.sequences if s in case]
            raise DataError(f"--output_grid {name}: the case has no {name} image (it has {', '.join(present)})",
                            case.get("case"))
        header = nib.load(case[name])
        dst_affine, dst_shape = np.asarray(header.affine, dtype=np.float64), tuple(int(n) for n in header.shape[:3])
        src = MetaTensor(torch.as_tensor(np.asarray(image, dtype=np.float32))[None], affine=torch.as_tensor(affine))
        dst = MetaTensor(torch.zeros((1, *dst_shape)), affine=torch.as_tensor(dst_affine))
        out = ResampleToMatch(mode="bilinear", padding_mode="zeros")(src, dst)
        return np.asarray(out[0].detach().cpu().numpy()), dst_affine

    def _one(self, case: dict) -> Path:
        d, sources, dropped = self._load(case, self.sources_for(case))
        pred = synthesize(self.network, self.inferer, self.condition, d, sources, self.sequences, self.device)[0].numpy()
        lo, hi, b_min, b_max = d[f"{sources[0]}_scale"]
        if self.signed_target:
            lo, hi = signed_range(lo, hi)
        ref = d[sources[0]]
        affine, shape = self.condition.geometry(np.asarray(ref.affine), ref.shape[1:])
        if tuple(pred.shape) != tuple(shape):
            raise RuntimeError(f"the network returned shape {tuple(pred.shape)} for an output grid of {tuple(shape)}")
        image = invert_range(pred, lo, hi, b_min, b_max)
        if self.output_grid is not None:
            image, affine = self._on_grid_of(case, image, affine)
        out = self.output_path(case["case"])
        save_nifti(image, affine, out)
        save_json({"case": case["case"], **self.condition.describe(), "target": self.target, "sources": sources,
                   "source_files": [case[s] for s in sources], "left_out": dropped, "intensity_scale_of": sources[0], "grid_of": self.output_grid or sources[0],
                   "scale": [lo, hi, b_min, b_max]}, out.with_name(out.name.replace(".nii.gz", ".json")))
        logger.info("%s: %s <- %s", out, self.target, "+".join(sources))
        return out
