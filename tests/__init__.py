from tests import typecheck  # noqa: F401  (jaxtyping resolves tests.typecheck.typechecker)
