"""The code behind scripts/gen_sample.py, which writes the synthetic sample in datasets/samples/
from the material in datasets/samples/source/ (see the script's docstring for the layout)."""
