"""Bead calibration of a lab's own microscope: camera registration, PSF, live drift."""
