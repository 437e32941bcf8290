"""One small set of array operations over NumPy, PyTensor or JAX.

The likelihood paths are written once against these operations, so the same
algebra evaluates the log-density inside the sampler (PyTensor or JAX, with
gradients) and draws the integrated-out effects back afterwards (NumPy,
batched over posterior draws).

Each implementation is complete and carries the same names. Where the best
way to lay out a computation differs between array libraries, the difference
is a declared capability, never a test of the library's name:

``batched``
    Parameters may carry leading batch dimensions (posterior draws): NumPy.
``loop_replicates``
    Small per-replicate factorisations build a faster program than one batched
    factorisation (PyTensor compiles batched Cholesky slowly).
``dense_products``
    Constant sandwiches ``E' P E`` are cheaper to compile as dense products
    than as slices (PyTensor).
"""

from __future__ import annotations

import numpy as np

# Deferred imports: jax, pytensor (heavy to import) are imported inside the functions that use them, so
# importing this module stays light.

__all__ = ["NUMPY", "PYTENSOR", "JAX", "ops_for"]


class _NumpyOps:
    name = "numpy"
    batched = True
    loop_replicates = False
    dense_products = False

    @staticmethod
    def asarray(x):
        return np.asarray(x, dtype=float)

    log = staticmethod(np.log)
    exp = staticmethod(np.exp)
    sqrt = staticmethod(np.sqrt)
    diag = staticmethod(np.diag)
    outer = staticmethod(np.outer)
    eye = staticmethod(np.eye)
    zeros = staticmethod(np.zeros)
    concatenate = staticmethod(np.concatenate)
    stack = staticmethod(np.stack)
    einsum = staticmethod(np.einsum)
    swapaxes = staticmethod(np.swapaxes)

    @staticmethod
    def cholesky(a):
        return np.linalg.cholesky(a)

    @staticmethod
    def solve_lower(l, b):
        """Solve L x = b for lower-triangular L (batched over leading dims)."""
        return np.linalg.solve(l, b)

    @staticmethod
    def eigh(a):
        return np.linalg.eigh(a)

    @staticmethod
    def block(rows):
        return np.block(rows)

    @staticmethod
    def sum(x, axis=None):
        return np.sum(x, axis=axis)

    @staticmethod
    def mean(x, axis=None):
        return np.mean(x, axis=axis)

    @staticmethod
    def softmax(x):
        """``exp(x) / sum(exp(x))`` over the last axis."""
        e = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return e / np.sum(e, axis=-1, keepdims=True)

    @staticmethod
    def logdiag_sum(l):
        """Sum of the log of the diagonal of (a batch of) triangular factors."""
        return np.sum(np.log(np.diagonal(l, axis1=-2, axis2=-1)), axis=-1)

    kron = staticmethod(np.kron)

    @staticmethod
    def diagonal(a):
        return np.diagonal(a, axis1=-2, axis2=-1)

    @staticmethod
    def cho_inverse(c):
        """A^-1 from the lower Cholesky factor c of A."""
        ci = np.linalg.inv(c)
        return np.swapaxes(ci, -1, -2) @ ci


class _PytensorOps:
    name = "pytensor"
    batched = False
    loop_replicates = True
    dense_products = True

    @staticmethod
    def asarray(x):
        import pytensor.tensor as pt

        return pt.as_tensor_variable(x)

    @staticmethod
    def log(x):
        import pytensor.tensor as pt

        return pt.log(x)

    @staticmethod
    def exp(x):
        import pytensor.tensor as pt

        return pt.exp(x)

    @staticmethod
    def sqrt(x):
        import pytensor.tensor as pt

        return pt.sqrt(x)

    @staticmethod
    def diag(x):
        import pytensor.tensor as pt

        return pt.diag(x)

    @staticmethod
    def outer(a, b):
        import pytensor.tensor as pt

        return pt.outer(a, b)

    @staticmethod
    def eye(n):
        import pytensor.tensor as pt

        return pt.eye(n)

    @staticmethod
    def zeros(shape):
        import pytensor.tensor as pt

        return pt.zeros(shape)

    @staticmethod
    def concatenate(xs, axis=0):
        import pytensor.tensor as pt

        return pt.concatenate(xs, axis=axis)

    @staticmethod
    def stack(xs, axis=0):
        import pytensor.tensor as pt

        return pt.stack(xs, axis=axis)

    @staticmethod
    def einsum(spec, *xs):
        import pytensor.tensor as pt

        return pt.einsum(spec, *xs)

    @staticmethod
    def swapaxes(x, a, b):
        import pytensor.tensor as pt

        return pt.swapaxes(x, a, b)

    @staticmethod
    def cholesky(a):
        from pytensor.tensor.linalg import cholesky

        return cholesky(a, lower=True)

    @staticmethod
    def solve_lower(l, b):
        from pytensor.tensor.linalg import solve_triangular

        return solve_triangular(l, b, lower=True)

    @staticmethod
    def eigh(a):
        from pytensor.tensor.linalg import eigh

        return eigh(a)

    @staticmethod
    def block(rows):
        import pytensor.tensor as pt

        return pt.concatenate([pt.concatenate(list(r), axis=-1) for r in rows], axis=-2)

    @staticmethod
    def sum(x, axis=None):
        import pytensor.tensor as pt

        return pt.sum(x, axis=axis)

    @staticmethod
    def mean(x, axis=None):
        import pytensor.tensor as pt

        return pt.mean(x, axis=axis)

    @staticmethod
    def softmax(x):
        """``exp(x) / sum(exp(x))`` over the last axis."""
        import pytensor.tensor as pt

        return pt.special.softmax(x, axis=-1)

    @staticmethod
    def logdiag_sum(l):
        import pytensor.tensor as pt

        return pt.sum(pt.log(pt.diagonal(l, axis1=-2, axis2=-1)), axis=-1)

    @staticmethod
    def kron(a, b):
        from pytensor.tensor.linalg import kron

        return kron(a, b)

    @staticmethod
    def diagonal(a):
        import pytensor.tensor as pt

        return pt.diagonal(a, axis1=-2, axis2=-1)

    @staticmethod
    def cho_inverse(c):
        import pytensor.tensor as pt

        return pt.linalg.cho_solve((c, True), pt.eye(c.shape[-1]))


class _JaxOps:
    """JAX arrays (float64; jax is imported on first use)."""

    name = "jax"
    batched = False
    loop_replicates = False
    dense_products = False

    @staticmethod
    def _jnp():
        import jax.numpy as jnp

        return jnp

    def asarray(self, x):
        return self._jnp().asarray(x, dtype=float)

    def log(self, x):
        return self._jnp().log(x)

    def exp(self, x):
        return self._jnp().exp(x)

    def sqrt(self, x):
        return self._jnp().sqrt(x)

    def diag(self, x):
        return self._jnp().diag(x)

    def outer(self, a, b):
        return self._jnp().outer(a, b)

    def eye(self, n):
        return self._jnp().eye(n)

    def zeros(self, shape):
        return self._jnp().zeros(shape)

    def concatenate(self, xs, axis=0):
        return self._jnp().concatenate(xs, axis=axis)

    def stack(self, xs, axis=0):
        return self._jnp().stack(xs, axis=axis)

    def einsum(self, spec, *xs):
        return self._jnp().einsum(spec, *xs)

    def swapaxes(self, x, a, b):
        return self._jnp().swapaxes(x, a, b)

    def cholesky(self, a):
        return self._jnp().linalg.cholesky(a)

    def solve_lower(self, l, b):
        from jax.scipy.linalg import solve_triangular

        return solve_triangular(l, b, lower=True)

    def eigh(self, a):
        return self._jnp().linalg.eigh(a)

    def block(self, rows):
        return self._jnp().block([list(r) for r in rows])

    def sum(self, x, axis=None):
        return self._jnp().sum(x, axis=axis)

    def mean(self, x, axis=None):
        return self._jnp().mean(x, axis=axis)

    def softmax(self, x):
        """``exp(x) / sum(exp(x))`` over the last axis."""
        jnp = self._jnp()
        e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
        return e / jnp.sum(e, axis=-1, keepdims=True)

    def logdiag_sum(self, l):
        jnp = self._jnp()
        return jnp.sum(jnp.log(jnp.diagonal(l, axis1=-2, axis2=-1)), axis=-1)

    def kron(self, a, b):
        return self._jnp().kron(a, b)

    def diagonal(self, a):
        return self._jnp().diagonal(a, axis1=-2, axis2=-1)

    def cho_inverse(self, c):
        from jax.scipy.linalg import cho_solve

        return cho_solve((c, True), self._jnp().eye(c.shape[-1]))


NUMPY = _NumpyOps()
PYTENSOR = _PytensorOps()
JAX = _JaxOps()


def ops_for(*xs):
    """The ops of the arrays ``xs``: JAX's or PyTensor's when any argument is one of theirs, else NumPy's."""
    if any(type(x).__module__.startswith(("jax", "jaxlib")) for x in xs):
        return JAX
    if any(type(x).__module__.startswith("pytensor") for x in xs):
        return PYTENSOR
    return NUMPY
