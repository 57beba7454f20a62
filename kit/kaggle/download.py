"""Kaggle's API where there is no Kaggle mount: credentials, and fetching a dataset into --data-dir.

Credentials are looked for where the kaggle package looks (KAGGLE_API_TOKEN, KAGGLE_USERNAME
with KAGGLE_KEY, ~/.kaggle/access_token, kaggle.json in its config folder, `kaggle auth login`'s
credentials.json) and in Colab's secrets, which are copied into the environment for it.

The archive is never stored: Grand X-Ray Slam's is larger than a free Colab disk. The API gives
the archive's signed storage URL (the kaggle package's own downloads resume on it with HTTP
ranges), and its members are read from there one after another, JPEG films stored shrunk to
--resize on the shorter side, every other file as it is. A rerun after a disconnect skips the
files already stored.
"""
import contextlib
import functools
import io
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from kit import env
from kit.data import competition, images, smoke, sources
from kit.errors import KitError
from kit.io import atomic_path, write_json
from kit.kaggle.remote_zip import RangeFile
from kit.progress import progress

API_HOST = "api.kaggle.com"
MARKER = ".xray-kit-download.json"  # what was fetched, at which size, and whether it is complete
# films fetched at full size (about 250 MB) and then shrunk by the workers while the next round is
# fetched: at most two rounds on disk at once
FILMS_A_ROUND = 256
LOCAL_HEADER = 1024  # bytes before a member's data that its read asks for with it: header, name, extra
# --dataset -> (kind, Kaggle name) of the data fetched by --download
KAGGLE_SOURCES = {"gxs": ("competition", "grand-xray-slam-division-a"), "nih": ("dataset", "nih-chest-xrays/data")}
SECRETS = (("KAGGLE_USERNAME", "KAGGLE_KEY"), ("KAGGLE_API_TOKEN",))
HOW_TO = ("generate a token at kaggle.com > Settings > API and set KAGGLE_API_TOKEN or save it as "
          "~/.kaggle/access_token (a legacy kaggle.json or KAGGLE_USERNAME and KAGGLE_KEY work too; on "
          "Colab: store it as a secret and copy it into os.environ in a cell before !python run.py)")


def _config_dir() -> Path:
    """The kaggle package's config folder: $KAGGLE_CONFIG_DIR, ~/.kaggle, or on Linux
    ~/.config/kaggle when ~/.kaggle does not exist."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    home = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not home.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return home


def _colab_secrets() -> bool:
    """Copy Kaggle credentials from Colab's secrets into the environment; True if there were any.
    Secrets answer only in the notebook's own process (the kit run in a cell), not under !python."""
    try:
        from google.colab import userdata
    except ImportError:
        return False
    unshared = getattr(userdata, "NotebookAccessError", ())
    for names in SECRETS:
        try:
            values = [userdata.get(n) for n in names]
        except unshared as e:
            raise KitError(f"the Colab secret {e.args[0] if e.args else names[0]} is not shared with this "
                           f"notebook: open the key icon in Colab's left bar and turn on its Notebook "
                           f"access, then rerun") from e
        except Exception:  # SecretNotFoundError: try the other way of naming the credentials
            continue
        if all(values):
            os.environ.update(zip(names, values))
            return True
    return False


def credentials() -> "str | None":
    """Where the Kaggle credentials come from, or None when there are none."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME and KAGGLE_KEY"
    home = Path.home() / ".kaggle"
    for path in (home / "access_token", home / "access_token.txt", home / "credentials.json",
                 _config_dir() / "kaggle.json"):
        if path.is_file():
            return str(path)
    if env.platform() == "colab" and _colab_secrets():
        return "Colab secrets"
    return None


def kaggle_api(action: str):
    """An authenticated KaggleApi, after checking that credentials exist and Kaggle answers."""
    if credentials() is None:
        raise KitError(f"{action} needs Kaggle credentials and found none: {HOW_TO}")
    if not env.reachable(API_HOST):
        raise KitError(f"{action}: cannot reach {API_HOST} (no network?); run it where the internet works")
    # importing kaggle authenticates at once and prints a sign-in guide when that fails; kaggle 2.0.x
    # (Colab's) then exits inside the import itself, and a kaggle.json without a key raises ValueError
    with contextlib.redirect_stdout(io.StringIO()), kaggle_errors(action, f"the credentials were refused; {HOW_TO}"):
        try:  # a token is checked online: a lost connection is kaggle_errors' one line
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
        except ImportError as e:
            raise KitError(f"{action} needs the kaggle package ({e}); pip install kaggle") from e
        except (SystemExit, ValueError) as e:
            raise KitError(f"{action}: Kaggle did not accept the credentials; {HOW_TO}") from e
    return api


@contextlib.contextmanager
def kaggle_errors(action: str, forbidden: str):
    """Kaggle API failures as one-line errors; `forbidden` says what a 403 means here."""
    import requests

    def refusal(e):
        status = e.response.status_code if e.response is not None else None
        return {401: f"the credentials were refused; {HOW_TO}", 403: forbidden,
                404: "not found; check the name"}.get(status, str(e).splitlines()[0][:200])

    try:
        yield
    except requests.HTTPError as e:
        raise KitError(f"{action}: {refusal(e)}") from e
    except requests.RequestException as e:
        raise KitError(f"{action}: the connection to Kaggle failed ({type(e).__name__}); rerun "
                       f"where the internet works") from e
    except ValueError as e:
        # kernels_output words a 401 or 403 as a ValueError of its own, about leaderboard slugs
        if isinstance(e.__context__, requests.HTTPError):
            raise KitError(f"{action}: {refusal(e.__context__)}") from e
        raise KitError(f"{action}: {e}") from e


def target(data_dir, name) -> Path:
    if data_dir:
        return Path(data_dir)
    where = env.platform()
    if where == "kaggle":
        raise KitError("--download on Kaggle: attach the data instead (Add Input, or competition_sources "
                       "and dataset_sources in kernel-metadata.json); it appears under /kaggle/input")
    return env.data_roots(where)[0] / name.replace("/", "-")


def archive_url(api, kind, name) -> str:
    """The signed storage URL that Kaggle's download call redirects to (streamed, so nothing of
    the archive is read here); it serves byte ranges."""
    from kagglesdk.competitions.types.competition_api_service import ApiDownloadDataFilesRequest
    from kagglesdk.datasets.types.dataset_api_service import ApiDownloadDatasetRequest

    with api.build_kaggle_client() as kaggle:
        if kind == "competition":
            request = ApiDownloadDataFilesRequest()
            request.competition_name = name
            response = kaggle.competitions.competition_api_client.download_data_files(request)
        else:
            request = ApiDownloadDatasetRequest()
            request.owner_slug, request.dataset_slug = name.split("/")
            response = kaggle.datasets.dataset_api_client.download_dataset(request)
        response.close()
        return response.url


def stream(url_source, folder: Path, resize: int, workers: int, wanted=None):
    """Every file of the remote zip into `folder` that is not there yet, in archive order; only the
    files whose stored name `wanted(name)` keeps, when it is given. Films are fetched a round at a
    time, and each round is shrunk by the worker processes while the next one is fetched."""
    try:
        remote = RangeFile(url_source)
        archive = zipfile.ZipFile(remote)
    except zipfile.BadZipFile as e:
        raise KitError(f"--download: the archive is not a readable zip ({e}); rerun later") from e
    with archive:
        members = sorted((m for m in archive.infolist() if not m.is_dir()), key=lambda m: m.header_offset)
        names = dict(zip(members, images.stored_names(pd.Series([m.filename for m in members], dtype=object), 0)))
        asked = [m for m in members if wanted is None or wanted(names[m])]
        todo = [m for m in asked if not (folder / names[m]).exists()]
        print(f"[download] {len(members)} files, {sum(m.compress_size for m in members) / 1e9:.1f} GB in the "
              f"archive" + (f"; {len(asked)} of them wanted" if wanted else "") + f"; {len(asked) - len(todo)} "
              f"already here, {len(todo)} to fetch"
              + (f", JPEG films stored at {resize} px on the shorter side" if resize else ""), flush=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch, \
                images.worker_pool(max(1, workers)) as pool:
            shrink = Shrinker(pool, resize, workers)
            for k, member in enumerate(progress(todo, len(todo), "[download]", unit="file")):
                dst = folder / names[member]
                if wanted:  # a few files here and there: one request for each, no read-ahead past it
                    remote.window = member.compress_size + LOCAL_HEADER
                if resize and dst.suffix.lower() in images.JPEG_SUFFIXES:
                    shrink.add(_extract(archive, member, Path(scratch) / f"{k}{dst.suffix}"), dst)
                else:
                    _extract(archive, member, dst)
            shrink.finish()


def _extract(archive, member, dst: Path) -> Path:
    with archive.open(member) as src, atomic_path(dst) as tmp, open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    return dst


class Shrinker:
    """Films held at full size, shrunk into place a round at a time by `pool`'s processes while the
    caller fetches the next round."""

    def __init__(self, pool, resize: int, workers: int):
        self.pool, self.work, self.workers = pool, functools.partial(images.store_one, resize=resize), workers
        self.films, self.pending = [], None  # pending: (films, their AsyncResult) being shrunk

    def add(self, src: Path, dst: Path):
        self.films.append((src, dst))
        if len(self.films) == FILMS_A_ROUND:
            self._next()

    def finish(self):
        self._next()
        self._next()

    def _next(self):
        """Wait for the round being shrunk, then start the one held (if any)."""
        if self.pending:
            films, results = self.pending
            for (src, dst), (status, _, _) in zip(films, results.get()):
                if status == "unreadable":  # kept as it came: the separate stage records it as unreadable
                    os.replace(src, dst)
                src.unlink(missing_ok=True)
        jobs = [(str(src), str(dst)) for src, dst in self.films]
        self.pending = (self.films, self.pool.map_async(
            self.work, jobs, chunksize=images.chunk_size(len(jobs), self.workers))) if jobs else None
        self.films = []


def refill(paths, dataset, data_dir, resize, workers, smoke, predict_csv):
    """Fetch the files of `paths` that the download in `data_dir` lacks: the films of a smoke run's
    slice, or those left out of a download's shards. Range requests for just them; the rest of the
    archive is skipped."""
    folder = Path(data_dir).resolve()
    missing = [Path(p).resolve() for p in paths if not os.path.exists(p)]
    missing = [str(p.relative_to(folder)) for p in missing if p.is_relative_to(folder)]
    if missing and (folder / MARKER).exists():
        print(f"[download] {len(missing)} films are not in {folder} yet; fetching just them")
        fetch(dataset, data_dir, resize, workers, smoke, predict_csv, files=missing)


def _is_film(name) -> bool:
    return Path(name).suffix.lower() in images.IMAGE_SUFFIXES


def _smoke_test_films(predict_csv, folder: Path) -> set:
    """The file names of the test films a smoke run predicts: the sample submission's first rows."""
    sample = Path(predict_csv) if predict_csv else competition.find_sample(str(folder))
    if sample is None:
        return set()
    ids = competition.read_sample(sample).iloc[:smoke.TEST_FILMS, 0]
    return {Path(i).name for i in ids}


def fetch(dataset, data_dir, resize, workers, smoke, predict_csv, files=None) -> str:
    """Fetch `dataset` (--dataset) into `data_dir` (--data-dir; empty: this platform's data root)
    unless it is already there (a fetch that stopped midway continues); the folder it is in, for
    --data-dir. `files`: only these (paths in the folder).
    A --smoke run fetches every file but the films, then only the test films it predicts; the
    separate stage asks for its slice's training films (refill), and a real run for the rest."""
    dataset = "gxs" if dataset == "auto" else dataset
    if dataset not in KAGGLE_SOURCES:
        known = ", ".join(f"--dataset {k} ({v[1]})" for k, v in KAGGLE_SOURCES.items())
        raise KitError(f"--download knows {known}; put the {dataset} dataset in --data-dir yourself")
    kind, name = KAGGLE_SOURCES[dataset]
    folder = target(data_dir, name)
    marker = folder / MARKER
    adapter, found = sources.discover([folder], dataset)
    state = json.loads(marker.read_text()) if marker.exists() else {}
    shrunk = state.get("resize")
    if shrunk and (resize == 0 or resize > shrunk):  # a film shrunk on the way in is never enlarged again
        raise KitError(f"{folder} holds films shrunk to {shrunk} px by an earlier --download; pass --resize "
                       f"{shrunk}, or remove that folder to download them at {resize or 'full size'}")
    unfinished = bool(state) and (not state.get("complete") or (state.get("slice") and not smoke))
    if found is None or unfinished or files:
        api = kaggle_api("--download")
        print(f"[download] Kaggle {kind} {name} -> {folder}" + (" (continuing)" if unfinished else ""))
        folder.mkdir(parents=True, exist_ok=True)
        url = (f"https://www.kaggle.com/competitions/{name}/rules" if kind == "competition"
               else f"https://www.kaggle.com/datasets/{name}")
        # a slice: a smoke run's, until a real run fetches the rest
        settings = {"archive": name, "resize": resize, "slice": state.get("slice", False) if files else smoke}
        source = functools.partial(archive_url, api, kind, name)
        with kaggle_errors(f"--download {name}", f"access denied: accept its rules at {url}, then rerun"):
            write_json({**settings, "complete": False}, marker)
            if files:
                stream(source, folder, resize, workers, wanted=set(files).__contains__)
            elif smoke:
                stream(source, folder, resize, workers, wanted=lambda n: not _is_film(n))
                tests = _smoke_test_films(predict_csv, folder)
                stream(source, folder, resize, workers, wanted=lambda n: _is_film(n) and Path(n).name in tests)
            else:
                stream(source, folder, resize, workers)
            write_json({**settings, "complete": True}, marker)
        adapter, found = sources.discover([folder], dataset)
        if found is None:
            markers = " or ".join(sources.ADAPTERS[dataset].MARKERS)
            raise KitError(f"downloaded {name} into {folder} but found no {markers} in it; remove the "
                           f"folder and rerun, or pass the dataset's folder with --data-dir")
    else:
        print(f"[download] {name} is already in {folder} ({found.relative_to(folder)}), skipped")
    return str(folder)
