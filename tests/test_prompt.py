"""TUMSyn prompts: format, parsing, sidecars, tokenisation, the map transforms."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from mrsynth.errors import DataError
from mrsynth.transforms.prompt import (ACQUISITION_FEATURES, DEFAULT_CONTEXT_LENGTH, NUMBER_FEATURES, PARAMETER_FIELD,
                                       SIGNAL_FEATURES, sequence_kind, signal_features,
                                       AcquisitionFeaturesd, Prompt, PromptError, PromptFromSidecard, PromptTokenizer,
                                       TokenizePromptd, acquisition_features, format_prompt)

EXAMPLE = ("Age: 12; Gender: M; Scanner: 3.0 Siemens; Modality: T1w; Voxel size: (0.8, 0.8, 0.8); "
           "Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree): (2500.0, 2.2, 1000.0, 8.0)")
EXAMPLE_PROMPT = Prompt(age=12, gender="M", scanner="3.0 Siemens", modality="T1w", voxel_size=(0.8, 0.8, 0.8),
                        tr=2500, te=2.2, ti=1000, fa=8)
#: the longest realistic clinical prompt of the module docstring (96 tokens)
LONGEST = Prompt(age=100, gender="F", scanner="1.5 Philips Ingenia Elition X", modality="FLAIR",
                 voxel_size=(0.9375, 0.9375, 5.0), tr=11000, te=140, ti=2800, fa=90)


@pytest.fixture(scope="module")
def tokenizer():
    return PromptTokenizer()


# -- format / parse ---------------------------------------------------------------------------
def test_format_example():
    assert EXAMPLE_PROMPT.format() == EXAMPLE
    assert format_prompt(age=12, gender="M", scanner="3.0 Siemens", modality="T1w", voxel_size=(0.8, 0.8, 0.8),
                         tr=2500.0, te=2.2, ti=1000.0, fa=8.0) == EXAMPLE
    assert str(EXAMPLE_PROMPT) == EXAMPLE


def test_format_none_and_rounding():
    text = Prompt(modality="FLAIR", voxel_size=(0.9375, 0.9375, 5), tr=9000, te=None, ti=2500.456, fa=90).format()
    assert text == ("Age: None; Gender: None; Scanner: None; Modality: FLAIR; Voxel size: (0.94, 0.94, 5.0); "
                    f"{PARAMETER_FIELD}: (9000.0, None, 2500.46, 90.0)")
    assert Prompt().format() == ("Age: None; Gender: None; Scanner: None; Modality: None; Voxel size: None; "
                                 f"{PARAMETER_FIELD}: (None, None, None, None)")


@pytest.mark.parametrize("prompt", [
    EXAMPLE_PROMPT,
    Prompt(),
    Prompt(age=0, gender="F"),
    Prompt(age=120, modality="T2w", tr=4000.5, te=95.25, fa=180),
    Prompt(scanner="1.5 GE Signa HDxt", voxel_size=(1.0, 1.0, 3.5), ti=0.0),
    LONGEST.replace(voxel_size=(0.94, 0.94, 5.0)),
])
def test_round_trip(prompt):
    assert Prompt.parse(prompt.format()) == prompt


def test_round_trip_rounds_to_two_decimals():
    parsed = Prompt.parse(LONGEST.format())
    assert parsed == LONGEST.replace(voxel_size=(0.94, 0.94, 5.0))
    assert parsed.format() == LONGEST.format()


def test_parse_flexible():
    reordered = ("Modality: T1w; Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree): (2500, 2.2, 1000, 8); "
                 "Voxel size: (0.8,0.8,0.8); Scanner: 3.0 Siemens; Gender: M; Age: 12")
    assert Prompt.parse(reordered) == EXAMPLE_PROMPT
    messy = ("  age :12 ;GENDER:m;  scanner: 3.0 Siemens ; MODALITY:T1w; voxel SIZE : ( 0.8 , 0.8, 0.8 ) ;"
             " imaging   parameter tr(ms),te(ms),ti(ms), and fa(degree) : (2500.0, 2.2, 1000.0, 8.0);  ")
    assert Prompt.parse(messy) == EXAMPLE_PROMPT
    assert Prompt.parse("Modality: FLAIR; Age: 40") == Prompt(modality="FLAIR", age=40)
    assert Prompt.parse("TR/TE/TI/FA: (9000, 120, None, 90);") == Prompt(tr=9000, te=120, fa=90)
    assert Prompt.parse("TR: 2500; te: 90") == Prompt(tr=2500, te=90)
    assert Prompt.parse("Age: None; Voxel size: None") == Prompt()
    assert Prompt.parse(EXAMPLE + ";") == EXAMPLE_PROMPT


@pytest.mark.parametrize("text, field", [
    ("Age: 12; Weight: 70", "Weight"),
    ("Age: old", "Age"),
    ("Age: 130", "Age"),
    ("Gender: X", "Gender"),
    ("Voxel size: (1, 1)", "Voxel size"),
    ("Voxel size: (1, 0, 1)", "Voxel size"),
    ("Imaging parameter TR(ms), TE(ms), TI(ms), and FA(degree): (2500.0, 2.2, 8.0)", "Imaging parameter"),
    ("TR/TE/TI/FA: (2500, 2.2, None, 0)", "FA"),
    ("FA: 0", "FA"),
    ("TR: fast", "TR"),
    ("TR: -1", "TR"),
    ("TR: 2500; TR/TE/TI/FA: (2500, 2.2, None, 8)", "TR"),
])
def test_parse_errors_name_the_field(text, field):
    with pytest.raises(PromptError, match="(?i)" + field.replace("(", r"\(")) as info:
        Prompt.parse(text)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)


def test_parse_error_details():
    with pytest.raises(PromptError, match="known fields: Age, Gender") as info:
        Prompt.parse("Age: 12; Weight: 70")
    assert info.value.field == "Weight"
    with pytest.raises(PromptError, match="'old'"):
        Prompt.parse("Age: old")
    for empty in ("", "   ", ";"):
        with pytest.raises(PromptError, match="empty"):
            Prompt.parse(empty)
    with pytest.raises(PromptError, match="Field: value"):
        Prompt.parse("Age 12")


def test_constructor_validation():
    for kwargs, field in [(dict(age=-1), "Age"), (dict(age=12.5), "Age"), (dict(age=True), "Age"),
                          (dict(gender="X"), "Gender"), (dict(voxel_size=(1, 1)), "Voxel size"),
                          (dict(voxel_size=(1, 1, -1)), "Voxel size"), (dict(te=-0.1), "TE"),
                          (dict(ti=float("nan")), "TI"), (dict(fa=0), "FA"), (dict(fa=181), "FA"),
                          (dict(scanner="3.0; Siemens"), "Scanner"), (dict(modality=""), "Modality")]:
        with pytest.raises(PromptError, match=field) as info:
            Prompt(**kwargs)
        assert info.value.field == field
    p = Prompt(age=30.0, gender="female", voxel_size=[1, 1, 2], scanner=" 3.0 GE ", modality="None")
    assert (p.age, p.gender, p.voxel_size, p.scanner, p.modality) == (30, "F", (1.0, 1.0, 2.0), "3.0 GE", None)
    assert EXAMPLE_PROMPT.replace(age=13).age == 13
    with pytest.raises(PromptError, match="FA"):
        EXAMPLE_PROMPT.replace(fa=200)


# -- sidecars ---------------------------------------------------------------------------------
def test_from_sidecar_phantom_keys(tmp_path):
    side = {"age": 12, "sex": "M", "scanner": "3.0 Siemens", "modality": "T1w", "voxel_size": [0.8, 0.8, 0.8],
            "TR": 2500.0, "TE": 2.2, "TI": 1000.0, "FA": 8.0, "snr": 20.0, "vendor": "Siemens"}
    assert Prompt.from_sidecar(side) == EXAMPLE_PROMPT
    path = tmp_path / "case_t1.json"
    path.write_text(json.dumps(side))
    assert Prompt.from_sidecar(path) == EXAMPLE_PROMPT
    assert Prompt.from_sidecar(str(path)) == EXAMPLE_PROMPT
    assert Prompt.from_any(path) == Prompt.from_any(side) == Prompt.from_any(EXAMPLE) == EXAMPLE_PROMPT
    assert Prompt.from_any(EXAMPLE_PROMPT) is EXAMPLE_PROMPT
    assert Prompt.from_sidecar({"modality": "T2w", "TI": None}) == Prompt(modality="T2w")


def test_from_sidecar_bids_keys():
    side = {"RepetitionTime": 2.5, "EchoTime": 0.0022, "InversionTime": 1.0, "FlipAngle": 8,
            "MagneticFieldStrength": 3, "Manufacturer": "SIEMENS", "PatientAge": "012Y", "PatientSex": "M"}
    p = Prompt.from_sidecar(side)
    assert (p.tr, p.te, p.ti, p.fa) == (2500.0, 2.2, 1000.0, 8.0)
    assert (p.age, p.gender, p.scanner) == (12, "M", "3.0 Siemens")
    assert p.format() == EXAMPLE.replace("T1w", "None").replace("(0.8, 0.8, 0.8)", "None")
    assert Prompt.from_sidecar({"Manufacturer": "GE MEDICAL SYSTEMS", "MagneticFieldStrength": 1.5}).scanner == "1.5 GE"
    assert Prompt.from_sidecar({"PatientAge": "018M", "PatientSex": "O"}) == Prompt(age=1)
    # our keys win over BIDS keys
    assert Prompt.from_sidecar({"TR": 600.0, "RepetitionTime": 2.5}).tr == 600.0


def test_from_sidecar_errors(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match="nope.json"):
        Prompt.from_sidecar(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        Prompt.from_sidecar(broken)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"age": 300, "TR": 2500}))
    with pytest.raises(PromptError, match="bad.json.*Age") as info:
        Prompt.from_sidecar(bad)
    assert info.value.path == str(bad)
    with pytest.raises(PromptError, match="voxel_size"):
        Prompt.from_sidecar({"voxel_size": [1, 1]})
    with pytest.raises(PromptError, match="RepetitionTime"):
        Prompt.from_sidecar({"RepetitionTime": "slow"})
    with pytest.raises(TypeError):
        Prompt.from_any(42)


# -- tokenizer --------------------------------------------------------------------------------
def test_tokenizer_rows(tokenizer):
    assert tokenizer.context_length == DEFAULT_CONTEXT_LENGTH == 128
    assert tokenizer.count(EXAMPLE) == 85
    tokens = tokenizer(EXAMPLE)
    assert tokens.shape == (1, 128) and tokens.dtype == torch.long
    assert torch.equal(tokens, tokenizer(EXAMPLE_PROMPT))
    row = tokens[0]
    assert row[0] == tokenizer.sot_token_id
    assert row[84] == tokenizer.eot_token_id and int(row.argmax()) == 84
    assert (row[85:] == 0).all() and (row[:85] != 0).all()
    # CLIP convention: the end-of-text token has the highest id, so argmax finds it
    assert tokenizer.eot_token_id == tokenizer.vocab_size - 1 == int(row.max())
    assert tokenizer.sot_token_id == tokenizer.vocab_size - 2

    batch = tokenizer([EXAMPLE, Prompt(modality="T2w"), "Age: 3"])
    assert batch.shape == (3, 128)
    assert torch.equal(batch[0], row)
    ends = batch.argmax(dim=1)
    assert ends.tolist() == [tokenizer.count(t) - 1 for t in (EXAMPLE, Prompt(modality="T2w"), "Age: 3")]


def test_longest_realistic_prompt_fits(tokenizer):
    n = tokenizer.count(LONGEST)
    assert n == 96
    assert n <= tokenizer.context_length - 16  # margin
    assert tokenizer(LONGEST).argmax(dim=1).item() == n - 1
    worst = LONGEST.replace(modality="T2*w", te=142.86, ti=2851.25)
    assert tokenizer.count(worst) == 101
    tokenizer(worst)


def test_tokenizer_never_truncates(tokenizer):
    absurd = Prompt(scanner="3.0 Siemens " + " ".join(["MAGNETOM Prisma"] * 40), modality="T1w")
    n = tokenizer.count(absurd)
    assert n > 128
    with pytest.raises(PromptError, match=rf"{n} tokens.*context length is 128.*MAGNETOM"):
        tokenizer(absurd)
    assert PromptTokenizer(85)(EXAMPLE).shape == (1, 85)  # exactly full is fine
    with pytest.raises(PromptError, match="85 tokens.*context length is 84"):
        PromptTokenizer(84)(EXAMPLE)
    with pytest.raises(ValueError):
        PromptTokenizer(1)


def test_tokenizer_pickles(tokenizer):
    tokenizer(EXAMPLE)  # build the BPE tables
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone._tokenizer is None  # rebuilt lazily in the worker
    assert clone.context_length == tokenizer.context_length
    assert torch.equal(clone([EXAMPLE, LONGEST]), tokenizer([EXAMPLE, LONGEST]))
    err = pickle.loads(pickle.dumps(PromptError("bad", "/x/y.json", field="Age")))
    assert (str(err), err.path, err.field) == ("/x/y.json: bad", "/x/y.json", "Age")


# -- map transforms ---------------------------------------------------------------------------
def _write_sidecar(path: Path) -> Path:
    path.write_text(json.dumps({"age": 12, "sex": "M", "scanner": "3.0 Siemens", "modality": "T1w",
                                "voxel_size": [0.8, 0.8, 0.8], "TR": 2500, "TE": 2.2, "TI": 1000, "FA": 8}))
    return path


def test_prompt_transforms(tmp_path, tokenizer):
    side = _write_sidecar(tmp_path / "C0_t1.json")
    d = {"t1": str(tmp_path / "C0_t1.nii.gz"), "t1_sidecar": str(side), "t2": "other.nii.gz",
         "t2_sidecar": {"modality": "T2w", "TR": 4000, "TE": 100}}
    out = PromptFromSidecard(["t1", "t2"])(d)
    assert out["t1_prompt"] == EXAMPLE
    assert out["t2_prompt"] == Prompt(modality="T2w", tr=4000, te=100).format()
    assert "t1_prompt" not in d  # input untouched

    # no sidecar entry: the .json next to the NIfTI
    out = PromptFromSidecard("t1", prompt_suffix="_text")({"t1": str(tmp_path / "C0_t1.nii.gz")})
    assert out["t1_text"] == EXAMPLE
    out = PromptFromSidecard("t1", sidecar_suffix="_meta", allow_missing_keys=True)({"t1_meta": str(side)})
    assert out["t1_prompt"] == EXAMPLE
    assert PromptFromSidecard(["t1", "flair"], allow_missing_keys=True)({"t1_sidecar": str(side)}).keys() == {
        "t1_sidecar", "t1_prompt"}

    tok = TokenizePromptd(["t1_prompt", "t2_prompt"], tokenizer=tokenizer)
    out = tok(PromptFromSidecard(["t1", "t2"])(d))
    assert out["t1_prompt_tokens"].shape == (128,) and out["t1_prompt_tokens"].dtype == torch.long
    assert torch.equal(out["t1_prompt_tokens"], tokenizer(EXAMPLE)[0])
    out = TokenizePromptd("p", context_length=100, suffix="_ids")({"p": EXAMPLE_PROMPT})
    assert out["p_ids"].shape == (100,) and int(out["p_ids"].argmax()) == 84
    with pytest.raises(ValueError, match="context_length"):
        TokenizePromptd("p", tokenizer=tokenizer, context_length=90)
    with pytest.raises(PromptError, match="context length is 64"):
        TokenizePromptd("p", context_length=64)({"p": EXAMPLE})


def test_prompt_transform_missing_sidecar(tmp_path):
    image = tmp_path / "C1_flair.nii.gz"
    with pytest.raises(DataError, match="C1_flair.json"):
        PromptFromSidecard("flair")({"flair": str(image)})
    with pytest.raises(DataError, match="gone.json"):
        PromptFromSidecard("flair")({"flair": str(image), "flair_sidecar": str(tmp_path / "gone.json")})
    with pytest.raises(DataError, match="C1_flair.json"):  # a missing file is an error even when keys may be missing
        PromptFromSidecard("flair", allow_missing_keys=True)({"flair": str(image)})
    with pytest.raises(KeyError):
        PromptFromSidecard("flair")({"t1": str(image)})
    with pytest.raises(KeyError):
        PromptFromSidecard("flair")({"flair": "image.mha"})


# -- acquisition parameters as numbers ------------------------------------------------------------
def test_acquisition_features_known_answer():
    import math

    v = acquisition_features(EXAMPLE)  # TR 2500, TE 2.2, TI 1000, FA 8
    assert v.shape == (ACQUISITION_FEATURES,) == (48,) and v.dtype == torch.float32
    expected = [1, math.log(2.5), 0.25, 1, math.log(2.2 / 30), 0.022, 1, 0.0, 1.0,
                1, math.sin(math.radians(8)), math.cos(math.radians(8))]
    torch.testing.assert_close(v[:12], torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(v[12:], signal_features(EXAMPLE))
    # a Prompt and its text give the same vector
    torch.testing.assert_close(acquisition_features(EXAMPLE_PROMPT), v)


def test_acquisition_features_unknown_values_are_zero():
    assert not acquisition_features("Age: 40; Modality: T2w").any()  # nothing known
    v = acquisition_features(Prompt(tr=4000, te=100, ti=0, fa=90))  # TI 0: no inversion
    assert v[6:9].tolist() == [0, 0, 0]
    assert v[[0, 3, 9]].tolist() == [1, 1, 1]
    torch.testing.assert_close(v[10:12], torch.tensor([1.0, 0.0]), atol=1e-6, rtol=0)  # FA 90: sin 1, cos 0
    # the parameters that set a contrast move the vector; the subject fields do not
    base = Prompt(tr=4000, te=100, fa=90)
    assert not torch.equal(acquisition_features(base), acquisition_features(base.replace(te=30)))
    assert torch.equal(acquisition_features(base), acquisition_features(base.replace(age=70, modality="PDw")))


def test_signal_features_follow_the_signal_equations():
    """The canonical tissues' relative signals, by hand for three protocols: a long-T2 tissue
    brightest at long TE, nulled near TI = ln 2 T1 in inversion recovery, and a spoiled gradient
    echo's short-T1 tissue brightest at a large flip angle."""
    import math

    from mrsynth.transforms.prompt import SIGNAL_T1_MS, SIGNAL_T2_MS

    n1, n2 = len(SIGNAL_T1_MS), len(SIGNAL_T2_MS)
    assert SIGNAL_FEATURES == n1 * n2 == ACQUISITION_FEATURES - NUMBER_FEATURES

    def by_hand(kind, tr, te, ti=None, fa=90.0):
        out = []
        for t1 in SIGNAL_T1_MS:
            for t2 in SIGNAL_T2_MS:
                e1 = math.exp(-tr / t1)
                if kind == "ir":
                    mz = abs(1 - 2 * math.exp(-ti / t1) + e1)
                elif kind == "spgr":
                    a = math.radians(fa)
                    mz = math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1)
                else:
                    mz = 1 - e1
                out.append(mz * math.exp(-te / t2))
        return torch.tensor(out) / max(out)

    t2w, flair = Prompt(tr=4000, te=120, fa=90), Prompt(tr=9000, te=110, ti=2480, fa=90)
    spgr = Prompt(tr=15, te=4, fa=30)
    assert [sequence_kind(p) for p in (t2w, flair, spgr)] == ["se", "ir", "spgr"]
    assert sequence_kind(Prompt(tr=4000)) is None and sequence_kind(Prompt(tr=500, te=10, ti=0, fa=90)) == "se"
    for p, kind in ((t2w, "se"), (flair, "ir"), (spgr, "spgr")):
        v = signal_features(p)
        assert v.shape == (SIGNAL_FEATURES,) and v.dtype == torch.float32 and v.max() == 1.0
        torch.testing.assert_close(v, by_hand(kind, p.tr, p.te, p.ti, p.fa).float())
    grid = signal_features(t2w).view(n1, n2)
    assert grid[0, -1] == 1.0 and grid[0, 0] < 0.1  # long T2 brightest, short T2 dark at TE 120
    csf_like = signal_features(flair).view(n1, n2)[-1, -1]  # T1 4500: null at TI = 4500 ln(2 / (1 + e^-2))
    assert csf_like < 0.1
    assert signal_features(spgr).view(n1, n2)[0, -1] == 1.0  # short T1 brightest
    assert not signal_features("Age: 40; Modality: T2w").any()


def test_acquisition_transform():
    d = {"p": EXAMPLE, "q": EXAMPLE_PROMPT.replace(ti=None)}
    out = AcquisitionFeaturesd(["p", "q"])(d)
    assert "p_acquisition" not in d  # input untouched
    torch.testing.assert_close(out["p_acquisition"], acquisition_features(EXAMPLE))
    assert out["q_acquisition"][6:9].tolist() == [0, 0, 0]
    assert AcquisitionFeaturesd("r", suffix="_x", allow_missing_keys=True)(d).keys() == d.keys()
    with pytest.raises(PromptError, match="FA"):
        AcquisitionFeaturesd("p")({"p": "TR/TE/TI/FA: (2500, 2.2, None, 400)"})
    # with_other: each key's vector, then its partner's (a pair's target then source, and the reverse)
    pair = AcquisitionFeaturesd(["p", "q"], with_other=True)(d)
    p_vec, q_vec = acquisition_features(d["p"]), acquisition_features(d["q"])
    torch.testing.assert_close(pair["p_acquisition"], torch.cat([p_vec, q_vec]))
    torch.testing.assert_close(pair["q_acquisition"], torch.cat([q_vec, p_vec]))
    with pytest.raises(ValueError, match="two keys"):
        AcquisitionFeaturesd("p", with_other=True)
    with pytest.raises(KeyError, match="partner prompt q"):
        AcquisitionFeaturesd(["p", "q"], with_other=True, allow_missing_keys=True)({"p": EXAMPLE})
