"""Print the README's settings table from the Settings class (python scripts/settings_table.py)."""

from janus_batch.settings import Settings


def main() -> None:
    print("| variable | default | meaning |")
    print("| --- | --- | --- |")
    for name, field in Settings.model_fields.items():
        default = field.default
        shown = "" if default is None else f"`{default}`"
        meaning = (field.description or "").replace("|", "\\|")
        print(f"| `JANUS_BATCH_{name.upper()}` | {shown} | {meaning} |")


if __name__ == "__main__":
    main()
