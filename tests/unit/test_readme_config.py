"""The README documents every environment variable exactly as the settings define it."""

from pathlib import Path

from stream.settings import Settings, documentation_table

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_carries_the_generated_configuration_table() -> None:
    assert documentation_table() in README


def test_every_setting_has_a_description() -> None:
    assert all(field.description for field in Settings.model_fields.values())


def test_readme_opens_with_the_two_commands() -> None:
    opening = "\n".join(README.splitlines()[:8])
    assert "make run" in opening and "make test" in opening
