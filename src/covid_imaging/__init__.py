"""covid-imaging
"""

__version__ = "0.1"
