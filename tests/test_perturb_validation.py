"""A zero-shot screen finds planted truth: the embedding shift of a stage-1 model trained on simulated cells
(no times) ranks the planted age drivers' goal-state shift (old -> young) above genes in no age program matched
to them on coverage; a randomly initialised model does not. Three seeds: benchmarks/goal_state_screen.py."""

import pytest
from helpers.planted_drivers import aurocs, panel, screen, simulate, train_stage1, untrained_model

# Recorded (benchmarks/README.md, "Zero-shot goal-state screen"): trained 0.62-0.87 against genes in no age program
# over simulation seeds 0-2 and 0.87 at this seed, a random model 0.36-0.43. The floor sits between the two.
FLOOR = 0.7


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from maxtoki.analysis.cells import load_cells

    root = tmp_path_factory.mktemp("planted-drivers")
    simulate(root, seed=1)
    checkpoint = train_stage1(root)
    cells = load_cells(str(root / "cells"), ["age_group", "donor"], time_column=None)
    return root, checkpoint, cells, panel(root, cells)


def test_a_stage1_model_ranks_planted_drivers_by_goal_state_shift_and_an_untrained_one_does_not(planted, capsys):
    from maxtoki.inference.loading import load_model

    root, checkpoint, cells, genes = planted
    trained = aurocs(screen(load_model(str(checkpoint), cells.vocab)[0], cells, root / "trained", genes), genes)
    untrained = aurocs(screen(untrained_model(cells.vocab), cells, root / "untrained", genes), genes)
    with capsys.disabled():
        print(f"\ngoal-state screen AUROC, drivers vs genes in no age program: trained {trained['no_program']:.3f}, "
              f"untrained {untrained['no_program']:.3f} (vs other age-program genes: {trained['others']:.3f}, "
              f"{untrained['others']:.3f})")
    assert trained["no_program"] >= FLOOR > untrained["no_program"]
