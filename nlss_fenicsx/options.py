"""The options of the two-grid preconditioner, parsed from strings (no petsc4py needed).

:class:`nlss_fenicsx.petsc.TwoGridPC` reads every ``nlss_*`` value under its options prefix
as a string and hands the dictionary to :func:`parse_options`; the command line builds the
same dictionary from its flags. One rule therefore decides what a valid value is, and a bad
value is one ``ValueError`` naming the option, the value and what is expected.

==================  =======  =================================================  ==============
option              default  meaning                                            used by
==================  =======  =================================================  ==============
``nlss_coarse``     svd      ``svd`` | ``nlss`` | ``sa`` | ``sine`` |           all
                             ``eig-ref`` | ``eig`` | ``fixed`` |
                             ``corrected`` (sine + homogenisation corrector)
``nlss_model``               checkpoint path (MLP or GNN: the file says which); nlss,
                             for corrected a corrector model (optional)         corrected
``nlss_pde``                 PDE family, checked against the checkpoint         nlss
``nlss_rank``       48       coarse rank ``r`` (dimension of ``P``; at most     all but sa
                             ``nlss_K`` when not given)
``nlss_K``          72       number of smoothed vectors                         svd, nlss
``nlss_sweeps``     10       Jacobi sweeps that smooth the ``K`` vectors        svd, nlss
``nlss_nu``         5 (1)    pre- and post-smoothing sweeps of the cycle (the   all
                             polynomial degree for ``chebyshev`` and ``icc``;
                             the default is 1 for ``icc``)
``nlss_omega``      auto     Jacobi weight: ``auto`` (0.66 where safe) or > 0   all
``nlss_smoother``   jacobi   level smoother ``jacobi`` | ``chebyshev`` |        all
                             ``sor`` | ``icc`` (Chebyshev on ICC(0), see
                             :mod:`nlss_fenicsx.relaxation`)
``nlss_seed``       0        seed of the random vectors                         all
``nlss_precision``  int8     the MLP's inference weights ``int8`` | float32     nlss
``nlss_basis``               basis file (``nlss-fenicsx basis``)                fixed
==================  =======  =================================================  ==============

Options given for a coarse space that does not use them are reported by
:func:`unused_options` (the PC prints one warning line; they are never an error, so one
options dictionary can be switched between coarse spaces). With a checkpoint,
:func:`merge_checkpoint` takes every setting the user did not give from it (issue 18).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "COARSE_KINDS",
    "DEFAULT_NU",
    "OPTION_NAMES",
    "MAX_SWEEPS",
    "PRECISIONS",
    "SMOOTHERS",
    "SMOOTHING_OMEGA",
    "TwoGridOptions",
    "clip_to_problem",
    "merge_checkpoint",
    "parse_options",
    "unused_options",
]

COARSE_KINDS = ("svd", "sa", "sine", "eig-ref", "eig", "fixed", "nlss", "corrected")
SMOOTHERS = ("jacobi", "chebyshev", "sor", "icc")
# nlss_nu when not given (the same rule as relaxation.DEFAULT_NU; this module needs no SciPy).
DEFAULT_NU = {"jacobi": 5, "chebyshev": 5, "sor": 5, "icc": 1}
PRECISIONS = ("int8", "float32")
# How from_model names the weight that smoothed a model's S (no option sets it).
SMOOTHING_OMEGA = "omega of S"

# field -> option name (the coarse rank is the field r, the option nlss_rank).
OPTION_NAMES = {
    "coarse": "nlss_coarse", "model": "nlss_model", "pde": "nlss_pde", "r": "nlss_rank",
    "K": "nlss_K", "sweeps": "nlss_sweeps", "nu": "nlss_nu", "omega": "nlss_omega",
    "smoother": "nlss_smoother", "seed": "nlss_seed", "precision": "nlss_precision",
    "basis": "nlss_basis",
}
_FIELDS = {name: f for f, name in OPTION_NAMES.items()}
# Which coarse kinds use an option; an option absent here is used by every kind.
_USED_BY = {
    "model": ("nlss", "corrected"), "pde": ("nlss",), "precision": ("nlss",),
    "basis": ("fixed",), "K": ("svd", "nlss"), "sweeps": ("svd", "nlss"),
    "r": ("svd", "nlss", "sine", "eig-ref", "eig", "fixed", "corrected"),
}
_MINIMUM = {"r": 1, "K": 1, "sweeps": 0, "nu": 1, "seed": 0}
_LARGEST = 2**31 - 1  # PETSc's (32-bit) integers
# S has long converged to the smoother's slowest modes after this many sweeps: more only costs.
MAX_SWEEPS = 10_000
_CHOICES = {"coarse": COARSE_KINDS, "smoother": SMOOTHERS, "precision": PRECISIONS}


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            value = int(text)
    largest = MAX_SWEEPS if name == "sweeps" else _LARGEST
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or value > largest):
        raise ValueError(f"{OPTION_NAMES[name]}: expected an integer in [{minimum}, "
                         f"{largest}], got {value!r}")
    return value


def _omega(value: Any) -> float | str:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        try:
            value = float(text)
        except ValueError:
            value = text
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"nlss_omega: expected 'auto' or a number > 0, got {value!r}")
    return float(value)


def _choice(name: str, value: Any) -> str:
    choices = _CHOICES[name]
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ValueError(f"{OPTION_NAMES[name]}: expected one of {', '.join(choices)}; "
                         f"got {value!r}")
    return value.strip().lower()


def _text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{OPTION_NAMES[name]}: expected a non-empty string, got {value!r}")
    return value.strip()


@dataclass(frozen=True)
class TwoGridOptions:
    """The settings of :class:`nlss_fenicsx.petsc.TwoGridPC` (table in the module docstring).

    Every field is validated on construction, so ``TwoGridOptions(r=0)`` fails as the
    option ``nlss_rank 0`` does.

    Parameters
    ----------
    coarse : str
        Coarse space kind, one of :data:`COARSE_KINDS`.
    model : str or None
        Checkpoint path (``nlss``).
    pde : str or None
        PDE family to check the checkpoint against (``nlss``).
    r : int
        Coarse rank ``r >= 1`` (option ``nlss_rank``).
    K : int
        Number of smoothed vectors, ``K >= r`` for ``svd`` and ``nlss``.
    sweeps : int
        Jacobi sweeps that smooth ``S`` (``>= 0``).
    nu : int or None
        Pre- and post-smoothing sweeps of the cycle (``>= 1``: with 0 the two-grid
        operator is singular); None: :data:`DEFAULT_NU` of the smoother (5, or 1 for
        ``icc``).
    omega : float or 'auto'
        Jacobi weight of the cycle and of the smoothing of ``S``; ``'auto'`` takes 0.66
        (the paper's) where it is safe for the estimated ``lambda_max(D^-1 A)``.
    smoother : str
        Level smoother, one of :data:`SMOOTHERS`.
    seed : int
        Seed of the random start of ``S`` and of the estimate of ``lambda_max``.
    precision : str
        The MLP's inference weights, one of :data:`PRECISIONS`.
    basis : str or None
        Basis file (``fixed``).
    smoothing_omega : float or None
        Jacobi weight of the smoothing of ``S`` when it differs from ``omega`` (set from a
        checkpoint: the weight the model was trained with); ``None``: as the cycle's.
    given : frozenset of str
        Option names the user set (what :func:`unused_options` and
        :func:`merge_checkpoint` look at).
    from_model : frozenset of str
        Option names whose values came from the checkpoint.

    Raises
    ------
    ValueError
        One line naming the option, the value and what is expected.

    Examples
    --------
    >>> TwoGridOptions(r=16, K=24).r
    16
    >>> TwoGridOptions(r=0)
    Traceback (most recent call last):
    ...
    ValueError: nlss_rank: expected an integer in [1, 2147483647], got 0
    """

    coarse: str = "svd"
    model: str | None = None
    pde: str | None = None
    r: int = 48
    K: int = 72
    sweeps: int = 10
    nu: int | None = None
    omega: float | str = "auto"
    smoother: str = "jacobi"
    seed: int = 0
    precision: str = "int8"
    basis: str | None = None
    smoothing_omega: float | None = None
    given: frozenset = field(default_factory=frozenset)
    from_model: frozenset = field(default_factory=frozenset)

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise in place once
        for name in ("coarse", "smoother", "precision"):
            set_(self, name, _choice(name, getattr(self, name)))
        if self.nu is None:
            set_(self, "nu", DEFAULT_NU[self.smoother])
        for name, minimum in _MINIMUM.items():
            set_(self, name, _integer(name, getattr(self, name), minimum))
        for name in ("model", "pde", "basis"):
            set_(self, name, _text(name, getattr(self, name)))
        set_(self, "omega", _omega(self.omega))
        if self.smoothing_omega is not None:
            set_(self, "smoothing_omega", float(_omega(self.smoothing_omega)))
        set_(self, "given", frozenset(self.given))
        set_(self, "from_model", frozenset(self.from_model))
        if self.coarse in ("svd", "nlss") and self.r > self.K and "nlss_rank" not in self.given:
            set_(self, "r", self.K)  # the default rank adapts to a given K (at most K)
        if self.coarse in ("svd", "nlss") and self.r > self.K:
            raise ValueError(f"nlss_rank must be <= nlss_K for nlss_coarse {self.coarse}; "
                             f"got nlss_rank {self.r} > nlss_K {self.K}")

    @property
    def S_omega(self) -> float | str:
        """The Jacobi weight that smooths ``S``: ``smoothing_omega`` or ``omega``."""
        return self.omega if self.smoothing_omega is None else self.smoothing_omega

    def uses(self, name: str) -> bool:
        """Whether the option field ``name`` (e.g. ``"K"``) is used by this coarse kind."""
        return self.coarse in _USED_BY.get(name, COARSE_KINDS)


def parse_options(values: Mapping[str, Any]) -> TwoGridOptions:
    """Parse ``nlss_*`` options given as strings (as the PETSc options database holds them).

    Parameters
    ----------
    values : mapping of str to str
        Option names without the PC's prefix (``"nlss_rank"``) to their values. Values may
        also be Python numbers; ``"48.0"`` for an integer option is refused, not rounded.
        Keys of the inner PCMG (``nlss_mg_*``) must not be included.

    Returns
    -------
    TwoGridOptions
        With ``given`` = the option names present.

    Raises
    ------
    ValueError
        One line naming the option, the value and what is expected (an unknown ``nlss_*``
        name lists the known ones).

    Examples
    --------
    >>> parse_options({"nlss_rank": "16", "nlss_K": "24", "nlss_omega": "auto"}).r
    16
    >>> parse_options({"nlss_rank": "48.0"})
    Traceback (most recent call last):
    ...
    ValueError: nlss_rank: expected an integer in [1, 2147483647], got '48.0'
    """
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = _FIELDS.get(key)
        if name is None:
            raise ValueError(f"unknown option {key} (value {value!r}); expected one of "
                             f"{', '.join(OPTION_NAMES.values())}")
        kwargs[name] = value
    return TwoGridOptions(**kwargs, given=frozenset(OPTION_NAMES[k] for k in kwargs))


def unused_options(opts: TwoGridOptions) -> tuple[str, ...]:
    """Option names the user gave that the chosen coarse kind does not use.

    Parameters
    ----------
    opts : TwoGridOptions

    Returns
    -------
    tuple of str
        E.g. ``("nlss_K",)`` for ``nlss_coarse sa`` with ``nlss_K`` given.

    Examples
    --------
    >>> unused_options(parse_options({"nlss_coarse": "sa", "nlss_K": "8"}))
    ('nlss_K',)
    """
    return tuple(OPTION_NAMES[f] for f in OPTION_NAMES
                 if OPTION_NAMES[f] in opts.given and not opts.uses(f))


def merge_checkpoint(opts: TwoGridOptions, settings, *,
                     where: str = "the model") -> TwoGridOptions:
    """Take every setting the user did not give from a checkpoint's settings (issue 18).

    ``K``, ``sweeps`` and the weight that smooths ``S`` come from the checkpoint (``nlss_omega``
    stays the cycle's smoother weight, checked against this matrix); the coarse rank
    is ``r_max`` or the user's ``nlss_rank`` if smaller; ``nlss_pde``, if given, must be the
    checkpoint's family. A given value that contradicts the checkpoint is refused.

    Parameters
    ----------
    opts : TwoGridOptions
        What the user gave (``opts.given``).
    settings : object
        The checkpoint's settings (:func:`nlss_fenicsx.nn.checkpoint.read_settings`):
        attributes ``K``, ``r_max``, ``sweeps``, ``omega``, ``pde``.
    where : str
        How to name the checkpoint in messages (e.g. its path).

    Returns
    -------
    TwoGridOptions
        With ``from_model`` = the option names taken from the checkpoint.

    Raises
    ------
    ValueError
        One line naming the option, the user's value and the checkpoint's.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> s = SimpleNamespace(K=8, r_max=6, sweeps=10, omega=0.66, pde="diffusion")
    >>> o = merge_checkpoint(parse_options({"nlss_coarse": "nlss"}), s)
    >>> (o.K, o.r, sorted(o.from_model))
    (8, 6, ['nlss_K', 'nlss_rank', 'nlss_sweeps', 'omega of S'])
    """
    given = opts.given
    out: dict[str, Any] = {}
    taken = set()

    def refuse(option, mine, theirs, what):
        raise ValueError(f"{option} {mine} contradicts {where}, which was trained with "
                         f"{what}={theirs}; leave {option} out to use the model's")

    for name in ("K", "sweeps"):
        theirs = int(getattr(settings, name))
        if OPTION_NAMES[name] in given:
            if getattr(opts, name) != theirs:
                refuse(OPTION_NAMES[name], getattr(opts, name), theirs, name)
        else:
            out[name] = theirs
            taken.add(OPTION_NAMES[name])
    # The weight that smoothed the model's S is the model's; nlss_omega is the cycle's
    # smoother weight (auto: checked against lambda_max), a different thing.
    out["smoothing_omega"] = float(settings.omega)
    taken.add(SMOOTHING_OMEGA)
    r_max = int(settings.r_max)
    if "nlss_rank" in given:
        if opts.r > r_max:
            raise ValueError(f"nlss_rank {opts.r} exceeds r_max={r_max} of {where}; give "
                             f"nlss_rank <= {r_max} or leave it out")
    else:
        out["r"] = r_max
        taken.add("nlss_rank")
    pde = getattr(settings, "pde", None)
    if "nlss_pde" in given and pde is not None and opts.pde != pde:
        refuse("nlss_pde", opts.pde, pde, "pde")
    out["r"] = min(out.get("r", opts.r), out.get("K", opts.K))
    return replace(opts, **out, from_model=frozenset(taken))


def clip_to_problem(opts: TwoGridOptions, n: int,
                    r_limit: int | None = None) -> tuple[TwoGridOptions, str]:
    """Clip ``K`` and the coarse rank to what a problem of ``n`` unknowns allows.

    Parameters
    ----------
    opts : TwoGridOptions
    n : int
        Unknowns of the problem.
    r_limit : int, optional
        The largest rank the coarse kind can build here (e.g. the interior sine modes),
        at most ``n``.

    Returns
    -------
    opts : TwoGridOptions
        With ``K <= n`` and ``r <= min(r_limit, K)`` (for the kinds that use them).
    note : str
        One line saying what was clipped, or ``""``.

    Examples
    --------
    >>> o, note = clip_to_problem(parse_options({"nlss_K": "72"}), 25)
    >>> (o.K, o.r), note
    ((25, 25), 'too small a problem for these values (n = 25 unknowns, nlss_coarse svd): \
nlss_K clipped to 25, nlss_rank clipped to 25')
    """
    clipped = {}
    if opts.uses("K") and opts.K > n:
        clipped["K"] = n
    limit = n if r_limit is None else min(n, r_limit)
    if opts.uses("K"):
        limit = min(limit, clipped.get("K", opts.K))
    if opts.uses("r") and opts.r > limit:
        clipped["r"] = limit
    if not clipped:
        return opts, ""
    what = ", ".join(f"{OPTION_NAMES[k]} clipped to {v}" for k, v in clipped.items())
    return replace(opts, **clipped), (f"too small a problem for these values (n = {n} "
                                      f"unknowns, nlss_coarse {opts.coarse}): {what}")
