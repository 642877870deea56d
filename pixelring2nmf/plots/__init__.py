"""Figures: Ring 2 maps as the pixel DQM shows them (draw.py) and the `plot` figures."""
