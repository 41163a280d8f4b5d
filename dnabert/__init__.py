"""dnabert: pretrain DNABERT-style k-mer BERT models straight from a reference genome FASTA.

Data flows one way: FASTA -> windows -> k-mer ids -> masked batch -> model -> loss.
"""

__version__ = "0.1.0"
