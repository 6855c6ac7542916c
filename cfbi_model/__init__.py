"""cfbi_model: the CFBI+ network around cfbi_ops, video inference, training, data and evaluation."""
__version__ = "0.1.0"
