"""Analyses with a trained temporal model: age acceleration of a condition and in-silico perturbation."""
