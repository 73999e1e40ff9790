"""The int8 calibration, decided once at the end of training and stored in the checkpoint.

:func:`calibrate` measures, on held-out instances of the training distribution, how far the
int8 copy of a trained MLP (:mod:`nlss_fenicsx.nn.int8`) and its leaner variants turn the
coarse basis away from the float32 network's, and keeps the leanest one within
``LEAN_MAX_ANGLE`` degrees. :func:`nlss_fenicsx.nn.train.train` calls it after the last
step; :func:`nlss_fenicsx.nn.int8.from_calibration` rebuilds the chosen copy at load.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from nlss_fenicsx.nn.int8 import Int8MLP, first_layer_basis
from nlss_fenicsx.nn.model import NLSSMLP

__all__ = ["CALIBRATION_FIT", "CALIBRATION_HELD", "LEAN_ENERGIES", "LEAN_HEAD_DIRECTIONS",
           "LEAN_MAX_ANGLE", "calibrate"]

# The lean copy: first-layer energies to try (smallest rank first), head directions, the
# largest principal angle (degrees) to the float32 basis it may add, and how many held-out
# instances fit the head's directions and check the angle.
LEAN_ENERGIES = (0.8, 0.9)
LEAN_HEAD_DIRECTIONS = (8, 16)
LEAN_MAX_ANGLE = 1.5
CALIBRATION_FIT = 16
CALIBRATION_HELD = 4


def _worst_angle(cand: Int8MLP, held: list[np.ndarray], ref: list[list[np.ndarray]],
                 ranks: list[int]) -> float:
    import scipy.linalg as sla

    return max(float(np.degrees(sla.subspace_angles(P, cand.basis(S, r)).max()))
               for S, Ps in zip(held, ref, strict=True) for r, P in zip(ranks, Ps, strict=True))


def calibrate(net: NLSSMLP, S_fit, S_held, *, max_angle: float = LEAN_MAX_ANGLE,
              energies=LEAN_ENERGIES, head_directions=LEAN_HEAD_DIRECTIONS) -> dict:
    """Decide the leanest int8 copy whose basis stays within ``max_angle`` of float32.

    Candidates, fewest weight bytes first: a truncated first layer (``energies``) or the
    full one, each with an affine head on ``head_directions`` principal directions of the
    head's input (mean and directions fitted on ``S_fit``); then the truncated first
    layers with the int8 head. The first whose basis stays within ``max_angle`` degrees
    (largest principal angle) of the float32 network's, at ranks ``r_max/4``, ``r_max/2``
    and ``r_max`` on every ``S_held``, is chosen; otherwise the full int8 copy is.

    Parameters
    ----------
    net : NLSSMLP
        The trained network.
    S_fit, S_held : sequence of array_like
        Instances of the training distribution, shape ``(n, K)`` each, node order.
    max_angle : float
        Degrees.
    energies, head_directions : sequence
        Candidates to try.

    Returns
    -------
    dict
        Plain types and float32 tensors: ``lean`` (bool), ``choice``, ``first_layer_rank``,
        ``head_directions``, ``max_angle_deg`` (of the choice), ``full_int8_angle_deg``,
        ``ranks``, ``tried`` (each candidate's angle), ``why`` (when not lean), and the
        vectors :func:`from_calibration` needs: ``first_layer_basis`` (``h x k``),
        ``head_mean`` (``h``), ``head_basis`` (``h x q``), or ``None``.
    """
    r_max = net.config.r_max
    ranks = sorted({max(1, r_max // 4), max(1, r_max // 2), r_max})
    out = {"lean": False, "choice": "full int8", "first_layer_rank": None,
           "head_directions": None, "ranks": ranks, "fit": len(S_fit), "held_out": len(S_held),
           "tried": {}, "why": None, "first_layer_basis": None, "head_mean": None,
           "head_basis": None}
    try:
        full = Int8MLP(net)
    except (ImportError, AttributeError, RuntimeError, NotImplementedError) as err:
        return {**out, "choice": "float32", "why": f"int8 unavailable: {err}"}
    ref_net = copy.deepcopy(net).float().cpu().eval()
    held = [np.asarray(S, dtype=np.float32) for S in S_held]
    with torch.no_grad():  # the reference: the trained float32 network itself
        ref = [[ref_net(torch.from_numpy(S), r=r).double().numpy() for r in ranks]
               for S in held]
    out["full_int8_angle_deg"] = out["max_angle_deg"] = _worst_angle(full, held, ref, ranks)
    bases = [] if full.first_layer is None else [
        (f"first layer at {e:g} energy", first_layer_basis(full.first_layer, e)) for e in energies]
    firsts = [(k, U) for k, U in bases if U is not None] + [("full first layer", None)]
    firsts = [(k, U, full if U is None else full.with_lean_first_layer(U)) for k, U in firsts]
    candidates = []  # fewest weight bytes first
    for key, U, first in firsts:
        if head_directions and len(S_fit):
            Y = np.concatenate([first.head_input(S) for S in S_fit]).astype(np.float64)
            mean = Y.mean(0)
            Vt = np.linalg.svd(Y - mean, full_matrices=False)[2]
            candidates += [(f"{key}, head on {q} directions", first, U,
                            torch.tensor(mean, dtype=torch.float32),
                            torch.tensor(Vt[:q].T, dtype=torch.float32))
                           for q in head_directions if q <= Vt.shape[0]]
    candidates += [(key, first, U, None, None) for key, U, first in firsts if U is not None]
    for key, first, U, mean, Q in candidates:
        cand = first if Q is None else first.with_affine_head(mean, Q)
        worst = _worst_angle(cand, held, ref, ranks)
        out["tried"][key] = {"first_layer_rank": cand.first_layer_rank,
                             "head_directions": cand.head_directions, "max_angle_deg": worst}
        if worst <= max_angle:
            return {**out, "lean": True, "choice": key, "max_angle_deg": worst,
                    "first_layer_rank": cand.first_layer_rank,
                    "head_directions": cand.head_directions, "first_layer_basis": U,
                    "head_mean": mean, "head_basis": Q}
    why = f"no candidate within {max_angle} degrees" if candidates else "nothing to gain"
    return {**out, "why": why}
