"""The runtime type checker jaxtyping installs on excise under pytest.

beartype with the PEP 484 numeric tower, so an int is accepted where a float
is annotated, as every caller would expect.
"""

from beartype import BeartypeConf, beartype

typechecker = beartype(conf=BeartypeConf(is_pep484_tower=True))
