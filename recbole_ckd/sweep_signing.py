"""Signatures of sweep folders, and the sweep each folder holds.

Ray resumes a sweep from pickles in its folder (tuner.pkl, the experiment state, each trial's
params.pkl): loading them runs whatever code they hold. So a folder is resumed only if it
carries this user's signature (an HMAC over every file, with a key only this user can read),
written by the sweep itself when Ray stopped. A folder also records which sweep it holds (a
digest of its space, model, dataset and resolved config): another sweep is never resumed in it.
"""

import contextlib
import hashlib
import hmac
import json
import os
import tempfile

from recbole_ckd.errors import UserError, saving
from recbole_ckd.run_keys import config_key, file_digest


class SweepStateError(UserError):
    """A sweep folder that this user's recbole-ckd did not leave (or that changed since)."""


SIGNATURE_FILE = ".recbole_ckd-signature"
SETTINGS_FILE = ".recbole_ckd-sweep"


def _key_file():
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "recbole_ckd", "sweep.key")


def _secret(create):
    path = _key_file()
    if not os.path.isfile(path):
        if not create:
            return None
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another sweep created it just now
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(32))
    # as ssh does with a private key: whoever can read the key can sign a folder this user then resumes
    # (its pickles run as this user), whoever can write it can replace it
    status = os.stat(path)
    if status.st_uid != os.getuid():
        raise SweepStateError(f"{path}: the sweep signing key belongs to another user; delete it (sweeps it signed "
                              "then start over), and a new one is made.")
    if status.st_mode & 0o077:
        raise SweepStateError(f"{path}: the sweep signing key may be read or written by group or others (mode "
                              f"{status.st_mode & 0o777:o}); make it yours alone: chmod 600 {path}.")
    with open(path, "rb") as f:
        return f.read()


def check_sweep_key():
    """The signing key exists (it is created on first use) and is this user's alone: checked before a sweep
    trains anything, not when it signs its folder at the end."""
    _secret(create=True)


def _folder_files(path):
    """``{relative path: SHA-256}`` of every file under ``path`` but the signature; ``link:<target>`` for a
    symbolic link, to a file or to a folder (os.walk does not enter those)."""
    files = {}
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            full = os.path.join(root, name)
            relative = os.path.relpath(full, path)
            # TensorBoard event files are flushed at exit, after the signature, and never loaded by a resume
            if relative != SIGNATURE_FILE and not name.startswith("events.out.tfevents."):
                files[relative] = ("link:" + os.readlink(full)) if os.path.islink(full) else file_digest(full)
    return files


def _mac(secret, files):
    return hmac.new(secret, json.dumps(files, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def sign_sweep(path):
    """Sign the sweep folder ``path`` as left by this user's recbole-ckd: every file and its digest."""
    files = _folder_files(path)
    _write_json(os.path.join(path, SIGNATURE_FILE), {"files": files, "mac": _mac(_secret(create=True), files)})


def _write_json(target, record):
    """Write ``record`` to ``target`` all at once (a temporary file, then a rename); a full disk is one line."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".tmp-")
    try:
        with saving(target), os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=0, sort_keys=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_sweep_signature(path):
    """Refuse to resume from ``path`` unless this user's recbole-ckd signed it and nothing changed since."""
    fix = f"delete {path} to start the sweep over, or give another --output"
    secret = _secret(create=False)
    signature = os.path.join(path, SIGNATURE_FILE)
    try:
        with open(signature) as f:
            recorded = json.load(f)
        signed = hmac.compare_digest(str(recorded["mac"]), _mac(secret, recorded["files"])) if secret else False
    except (OSError, ValueError, KeyError, TypeError):
        signed = False
    if not signed:
        raise SweepStateError(f"{path} holds Ray resume state (pickles, which run code when loaded) that this user's "
                              f"recbole-ckd did not sign (written elsewhere, or by a sweep killed with SIGKILL); {fix}.")
    current = _folder_files(path)
    links = sorted(k for k, v in current.items() if v.startswith("link:"))
    if links:  # Ray writes none; a signature covers a link's target path, never what is there
        raise SweepStateError(f"{path} holds symbolic links ({', '.join(links[:3])}{' ...' if len(links) > 3 else ''}), "
                              f"whose contents no signature covers; it is not resumed; {fix}.")
    changed = sorted(set(current) ^ set(recorded["files"]) | {k for k in current if current[k] != recorded["files"].get(k)})
    if changed:
        raise SweepStateError(f"{path} changed after its sweep stopped ({', '.join(changed[:3])}"
                              f"{' ...' if len(changed) > 3 else ''}); it is not resumed; {fix}.")


# ----------------------------------------------------------------------------- the sweep a folder holds
def sweep_digest(params, model, dataset, config):
    """Digest of a sweep: its parsed space, the model, the dataset and the resolved config every trial
    starts from (:func:`recbole_ckd.run_keys.config_key`: every key but the runtime-only ones, and
    the dataset files)."""
    space = {name: [p.kind, list(p.values)] for name, p in sorted(params.items())}
    text = json.dumps({"space": space, "model": model, "dataset": dataset, "config": config_key(config)},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_sweep_folder(path, digest):
    """Refuse ``path`` if it holds another sweep than ``digest``: one recorded with another digest, or
    one that recorded none (left by an older recbole-ckd, so it cannot show which sweep it is)."""
    try:
        with open(os.path.join(path, SETTINGS_FILE)) as f:
            recorded = json.load(f).get("digest")
    except FileNotFoundError:
        recorded = None if os.path.isdir(path) and os.listdir(path) else digest  # an empty folder holds no sweep
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded != digest:
        raise SweepStateError(f"a different sweep is in this folder ({path}); use another --output or delete it")


def record_sweep(path, digest):
    """Record in ``path`` that it holds the sweep ``digest`` (before Ray writes anything there)."""
    os.makedirs(path, exist_ok=True)
    _write_json(os.path.join(path, SETTINGS_FILE), {"digest": digest})
