"""What a synthesis network is asked for, besides its source images: one object per bundle.

The workflows (:class:`~mrsynth.workflows.SynthesisInference`, the evaluations) load a case,
pick its sources and hand the conditioning object everything method-specific:

- :meth:`Conditioning.inputs`: the network's input volume(s) and extra inputs for a set of
  sources (a target code; an availability mask and a code; prompt tokens);
- :meth:`Conditioning.geometry`: the output grid (the source's, or a new voxel size);
- :meth:`Conditioning.describe`: what was asked, for the output's JSON sidecar.

:class:`TargetCode` (Seq2Seq, VQ-Seq2Seq: one synthesis per source, averaged),
:class:`TargetCodeFusion` (TSF-Seq2Seq: all sources in one call with their mask) and
:class:`TargetPrompt` (TUMSyn: a text prompt and a voxel size) are the three kinds.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import torch
from monai.data.utils import affine_to_spacing

from ..errors import DataError
from ..sequences import sequence_index

__all__ = ["Conditioning", "TargetCode", "TargetCodeFusion", "TargetPrompt", "NAMED_PROTOCOLS", "named_protocol",
           "resampled_geometry"]


def resampled_geometry(affine, shape, spacing) -> tuple[np.ndarray, tuple[int, ...]]:
    """The grid of voxel size about ``spacing`` (mm, one number or one per axis) over the field of
    view of ``(affine, shape)``: same orientation, ``n' = round(n * old / spacing)`` voxels per axis
    (at least 1), and the field of view kept exactly: the outer voxel edges are the old grid's, so
    the voxel size is exactly ``n * old / n'``, which differs from ``spacing`` where ``spacing``
    does not divide the field of view (3 mm over 200 mm: 67 voxels of 200 / 67 mm).

    Returns ``(affine (4, 4), shape)``; ``spacing=None`` returns the input grid.

    Raises:
        ValueError: ``spacing`` is not one positive number or three."""
    a = np.asarray(affine, dtype=np.float64)
    shape = tuple(int(n) for n in shape)
    if spacing is None:
        return a.copy(), shape
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64).ravel(), (3,)) if np.ndim(spacing) == 0 or len(spacing) == 1 \
        else np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(sp > 0):
        raise ValueError(f"spacing must be one positive number or three, got {spacing}")
    old = affine_to_spacing(a, r=3)
    new_shape = tuple(max(1, int(round(n * o / s))) for n, o, s in zip(shape, old, sp))
    # the exact new voxel size keeps the field of view: n' * s' = n * s
    exact = np.array([n * o / m for n, o, m in zip(shape, old, new_shape)])
    direction = a[:3, :3] / old
    out = np.eye(4)
    out[:3, :3] = direction * exact
    corner = a[:3, :3] @ np.full(3, -0.5) + a[:3, 3]  # the outer edge of voxel 0
    out[:3, 3] = corner + out[:3, :3] @ np.full(3, 0.5)
    return out, new_shape


class Conditioning:
    """Base class: what the network needs besides the source volume.

    Attributes:
        name: the target's name in output files (``<case>_<name>_syn.nii.gz``).
        many_to_one: the network takes every source at once (one call per case) instead of one
            call per source.
    """

    name: str = "target"
    many_to_one: bool = False

    def inputs(self, d: dict, sources: list[str], sequences: list[str], device) -> tuple[torch.Tensor, list, dict]:
        """``(volume (1, C, *spatial), extra_args, inferer_kwargs)`` for the network call that
        synthesizes the target from ``sources`` (one source unless :attr:`many_to_one`)."""
        raise NotImplementedError

    def geometry(self, affine, shape) -> tuple[np.ndarray, tuple[int, ...]]:
        """The output grid ``(affine, shape)`` for a source grid (default: the same)."""
        return np.asarray(affine, dtype=np.float64), tuple(int(n) for n in shape)

    def describe(self) -> dict:
        return {"target": self.name}


class TargetCode(Conditioning):
    """A target sequence by its code (Seq2Seq, VQ-Seq2Seq): ``network(x, code)``, once per source.

    Args:
        target: the target sequence's name.
        sequences: the bundle's sequence names in code order.
    """

    def __init__(self, target: str, sequences) -> None:
        self.sequences = [s.lower() for s in sequences]
        self.name = str(target).lower()
        self.code = sequence_index(self.name, self.sequences)

    def inputs(self, d, sources, sequences, device):
        x = torch.as_tensor(d[sources[0]]).float()[None].to(device)
        return x, [torch.tensor([self.code], device=device)], {}

    def describe(self) -> dict:
        return {"target": self.name, "code": self.code}


class TargetCodeFusion(TargetCode):
    """All available sources in one call with their availability (TSF-Seq2Seq):
    ``network(x (1, N, ...), mask (1, N), code)``, absent sequences as zeros."""

    many_to_one = True

    def inputs(self, d, sources, sequences, device):
        ref = torch.as_tensor(d[sources[0]]).float()
        vols = torch.cat([torch.as_tensor(d[s]).float() if s in sources else torch.zeros_like(ref) for s in self.sequences])
        mask = torch.tensor([[float(s in sources) for s in self.sequences]], device=device)
        return vols[None].to(device), [mask, torch.tensor([self.code], device=device)], {}

    def describe(self) -> dict:
        return {"target": self.name, "code": self.code, "fusion": True}


#: ``--target`` names TUMSyn understands: the phantom's preset protocols plus the usual names
NAMED_PROTOCOLS = {"t1": "t1_se", "t2": "t2_se_te120", "pd": "pd_se", "flair": "flair", "t1ce": "spgr_fa30"}


def named_protocol(name: str) -> dict:
    """The acquisition protocol of a ``--target`` name: a key of
    :data:`mrsynth.data.phantom.PROTOCOL_PRESETS` or an alias of :data:`NAMED_PROTOCOLS`
    (``t1ce`` is the T1-weighted gradient echo with contrast agent)."""
    from ..data.phantom import PROTOCOL_PRESETS, check_protocol

    key = str(name).lower()
    preset = NAMED_PROTOCOLS.get(key, key)
    if preset not in PROTOCOL_PRESETS:
        known = sorted(set(PROTOCOL_PRESETS) | set(NAMED_PROTOCOLS))
        raise DataError(f"unknown target protocol {name!r}; known: {', '.join(known)} (or give --target_prompt)")
    p = dict(PROTOCOL_PRESETS[preset])
    if key == "t1ce":
        p["contrast_agent"] = True
    return check_protocol(p)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "prompt"


class TargetPrompt(Conditioning):
    """A target described by a TUMSyn prompt and an output voxel size:
    ``network(x, tokens, coords, acquisition)`` over the new grid, through
    :class:`~mrsynth.inferers.ImplicitSlidingWindowInferer` (``output_shape``).

    Args:
        prompt: the target prompt (text in TUMSyn's format, :class:`~mrsynth.transforms.Prompt`,
            or a sidecar dict); unknown subject fields (age, gender, scanner) are taken from the
            source image's sidecar where it has one, so the subject stays the same.
        target: instead of a prompt, a named protocol (:func:`named_protocol`: ``flair``,
            ``t2_se_te60``, ...), turned into a prompt with its modality and parameters.
        spacing: output voxel size in mm (one number or three); ``None``: the prompt's voxel
            size if it has one, else the source's grid. The prompt's voxel size is set to it.
        tokenizer: a :class:`~mrsynth.transforms.PromptTokenizer` (default: 128 tokens).
        name: the name in output files (default: ``target``, else the prompt's modality).
        inherit: the subject fields filled in from the source's sidecar.
        sidecar_suffix: the case key of a source's sidecar (``<seq>_meta`` in our data lists).
        source_protocol: the network also reads the source's protocol
            (:class:`~mrsynth.networks.TUMSyn` ``source_protocol``): its acquisition vector follows
            the target's, from ``source_prompt`` when given, else from the source's sidecar; a
            source with neither is an error naming its file.
        source_prompt: the source's prompt (text, :class:`~mrsynth.transforms.Prompt` or sidecar
            dict), for ``source_protocol``, used for every case instead of its sidecar.
    """

    def __init__(self, prompt=None, target: str | None = None, spacing=None, tokenizer=None, name: str | None = None,
                 inherit=("age", "gender", "scanner"), sidecar_suffix: str = "_meta", source_protocol: bool = False,
                 source_prompt=None) -> None:
        from ..transforms.prompt import Prompt, PromptTokenizer

        if (prompt is None) == (target is None or target == ""):
            raise ValueError("give exactly one of a target prompt (--target_prompt) and a named target (--target)")
        if prompt is not None:
            self.prompt = Prompt.from_any(prompt)
        else:
            from ..data.phantom import modality_of

            p = named_protocol(target)
            self.prompt = Prompt(modality=modality_of(p), tr=p["TR"], te=p["TE"], ti=p["TI"], fa=p["FA"])
        if spacing is not None and not isinstance(spacing, (list, tuple)):
            spacing = [float(spacing)] * 3
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        if self.spacing is None and self.prompt.voxel_size is not None:
            self.spacing = list(self.prompt.voxel_size)
        self.tokenizer = tokenizer or PromptTokenizer()
        self.inherit, self.sidecar_suffix = tuple(inherit), sidecar_suffix
        self.source_protocol = bool(source_protocol)
        from ..transforms.prompt import source_protocol as protocol

        self.source_prompt = None if source_prompt is None else protocol(source_prompt, "the source prompt (--source_prompt)")
        self.name = name or (str(target).lower() if target else _slug(self.prompt.modality or "prompt"))
        self._text = None

    def prompt_for(self, d: dict, source: str, source_spacing) -> "object":
        """The prompt used for ``source`` of case ``d``: subject fields inherited, voxel size set."""
        from ..transforms.prompt import Prompt

        p = self.prompt
        side = d.get(f"{source}{self.sidecar_suffix}")
        if side is not None and self.inherit:
            try:
                src = Prompt.from_sidecar(side)
            except DataError as e:  # optional metadata: synthesize without it, but say so
                warnings.warn(f"{source}: its sidecar is not used for {', '.join(self.inherit)}: {e}", stacklevel=2)
                src = None
            if src is not None:
                p = p.replace(**{f: getattr(src, f) for f in self.inherit if getattr(p, f) is None})
        spacing = self.spacing if self.spacing is not None else source_spacing
        return p.replace(voxel_size=tuple(float(s) for s in spacing))

    def inputs(self, d, sources, sequences, device):
        from ..transforms.prompt import acquisition_features

        img = d[sources[0]]
        affine = np.asarray(img.affine)
        spacing = affine_to_spacing(affine, r=3).round(4).tolist()
        prompt = self.prompt_for(d, sources[0], spacing)
        self._text = prompt.format()
        tokens = self.tokenizer(self._text).to(device)
        acquisition = acquisition_features(prompt)[None]
        if self.source_protocol:
            acquisition = torch.cat([acquisition, acquisition_features(self.source_protocol_of(d, sources[0]))[None]], 1)
        acquisition = acquisition.to(device)
        _, shape = self.geometry(affine, img.shape[1:])
        return torch.as_tensor(img).float()[None].to(device), [tokens, acquisition], {"output_shape": shape}

    def source_protocol_of(self, d: dict, source: str):
        """The source's prompt for a ``source_protocol`` network: ``source_prompt``, else its sidecar's."""
        from ..transforms.prompt import Prompt

        if self.source_prompt is not None:
            return self.source_prompt
        side = d.get(f"{source}{self.sidecar_suffix}")
        img = d.get(source)
        path = getattr(img, "meta", {}).get("filename_or_obj") if img is not None else None
        if side is None:
            raise DataError(f"this model reads the source's protocol (source_protocol), and source {source!r} has no "
                            "JSON sidecar: add one (RepetitionTime, EchoTime, ...) or give --source_prompt",
                            path or d.get("case"))
        from ..transforms.prompt import source_protocol as protocol

        try:
            prompt = Prompt.from_sidecar(side)
        except DataError as e:  # PromptError too
            raise DataError(f"source {source!r}: its sidecar's protocol is needed (source_protocol): {e}",
                            path or d.get("case")) from e
        return protocol(prompt, f"the sidecar of source {source!r}", path or d.get("case"))

    def geometry(self, affine, shape):
        return resampled_geometry(affine, shape, self.spacing)

    def describe(self) -> dict:
        return {"target": self.name, "prompt": self._text or self.prompt.format(), "spacing": self.spacing}
