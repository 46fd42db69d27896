"""Text prompts in TUMSyn's format (text-guided MR synthesis) and their tokenisation.

A prompt describes the subject and the acquisition of one image, fields in this order,
separated by ``"; "``::

    Age: 12; Gender: M; Scanner: 3.0 Siemens; Modality: T1w; Voxel size: (0.8, 0.8, 0.8); Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree): (2500.0, 2.2, 1000.0, 8.0)

An unknown value is written ``None`` (``Age: None``, ``Voxel size: None``, and inside the
parameter tuple ``(2500.0, 2.2, None, 8.0)``).

- :class:`Prompt`: the fields, validated; :meth:`Prompt.format` writes the canonical text,
  :meth:`Prompt.parse` reads it back (tolerant of order, case, whitespace, missing fields),
  :meth:`Prompt.from_sidecar` reads a JSON sidecar (the phantom's keys or BIDS keys).
- :class:`PromptTokenizer`: CLIP's byte-pair encoding (``open_clip``'s ``SimpleTokenizer``,
  whose vocabulary ships with the package) into a fixed-length ``LongTensor``; it never
  truncates: a prompt longer than the context raises :class:`PromptError`.
- :func:`acquisition_features`: the prompt's TR, TE, TI and flip angle as a fixed-length
  vector of numbers (see there), for a network that reads them beside the tokens.
- :class:`PromptFromSidecard`, :class:`TokenizePromptd`, :class:`AcquisitionFeaturesd`: the
  MONAI map transforms.

Token counts (CLIP BPE splits every digit and punctuation mark into its own token; counts
include the start- and end-of-text tokens):

- the example above: **85** tokens. TUMSyn's reference code uses a 90-token context, which
  leaves 5 tokens of margin for this prompt and overflows for longer ones;
- a long realistic clinical prompt, ``Age: 100; Gender: F; Scanner: 1.5 Philips Ingenia
  Elition X; Modality: FLAIR; Voxel size: (0.94, 0.94, 5.0); Imaging parameter ...: (11000.0,
  140.0, 2800.0, 90.0)``: **96** tokens (vendor/model strings such as ``3.0 GE Discovery
  MR750w`` or ``3.0 United Imaging uMR 790`` also give 96);
- the same with modality ``T2*w`` and parameters at full 2-decimal precision,
  ``(11000.0, 142.86, 2851.25, 90.0)``: **101** tokens.

The default context length is therefore 128: 27 tokens of margin over the longest prompt
above (the numbers are rounded to 2 decimals, so a field cannot grow without bound).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..errors import DataError

__all__ = [
    "PromptError",
    "Prompt",
    "PromptTokenizer",
    "PromptFromSidecard",
    "TokenizePromptd",
    "AcquisitionFeaturesd",
    "acquisition_features",
    "ACQUISITION_FEATURES",
    "NUMBER_FEATURES",
    "SIGNAL_FEATURES",
    "signal_features",
    "sequence_kind",
    "format_prompt",
    "DEFAULT_CONTEXT_LENGTH",
    "PARAMETER_FIELD",
]

#: default number of tokens per prompt (see the module docstring for the measured counts)
DEFAULT_CONTEXT_LENGTH = 128

#: the canonical name of the acquisition-parameter field
PARAMETER_FIELD = "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree)"

#: canonical field name -> Prompt attribute(s), in the canonical order
_CANONICAL = (
    ("Age", "age"),
    ("Gender", "gender"),
    ("Scanner", "scanner"),
    ("Modality", "modality"),
    ("Voxel size", "voxel_size"),
    (PARAMETER_FIELD, "parameters"),
)
_PARAMETERS = ("tr", "te", "ti", "fa")


def _norm_name(name: str) -> str:
    """A field name as looked up: lower case, without any whitespace."""
    return re.sub(r"\s+", "", name).lower()


#: accepted field names (normalised by :func:`_norm_name`) -> Prompt attribute
_ALIASES = {
    "age": "age",
    "gender": "gender",
    "sex": "gender",
    "scanner": "scanner",
    "modality": "modality",
    "voxelsize": "voxel_size",
    _norm_name(PARAMETER_FIELD): "parameters",
    "tr/te/ti/fa": "parameters",
    "tr": "tr",
    "tr(ms)": "tr",
    "te": "te",
    "te(ms)": "te",
    "ti": "ti",
    "ti(ms)": "ti",
    "fa": "fa",
    "fa(degree)": "fa",
    "fa(deg)": "fa",
}
_KNOWN_FIELDS = "Age, Gender, Scanner, Modality, Voxel size, " + PARAMETER_FIELD + " (or TR/TE/TI/FA), TR, TE, TI, FA"
_LABEL = {"age": "Age", "gender": "Gender", "scanner": "Scanner", "modality": "Modality", "voxel_size": "Voxel size",
          "parameters": PARAMETER_FIELD, "tr": "TR", "te": "TE", "ti": "TI", "fa": "FA"}

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_GENDERS = {"m": "M", "male": "M", "f": "F", "female": "F"}


class PromptError(DataError):
    """A prompt cannot be used: malformed text, an unknown field, a value out of range, or a
    prompt longer than the tokenizer's context. The message names the field and the bad text;
    ``field`` holds the field's name where one is to blame, ``path`` the sidecar file where one
    was read."""

    def __init__(self, message: str, path=None, field: str | None = None):
        self.field = field
        super().__init__(message, path)

    def __reduce__(self):
        # keep the exception picklable (DataLoader workers send it to the main process)
        return _rebuild_prompt_error, (self.args[0], self.path, self.field)


def _rebuild_prompt_error(message, path, field):
    err = PromptError.__new__(PromptError)
    ValueError.__init__(err, message)
    err.path, err.field = path, field
    return err


# ---------------------------------------------------------------------------------------------
# Value checks shared by the constructor, the parser and the sidecar reader
# ---------------------------------------------------------------------------------------------
def _real(value, label: str) -> float:
    """``value`` as a finite float; :class:`PromptError` naming ``label`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PromptError(f"{label} must be a number, got {value!r}", field=label)
    value = float(value)
    if not math.isfinite(value):
        raise PromptError(f"{label} must be finite, got {value!r}", field=label)
    return value


def _text(value, label: str) -> str | None:
    """A free-text value (scanner, modality), stripped; ``"None"`` means unknown."""
    if not isinstance(value, str):
        raise PromptError(f"{label} must be a string, got {value!r}", field=label)
    value = value.strip()
    if value.lower() == "none":
        return None
    if not value:
        raise PromptError(f"{label} is empty (write None for an unknown value)", field=label)
    if ";" in value or "\n" in value or "\r" in value:
        raise PromptError(f"{label} must not contain ';' or a line break, got {value!r}", field=label)
    return value


def _fmt(value: float) -> str:
    """A number as written in a prompt: rounded to 2 decimals, Python's float repr."""
    return repr(round(float(value), 2) + 0.0)  # + 0.0 turns -0.0 into 0.0


def _fmt_opt(value) -> str:
    return "None" if value is None else _fmt(value)


# ---------------------------------------------------------------------------------------------
# Prompt
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    """The fields of a TUMSyn prompt; any of them may be ``None`` (unknown).

    Args:
        age: age in whole years, 0-120 (an integral float such as ``34.0`` is accepted).
        gender: ``"M"`` or ``"F"`` (``"m"``, ``"male"``, ``"female"`` are normalised).
        scanner: field strength and vendor (model), e.g. ``"3.0 Siemens"``.
        modality: e.g. ``"T1w"``, ``"T2w"``, ``"FLAIR"``, ``"T1Gd"``.
        voxel_size: three positive sizes in mm.
        tr, te, ti: repetition, echo and inversion time in ms, ``>= 0``.
        fa: flip angle in degrees, in ``(0, 180]``.

    The text carries numbers at 2-decimal precision, so sizes and the flip angle must stay
    positive after rounding (``>= 0.005``). Scanner and modality must not contain ``;`` (the
    field separator). ``Prompt.parse(p.format())`` equals ``p`` with every number rounded to
    2 decimals (equals ``p`` itself when its numbers have at most 2 decimals).

    Raises:
        PromptError: a value out of range or of the wrong type, naming the field.
    """

    age: int | None = None
    gender: str | None = None
    scanner: str | None = None
    modality: str | None = None
    voxel_size: tuple[float, float, float] | None = None
    tr: float | None = None
    te: float | None = None
    ti: float | None = None
    fa: float | None = None

    def __post_init__(self):
        put = object.__setattr__  # frozen: normalise in place once, here
        if self.age is not None:
            age = self.age
            if isinstance(age, bool) or not isinstance(age, numbers.Real):
                raise PromptError(f"Age must be a whole number of years, got {age!r}", field="Age")
            if not isinstance(age, numbers.Integral):
                if not (math.isfinite(age) and float(age).is_integer()):
                    raise PromptError(f"Age must be a whole number of years, got {age!r}", field="Age")
            age = int(age)
            if not 0 <= age <= 120:
                raise PromptError(f"Age must be in 0-120 years, got {age}", field="Age")
            put(self, "age", age)
        if self.gender is not None:
            g = _GENDERS.get(str(self.gender).strip().lower()) if isinstance(self.gender, str) else None
            if g is None:
                raise PromptError(f"Gender must be 'M' or 'F', got {self.gender!r}", field="Gender")
            put(self, "gender", g)
        for name in ("scanner", "modality"):
            value = getattr(self, name)
            if value is not None:
                put(self, name, _text(value, _LABEL[name]))
        if self.voxel_size is not None:
            vs = self.voxel_size
            if isinstance(vs, (str, bytes)) or not hasattr(vs, "__len__"):
                raise PromptError(f"Voxel size must be 3 sizes in mm, got {vs!r}", field="Voxel size")
            vs = tuple(vs)
            if len(vs) != 3:
                raise PromptError(f"Voxel size must have exactly 3 values, got {len(vs)}: {vs!r}", field="Voxel size")
            vs = tuple(_real(v, "Voxel size") for v in vs)
            if not all(round(v, 2) > 0 for v in vs):
                raise PromptError(f"Voxel size must be > 0 mm (at 2-decimal precision), got {vs!r}", field="Voxel size")
            put(self, "voxel_size", vs)
        for name in ("tr", "te", "ti"):
            value = getattr(self, name)
            if value is not None:
                label = _LABEL[name]
                value = _real(value, label)
                if value < 0:
                    raise PromptError(f"{label} must be >= 0 ms, got {value!r}", field=label)
                put(self, name, value)
        if self.fa is not None:
            fa = _real(self.fa, "FA")
            if not (round(fa, 2) > 0 and fa <= 180):
                raise PromptError(f"FA must be in (0, 180] degrees (at 2-decimal precision), got {fa!r}", field="FA")
            put(self, "fa", fa)

    # -- text -------------------------------------------------------------------------------
    def format(self) -> str:
        """The canonical prompt text: every field in TUMSyn's order, ``None`` where unknown,
        numbers rounded to 2 decimals (``2500`` -> ``2500.0``, ``0.9375`` -> ``0.94``)."""
        vs = "None" if self.voxel_size is None else "(" + ", ".join(_fmt(v) for v in self.voxel_size) + ")"
        params = "(" + ", ".join(_fmt_opt(getattr(self, p)) for p in _PARAMETERS) + ")"
        return "; ".join((
            f"Age: {'None' if self.age is None else self.age}",
            f"Gender: {self.gender}",
            f"Scanner: {self.scanner}",
            f"Modality: {self.modality}",
            f"Voxel size: {vs}",
            f"{PARAMETER_FIELD}: {params}",
        ))

    def __str__(self) -> str:
        return self.format()

    @classmethod
    def parse(cls, text: str) -> Prompt:
        """Read a prompt text.

        Accepted: the canonical text of :meth:`format`; fields in any order and any subset
        (missing fields are ``None``); case-insensitive field names; any whitespace around
        names, values and separators; an optional trailing ``;``. The parameter field may be
        named ``TR/TE/TI/FA``, and single ``TR``, ``TE``, ``TI``, ``FA`` fields are accepted
        too (``TR: 2500; TE: 90``). Values ``None`` (any case) mean unknown.

        Raises:
            PromptError: empty text, a segment without ``:``, an unknown or repeated field
                (the message lists the known fields), or a value that does not parse or is out
                of range; the message names the field and quotes the bad text.
        """
        if not isinstance(text, str):
            raise PromptError(f"a prompt must be a string, got {type(text).__name__}")
        if not text.strip():
            raise PromptError("empty prompt")
        segments = [s.strip() for s in text.split(";")]
        if not segments[-1]:
            segments.pop()  # the optional trailing ";"
        values: dict = {}
        given: dict[str, str] = {}  # attribute -> field name as written (for "given twice")
        for seg in segments:
            if not seg:
                raise PromptError(f"empty field between two ';' in {text!r}")
            name, sep, raw = seg.partition(":")
            name, raw = name.strip(), raw.strip()
            if not sep:
                raise PromptError(f"expected 'Field: value', got {seg!r}")
            attr = _ALIASES.get(_norm_name(name))
            if attr is None:
                raise PromptError(f"unknown field {name!r} in {seg!r}; known fields: {_KNOWN_FIELDS}", field=name)
            targets = _PARAMETERS if attr == "parameters" else (attr,)
            for t in targets:
                if t in given:
                    raise PromptError(f"field {name!r} repeats {given[t]!r} (given twice) in {text!r}", field=name)
                given[t] = name
            if attr == "parameters":
                values.update(zip(_PARAMETERS, _parse_tuple(raw, name, 4, allow_none=True)))
            elif attr == "voxel_size":
                values["voxel_size"] = None if raw.lower() == "none" else _parse_tuple(raw, name, 3)
            elif attr == "age":
                if raw.lower() == "none":
                    values["age"] = None
                elif re.fullmatch(r"[+-]?\d+(?:\.0*)?", raw):
                    values["age"] = int(float(raw))
                else:
                    raise PromptError(f"field {name!r}: cannot read {raw!r} as whole years", field=name)
            elif attr == "gender":
                if raw.lower() == "none":
                    values["gender"] = None
                elif raw.lower() in _GENDERS:
                    values["gender"] = _GENDERS[raw.lower()]
                else:
                    raise PromptError(f"field {name!r}: expected M or F, got {raw!r}", field=name)
            elif attr in ("scanner", "modality"):
                values[attr] = raw
            else:  # a single parameter
                values[attr] = _parse_number(raw, name, allow_none=True)
        try:
            return cls(**values)
        except PromptError as e:
            raise PromptError(f"{e} in {text!r}", field=e.field) from None

    # -- other sources ------------------------------------------------------------------------
    @classmethod
    def from_sidecar(cls, sidecar: Mapping | str | PathLike) -> Prompt:
        """Read the prompt fields of a JSON sidecar (a dict, or the path to a ``.json`` file).

        Keys, as written by :mod:`mrsynth.data.phantom`: ``age``, ``sex``, ``scanner``
        (``"3.0 Siemens"``), ``modality``, ``voxel_size`` (3 numbers), ``TR``, ``TE``, ``TI``
        (ms), ``FA`` (degrees); ``null`` or a missing key is unknown. Where one of these is
        missing or ``null``, the BIDS key is used where present: ``RepetitionTime``,
        ``EchoTime``, ``InversionTime`` (seconds, converted to ms), ``FlipAngle``,
        ``MagneticFieldStrength`` and ``Manufacturer`` (``3``, ``"SIEMENS"`` ->
        ``"3.0 Siemens"``), ``PatientAge`` (years, or DICOM's ``"034Y"``/``"006M"``),
        ``PatientSex`` (``"O"`` is unknown). Other keys are ignored.

        Raises:
            DataError: the file is missing, unreadable, not JSON or not a JSON object.
            PromptError: a value of the wrong type or out of range, naming the key (and the
                file, when a path was given).
        """
        path = None
        if isinstance(sidecar, (str, PathLike)):
            path = Path(sidecar)
            try:
                with open(path, encoding="utf-8") as f:
                    sidecar = json.load(f)
            except FileNotFoundError:
                raise DataError("sidecar JSON not found", path) from None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"cannot read the sidecar JSON: {e}", path) from None
        if not isinstance(sidecar, Mapping):
            raise DataError(f"a sidecar must be a JSON object (dict), got {type(sidecar).__name__}", path)
        try:
            return cls(**_sidecar_fields(sidecar))
        except PromptError as e:
            raise PromptError(str(e), path, field=e.field) from None

    @classmethod
    def from_any(cls, value) -> Prompt:
        """A :class:`Prompt` from a prompt (itself), a text (:meth:`parse`), a dict or a
        :class:`~pathlib.Path` (:meth:`from_sidecar`). A plain ``str`` is always prompt text;
        wrap a sidecar's path in :class:`~pathlib.Path`."""
        if isinstance(value, Prompt):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, (Mapping, PathLike)):
            return cls.from_sidecar(value)
        raise TypeError(f"cannot make a Prompt from {type(value).__name__} (expected Prompt, str, dict or Path)")

    def replace(self, **changes) -> Prompt:
        """A copy with ``changes`` applied (validated like the constructor)."""
        return dataclasses.replace(self, **changes)


def format_prompt(**fields) -> str:
    """``Prompt(**fields).format()``: the canonical text of the given fields."""
    return Prompt(**fields).format()


# ---------------------------------------------------------------------------------------------
# Parsing helpers
# ---------------------------------------------------------------------------------------------
def _parse_number(raw: str, name: str, allow_none: bool = False):
    raw = raw.strip()
    if allow_none and raw.lower() == "none":
        return None
    if not _NUMBER.fullmatch(raw):
        raise PromptError(f"field {name!r}: cannot read {raw!r} as a number", field=name)
    return float(raw)


def _parse_tuple(raw: str, name: str, n: int, allow_none: bool = False) -> tuple:
    """``"(a, b, ...)"`` (brackets optional, round or square) -> a tuple of ``n`` numbers."""
    inner = raw.strip()
    if inner and inner[0] in "([":
        close = ")" if inner[0] == "(" else "]"
        if not inner.endswith(close):
            raise PromptError(f"field {name!r}: unbalanced brackets in {raw!r}", field=name)
        inner = inner[1:-1]
    items = [s.strip() for s in inner.split(",")]
    if len(items) != n or not all(items):
        raise PromptError(f"field {name!r}: expected {n} comma-separated values, got {raw!r}", field=name)
    try:
        return tuple(_parse_number(s, name, allow_none) for s in items)
    except PromptError:
        raise PromptError(f"field {name!r}: expected {n} numbers{' or None' if allow_none else ''}, got {raw!r}",
                          field=name) from None


_VENDOR_NAMES = (("siemens", "Siemens"), ("ge", "GE"), ("philips", "Philips"), ("toshiba", "Toshiba"),
                 ("canon", "Canon"), ("hitachi", "Hitachi"), ("united imaging", "UIH"), ("uih", "UIH"))


def _vendor(manufacturer: str) -> str:
    """A BIDS/DICOM ``Manufacturer`` as a short vendor name: ``"SIEMENS"`` -> ``"Siemens"``,
    ``"GE MEDICAL SYSTEMS"`` -> ``"GE"``, ``"Philips Medical Systems"`` -> ``"Philips"``;
    other names are kept as written."""
    m = " ".join(manufacturer.split())
    low = m.lower()
    for prefix, short in _VENDOR_NAMES:
        if low == prefix or low.startswith(prefix + " ") or low.startswith(prefix + "_"):
            return short
    return m


def _dicom_age(value, key: str):
    """``PatientAge`` in years: a number, or DICOM's ``nnnD/W/M/Y`` string (whole years)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([DWMYdwmy]?)\s*", value)
        if m is None:
            raise PromptError(f"{key}: cannot read {value!r} as an age", field=key)
        n, unit = int(m.group(1)), (m.group(2) or "Y").upper()
        return {"Y": n, "M": n // 12, "W": n // 52, "D": n // 365}[unit]
    return _sidecar_age(value, key)


def _sidecar_age(value, key: str):
    value = _sidecar_number(value, key)
    return None if value is None else int(math.floor(value))  # completed years


def _sidecar_number(value, key: str):
    """A sidecar number: JSON number or numeric string; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        return _parse_number(value, key, allow_none=True)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PromptError(f"{key}: expected a number, got {value!r}", field=key)
    return float(value)


def _seconds_to_ms(value, key: str):
    value = _sidecar_number(value, key)
    return None if value is None else round(value * 1000.0, 6)  # drop binary noise (0.0022 s -> 2.2 ms)


def _sidecar_fields(side: Mapping) -> dict:
    """Prompt keyword arguments from a sidecar dict (ours first, BIDS keys as fallback)."""

    def pick(ours, bids=None, convert_ours=None, convert_bids=None):
        if side.get(ours) is not None:
            return convert_ours(side[ours], ours) if convert_ours else side[ours]
        if bids is not None and side.get(bids) is not None:
            return convert_bids(side[bids], bids)
        return None

    def sex(value, key):
        if isinstance(value, str) and value.strip().upper() in ("O", ""):
            return None  # DICOM "other": not representable in the prompt
        if not isinstance(value, str) or value.strip().lower() not in _GENDERS:
            raise PromptError(f"{key}: expected M or F, got {value!r}", field=key)
        return _GENDERS[value.strip().lower()]

    def text(value, key):
        if not isinstance(value, str):
            raise PromptError(f"{key}: expected a string, got {value!r}", field=key)
        return value

    def voxel_size(value, key):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise PromptError(f"{key}: expected a list of 3 sizes in mm, got {value!r}", field=key)
        if len(value) != 3:
            raise PromptError(f"{key}: expected exactly 3 sizes, got {len(value)}: {value!r}", field=key)
        return tuple(_sidecar_number(v, key) for v in value)

    scanner = pick("scanner", convert_ours=text)
    if scanner is None:
        fs = _sidecar_number(side.get("MagneticFieldStrength"), "MagneticFieldStrength")
        maker = side.get("Manufacturer")
        if maker is not None:
            maker = _vendor(text(maker, "Manufacturer"))
        parts = ([f"{fs:.1f}"] if fs is not None else []) + ([maker] if maker else [])
        scanner = " ".join(parts) or None
    fields = dict(
        age=pick("age", "PatientAge", _sidecar_age, _dicom_age),
        gender=pick("sex", "PatientSex", sex, sex),
        scanner=scanner,
        modality=pick("modality", convert_ours=text),
        voxel_size=pick("voxel_size", convert_ours=voxel_size),
        tr=pick("TR", "RepetitionTime", _sidecar_number, _seconds_to_ms),
        te=pick("TE", "EchoTime", _sidecar_number, _seconds_to_ms),
        ti=pick("TI", "InversionTime", _sidecar_number, _seconds_to_ms),
        fa=pick("FA", "FlipAngle", _sidecar_number, _sidecar_number),
    )
    if fields["voxel_size"] is not None and None in fields["voxel_size"]:
        raise PromptError(f"voxel_size: null inside {side.get('voxel_size')!r}", field="voxel_size")
    return fields


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
class PromptTokenizer:
    """CLIP's byte-pair encoding of prompts into fixed-length token rows.

    Wraps ``open_clip.tokenizer.SimpleTokenizer`` (its 49408-token vocabulary ships with
    ``open_clip``; nothing is downloaded). The text is lower-cased and split as CLIP does; each
    row is ``[start-of-text, tokens..., end-of-text, 0, 0, ...]``. The end-of-text token has the
    highest id of the vocabulary, so a text encoder finds it with ``argmax`` over the row.

    ``open_clip`` is imported on first use (importing it takes seconds), and the BPE tables are
    dropped when pickling and rebuilt on first use, so the tokenizer is cheap to send to
    DataLoader workers.

    Args:
        context_length: tokens per row, start and end included (default 128, see the module
            docstring for measured prompt lengths).

    Raises:
        PromptError: (when called) a prompt needs more than ``context_length`` tokens; it is
            never truncated.
    """

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH):
        if isinstance(context_length, bool) or not isinstance(context_length, numbers.Integral) or context_length < 2:
            raise ValueError(f"context_length must be an integer >= 2 (start and end tokens), got {context_length!r}")
        self.context_length = int(context_length)
        self._tokenizer = None

    @property
    def tokenizer(self):
        """The wrapped ``SimpleTokenizer``, created on first use."""
        if self._tokenizer is None:
            from open_clip.tokenizer import SimpleTokenizer

            self._tokenizer = SimpleTokenizer(context_length=self.context_length)
        return self._tokenizer

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tokenizer"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(context_length={self.context_length})"

    @property
    def vocab_size(self) -> int:
        """Number of token ids (49408 for CLIP's vocabulary)."""
        return len(self.tokenizer.encoder)

    @property
    def sot_token_id(self) -> int:
        """Id of the start-of-text token (first in every row)."""
        return int(self.tokenizer.sot_token_id)

    @property
    def eot_token_id(self) -> int:
        """Id of the end-of-text token (after the last text token; the vocabulary's highest id)."""
        return int(self.tokenizer.eot_token_id)

    @staticmethod
    def _text(text) -> str:
        if isinstance(text, Prompt):
            return text.format()
        if isinstance(text, str):
            return text
        raise TypeError(f"expected a prompt text or a Prompt, got {type(text).__name__}")

    def encode(self, text: str | Prompt) -> list[int]:
        """The token ids of ``text``, start and end tokens included, without padding.

        Raises:
            PromptError: more than ``context_length`` tokens.
        """
        text = self._text(text)
        ids = [self.sot_token_id, *self.tokenizer.encode(text), self.eot_token_id]
        if len(ids) > self.context_length:
            raise PromptError(
                f"prompt needs {len(ids)} tokens (start and end included) but the context length is "
                f"{self.context_length}; it would be truncated. Shorten it or raise context_length: {text!r}"
            )
        return ids

    def count(self, text: str | Prompt) -> int:
        """Number of tokens of ``text``, start and end included (any length, no error)."""
        return len(self.tokenizer.encode(self._text(text))) + 2

    def __call__(self, texts: str | Prompt | Sequence[str | Prompt]) -> torch.Tensor:
        """Tokenise one prompt or a list: a ``LongTensor`` ``(B, context_length)``, zero
        padded, ``B = 1`` for a single prompt.

        Raises:
            PromptError: a prompt needs more than ``context_length`` tokens.
        """
        if isinstance(texts, (str, Prompt)):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = self.encode(text)
            out[i, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        return out


# ---------------------------------------------------------------------------------------------
# MONAI map transforms
# ---------------------------------------------------------------------------------------------
def _nifti_sidecar(value) -> Path | None:
    """The ``.json`` next to a NIfTI path (or a MetaTensor loaded from one); ``None`` if
    ``value`` is neither."""
    if isinstance(value, MetaTensor):
        value = value.meta.get("filename_or_obj")
    if not isinstance(value, (str, PathLike)):
        return None
    p = Path(value)
    for ext in (".nii.gz", ".nii"):
        if p.name.lower().endswith(ext):
            return p.with_name(p.name[: -len(ext)] + ".json")
    return None


class PromptFromSidecard(MapTransform):
    """Write each image's canonical prompt text, read from its JSON sidecar.

    For every key, the sidecar is ``d[key + sidecar_suffix]`` (a path to a JSON file, or a
    dict); where that entry is absent, the ``.json`` next to ``d[key]`` when ``d[key]`` is a
    ``.nii``/``.nii.gz`` path (or a MetaTensor loaded from one). The text
    (:meth:`Prompt.format`) goes to ``d[key + prompt_suffix]``.

    The dataset readers of :mod:`mrsynth.data.datasets` list sidecars as ``<seq>_meta``:
    pass ``sidecar_suffix="_meta"`` for their data lists.

    Args:
        keys: the image keys.
        prompt_suffix: suffix of the output key.
        sidecar_suffix: suffix of the sidecar key.
        allow_missing_keys: skip a key when neither its sidecar entry nor its image is in the
            dict (a missing sequence). A sidecar file that should exist but does not is an
            error either way.

    Raises:
        DataError: the sidecar file is missing or unreadable (naming it); KeyError: neither
            entry exists and ``allow_missing_keys`` is False, or no sidecar can be derived from
            ``d[key]``.
        PromptError: a sidecar value is invalid (naming the file).
    """

    def __init__(
        self,
        keys: KeysCollection,
        prompt_suffix: str = "_prompt",
        sidecar_suffix: str = "_sidecar",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.prompt_suffix = prompt_suffix
        self.sidecar_suffix = sidecar_suffix

    def sidecar(self, d: Mapping, key: Hashable):
        """The sidecar of ``key`` in ``d`` (dict or path); ``None`` when the key is missing."""
        side_key = f"{key}{self.sidecar_suffix}"
        if d.get(side_key) is not None:
            return d[side_key]
        if key not in d:
            return None
        side = _nifti_sidecar(d[key])
        if side is None:
            raise KeyError(f"no sidecar for {key!r}: {side_key!r} is not in the data and {key!r} is not a NIfTI path")
        return side

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.keys:
            side = self.sidecar(d, key)
            if side is None:
                if self.allow_missing_keys:
                    continue
                side_key = f"{key}{self.sidecar_suffix}"
                raise KeyError(f"no sidecar for {key!r}: neither {side_key!r} nor {key!r} is in the data")
            d[f"{key}{self.prompt_suffix}"] = Prompt.from_sidecar(side).format()
        return d


class TokenizePromptd(MapTransform):
    """Tokenise prompt texts: ``d[key]`` (a prompt text or :class:`Prompt`) ->
    ``d[key + suffix]``, a ``LongTensor`` ``(context_length,)`` (collated to ``(B, L)``).

    Args:
        keys: the prompt keys (e.g. ``"t1_prompt"``).
        tokenizer: a :class:`PromptTokenizer` to share; a new one when ``None``.
        context_length: tokens per prompt for a new tokenizer; with ``tokenizer`` given it
            must be the default or equal the tokenizer's.
        suffix: suffix of the output key.
        allow_missing_keys: skip keys that are not in the dict.

    Raises:
        PromptError: a prompt longer than the context (never truncated).
    """

    def __init__(
        self,
        keys: KeysCollection,
        tokenizer: PromptTokenizer | None = None,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        suffix: str = "_tokens",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if tokenizer is None:
            tokenizer = PromptTokenizer(context_length)
        elif context_length not in (DEFAULT_CONTEXT_LENGTH, tokenizer.context_length):
            raise ValueError(
                f"context_length={context_length} disagrees with the tokenizer's {tokenizer.context_length}")
        self.tokenizer = tokenizer
        self.suffix = suffix

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{self.suffix}"] = self.tokenizer(d[key])[0]
        return d


#: the canonical tissues of :func:`signal_features`: every pair of these T1 and T2 (ms), PD 1
SIGNAL_T1_MS: tuple[float, ...] = (250.0, 450.0, 800.0, 1400.0, 2500.0, 4500.0)
SIGNAL_T2_MS: tuple[float, ...] = (40.0, 70.0, 120.0, 250.0, 600.0, 2000.0)
#: length of :func:`acquisition_features`' numbers ``[known, log, linear]`` per parameter
NUMBER_FEATURES = 12
#: length of :func:`signal_features`' vector
SIGNAL_FEATURES = len(SIGNAL_T1_MS) * len(SIGNAL_T2_MS)
#: length of :func:`acquisition_features`' vector: the numbers, then the signals
ACQUISITION_FEATURES = NUMBER_FEATURES + SIGNAL_FEATURES


def sequence_kind(prompt) -> str | None:
    """The signal model a prompt's parameters imply: ``"ir"`` (inversion recovery) with an
    inversion time, else ``"spgr"`` (spoiled gradient echo) with a flip angle below 90 degrees,
    else ``"se"`` (spin echo); ``None`` without TR and TE."""
    p = prompt if isinstance(prompt, Prompt) else Prompt.parse(prompt)
    if p.tr is None or p.te is None:
        return None
    if p.ti is not None and p.ti > 0:
        return "ir"
    return "spgr" if p.fa is not None and p.fa < 90.0 else "se"


def signal_features(prompt) -> torch.Tensor:
    """The contrast a prompt's protocol gives a bank of canonical tissues, ``float32 (36,)``.

    The signal equation of :func:`sequence_kind`'s model (spin echo ``(1 - e^(-TR/T1)) e^(-TE/T2)``;
    spoiled gradient echo ``sin a (1 - E1) / (1 - cos a E1) e^(-TE/T2)``; magnitude inversion
    recovery ``|1 - 2 e^(-TI/T1) + e^(-TR/T1)| e^(-TE/T2)``) evaluated for every pair of
    :data:`SIGNAL_T1_MS` x :data:`SIGNAL_T2_MS` at unit proton density, divided by the largest:
    the relative brightness of short- and long-T1, short- and long-T2 tissue that the protocol
    sets. A voxel's signal is close to a mixture of these, so the target's contrast is nearly a
    linear read-out of this vector, which a network need not learn from the raw TR/TE/TI numbers.
    Generic relaxation times, not any dataset's tissues. Zeros where TR or TE is unknown.

    Args:
        prompt: a :class:`Prompt` or a prompt text.

    Raises:
        PromptError: the text does not parse.
    """
    p = prompt if isinstance(prompt, Prompt) else Prompt.parse(prompt)
    kind = sequence_kind(p)
    if kind is None:
        return torch.zeros(SIGNAL_FEATURES, dtype=torch.float32)
    t1 = torch.tensor(SIGNAL_T1_MS, dtype=torch.float64)[:, None]
    t2 = torch.tensor(SIGNAL_T2_MS, dtype=torch.float64)[None, :]
    e1, decay = torch.exp(-p.tr / t1), torch.exp(-p.te / t2)
    if kind == "ir":
        mz = (1 - 2 * torch.exp(-p.ti / t1) + e1).abs()
    elif kind == "spgr":
        a = math.radians(p.fa)
        mz = math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1)
    else:
        mz = 1 - e1
    sig = (mz * decay).flatten()
    return (sig / sig.max().clamp_min(1e-12)).float()


def source_protocol(prompt, what: str = "the source prompt", path=None):
    """``prompt`` (text, :class:`Prompt` or sidecar dict) as the source's protocol that a
    ``source_protocol`` network reads (:class:`~mrsynth.networks.TUMSyn`): a :class:`Prompt` with a
    sequence model (:func:`sequence_kind`), else :class:`PromptError` naming ``what`` and ``path``."""
    p = Prompt.from_any(prompt)
    if sequence_kind(p) is None:
        raise PromptError(f"{what} gives no TR and TE: a source_protocol model reads the source's protocol "
                          "(add them, or give --source_prompt)", path)
    return p


def acquisition_features(prompt) -> torch.Tensor:
    """The acquisition parameters of a prompt as numbers a network can read directly.

    CLIP's byte-pair encoding writes ``2500.0`` as six tokens (one per digit and mark), so a
    text encoder must *learn* to read numbers before the prompt can set a contrast through them,
    which a small model trained on a few hundred volumes does not (measured:
    ``bundles/tumsyn/docs/README.md``). This vector gives the same numbers as numbers,
    ``float32 (48,)``: first three entries per parameter ``[known, log-scaled, linear-scaled]``
    (:data:`NUMBER_FEATURES`, 12),

    - TR: ``[1, log(TR / 1000 ms), TR / 10000 ms]``;
    - TE: ``[1, log(TE / 30 ms), TE / 100 ms]``;
    - TI: ``[1, log(TI / 1000 ms), TI / 1000 ms]``;
    - FA: ``[1, sin FA, cos FA]``;

    all three ``0`` where the value is ``None`` (a ``TI`` of 0 counts as none, the reference's
    convention for sequences without inversion); then :func:`signal_features` (36): what those
    numbers do to the contrast of a bank of canonical tissues. The log terms spread the short
    gradient-echo times apart from the long spin-echo ones.

    Args:
        prompt: a :class:`Prompt` or a prompt text.

    Raises:
        PromptError: the text does not parse.
    """
    p = prompt if isinstance(prompt, Prompt) else Prompt.parse(prompt)
    out = torch.zeros(NUMBER_FEATURES, dtype=torch.float32)
    scales = (("tr", 1000.0, 10000.0), ("te", 30.0, 100.0), ("ti", 1000.0, 1000.0))
    for i, (name, log_unit, unit) in enumerate(scales):
        value = getattr(p, name)
        if value is not None and value > 0:
            out[3 * i: 3 * i + 3] = torch.tensor([1.0, math.log(value / log_unit), value / unit])
    if p.fa is not None:
        fa = math.radians(p.fa)
        out[9:12] = torch.tensor([1.0, math.sin(fa), math.cos(fa)])
    return torch.cat([out, signal_features(p)])


class AcquisitionFeaturesd(MapTransform):
    """``d[key]`` (a prompt text or :class:`Prompt`) -> ``d[key + suffix]``, the
    :func:`acquisition_features` vector ``(48,)`` (collated to ``(B, 48)``).

    Args:
        keys: the prompt keys (e.g. ``"image_prompt"``).
        suffix: suffix of the output key.
        with_other: two keys (a pair's source and target prompts): each output is the key's own
            vector followed by the other key's, ``(96,)``, for a network that reads the source's
            protocol beside the target's (:class:`~mrsynth.networks.TUMSyn` ``source_protocol``):
            the target's output is then its network input for source -> target, the source's for
            target -> source.
        allow_missing_keys: skip keys that are not in the dict.

    Raises:
        PromptError: a prompt that does not parse.
        ValueError: ``with_other`` without exactly two keys.
    """

    def __init__(self, keys: KeysCollection, suffix: str = "_acquisition", with_other: bool = False,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.suffix = suffix
        self.with_other = bool(with_other)
        if self.with_other and len(self.keys) != 2:
            raise ValueError(f"with_other pairs a source's and a target's prompt: give two keys, got {list(self.keys)}")

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        own = {key: acquisition_features(d[key]) for key in self.key_iterator(d)}
        for key, v in own.items():
            if self.with_other:
                other = [k for k in self.keys if k != key][0]
                if other not in own:
                    raise KeyError(f"with_other: {key} has no partner prompt {other} in the data")
                v = torch.cat([v, own[other]])
            d[f"{key}{self.suffix}"] = v
        return d
