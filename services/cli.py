"""The `yizhan` command."""
def main() -> None:
    raise SystemExit("not yet")
