"""Every slow test's fast counterparts: tests of the default run that check the same subject at a smaller size,
so that a change which breaks a slow test's subject is caught without `-m slow`. Keys are test ids relative to
tests/ (a parametrized id where only some parameters are slow); tests/test_suite.py checks the table against
what pytest collects."""

SLOW_COUNTERPARTS = {
    "test_learning.py::test_stage2_learns_time_and_next_cells_on_held_out_donors": [
        "test_analysis.py::test_the_fast_model_reads_time_and_next_cells_of_held_out_donors",
        "test_pipeline.py::test_pipeline_learns_time_on_the_bundled_time_course",
    ],
    "test_analysis_validation.py::test_age_acceleration_recovers_the_planted_shift": [
        "test_analysis.py::test_a_trained_model_finds_the_planted_age_shift_and_none_where_none_was_planted",
    ],
    "test_analysis_validation.py::"
    "test_perturbing_planted_drivers_moves_predicted_age_more_than_genes_without_an_age_effect": [
        "test_tutorials.py::test_tutorial_runs[analysis-reduced]",
        "test_analysis.py::test_perturb_screens_genes_over_cells_from_shards",
    ],
    "test_outputs_by_value.py::test_a_stale_local_copy_of_the_remote_checkpoint_is_never_loaded": [
        "test_outputs_by_value.py::test_a_stale_local_copy_of_the_remote_checkpoint_is_replaced_before_resuming",
    ],
    "test_s3_data_outage.py::test_a_short_outage_is_ridden_out[1]": [
        "test_s3_data_outage.py::test_a_short_outage_is_ridden_out[0]",
    ],
    "test_s3_data_outage.py::test_a_long_outage_stops_the_run_and_the_same_command_finishes_it": [
        "test_s3_data_outage.py::test_a_short_outage_is_ridden_out[0]",
        "test_s3_training.py::test_both_stages_stream_from_s3_checkpoint_to_s3_and_resume",
        "test_training.py::test_killed_run_resumes_to_the_same_weights",
    ],
    "test_s3_outage.py::test_a_long_outage_stops_the_run_and_the_same_command_finishes_it": [
        "test_s3_outage.py::test_a_short_outage_is_ridden_out",
        "test_s3_training.py::test_both_stages_stream_from_s3_checkpoint_to_s3_and_resume",
        "test_training.py::test_killed_run_resumes_to_the_same_weights",
    ],
    "test_pipeline.py::test_the_demo_beats_the_naive_baseline_near_the_ceiling_at_three_seeds": [
        "test_pipeline.py::test_pipeline_learns_time_on_the_bundled_time_course",
        "test_ceiling_baseline.py::test_the_ceiling_reads_planted_time_exactly_and_unplanted_time_not_at_all",
    ],
    "test_readme_path.py::test_the_readme_steps_as_shown_learn_time_like_the_pipeline": [
        "test_documented_commands.py::test_documented_commands_run_on_tiny_data",
        "test_documented_commands.py::test_documented_training_command_loads_its_recipe",
        "test_read_out_scale.py::test_auto_takes_the_training_paragraphs_and_smoothing_half_of_it",
        "test_pipeline.py::test_pipeline_learns_time_on_the_bundled_time_course",
    ],
    "test_tutorials.py::test_tutorial_runs[quickstart]": ["test_tutorials.py::test_tutorial_runs[quickstart-reduced]"],
    "test_tutorials.py::test_tutorial_runs[analysis]": ["test_tutorials.py::test_tutorial_runs[analysis-reduced]"],
}


def counterparts_of(test_id: str) -> list[str] | None:
    """The fast counterparts of a slow test: listed under its own id, or under its function's."""
    return SLOW_COUNTERPARTS.get(test_id, SLOW_COUNTERPARTS.get(test_id.split("[")[0]))
