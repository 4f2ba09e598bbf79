"""The README's two set-up commands are what CI and users actually run."""
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]


def readme_commands():
    blocks = re.findall(r"```sh\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)
    return blocks[0].strip(), blocks[1].strip()


def test_ci_runs_exactly_the_readme_test_command():
    _, test_command = readme_commands()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_main_job_uses_the_bundled_example():
    install_and_run, _ = readme_commands()
    assert "pip install ." in install_and_run
    match = re.search(r"-stim (\S+)", install_and_run)
    assert match and (REPO / match.group(1)).is_file()
    assert "-out " in install_and_run and "dnn_saliency -net AlexNet" in install_and_run
