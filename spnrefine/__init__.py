"""spnrefine: refine coarse segmentation masks with Spatial Propagation Networks."""

__version__ = "0.1.0"
