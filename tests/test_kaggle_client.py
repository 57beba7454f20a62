"""The kaggle package's own client against Kaggle's API on the loopback address (kaggle_server):
what push, submit, --from-kernel, the weights dataset and --download send is what the README
promises, field by field, and Kaggle's refusals come back as one line."""
import json
import re
import zipfile

import pytest
import timm
from timm.models import save_for_hf

from conftest import ROOT, one_error
from fake_data import gxs_dataset, nih_dataset
from kaggle_server import KEY, TOKEN, USERNAME, kaggle_server, range_server  # noqa: F401 (a fixture)
from kit import cli
from kit.config import Config, download_kwargs
from kit.kaggle import kaggle_meta

KERNEL = f"{USERNAME}/xray-kit-eva-x"
COMPETITION = "grand-xray-slam-division-a"
SOURCES = dict(competition_sources=[COMPETITION], dataset_sources=[f"{USERNAME}/eva02-weights"],
               kernel_sources=[KERNEL], model_sources=["timm/eva02/pytorch/base/1"])


def user_metadata(tmp_path, **changes):
    """The template as a user fills it in: their id, the weights and the output to resume from."""
    meta = {**json.loads((ROOT / kaggle_meta.FILE).read_text()), "id": KERNEL, **SOURCES, **changes}
    path = tmp_path / kaggle_meta.FILE
    path.write_text(json.dumps(meta))
    return meta, path


def push(tmp_path, meta_path, *kernel_args):
    return ["--stage", "push", "--out", str(tmp_path / "dist"), "--work-dir", str(tmp_path / "w"),
            "--kernel-metadata", str(meta_path), "--", *kernel_args]


def test_push_sends_the_bundled_kernel_with_its_metadata(tmp_path, capsys, kaggle_server):
    meta, path = user_metadata(tmp_path)
    assert cli.main(push(tmp_path, path, "--task", "competition", "--resume", "auto")) == 0
    assert [r.call for r in kaggle_server.requests] == ["SaveKernel"]
    sent = kaggle_server.requests[0]
    assert sent.credentials() == (USERNAME, KEY)
    body = sent.json
    assert body["text"] == (tmp_path / "dist" / "kernel.py").read_text()  # the one file, as bundled
    assert (body["slug"], body["newTitle"], body["language"], body["kernelType"]) == (
        KERNEL, meta["title"], "python", "script")
    assert (body["competitionDataSources"], body["datasetDataSources"], body["kernelDataSources"],
            body["modelDataSources"]) == tuple(SOURCES[k] for k in (
                "competition_sources", "dataset_sources", "kernel_sources", "model_sources"))
    # the GPU on, the internet off written out (missing, Kaggle turns it on), the T4 shape
    assert (body["enableGpu"], body["enableInternet"], body["machineShape"]) == (True, False, "NvidiaTeslaT4")
    assert body["isPrivate"] is True
    assert f"[push] version 1 is running: https://www.kaggle.com/code/{KERNEL}" in capsys.readouterr().out


@pytest.mark.parametrize("status, message", [
    (401, r"the credentials were refused; generate a token"),
    (403, rf"access denied: is {KERNEL} yours\?"),
])
def test_a_refused_push_is_one_line(tmp_path, capsys, kaggle_server, status, message):
    kaggle_server.refuse["SaveKernel"] = status
    _, path = user_metadata(tmp_path)
    assert re.match(r"error: --stage push: " + message, one_error(capsys, push(tmp_path, path)))


def finished_run(work):
    work.mkdir(parents=True)
    (work / "submission.csv").write_text("Image_name,Atelectasis\na.jpg,0.25\nb.jpg,0.5\n")
    return work / "submission.csv"


def test_submit_uploads_the_file_then_submits_its_token_with_the_message(tmp_path, capsys, kaggle_server):
    csv = finished_run(tmp_path / "w")
    assert cli.main(["--stage", "submit", "--work-dir", str(tmp_path / "w")]) == 0
    calls = [r.call or f"{r.method} {r.path}" for r in kaggle_server.requests]
    assert calls == ["StartSubmissionUpload", "PUT /upload/submission.csv", "CreateSubmission"]
    start, upload, create = kaggle_server.requests
    assert start.json["competitionName"] == COMPETITION and start.json["fileName"] == "submission.csv"
    assert start.json["contentLength"] == csv.stat().st_size and upload.body == csv.read_bytes()
    assert create.json == {"competitionName": COMPETITION, "blobFileTokens": "submission-blob",
                           "submissionDescription": "xray kit: submission"}  # a work dir with no report
    assert {start.credentials(), create.credentials()} == {(USERNAME, KEY)}
    assert "Successfully submitted to grand-xray-slam-division-a (submission 42" in capsys.readouterr().out


def test_a_failed_upload_is_one_line_and_nothing_is_submitted(tmp_path, capsys, kaggle_server):
    finished_run(tmp_path / "w")
    kaggle_server.upload_status = 400
    line = one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w")])
    assert re.match(rf"error: --stage submit to {COMPETITION}: the upload of .*/w/submission.csv failed; rerun$",
                    line), line
    assert kaggle_server.calls("CreateSubmission") == []


@pytest.mark.parametrize("status, message", [
    (400, "Submission not allowed: your team has used its daily Submission allowance (5)"),
    (404, "not found; check the name"),
])
def test_a_refused_submission_is_one_line_with_kaggles_reason(tmp_path, capsys, kaggle_server, status, message):
    finished_run(tmp_path / "w")
    kaggle_server.refuse["CreateSubmission"] = (status, message if status == 400 else "Competition not found")
    line = one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w")])
    assert line == f"error: --stage submit to {COMPETITION}: {message}"


def test_an_access_token_is_sent_as_the_readme_says_to_set_it(tmp_path, capsys, monkeypatch, kaggle_server):
    """KAGGLE_API_TOKEN, the README's first choice: checked with Kaggle, then sent as a bearer token;
    one Kaggle does not take, or no answer to the check, is one line before anything is uploaded."""
    finished_run(tmp_path / "w")
    monkeypatch.delenv("KAGGLE_USERNAME"), monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_expired")
    line = one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w")])
    assert line.startswith("error: --stage submit: Kaggle did not accept the credentials; generate a token")
    assert [r.call for r in kaggle_server.requests] == ["IntrospectToken"]
    monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    assert cli.main(["--stage", "submit", "--work-dir", str(tmp_path / "w")]) == 0
    assert kaggle_server.calls("IntrospectToken")[-1] == {"token": TOKEN}
    assert {r.credentials() for r in kaggle_server.requests if r.call.endswith("Submission")} == {TOKEN}
    kaggle_server.stop()  # checking the token is the first call: a connection lost there is one line too
    assert one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w")]) == (
        "error: --stage submit: the connection to Kaggle failed (ConnectionError); rerun where the internet works")


def test_from_kernel_asks_for_its_output_and_downloads_only_what_submit_reads(tmp_path, kaggle_server):
    """A run's output lists far more than a page of 20 files; what submit reads may be on any page."""
    kaggle_server.output = {**{f".stamps/stage-{k}.json": b"{}" for k in range(30)},
                            "submission.csv": b"Image_name,Atelectasis\na.jpg,0.25\n",
                            "history.csv": b"epoch,val_macro_auc\n1,0.75\n",
                            "logs/all-20260101-120000.log": b"[train] done\n", "checkpoints/last.pth": b"x",
                            "eva_x_final_soup.pth": b"x", "dataset/images/a.jpg": b"x"}
    kaggle_server.log = "the kernel's log\n"
    work = tmp_path / "w"
    assert cli.main(["--stage", "submit", "--work-dir", str(work), "--from-kernel", KERNEL]) == 0
    pages = kaggle_server.calls("ListKernelSessionOutput")
    assert [p.get("pageToken", "") for p in pages] == ["", "20"]
    asked = pages[0]
    assert (asked["userName"], asked["kernelSlug"], asked.get("versionLabel")) == (USERNAME, "xray-kit-eva-x", None)
    fetched = sorted(r.path for r in kaggle_server.requests if r.method == "GET")
    assert fetched == ["/output/history.csv", "/output/logs/all-20260101-120000.log", "/output/submission.csv"]
    assert kaggle_server.calls("CreateSubmission")[0]["submissionDescription"] == ("xray kit: val macro AUC "
                                                                                  "0.7500 (epoch 1)")
    folder = work / "kernel_output" / "xray-kit-eva-x"
    assert (folder / "xray-kit-eva-x.log").read_text() == "the kernel's log\n"
    assert kaggle_server.uploads["submission.csv"] == kaggle_server.output["submission.csv"]


@pytest.mark.parametrize("status, message", [
    (401, r"the credentials were refused; generate a token"),
    (403, rf"access denied: is {KERNEL} yours or public\?$"),
])
def test_from_kernel_refused_is_one_line_with_its_fix(tmp_path, capsys, kaggle_server, status, message):
    """The kaggle package words both refusals as a ValueError about leaderboard slugs; the kit says
    what they mean here."""
    kaggle_server.refuse["ListKernelSessionOutput"] = status
    line = one_error(capsys, ["--stage", "submit", "--work-dir", str(tmp_path / "w"), "--from-kernel", KERNEL])
    assert re.match(rf"error: --from-kernel {KERNEL}: " + message, line), line
    assert kaggle_server.calls("StartSubmissionUpload") == []


def test_the_weights_folder_uploads_as_a_dataset_with_the_readmes_commands(tmp_path, kaggle_server):
    """What --stage weights writes (timm's save_for_hf), through `kaggle datasets init` and
    `kaggle datasets create` as the README gives them: both files arrive whole, as a private dataset."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    folder = tmp_path / "weights"
    save_for_hf(timm.create_model("test_vit", pretrained=False), folder, safe_serialization=True)
    api = KaggleApi()
    api.authenticate()
    meta_file = api.dataset_initialize(str(folder))
    meta = json.loads(open(meta_file).read())
    meta.update(id=f"{USERNAME}/eva02-base-448-weights", title="eva02 base 448 weights")  # the README's edit
    open(meta_file, "w").write(json.dumps(meta))
    assert api.dataset_create_new(str(folder), quiet=True).status == "ok"
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "dataset-metadata.json"}
    assert sorted(files) == ["config.json", "model.safetensors"] and kaggle_server.uploads == files
    create = kaggle_server.calls("CreateDataset")[0]
    assert (create["ownerSlug"], create["slug"], create["title"], create["licenseName"], create["isPrivate"]) == (
        USERNAME, "eva02-base-448-weights", "eva02 base 448 weights", "CC0-1.0", True)
    assert sorted(f["token"] for f in create["files"]) == ["blob-config.json", "blob-model.safetensors"]


@pytest.mark.parametrize("dataset, call, body", [
    ("gxs", "DownloadDataFiles", {"competitionName": COMPETITION}),
    ("nih", "DownloadDataset", {"ownerSlug": "nih-chest-xrays", "datasetSlug": "data"}),
])
def test_download_asks_kaggle_for_the_archive_and_streams_it_from_where_it_points(
        tmp_path, monkeypatch, kaggle_server, dataset, call, body):
    from kit import env
    from kit.kaggle import download

    monkeypatch.setattr(env, "platform", lambda: "local")
    table = (gxs_dataset(tmp_path / "src", [("0.jpg", "P0", "PA", ["Cardiomegaly"])], images=False)
             if dataset == "gxs" else nih_dataset(tmp_path / "src", [("0.png", 1, "PA", "Effusion", 1, False)]))
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(table, table.name)
    with range_server(archive.read_bytes()) as (url, asked):
        kaggle_server.archive_url = url
        cfg = Config(download=True, dataset=dataset, data_dir=str(tmp_path / "d"), workers=1)
        download.fetch(**download_kwargs(cfg))
    assert kaggle_server.calls(call) == [body] and asked  # asked Kaggle, then read the archive's ranges
    assert (tmp_path / "d" / table.name).read_bytes() == table.read_bytes()


def test_download_asks_kaggle_again_when_the_archives_url_expires(tmp_path, monkeypatch, kaggle_server):
    from kit import env
    from kit.kaggle import download, remote_zip

    monkeypatch.setattr(env, "platform", lambda: "local")
    monkeypatch.setattr(remote_zip, "WINDOW", 512)  # several requests over a small archive
    table = gxs_dataset(tmp_path / "src", [(f"{k}.jpg", f"P{k}", "PA", ["Cardiomegaly"]) for k in range(40)],
                        images=False)
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(table, table.name, zipfile.ZIP_STORED)
    with range_server(archive.read_bytes(), expire={3}) as (url, asked):
        kaggle_server.archive_url = url
        download.fetch(**download_kwargs(Config(download=True, data_dir=str(tmp_path / "d"), workers=1)))
    assert len(kaggle_server.calls("DownloadDataFiles")) == 2 and len(asked) > 3  # a new URL, then on
    assert (tmp_path / "d" / table.name).read_bytes() == table.read_bytes()


def test_download_refused_points_to_the_rules(tmp_path, monkeypatch, kaggle_server):
    from kit import env
    from kit.errors import KitError
    from kit.kaggle import download

    monkeypatch.setattr(env, "platform", lambda: "local")
    kaggle_server.refuse["DownloadDataFiles"] = 403
    with pytest.raises(KitError, match=rf"accept its rules at https://www.kaggle.com/competitions/{COMPETITION}/rules"):
        download.fetch(**download_kwargs(Config(download=True, data_dir=str(tmp_path / "d"))))


def test_nothing_leaves_the_machine(kaggle_server):
    """The package's production endpoint is the server, and HTTPS elsewhere is refused at once."""
    import requests
    from kagglesdk.kaggle_env import KaggleEnv, get_endpoint

    assert get_endpoint(KaggleEnv.PROD) == kaggle_server.url
    with pytest.raises(requests.exceptions.ProxyError):
        requests.get("https://www.kaggle.com", timeout=5)
