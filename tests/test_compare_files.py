"""Study files (YAML, TOML, flags), the shipped 240 s study, names by settings, extension to a longer horizon,
the n = 1 report, and the report rendered in a real headless Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from memrope.cli import main
from memrope.compare.runs import jobs, video_name
from memrope.compare.study import load_study

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "studies" / "memrope_240s.yaml"
TOY = "a red disc and a blue square bounce on a navy gradient"


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (one line, status 2)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def shipped(tmp_path) -> Path:
    folder = tmp_path / "studies"
    folder.mkdir()
    shutil.copy(SHIPPED, folder / SHIPPED.name)
    (folder / "prompts.txt").write_text("a red fox runs through fresh snow\n# a comment\na lighthouse at dusk\n")
    ckpt = tmp_path / "checkpoints"
    (ckpt / "Wan2.1-T2V-1.3B").mkdir(parents=True)
    for name in ("self_forcing_dmd.pt", "longlive_base.pt", "lora.pt"):  # --dry-run checks they exist
        (ckpt / name).write_bytes(b"")
    return folder / SHIPPED.name


def test_the_shipped_240s_study_parses_and_validates(shipped, capsys):
    study = load_study(shipped)
    assert [(b.name, b.toy) for b in study.bases] == [("self-forcing", False), ("longlive", False)]
    assert "--lora" in study.bases[1].argv and "--lossless" in study.bases[0].argv
    assert [p.label for p in study.policies] == ["memrope", "deep_forcing", "infinity_rope"]
    assert study.reference == "memrope" and study.seeds == (0,) and len(study.prompts) == 2
    (h,) = study.horizons
    assert h.latent_frames == 960 and h.seconds == (1 + 4 * 959) / 16  # the reference's num_output_frames
    assert study.checkpoint_every == 40 and study.segment_seconds == 2
    code, out, err = run(["compare", "--study", str(shipped), "--dry-run"], capsys)
    assert code == 0, err
    assert "2 base(s) x 3 policies x 2 prompts x 1 seeds = 12 videos (12 to make)" in out
    assert not (shipped.parent.parent / "runs").exists()  # a dry run writes nothing
    (shipped.parent.parent / "checkpoints" / "lora.pt").unlink()
    code, _, err = run(["compare", "--study", str(shipped), "--dry-run"], capsys)
    assert code == 2 and "base longlive: --lora" in err and "lora.pt does not exist" in err


def test_the_readme_shows_the_shipped_study():
    readme = (ROOT / "README.md").read_text()
    body = "\n".join(line for line in SHIPPED.read_text().splitlines() if not line.startswith("#"))
    assert body.strip() in readme


def test_toml_and_yaml_studies_are_the_same(tmp_path):
    (tmp_path / "s.yaml").write_text(f"name: s\nout: o\npolicies: [memrope, {{label: sw, policy: sliding_window, "
                                     f"options: {{window: 6}}}}]\nprompts: ['{TOY}']\nseeds: [3, 5]\n"
                                     f"horizons: [30s, 1h, 90]\ngenerate: {{crf: 10, no-overlap-decode: true}}\n")
    (tmp_path / "s.toml").write_text(f'name = "s"\nout = "o"\nprompts = ["{TOY}"]\nseeds = [3, 5]\n'
                                     f'horizons = ["30s", "1h", 90]\n'
                                     f'policies = ["memrope", {{label = "sw", policy = "sliding_window", '
                                     f'options = {{window = 6}}}}]\n[generate]\ncrf = 10\nno-overlap-decode = true\n')
    a, b = load_study(tmp_path / "s.yaml"), load_study(tmp_path / "s.toml")
    assert a.to_dict() == b.to_dict()
    assert [h.seconds for h in a.horizons] == [30.0, 90.0, 3600.0]
    assert a.policies[1].options == ("window=6",) and "--no-overlap-decode" in a.bases[0].argv


def test_names_carry_every_setting_but_the_length(tmp_path):
    def names(**extra):
        text = f"out: o\npolicies: [memrope]\nprompts: ['{TOY}']\nhorizons: [{extra.get('h', '3s')}]\n"
        text += f"generate: {{crf: {extra.get('crf', 18)}}}\n"
        (tmp_path / "n.yaml").write_text(text)
        study = load_study(tmp_path / "n.yaml")
        return [video_name(study, j) for j in jobs(study)]

    assert names() == names(h="60s")  # a longer horizon extends the same video
    assert names() != names(crf=10)  # any other setting is another video


BAD_STUDIES = [
    ("policies: [memrope]\nprompts: [x]\n", "'horizons' is missing"),
    ("policies: [memrope]\nprompts: [x]\nhorizons: [3s]\nseed: 3\n", "unknown key(s) ['seed']"),
    ("policies: [nope]\nprompts: [x]\nhorizons: [3s]\n", "unknown policies ['nope']"),
    ("policies: [memrope, memrope]\nprompts: [x]\nhorizons: [3s]\n", "two policies share a label"),
    ("policies: [memrope]\nprompts: [x]\nhorizons: [soon]\n", "horizon 'soon' is not a length"),
    ("policies: [memrope]\nprompts: [x]\nhorizons: [{latent_frames: 10}]\n", "a multiple of the chunk (3)"),
    ("policies: [memrope]\nprompts: ['a cat']\nhorizons: [3s]\n", "does not know 'cat'"),
    ("policies: [memrope]\nprompts: [x]\nhorizons: [3s]\ngenerate: {seed: 3}\n", "'seed' is set by the study"),
    ("policies: [memrope]\nprompts: [x]\nhorizons: [3s]\ngenerate: {warp: 3}\n", "'warp' is not a memrope generate"),
    ("policies: [memrope]\nprompts: [x]\nhorizons: [3s]\ngenerate: {crf: 99}\n", "generate options: argument --crf"),
    ("policies: [memrope]\nprompts: [x]\nhorizons: [3s]\ngenerate: {checkpoint: a.pt}\n", "--checkpoint needs --model"),
    ("policies: [memrope]\nprompts: [x]\nhorizons: [3s]\nseeds: 0\n", "seeds must be a count >= 1"),
    ("policies: [memrope]\nprompts: {file: nope.txt}\nhorizons: [3s]\n", "nope.txt does not exist"),
    ("policies: [memrope]\nprompts: [x]\nhorizons: [3s]\nreference: df\n", "reference 'df' is not one of"),
    ("policies: [memrope]\nprompts: [x]\nhorizons: [3s]\nsegment_seconds: 0\n", "segment_seconds must be"),
    ("- just a list\n", "a study is a mapping"),
    ("policies: [memrope\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_STUDIES, ids=[m for _, m in BAD_STUDIES])
def test_bad_studies_are_one_line_errors_before_anything_is_written(tmp_path, capsys, text, message):
    (tmp_path / "s.yaml").write_text(text.replace("[x]", f"['{TOY}']") + ("out: o\n" if "policies:" in text else ""))
    code, _, err = run(["compare", "--study", str(tmp_path / "s.yaml")], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_flag_conflicts_and_bad_toml(tmp_path, capsys):
    (tmp_path / "s.toml").write_text("name = \n")
    code, _, err = run(["compare", "--study", str(tmp_path / "s.toml")], capsys)
    assert code == 2 and "not valid TOML" in err
    (tmp_path / "s.yaml").write_text(f"out: o\npolicies: [memrope]\nprompts: ['{TOY}']\nhorizons: [3s]\n")
    code, _, err = run(["compare", "--study", str(tmp_path / "s.yaml"), "--seeds", "2", "--crf", "3"], capsys)
    assert code == 2 and "--seeds, --crf belong in it" in err
    code, _, err = run(["compare", "--out", str(tmp_path / "c"), "--prompt-format", "lines"], capsys)
    assert code == 2 and "describe a --prompts FILE" in err
    (tmp_path / "ll.jsonl").write_text(json.dumps({"prompts": [TOY, TOY]}) + "\n")
    out = ["--out", str(tmp_path / "c")]
    for argv, message in ((["--horizons", "soon"], "horizon 'soon' is not a length"),
                          (["--prompts", str(tmp_path / "ll.jsonl"), "--switch-frame-indices", "forty"],
                           "switch_frame_indices 'forty': expected whole latent frame numbers"),
                          (["--prompts", str(tmp_path / "ll.jsonl")], "2 prompts but no switch_frame_indices"),
                          (["--prompts", str(tmp_path / "ll.jsonl"), "--prompt", TOY], "not both"),
                          (["--prompt-format", "csv"], "argument --prompt-format"),
                          (["--backend", "tcp"], "argument --backend"),
                          (["--merge"], "evaluations are missing or stale")):
        code, _, err = run(["compare", *out, *argv], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "c").exists()


def test_flags_make_the_same_study_with_every_generate_option(tmp_path, capsys):
    from memrope.cli import build_parser
    from memrope.compare import study_from_args

    argv = ["compare", "--out", str(tmp_path / "c"), "--policies", "memrope,sliding_window", "--policy-opt",
            "sliding_window:window=6", "--crf", "10", "--chunk-frames", "3", "--seeds", "2", "--horizons",
            "1.5,30s"]
    study = study_from_args(build_parser().parse_args(argv))
    assert study.policies[1].options == ("window=6",) and study.seeds == (0, 1)
    assert sorted(study.bases[0].argv) == sorted(("--crf", "10", "--chunk-frames", "3"))
    assert [h.seconds for h in study.horizons] == [1.5, 30.0]
    code, out, err = run([*argv, "--dry-run"], capsys)
    assert code == 0 and "= 4 videos (4 to make)" in out, err
    for bad, message in ((["--policy-opt", "full:x=1"], "'full' is not one of --policies"),
                         (["--policy-opt", "memrope"], "write POLICY:KEY=VALUE"),
                         (["--policy-opt", "sliding_window:cache_size=1"], "cache_size")):
        code, _, err = run([*argv, *bad], capsys)
        assert code == 2 and message in err, err
    assert not (tmp_path / "c").exists()


def _decoded(path: Path) -> np.ndarray:
    from memrope.eval.reader import iter_frames

    return np.stack([f.rgb for f in iter_frames(path)])


def test_a_longer_horizon_extends_the_same_videos(tmp_path, capsys):
    """The toy: 0.1875 s a chunk. 1.5 s (8 chunks), then 1.5 s and 3 s: the same run directories extended,
    the first 1.5 s of each video the very same frames, and a table per horizon."""
    study = tmp_path / "s.yaml"
    base = (f"out: o\npolicies: [memrope, sliding_window]\nprompts: ['{TOY}']\nsegment_seconds: 0.5\n"
            f"checkpoint_seconds: 0.75\n")
    study.write_text(base + "horizons: [1.5]\n")
    code, _, err = run(["compare", "--study", str(study), "--no-progress"], capsys)
    assert code == 0, err
    videos = sorted((tmp_path / "o" / "videos").glob("*.mp4"))
    before = [_decoded(v) for v in videos]
    study.write_text(base + "horizons: [1.5, 3]\n")
    code, _, err = run(["compare", "--study", str(study), "--no-progress"], capsys)
    assert code == 0, err
    assert sorted((tmp_path / "o" / "videos").glob("*.mp4")) == videos
    log = [json.loads(x) for x in (tmp_path / "o" / "logs" / "rank0.jsonl").read_text().splitlines()]
    assert [(r["action"], r["chunks_before"], r["chunks_generated"]) for r in log[2:]] == [("extended", 8, 8)] * 2
    for old, video in zip(before, videos):
        new = _decoded(video)
        assert len(new) == 48 and np.array_equal(new[: len(old)], old)
    tables = json.loads((tmp_path / "o" / "report" / "tables.json").read_text())["tables"]
    assert set(tables) == {"base@1.5s", "base@3s"}


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory) -> Path:
    """One prompt, one seed, two policies: n = 1 everywhere."""
    out = tmp_path_factory.mktemp("toy") / "cmp"
    code = main(["compare", "--policies", "memrope,sliding_window", "--duration", "2.5", "--segment-seconds", "1",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    return out / "report" / "report.html"


def test_one_unit_shows_n_1_and_no_interval(toy_report):
    html = toy_report.read_text()
    tables = json.loads((toy_report.parent / "tables.json").read_text())["tables"]["base@2.5s"]
    assert tables["units"] == ["p00_s0"]
    assert all(m["n"] == 1 and m["kind"] == "none" and m["low"] is None
               for means in tables["means"].values() for m in means.values())
    assert all(t["p"] == 1.0 and t["min_p"] == 1.0 for tests in tables["tests"].values() for t in tests.values())
    assert "n = 1</small>" in html and "] t, n" not in html and "] boot" not in html
    # 2.5 s horizon of 1 s segments: 2 whole ones; the half second past 2 s is dropped and said so
    assert "2 whole segments of 1 s evaluated; the trailing partial segment (0.5 s, 8 frames) was dropped" in html


def test_report_renders_in_headless_chromium(toy_report):
    chromium, driver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.is_file() and driver.is_file()):
        pytest.skip(f"needs {chromium} and {driver} (headless Chromium and its driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--allow-file-access-from-files"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(str(driver)), options=options)
    try:
        browser.get(toy_report.as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        grid = browser.execute_script("return document.querySelectorAll('table.grid img').length")
        width = browser.execute_script("return document.documentElement.scrollWidth")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        browser.quit()
    assert images and all(complete and natural > 0 for _, complete, natural in images), images
    assert grid == 2 * len({src for src, _, _ in images if "sliding_window" in src})  # policies x times
    assert grid >= 2 * 3
    assert not errors, errors
    assert width <= 1400  # no horizontal scrolling on a 1400 px screen
