"""A unit export's run (``plan_window``): after the last checkpoint signed before the window,
through the first signed at least ``COMMIT_MARGIN`` after it; genesis when none was signed
before; open (None) while none closes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.audit.export import COMMIT_MARGIN, GENESIS, Window, _widened, plan_window
from shared.eventstore.checkpoints import Checkpoint

T = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def cps(*signed: tuple[int, int]) -> list[Checkpoint]:
    """Checkpoints at (position, minutes after T)."""
    return [Checkpoint(p, "0" * 64, T + timedelta(minutes=m), "k", "s") for p, m in signed]


LOG = cps((10, 0), (20, 10), (30, 20), (40, 30))


def window(start_min: float, end_min: float, checkpoints: list[Checkpoint] = LOG) -> Window:
    return plan_window(checkpoints, T + timedelta(minutes=start_min),
                       T + timedelta(minutes=end_min))


def test_the_run_starts_at_the_last_checkpoint_signed_before_the_window() -> None:
    assert window(15, 19) == Window(20, 30)


def test_a_checkpoint_signed_at_the_windows_very_start_does_not_open_it() -> None:
    """An event at a checkpoint's position may carry its very signed_at: strictly before."""
    assert window(10, 12).start == 10
    assert window(10.001, 12).start == 20


def test_before_any_checkpoint_the_run_starts_at_genesis() -> None:
    assert window(-5, 5) == Window(GENESIS, 20)
    assert window(1, 2, []) == Window(GENESIS, None)


def test_the_closing_checkpoint_is_signed_at_least_the_margin_after_the_end() -> None:
    margin = COMMIT_MARGIN.total_seconds() / 60
    assert window(0, 20 - margin).end == 30  # exactly the margin after: closes
    assert window(0, 20 - margin + 0.001).end == 40
    assert window(0, 30).end is None  # nothing signed a margin after 08:30 yet
    assert plan_window(LOG, T, T + timedelta(minutes=20), timedelta(0)).end == 30


def test_a_window_after_the_last_checkpoint_is_open() -> None:
    assert window(35, 40) == Window(40, None)


def test_the_closing_checkpoint_follows_the_start_even_if_clocks_disagree() -> None:
    """A checkpoint at a lower position signed later (a clock set back) closes nothing."""
    odd = cps((10, 50), (20, 0), (30, 60))
    assert window(5, 10, odd) == Window(20, 30)


def widened(window: Window, positions: list[int], checkpoints: list[Checkpoint] = LOG,
            start_min: float = 15, end_min: float = 19) -> Window:
    return _widened(window, positions, checkpoints, T + timedelta(minutes=start_min),
                    T + timedelta(minutes=end_min))


def test_the_exporter_widens_a_run_its_selection_does_not_fit() -> None:
    """An event of the window found at or before the start checkpoint (a clock set back) or
    after the closing one (an append that held its lock past the margin): the run grows to
    the checkpoints around it, or to the head when none follows."""
    assert window(15, 19) == Window(20, 30)
    assert widened(Window(20, 30), [21, 30]) == Window(20, 30)
    assert widened(Window(20, 30), []) == Window(20, 30)
    assert widened(Window(20, 30), [20, 25]) == Window(10, 30)
    assert widened(Window(20, 30), [5, 25]) == Window(GENESIS, 30)
    assert widened(Window(20, 30), [25, 31]) == Window(20, 40)
    assert widened(Window(20, 30), [25, 41]) == Window(20, None)
    assert widened(Window(20, None), [25, 99]) == Window(20, None)


def test_a_widened_run_starts_and_ends_at_checkpoints_the_verifier_accepts() -> None:
    """A clock set back: the checkpoint at 20 was signed after the window's start (08:15), the
    one at 30 before it. The planned run starts at 30; an event of the window lies at 25.
    Before, the run grew to 20, and the verifier refused the honest file as tampered (its
    start checkpoint not signed before the window); it grows to 10 now. Likewise the end:
    the checkpoint at 50 was signed before 08:20 (the window's end plus the margin), so the
    run ends at 60, which proves the window complete, not at 50, which does not."""
    odd = cps((10, 0), (20, 16), (30, 14), (40, 30), (50, 18), (60, 40))
    assert window(15, 19, odd) == Window(30, 40)
    assert widened(Window(30, 40), [25, 35], odd) == Window(10, 40)
    assert widened(Window(30, 40), [35, 45], odd) == Window(30, 60)
    assert widened(Window(30, 40), [35, 61], odd) == Window(30, None)
