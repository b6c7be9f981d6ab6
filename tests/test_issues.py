"""Tests for batchpipe.issues: the three input shapes, the real bitcoin-core/gui data, bad files."""

from __future__ import annotations

import importlib.util
import json
import pickle
import tarfile
from pathlib import Path

import pytest

from batchpipe.issues import Comment, Issue, IssueFileError, issue_from_data, load_issue, load_issues

REPO = Path(__file__).resolve().parents[1]
TGZ = REPO.parent / "shared" / "data" / "bitcoin-core-gui-issues.tgz"
SAMPLE = REPO / "data" / "issues"
needs_tgz = pytest.mark.skipif(not TGZ.is_file(), reason=f"real issue data not found at {TGZ}")


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def rest_issue(**over: object) -> dict:
    """A trimmed GitHub REST issue object."""
    issue = {
        "url": "https://api.github.com/repos/my.org/repo.js/issues/7",
        "repository_url": "https://api.github.com/repos/my.org/repo.js",
        "html_url": "https://github.com/my.org/repo.js/issues/7",
        "number": 7,
        "title": "Crash on start",
        "body": "line one\r\nline two",
        "state": "open",
        "labels": [{"id": 1, "name": "Bug", "color": "d73a4a"}, {"id": 2, "name": "UX"}],
        "user": {"login": "alice", "id": 1},
        "comments": 2,
        "created_at": "2024-01-01T10:00:00Z",
        "updated_at": "2024-01-03T10:00:00Z",
        "closed_at": None,
    }
    issue.update(over)
    return issue


def gh_analysis(**over: object) -> dict:
    issue = {
        "number": 12,
        "title": "Wallet does not unlock",
        "body": "Steps:\r\n1. open\r\n2. 💥 café",
        "state": "closed",
        "labels": [{"name": "Wallet"}, {"name": "Bug"}],
        "user": {"login": "bob"},
        "comments": [
            {"user": {"login": "carol"}, "body": "first", "created_at": "2024-02-02T00:00:00Z"},
            {"user": {"login": "bob"}, "body": None, "created_at": "2024-02-01T00:00:00Z"},
        ],
        "created_at": "2024-01-31T00:00:00Z",
        "updated_at": "2024-02-03T00:00:00Z",
        "html_url": "https://github.com/bitcoin-core/gui/issues/12",
    }
    issue.update(over)
    return {"org": "bitcoin-core", "repo": "gui", "issue": issue, "metadata": {"source": "test"}}


@pytest.fixture(scope="session")
def real_issues_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real github-metadata-backup files, unpacked from the tgz into a temp folder."""
    if not TGZ.is_file():
        pytest.skip(f"real issue data not found at {TGZ}")
    out = tmp_path_factory.mktemp("real")
    with tarfile.open(TGZ) as tar:
        tar.extractall(out, filter="data")
    return out / "issues"


# ----------------------------------------------------------------------------- the three shapes


def test_gh_analysis_shape(tmp_path: Path) -> None:
    path = write_json(tmp_path / "whatever-name.json", gh_analysis())
    issue = load_issue(path)
    assert issue.shape == "gh-analysis"
    assert (issue.org, issue.repo, issue.number) == ("bitcoin-core", "gui", 12)
    assert issue.title == "Wallet does not unlock"
    assert issue.body == "Steps:\r\n1. open\r\n2. 💥 café"  # \r\n and non-ASCII kept as they are
    assert issue.state == "closed"
    assert issue.labels == ("Wallet", "Bug")
    assert issue.author == "bob"
    assert (issue.created_at, issue.updated_at) == ("2024-01-31T00:00:00Z", "2024-02-03T00:00:00Z")
    assert issue.url == "https://github.com/bitcoin-core/gui/issues/12"
    # the order the file gives, a null comment body becomes ""
    assert issue.comments == (
        Comment("carol", "first", "2024-02-02T00:00:00Z"),
        Comment("bob", "", "2024-02-01T00:00:00Z"),
    )
    assert issue.source == str(path)
    assert issue.key == "bitcoin-core_gui_issue_12"
    assert issue.ref == "bitcoin-core/gui#12"


def test_gh_analysis_optional_fields(tmp_path: Path) -> None:
    data = gh_analysis(body=None)
    for field in ("html_url", "comments", "labels", "updated_at"):
        del data["issue"][field]
    issue = load_issue(write_json(tmp_path / "x.json", data))
    assert (issue.body, issue.url, issue.comments, issue.labels, issue.updated_at) == ("", "", (), (), "")


def test_rest_shape_with_comment_list(tmp_path: Path) -> None:
    comments = [
        {"id": 1, "user": {"login": "dave"}, "body": "same here", "created_at": "2024-01-02T00:00:00Z"},
        {"id": 2, "user": None, "body": "deleted user", "created_at": "2024-01-02T01:00:00Z"},
    ]
    issue = load_issue(write_json(tmp_path / "a.json", rest_issue(comments=comments)))
    assert issue.shape == "github-rest"
    assert (issue.org, issue.repo, issue.number) == ("my.org", "repo.js", 7)
    assert issue.key == "my.org_repo.js_issue_7"
    assert issue.ref == "my.org/repo.js#7"
    assert issue.body == "line one\r\nline two"
    assert issue.labels == ("Bug", "UX")
    assert issue.author == "alice"
    assert issue.state == "open"
    assert issue.url == "https://github.com/my.org/repo.js/issues/7"
    assert [c.author for c in issue.comments] == ["dave", "ghost"]
    assert issue.comments[0] == Comment("dave", "same here", "2024-01-02T00:00:00Z")


def test_rest_issue_with_issue_type_object() -> None:
    """Newer REST issues carry "type": {issue type} (or null); still a REST issue."""
    for kind in ({"id": 1, "name": "Bug"}, None):
        assert issue_from_data(rest_issue(type=kind), "t.json").shape == "github-rest"


def test_rest_comment_count_means_no_comments(tmp_path: Path) -> None:
    issue = load_issue(write_json(tmp_path / "a.json", rest_issue(comments=5)))
    assert issue.comments == ()


@pytest.mark.parametrize(
    ("url", "org", "repo"),
    [
        ("https://api.github.com/repos/my.org/repo.js", "my.org", "repo.js"),
        ("https://api.github.com/repos/some-org/my_repo.v2", "some-org", "my_repo.v2"),
        ("https://ghe.example.com/api/v3/repos/Team_1/x", "Team_1", "x"),
        ("https://api.github.com/repos/a/b/", "a", "b"),
    ],
)
def test_org_repo_from_repository_url(url: str, org: str, repo: str) -> None:
    issue = issue_from_data(rest_issue(repository_url=url), "mem.json")
    assert (issue.org, issue.repo) == (org, repo)
    assert issue.key == f"{org}_{repo}_issue_7"


def test_rest_without_repository_url_uses_html_url() -> None:
    data = rest_issue(html_url="https://github.com/o-1/r.x/issues/7")
    del data["repository_url"]
    assert (issue_from_data(data, "m.json").org, issue_from_data(data, "m.json").repo) == ("o-1", "r.x")


def test_metadata_backup_shape_real_file(real_issues_dir: Path) -> None:
    path = real_issues_dir / "1.json"
    issue = load_issue(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert issue.shape == "metadata-backup"
    assert (issue.org, issue.repo, issue.number) == ("bitcoin-core", "gui", 1)
    assert issue.title == "gui: Remove unused `Decrypt` wallet"
    assert issue.body == raw["issue"]["body"] and "\r\n" in issue.body
    assert issue.state == "closed"
    assert issue.labels == ("good first issue",)
    assert issue.author == "maflcko"
    assert issue.created_at == "2020-06-16T13:00:35Z"
    assert issue.updated_at == raw["issue"]["updated_at"]
    assert issue.url == "https://github.com/bitcoin-core/gui/issues/1"
    commented = [e for e in raw["events"] if e["event"] == "commented"]
    assert len(issue.comments) == len(commented) == 5
    assert [(c.author, c.body, c.created_at) for c in issue.comments] == [
        (e["user"]["login"], e["body"], e["created_at"]) for e in commented
    ]
    assert issue.source == str(path)


def test_metadata_backup_shape_small(tmp_path: Path) -> None:
    data = {
        "type": "issue",
        "issue": rest_issue(comments=3, state="closed", body=None),
        "events": [
            {"event": "labeled", "actor": {"login": "x"}, "created_at": "2024-01-01T11:00:00Z"},
            {"event": "commented", "user": {"login": "eve"}, "body": "hi", "created_at": "2024-01-02T00:00:00Z"},
            {"event": "closed", "actor": {"login": "x"}, "created_at": "2024-01-03T00:00:00Z"},
        ],
    }
    issue = load_issue(write_json(tmp_path / "b.json", data))
    assert issue.shape == "metadata-backup"
    assert (issue.org, issue.repo, issue.state, issue.body) == ("my.org", "repo.js", "closed", "")
    assert issue.comments == (Comment("eve", "hi", "2024-01-02T00:00:00Z"),)  # the count 3 is ignored


def test_shape_is_detected_from_content_not_name(tmp_path: Path) -> None:
    a = load_issue(write_json(tmp_path / "x_y_issue_99.json", rest_issue()))
    b = load_issue(write_json(tmp_path / "7.json", gh_analysis()))
    assert (a.shape, a.number, b.shape, b.number) == ("github-rest", 7, "gh-analysis", 12)


def test_utf8_bom_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(gh_analysis(), ensure_ascii=False).encode("utf-8"))
    assert load_issue(path).body.endswith("💥 café")


def test_to_dict_is_json_and_complete() -> None:
    issue = issue_from_data(gh_analysis(), "s.json")
    d = issue.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["labels"] == ["Wallet", "Bug"]
    assert d["comments"][0] == {"author": "carol", "body": "first", "created_at": "2024-02-02T00:00:00Z"}
    assert set(d) == {f for f in Issue.__dataclass_fields__}
    assert d["shape"] == "gh-analysis" and d["source"] == "s.json"


# ----------------------------------------------------------------------------- real data


def test_all_real_issues_load(real_issues_dir: Path) -> None:
    issues, errors = load_issues(real_issues_dir)
    assert errors == []
    assert len(issues) == 341
    by_number = {i.number: i for i in issues}
    assert len(by_number) == 341
    total = 0
    for path in real_issues_dir.glob("*.json"):
        raw = json.loads(path.read_text(encoding="utf-8"))
        issue = by_number[raw["issue"]["number"]]
        commented = sum(1 for e in raw["events"] if e["event"] == "commented")
        assert len(issue.comments) == commented, path.name
        assert issue.body == (raw["issue"]["body"] or "")
        assert issue.shape == "metadata-backup"
        assert (issue.org, issue.repo) == ("bitcoin-core", "gui")
        total += commented
    assert total == 1332
    assert sum(1 for i in issues if i.state == "closed") == 208
    assert sum(1 for i in issues if not i.body) == 4
    # files sorted by name
    assert [Path(i.source).name for i in issues] == sorted(p.name for p in real_issues_dir.glob("*.json"))


def test_bundled_sample_loads() -> None:
    issues, errors = load_issues(SAMPLE)
    assert errors == []
    assert len(issues) >= 35
    assert all((i.org, i.repo, i.shape) == ("bitcoin-core", "gui", "gh-analysis") for i in issues)
    assert all(Path(i.source).name == f"{i.key}.json" for i in issues)
    assert {"open", "closed"} <= {i.state for i in issues}
    assert {"Bug", "Feature", "UX", "Wallet"} <= {label for i in issues for label in i.labels}
    assert any(not i.body for i in issues)
    assert any(len(i.comments) >= 20 for i in issues)
    assert any(any(ord(ch) > 127 for ch in i.body + "".join(c.body for c in i.comments)) for i in issues)
    assert sum(p.stat().st_size for p in SAMPLE.glob("*.json")) < 1_500_000


def test_bundled_sample_matches_real_data(real_issues_dir: Path) -> None:
    """The converted sample says exactly what the original backup files say."""
    for issue in load_issues(SAMPLE)[0]:
        original = load_issue(real_issues_dir / f"{issue.number}.json")
        strip = lambda d: {k: v for k, v in d.items() if k not in ("source", "shape")}  # noqa: E731
        assert strip(issue.to_dict()) == strip(original.to_dict()), issue.ref


@needs_tgz
def test_make_sample_script_reproduces_bundled_sample(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "scripts" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    count = len(list(SAMPLE.glob("*.json")))
    assert module.main([str(TGZ), str(tmp_path), "--count", str(count)]) == 0
    made = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    bundled = {p.name: p.read_bytes() for p in SAMPLE.glob("*.json")}
    assert made == bundled


# ----------------------------------------------------------------------------- bad files


def assert_one_line_error(err: IssueFileError, path: Path, *fragments: str) -> None:
    text = str(err)
    assert "\n" not in text and "\r" not in text
    assert text.startswith(f"{path}: ")
    assert "remove it from the issues folder" in text
    for fragment in fragments:
        assert fragment in text, text
    assert err.path == str(path)


BAD_FILES = {
    "invalid-json": (b'{"org": "a", "repo": "b",\n  "issue": {"number": 1,, }}', ("invalid JSON", "line 2", "column")),
    "json-list": (b"[1, 2, 3]", ("expected a JSON object", "list", "accepted shapes")),
    "unknown-shape": (b'{"hello": "world"}', ("unrecognised", "hello", "accepted shapes")),
    "missing-number": (
        json.dumps({"org": "a", "repo": "b", "issue": {"title": "t"}}).encode(),
        ("number is missing",),
    ),
    "empty": (b"", ("empty",)),
    "whitespace": (b"  \n\t\n", ("empty",)),
    "not-utf8": (b'{"title": "caf\xe9"}', ("not UTF-8", "0xe9")),
    "pull-record": (b'{"type": "pull", "pull": {}, "events": []}', ("'pull' record",)),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_file_raises_one_line_error(tmp_path: Path, name: str) -> None:
    content, fragments = BAD_FILES[name]
    path = tmp_path / f"{name}.json"
    path.write_bytes(content)
    with pytest.raises(IssueFileError) as info:
        load_issue(path)
    assert_one_line_error(info.value, path, *fragments)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"number": 0}, "positive integer"),
        ({"number": -3}, "positive integer"),
        ({"number": "12"}, "positive integer, not a string"),
        ({"number": True}, "positive integer"),
        ({"number": 1.5}, "positive integer"),
        ({"title": None}, "title must be a string"),
        ({"title": 5}, "title must be a string"),
        ({"body": 5}, "body must be a string"),
        ({"state": "merged"}, "state must be"),
        ({"labels": "Bug"}, "labels must be a list"),
        ({"labels": [{"color": "fff"}]}, "labels[0]"),
        ({"comments": "none"}, "comments must be a list"),
        ({"comments": ["text"]}, "comments[0] must be an object"),
        ({"user": 3}, "user must be an object"),
    ],
)
def test_wrongly_typed_fields(tmp_path: Path, change: dict, fragment: str) -> None:
    path = write_json(tmp_path / "bad.json", gh_analysis(**change))
    with pytest.raises(IssueFileError) as info:
        load_issue(path)
    assert_one_line_error(info.value, path, "gh-analysis", fragment)


@pytest.mark.parametrize(
    ("org", "repo", "fragment"),
    [
        ("", "gui", "org is empty"),
        ("a", "", "repo is empty"),
        (None, "gui", "org must be a string"),
        ("a/b", "gui", "not a GitHub name"),
        ("a", "..", "not a GitHub name"),
        ("a", "x y", "not a GitHub name"),
    ],
)
def test_bad_org_or_repo(tmp_path: Path, org: object, repo: object, fragment: str) -> None:
    data = gh_analysis()
    data["org"], data["repo"] = org, repo
    path = write_json(tmp_path / "bad.json", data)
    with pytest.raises(IssueFileError) as info:
        load_issue(path)
    assert_one_line_error(info.value, path, fragment)


def test_missing_org_and_bad_repository_url(tmp_path: Path) -> None:
    data = gh_analysis()
    del data["org"]
    with pytest.raises(IssueFileError, match="org is missing"):
        issue_from_data(data, "x.json")
    with pytest.raises(IssueFileError, match="repository_url"):
        issue_from_data(rest_issue(repository_url="https://api.github.com/repos/only-org"), "x.json")
    no_url = rest_issue()
    del no_url["repository_url"], no_url["html_url"]
    with pytest.raises(IssueFileError, match="repository_url is missing"):
        issue_from_data(no_url, "x.json")


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(IssueFileError) as info:
        load_issue(tmp_path / "missing.json")
    assert_one_line_error(info.value, tmp_path / "missing.json", "cannot read")


def test_error_is_one_line_even_with_newline_in_path() -> None:
    err = IssueFileError("odd\nname.json", "bad\nthing")
    assert "\n" not in str(err) and str(err).startswith("odd name.json: bad thing")


def test_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(IssueFileError("p.json", "why")))
    assert (err.path, err.reason, str(err)) == ("p.json", "why", IssueFileError("p.json", "why").__str__())


def test_load_issues_collects_errors(tmp_path: Path) -> None:
    write_json(tmp_path / "b_good.json", gh_analysis())
    write_json(tmp_path / "a_good.json", rest_issue())
    (tmp_path / "c_bad.json").write_bytes(b"{nope")
    (tmp_path / "d_empty.json").write_bytes(b"")
    write_json(tmp_path / "e_dup.json", gh_analysis())  # same issue as b_good.json
    (tmp_path / "notes.txt").write_text("not an issue")
    (tmp_path / ".hidden.json").write_bytes(b"garbage")
    (tmp_path / "sub").mkdir()
    write_json(tmp_path / "sub" / "nested.json", rest_issue(number=99))
    issues, errors = load_issues(tmp_path)
    assert [Path(i.source).name for i in issues] == ["a_good.json", "b_good.json"]
    # every entry that is no issue file is named too (never opened); hidden files are not
    assert [Path(e.path).name for e in errors] == ["c_bad.json", "d_empty.json", "e_dup.json", "notes.txt", "sub"]
    assert "bitcoin-core/gui#12" in str(errors[2]) and "b_good.json" in str(errors[2])
    assert "end in .json or .jsonl" in errors[3].reason and "a folder" in errors[4].reason
    assert all("\n" not in str(e) for e in errors)


def test_load_issues_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_issues(tmp_path / "nope")
    assert load_issues(tmp_path) == ([], [])
