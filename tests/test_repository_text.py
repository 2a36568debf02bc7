"""What a clone holds speaks to its reader: no tracked file names a folder of the machine it was
written on (the folder holding the checkout, the temporary folder, the home folder) or refers to
issues and people the reader cannot see. The folders are this machine's, resolved when the test
runs, so the test fits any machine and any checkout location."""

import re
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# This file spells out the words it looks for.
EXCLUDED = {"tests/test_repository_text.py"}
ISSUE_REFERENCE = re.compile(r"\bissues? ?#?\d+\b|\bthe team\b", re.IGNORECASE)
SHOWN = 40  # hits listed in a failure message


def tracked_text_files():
    """``{path: text}`` of every git-tracked file that is UTF-8 text (no NUL byte)."""
    try:
        top = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        listing = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (e.g. installed from a wheel): there are no tracked files to scan")
    if Path(top).resolve() != ROOT:
        pytest.skip(f"{ROOT} is not the top of a git checkout: there are no tracked files to scan")
    files = {}
    for name in listing.decode("utf-8").split("\0"):
        path = ROOT / name
        if not name or name in EXCLUDED or not path.is_file():  # deleted in the work tree, or a submodule
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return files


def machine_folders():
    """This machine's folders that no tracked file may name: as given and resolved (a link such as
    macOS's /tmp), never the filesystem root, which every absolute path starts with."""
    folders = set()
    for folder in (ROOT.parent, Path(tempfile.gettempdir()), Path.home()):
        folders |= {str(folder), str(folder.resolve())}
    return sorted(f for f in folders if Path(f) != Path(f).parent)


def folder_pattern(folders):
    """A path into one of ``folders`` ("/tmp/x"), not a folder's bare name (".gitignore"'s "/tmp/"
    is the checkout's own tmp/ folder)."""
    return re.compile("|".join(re.escape(folder) + r"/[\w.~-]" for folder in folders))


def hits(pattern, files):
    found = []
    for name, text in sorted(files.items()):
        for number, line in enumerate(text.splitlines(), start=1):
            for match in pattern.finditer(line):
                found.append(f"{name}:{number}: {match.group(0)}")
    return found


def failure(found, what):
    shown = "\n".join(found[:SHOWN]) + (f"\n... and {len(found) - SHOWN} more" if len(found) > SHOWN else "")
    return f"{len(found)} {what}:\n{shown}"


def test_no_tracked_file_names_a_folder_of_this_machine():
    found = hits(folder_pattern(machine_folders()), tracked_text_files())
    assert not found, failure(found, f"paths into {', '.join(machine_folders())}")


def test_no_tracked_file_refers_to_issues_or_the_team():
    found = hits(ISSUE_REFERENCE, tracked_text_files())
    assert not found, failure(found, "references to issues or the team")


def test_the_scan_finds_what_it_looks_for():
    files = {"a.md": "intro\nsee Issue #17, /srv/ci/x.json and /srv/cinema", ".gitignore": "/srv/ci/\n",
             "b.py": "issues = 3  # the teamwork of tissue 17"}
    assert hits(ISSUE_REFERENCE, files) == ["a.md:2: Issue #17"]
    assert hits(folder_pattern(["/srv/ci", "/home/me"]), files) == ["a.md:2: /srv/ci/x"]
