"""The serving apps against the real tools: the MONAI Deploy app (monai-deploy-app-sdk 4, its own
environment .venv-deploy) on NIfTI and DICOM studies, and the MONAI Label app (monailabel 0.8.5,
.venv-label) through its REST infer endpoint, for every bundle. Each app's output must equal the
bundle's own ``python -m monai.bundle run`` inference on the same study with the same weights.

The weights are each network's seeded initial weights: what is tested is the serving path, not
the training (the bundles' own tests train). ``make test`` builds both environments first
(``make apps``); a test run without them builds them here."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from bundle_utils import BUNDLES, REPO, env, stop_process
from mrsynth.errors import DataError
from mrsynth.workflows.serving import bundle_sequences, sequence_from_filename, stage_study

ALL = ["seq2seq", "tsf_seq2seq", "vq_seq2seq", "tumsyn"]
CONFIGS = ["configs/inference.json", "configs/quick.json"]
TARGET = "flair"


# -- helpers that need no app environment ---------------------------------------------------------

def test_sequence_from_filename():
    assert sequence_from_filename("BraTS_001_t1ce.nii.gz") == "t1ce"
    assert sequence_from_filename("/x/T2.nii") == "t2"
    assert sequence_from_filename("case_FLAIR.NII.GZ") == "flair"
    assert sequence_from_filename("notes.txt") is None


def test_stage_study_links_and_errors(tmp_path):
    src = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(src))
    root = stage_study({"T1": src}, tmp_path / "work", case_id="c")
    link = root / "c" / "c_t1.nii.gz"
    assert link.is_symlink() and link.resolve() == src.resolve()
    with pytest.raises(DataError, match="no such file"):
        stage_study({"t2": tmp_path / "missing.nii.gz"}, tmp_path / "work")
    with pytest.raises(DataError, match="no image"):
        stage_study({}, tmp_path / "work")


def test_bundle_sequences():
    assert bundle_sequences(BUNDLES / "seq2seq") == ["t1", "t1ce", "t2", "flair"]
    assert bundle_sequences(BUNDLES / "tumsyn") is None  # taken from the data


# -- fixtures ---------------------------------------------------------------------------------------

def app_python(name: str) -> Path:
    """The interpreter of ``.venv-<name>``, built with ``make`` when missing."""
    py = REPO / f".venv-{name}" / "bin" / "python"
    if not (REPO / f".venv-{name}" / ".installed").is_file():
        proc = subprocess.run(["make", f".venv-{name}/.installed"], cwd=REPO, capture_output=True, text=True,
                              timeout=1500)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return py


def app_env() -> dict:
    e = env()
    e.pop("PYTHONPATH", None)  # the app environments find mrsynth through their own .pth
    return e


@pytest.fixture(scope="module")
def served_bundles(tmp_path_factory):
    """A copy of each bundle (configs only) with its network's seeded initial weights."""
    root = tmp_path_factory.mktemp("served_bundles")
    out = {}
    for name in ALL:
        dest = root / name
        shutil.copytree(BUNDLES / name, dest, ignore=shutil.ignore_patterns("models", "eval", "docs"))
        parser = ConfigParser()
        parser.read_config([str(dest / c) for c in CONFIGS])
        torch.manual_seed(0)
        (dest / "models").mkdir()
        torch.save(parser.get_parsed_content("network_def").state_dict(), dest / "models" / "model.pt")
        out[name] = dest
    return out


@pytest.fixture(scope="module")
def study(phantom, tmp_path_factory):
    """One phantom case as a user's study folder: t1.nii.gz and t2.nii.gz (flair is synthesized)."""
    case = sorted(p for p in Path(phantom).iterdir() if p.is_dir())[0]
    folder = tmp_path_factory.mktemp("study")
    for seq in ("t1", "t2"):
        shutil.copyfile(case / f"{case.name}_{seq}.nii.gz", folder / f"{seq}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def reference(served_bundles, study, tmp_path_factory):
    """``reference(name)``: the bundle's own inference on the study, computed once per bundle, in
    float32 (``amp`` off), as the apps compared with it run (:data:`FLOAT32`): in bfloat16 a float32
    and a float64 copy of the same image, or its 16-bit DICOM, round differently in a few voxels, and
    the served bundles' untrained networks turn those flips into differences of a few percent there."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = bundle_reference(served_bundles[name], study, tmp_path_factory.mktemp(f"ref_{name}"),
                                           **FLOAT32)
        return cache[name]

    return get


#: what every comparison of an app with ``reference`` passes: float32 on both sides
FLOAT32 = {"amp": False}


def bundle_reference(bundle: Path, study: Path, work: Path, **overrides) -> np.ndarray:
    """The bundle's own inference (``python -m monai.bundle run``) on ``study``."""
    data = stage_study({sequence_from_filename(f): f for f in study.glob("*.nii.gz")}, work / "data", case_id="ref")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "['" + "','".join(CONFIGS) + "']",
           "--dataset_dir", str(data), "--output_dir", str(work / "out"), "--target", TARGET]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    proc = subprocess.run(cmd, cwd=bundle, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (syn,) = (work / "out" / "ref").glob("*_syn.nii.gz")
    return nib.load(str(syn)).get_fdata()


def run_deploy(bundle: Path, study: Path, out: Path, *extra, check=True) -> subprocess.CompletedProcess:
    cmd = [str(app_python("deploy")), str(REPO / "apps" / "deploy" / "app.py"), "-i", str(study), "-o", str(out),
           "-m", str(bundle), "--target", TARGET, *(a for c in CONFIGS for a in ("--config", c)),
           "--override", json.dumps(FLOAT32), *extra]
    proc = subprocess.run(cmd, env=app_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def deploy_python(code: str, *args) -> str:
    """Run ``code`` in the deploy environment (pydicom 3) with apps/deploy importable; its stdout."""
    proc = subprocess.run([str(app_python("deploy")), "-c", code, *map(str, args)], env=app_env(),
                          cwd=REPO / "apps" / "deploy", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# -- MONAI Deploy -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_deploy_app_nifti_study_equals_the_bundle(name, served_bundles, study, reference, tmp_path):
    bundle = served_bundles[name]
    out = tmp_path / "out"
    run_deploy(bundle, study, out)
    assert sorted(p.name for p in out.iterdir()) == [f"{TARGET}_syn.json", f"{TARGET}_syn.nii.gz"]
    img, src = nib.load(str(out / f"{TARGET}_syn.nii.gz")), nib.load(str(study / "t1.nii.gz"))
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    got = img.get_fdata()
    assert np.isfinite(got).all() and got.std() > 0
    assert json.loads((out / f"{TARGET}_syn.json").read_text())["sources"] == ["t1", "t2"]
    np.testing.assert_allclose(got, reference(name), rtol=1e-5, atol=1e-4)


def test_deploy_app_dicom_study_writes_a_derived_series(served_bundles, study, reference, tmp_path):
    """DICOM in (made from the phantom volumes), NIfTI and a DICOM series out, in the same study."""
    bundle = served_bundles["seq2seq"]
    dicom = tmp_path / "dicom_study"
    for number, seq in enumerate(("t1", "t2"), 1):
        deploy_python("import sys, dicom_io; sys.exit(dicom_io.main(sys.argv[1:]))", "to-dicom", study / f"{seq}.nii.gz",
                      dicom / seq.upper(), "--description", seq.upper(), "--study-uid", "1.2.826.0.1.3680043.8.498.1",
                      "--series-number", number)
    (dicom / "notes.txt").write_text("not DICOM: ignored")
    out = tmp_path / "out"
    run_deploy(bundle, dicom, out)
    assert (out / f"{TARGET}_syn.nii.gz").is_file()
    report = json.loads(deploy_python(
        "import json, sys, numpy as np, nibabel as nib, dicom_io\n"
        "(uid, files), = dicom_io.find_series(sys.argv[1]).items()\n"
        "vol, aff, ds = dicom_io.read_series(files)\n"
        "img = nib.load(sys.argv[2])\n"
        "print(json.dumps({'shape': list(vol.shape), 'affine_err': float(np.abs(aff - img.affine).max()),\n"
        "  'max_err': float(np.abs(vol - img.get_fdata()).max()), 'range': float(np.ptp(img.get_fdata())),\n"
        "  'study': ds.StudyInstanceUID, 'type': list(ds.ImageType), 'description': ds.SeriesDescription,\n"
        "  'patient': ds.PatientID, 'n': len(files)}))", out / "dicom", out / f"{TARGET}_syn.nii.gz"))
    src = nib.load(str(study / "t1.nii.gz"))
    assert report["shape"] == list(src.shape) and report["n"] == src.shape[2]
    assert report["affine_err"] < 1e-4
    assert report["max_err"] <= report["range"] / 65535 + 1e-4  # 16-bit storage
    assert report["study"] == "1.2.826.0.1.3680043.8.498.1" and report["patient"] == "PHANTOM"
    assert report["type"] == ["DERIVED", "SECONDARY"] and report["description"] == f"SYNTHETIC {TARGET.upper()}"
    # the DICOM inputs were the NIfTI volumes stored in 16 bits: the synthesis is the NIfTI study's, nearly
    a, b = nib.load(str(out / f"{TARGET}_syn.nii.gz")).get_fdata(), reference("seq2seq")
    np.testing.assert_allclose(nib.load(str(out / f"{TARGET}_syn.nii.gz")).affine, src.affine, atol=1e-4)
    assert np.abs(a - b).max() < 1e-2 * np.ptp(b)


def test_dicom_round_trip_keeps_an_oblique_geometry(tmp_path):
    """write_series -> read_series gives back the volume and an oblique, anisotropic affine."""
    report = json.loads(deploy_python(
        "import json, sys, numpy as np, dicom_io\n"
        "from scipy.spatial.transform import Rotation\n"
        "aff = np.eye(4); aff[:3, :3] = Rotation.from_euler('xyz', [10, -20, 35], degrees=True).as_matrix() @ np.diag([0.9, 1.1, 3.0])\n"
        "aff[:3, 3] = [-90.5, 12.0, 40.25]\n"
        "vol = np.random.default_rng(0).uniform(-50, 900, (7, 9, 5)).astype(np.float32)\n"
        "dicom_io.write_series(vol, aff, sys.argv[1], 'T2', derived=False)\n"
        "(uid, files), = dicom_io.find_series(sys.argv[1]).items()\n"
        "v, a, ds = dicom_io.read_series(list(reversed(files)))\n"
        "print(json.dumps({'affine_err': float(np.abs(a - aff).max()), 'max_err': float(np.abs(v - vol).max()),\n"
        "  'range': float(np.ptp(vol)), 'shape': list(v.shape)}))", tmp_path / "series"))
    assert report["shape"] == [7, 9, 5]
    assert report["affine_err"] < 1e-4
    assert report["max_err"] <= report["range"] / 65535 + 1e-3


def test_deploy_app_bad_input_names_the_file_and_writes_nothing(served_bundles, study, tmp_path):
    bundle = served_bundles["seq2seq"]
    bad = tmp_path / "bad"
    bad.mkdir()
    data = nib.load(str(study / "t1.nii.gz")).get_fdata().astype(np.float32)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), np.eye(4)), str(bad / "t1.nii.gz"))  # 4D
    out = tmp_path / "out"
    proc = run_deploy(bundle, bad, out, check=False)
    assert proc.returncode != 0
    assert "t1.nii.gz" in proc.stdout + proc.stderr and "4D" in proc.stdout + proc.stderr
    assert not out.exists() or not any(out.iterdir())

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    shutil.copyfile(study / "t1.nii.gz", unknown / "dwi.nii.gz")
    proc = run_deploy(bundle, unknown, tmp_path / "out2", check=False)
    assert proc.returncode != 0
    assert f"{unknown}: no NIfTI file or DICOM series of a known sequence" in proc.stdout + proc.stderr


def test_deploy_app_takes_a_model_zoo_zip(served_bundles, study, reference, tmp_path):
    """-m a zip from tools/package_bundles.py: unpacked in the work folder, run with its own mrsynth copy."""
    sys.path.insert(0, str(REPO / "tools"))
    from package_bundles import package_all

    (key, _), = package_all([served_bundles["seq2seq"]], tmp_path / "zoo", "http://host").items()
    out = tmp_path / "out"
    run_deploy(tmp_path / "zoo" / f"{key}.zip", study, out)
    np.testing.assert_allclose(nib.load(str(out / f"{TARGET}_syn.nii.gz")).get_fdata(), reference("seq2seq"),
                               rtol=1e-5, atol=1e-4)


# -- MONAI Label ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def label_server(served_bundles, study, tmp_path_factory):
    """The real MONAI Label server on 127.0.0.1 serving all four bundles; yields its base URL."""
    studies = tmp_path_factory.mktemp("label_studies")
    for seq in ("t1", "t2"):
        shutil.copyfile(study / f"{seq}.nii.gz", studies / f"case1_{seq}.nii.gz")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("label_log") / "server.log", "w+")
    proc = subprocess.Popen(
        [str(app_python("label")), "-m", "monailabel.main", "start_server", "--app", str(REPO / "apps" / "label"),
         "--studies", str(studies), "--conf", "bundles", ",".join(str(served_bundles[n]) for n in ALL),
         "--conf", "configs", ",".join(CONFIGS), "--host", "127.0.0.1", "--port", str(port)],
        env=app_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as r:
                    info = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise AssertionError(f"MONAI Label did not start:\n{log.read()[-5000:]}")
                time.sleep(2)
        yield url, info, studies
    finally:
        stop_process(proc)
        log.close()


def post_infer(url: str, model: str, image: str, params: dict) -> tuple[int, bytes]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n"
            f"--{boundary}--\r\n").encode()
    req = urllib.request.Request(f"{url}/infer/{model}?image={image}&output=image", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_label_app_lists_every_bundle(label_server):
    _, info, _ = label_server
    assert set(info["models"]) == set(ALL)
    assert all(m["type"] == "others" and m["dimension"] == 3 for m in info["models"].values())


@pytest.mark.parametrize("name", ALL)
def test_label_infer_returns_the_bundles_synthesis(name, label_server, study, reference, tmp_path):
    url, _, _ = label_server
    status, body = post_infer(url, name, "case1_t1", {"target": TARGET, **FLOAT32})
    assert status == 200, body[-2000:]
    (tmp_path / "got.nii.gz").write_bytes(body)
    img, src = nib.load(str(tmp_path / "got.nii.gz")), nib.load(str(study / "t1.nii.gz"))
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    got = img.get_fdata()
    assert np.isfinite(got).all() and got.std() > 0
    # the case's t2 is a source too (siblings), as in the bundle's own run on the study
    np.testing.assert_allclose(got, reference(name), rtol=1e-5, atol=1e-4)


def test_label_infer_passes_bundle_ids_and_reports_errors(label_server):
    url, _, studies = label_server
    status, body = post_infer(url, "tumsyn", "case1_t1", {"target": TARGET, "spacing": 8, "siblings": False})
    assert status == 200, body[-2000:]
    path = studies.parent / "tumsyn_8mm.nii.gz"
    path.write_bytes(body)
    img = nib.load(str(path))
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 8.0, atol=0.2)
    status, body = post_infer(url, "seq2seq", "case1_t1", {"target": "dwi"})
    assert status == 422, body  # an unknown target is refused with the reason, not synthesized
    assert "unknown sequence 'dwi'" in json.loads(body)["detail"]


# -- MONAI's standard inference ids, driven by MONAI's own tools ----------------------------------
# Every inference.json carries dataset / preprocessing / inferer / postprocessing / evaluator: one
# source image under "image", the target synthesized by inferer(image, network) with the
# conditioning bound in the inferer. The result must equal the bundle's own path from that source.

@pytest.fixture(scope="module")
def standard_reference(served_bundles, study, tmp_path_factory):
    """``get(name)``: (BraTS-layout study folder, the bundle's own synthesis from t1 alone). Float32
    everywhere (``amp`` off): bf16 results depend on the thread count, which differs between
    this process and the tools' (OMP_NUM_THREADS=1)."""
    from mrsynth.workflows.serving import run_bundle_inference

    data = stage_study({sequence_from_filename(f): f for f in study.glob("*.nii.gz")},
                       tmp_path_factory.mktemp("std_data"), case_id="std")
    cache = {}

    def get(name):
        if name not in cache:
            out = tmp_path_factory.mktemp(f"std_own_{name}")
            (syn,) = run_bundle_inference(served_bundles[name], data, out, CONFIGS, target=TARGET, source="t1",
                                          device="cpu", amp=False)
            cache[name] = nib.load(str(syn)).get_fdata()
        return data, cache[name]

    return get


@pytest.mark.parametrize("name", ALL)
def test_create_workflow_infer_runs_the_standard_ids(name, served_bundles, standard_reference, tmp_path, caplog):
    from monai.bundle import create_workflow

    bundle = served_bundles[name]
    data, own = standard_reference(name)
    wf = create_workflow(config_file=[str(bundle / c) for c in CONFIGS], workflow_type="infer",
                         meta_file=str(bundle / "configs" / "metadata.json"), logging_file=False,
                         bundle_root=str(bundle), dataset_dir=str(data), output_dir=str(tmp_path), device="cpu",
                         target=TARGET, image_sequence="t1", amp=False)
    with caplog.at_level("WARNING"):
        assert wf.check_properties() == []  # every required InferProperty is there
    assert "wrong ID" not in caplog.text  # and the optional ones are wired as MONAI expects
    assert isinstance(wf.dataset[0]["image"], torch.Tensor) and wf.dataset[0]["image"].shape[0] == (
        4 if name == "tsf_seq2seq" else 1)  # TSF: the source in its sequence's channel of four
    wf.initialize()
    wf.evaluator.run()
    (out,) = tmp_path.glob("*.nii.gz")
    assert out.name == f"std_t1_{TARGET}_syn.nii.gz"
    img, src = nib.load(str(out)), nib.load(str(data / "std" / "std_t1.nii.gz"))
    assert img.shape == src.shape
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    np.testing.assert_allclose(img.get_fdata(), own, rtol=1e-5, atol=1e-4)


def _label_ready_bundles(served_bundles, root: Path) -> dict:
    """MONAI Label's BundleInferTask reads configs/inference.json alone: copies of the served bundles
    whose inference.json is inference.json + quick.json merged (the weights are the quick networks')."""
    out = {}
    for name in ALL:
        dest = root / name
        shutil.copytree(served_bundles[name], dest)
        parser = ConfigParser()
        parser.read_config([str(dest / c) for c in CONFIGS])
        (dest / "configs" / "inference.json").write_text(json.dumps({**parser.config, "target": TARGET, "amp": False},
                                                                            indent=1))
        out[name] = dest
    return out


def test_monai_label_bundle_infer_task_drives_every_bundle(served_bundles, standard_reference, tmp_path):
    """monailabel's own BundleInferTask (not our app), unchanged: one call per bundle on the study's t1."""
    bundles = _label_ready_bundles(served_bundles, tmp_path / "bundles")
    data, _ = standard_reference(ALL[0])
    code = (
        "import json, shutil, sys\n"
        "from monailabel.tasks.infer.bundle import BundleInferTask\n"
        "from monailabel.interfaces.tasks.infer_v2 import InferType\n"
        "image, out, bundles = sys.argv[1], sys.argv[2], sys.argv[3:]\n"
        "for b in bundles:\n"
        "    task = BundleInferTask(b, conf={}, type=InferType.OTHERS)\n"
        "    assert task.is_valid(), b\n"
        "    path, _ = task({'image': image, 'result_extension': '.nii.gz', 'result_dtype': 'float32', 'device': 'cpu'})\n"
        "    shutil.move(path, f'{out}/{b.rsplit(\"/\", 1)[-1]}.nii.gz')\n")
    proc = subprocess.run([str(app_python("label")), "-c", code, str(data / "std" / "std_t1.nii.gz"), str(tmp_path),
                           *(str(bundles[n]) for n in ALL)], env=app_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    src = nib.load(str(data / "std" / "std_t1.nii.gz"))
    for name in ALL:
        img = nib.load(str(tmp_path / f"{name}.nii.gz"))
        assert img.shape == src.shape, name
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(img.get_fdata(), standard_reference(name)[1], rtol=1e-5, atol=1e-4, err_msg=name)


def test_monai_deploy_generic_bundle_operator_drives_every_bundle(served_bundles, standard_reference, tmp_path):
    """MONAI Deploy's own MonaiBundleInferenceOperator (apps/deploy/generic.py wires it, unchanged; one
    Holoscan app, one chain per bundle). The SDK casts every "image" output to uint8 (it was written
    for label maps): its output is the bundle's synthesis cast the same way, voxel for voxel."""
    bundles = []
    for name in ALL:
        bundle = tmp_path / "bundles" / name
        shutil.copytree(served_bundles[name], bundle)
        (bundle / "configs" / "serve.json").write_text(json.dumps({"target": TARGET, "amp": False}))
        bundles.append(bundle)
    data, _ = standard_reference(ALL[0])
    out = tmp_path / "out"
    proc = subprocess.run([str(app_python("deploy")), str(REPO / "apps" / "deploy" / "generic.py"), "-i",
                           str(data / "std" / "std_t1.nii.gz"), "-o", str(out), *(a for b in bundles for a in ("-m", str(b))),
                           "--config", "inference", "--config", "quick", "--config", "serve"],
                          env=app_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    src = nib.load(str(data / "std" / "std_t1.nii.gz"))
    for name in ALL:
        img = nib.load(str(out / name / "pred.nii.gz"))
        assert json.loads((out / name / "pred.json").read_text()) == {"dtype": "uint8", "shape": list(src.shape)}, name
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-5, err_msg=name)
        expected = standard_reference(name)[1].astype(np.float32).astype(np.uint8)
        got = np.asarray(img.dataobj)
        assert expected.std() > 0, name
        # float32 round-off may flip a voxel sitting on an integer boundary
        assert (got == expected).mean() > 0.999, (name, int((got != expected).sum()))
