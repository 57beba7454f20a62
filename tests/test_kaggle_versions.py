"""The kaggle package as Colab ships it (2.0.x) and as requirements.txt installs it (2.2.x): how each
signs in at import, what competition_submit answers, and Colab's two secret errors, each one line
with exit 2, and no crash after an upload went through.

The packages are written here as the real ones behave (kaggle/__init__.py and the parts of
kaggle/api/kaggle_api_extended.py the kit touches, of kaggle 2.0.2 and 2.2.5 on PyPI)."""
import importlib.machinery
import json
import os
import re
import sys
import textwrap
import types

import pytest

from kit import cli, env, layout
from kit.kaggle import download

# kaggle/__init__.py of 2.0.2: signs in at import time, and KaggleApi.authenticate exits on failure
INIT_2_0 = """
    import os
    from kaggle.api.kaggle_api_extended import KaggleApi

    __version__ = "2.0.2"

    api = KaggleApi()
    api.authenticate()
"""
# ... of 2.2.5: the same sign-in, its failure swallowed until the caller authenticates
INIT_2_2 = """
    from kaggle.api.kaggle_api_extended import KaggleApi

    __version__ = "2.2.5"

    api = KaggleApi()
    try:
        api.authenticate()
    except (Exception, SystemExit):
        pass
"""
API = """
    import os
    import types

    ACCEPTED = "accepted-token"


    class KaggleApi:
        {constant}
        def authenticate(self):
            if os.environ.get("KAGGLE_API_TOKEN") == ACCEPTED:
                return
            if os.environ.get("KAGGLE_USERNAME") and not os.environ.get("KAGGLE_KEY"):
                raise ValueError("Error: Missing key in configuration.")
            print("You must authenticate before you can call the Kaggle API.")
            exit(1)

        def competition_submit(self, file_name, message, competition, quiet=False, sandbox=False):
            upload = os.environ["FAKE_UPLOAD"]
            answer = "Could not submit to competition" if upload == "failed" else "Successfully submitted"
            return types.SimpleNamespace(message=answer, **({{"ref": 7}} if upload == "ok" else {{}}))
"""
VERSIONS = {"2.0.2": (INIT_2_0, ""),
            "2.2.5": (INIT_2_2, 'COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE = "Could not submit to competition"')}


@pytest.fixture(params=sorted(VERSIONS))
def kaggle_version(request, tmp_path, monkeypatch):
    """The kaggle package of one version, first on the path, no copy of another one imported."""
    init, constant = VERSIONS[request.param]
    package = tmp_path / "site" / "kaggle"
    (package / "api").mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(init))
    (package / "api" / "__init__.py").write_text("")
    (package / "api" / "kaggle_api_extended.py").write_text(textwrap.dedent(API.format(constant=constant)))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in {*download.SECRETS[0], *download.SECRETS[1], *(k for k in os.environ if k.startswith("KAGGLE_"))}:
        monkeypatch.setenv(name, "before")  # recorded, so what Colab's secrets set is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FAKE_UPLOAD", "ok")
    monkeypatch.setattr(env, "reachable", lambda host, port=443, timeout=2.0: True)
    yield request.param
    for name in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        del sys.modules[name]  # the fake, never seen by a later test


def submitted_run(work):
    work.mkdir(parents=True)
    layout.submission_csv(work).write_text("Image_name,Atelectasis\na.jpg,0.25\n")


def submit(capsys, work):
    code = cli.main(["--stage", "submit", "--work-dir", str(work), "--competition", "grand-xray-slam-division-a"])
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


@pytest.mark.parametrize("credentials", [{"KAGGLE_API_TOKEN": "refused-token"},
                                         {"KAGGLE_USERNAME": "someone"}])  # a kaggle.json-like half
def test_refused_credentials_are_one_line_and_exit_2(kaggle_version, tmp_path, capsys, monkeypatch, credentials):
    if "KAGGLE_USERNAME" in credentials:  # found by the kit (kaggle.json), refused by the package
        (tmp_path / "home" / ".kaggle").mkdir(parents=True)
        (tmp_path / "home" / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "someone"}))
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    submitted_run(tmp_path / "w")
    code, out, err = submit(capsys, tmp_path / "w")
    assert code == 2 and len(err) == 1, (out, err)
    assert re.match(r"error: --stage submit: Kaggle did not accept the credentials; generate a token", err[0])


@pytest.mark.parametrize("upload, code, line", [
    ("ok", 0, r"\[submit\] Successfully submitted \(submission 7; "),
    ("no-ref", 0, r"\[submit\] Successfully submitted \(submission made; "),
    ("failed", 2, r"error: --stage submit to grand-xray-slam-division-a: the upload of .*submission.csv failed"),
])
def test_submit_reads_only_what_every_version_answers(kaggle_version, tmp_path, capsys, monkeypatch,
                                                      upload, code, line):
    monkeypatch.setenv("KAGGLE_API_TOKEN", "accepted-token")
    monkeypatch.setenv("FAKE_UPLOAD", upload)
    submitted_run(tmp_path / "w")
    got, out, err = submit(capsys, tmp_path / "w")
    assert got == code, (out, err)
    if code == 0:
        assert any(re.match(line, shown) for shown in out.splitlines()), out
    else:
        assert len(err) == 1 and re.match(line, err[0]), err


def fake_colab(monkeypatch, get):
    """google.colab.userdata with Colab's two error types, its `get` answering with `get`."""
    userdata = types.ModuleType("google.colab.userdata")
    userdata.SecretNotFoundError = type("SecretNotFoundError", (Exception,), {})
    userdata.NotebookAccessError = type("NotebookAccessError", (Exception,), {})
    userdata.get = lambda name: get(userdata, name)
    colab = types.ModuleType("google.colab")
    colab.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)
    colab.userdata = userdata
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    monkeypatch.setattr(env, "platform", lambda: "colab")


def test_a_colab_secret_not_shared_with_the_notebook_is_one_line(kaggle_version, tmp_path, capsys, monkeypatch):
    def get(userdata, name):
        if name == "KAGGLE_API_TOKEN":
            raise userdata.NotebookAccessError(name)
        raise userdata.SecretNotFoundError(name)
    fake_colab(monkeypatch, get)
    submitted_run(tmp_path / "w")
    code, _, err = submit(capsys, tmp_path / "w")
    assert code == 2 and len(err) == 1
    assert re.match(r"error: the Colab secret KAGGLE_API_TOKEN is not shared with this notebook: .*Notebook "
                    r"access", err[0]), err


def test_colab_secrets_missing_say_how_to_give_them(kaggle_version, tmp_path, capsys, monkeypatch):
    def get(userdata, name):
        raise userdata.SecretNotFoundError(name)
    fake_colab(monkeypatch, get)
    assert download.credentials() is None
    submitted_run(tmp_path / "w")
    code, _, err = submit(capsys, tmp_path / "w")
    assert code == 2 and len(err) == 1
    assert re.match(r"error: --stage submit needs Kaggle credentials and found none: ", err[0]), err


def test_a_colab_secret_token_signs_in(kaggle_version, tmp_path, capsys, monkeypatch):
    def get(userdata, name):
        if name != "KAGGLE_API_TOKEN":
            raise userdata.SecretNotFoundError(name)
        return "accepted-token"
    fake_colab(monkeypatch, get)
    submitted_run(tmp_path / "w")
    code, out, err = submit(capsys, tmp_path / "w")
    assert code == 0, err
    assert "Successfully submitted" in out
