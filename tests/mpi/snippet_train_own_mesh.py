"""User snippet (README, your own mesh): train on it with a sampler, then solve with nlss."""

import nlss_fenicsx  # noqa: F401, I001 - first: makes the wheel's dolfinx importable

from dolfinx import fem, mesh
from dolfinx.fem.petsc import LinearProblem
from mpi4py import MPI

from nlss_fenicsx import pdes
from nlss_fenicsx.nn.train import TrainConfig, train
from nlss_fenicsx.petsc import attach_node_order, check_converged

domain = mesh.create_unit_square(MPI.COMM_WORLD, 12, 12)  # your own mesh
V = fem.functionspace(domain, ("Lagrange", 1))
# Smoothed vectors of random instances on this mesh, in its node order. For your own
# problems: pdes.smoothed_sampler(lambda t: (V, a_t, L_t, bcs), K=16).
sampler = pdes.training_sampler("diffusion", V, K=16)
train(TrainConfig(K=16, r_max=8, steps=50), "my_model.pt", sampler=sampler, progress=False)

prob = pdes.sample("diffusion", V, rng=123)  # a new instance
problem = LinearProblem(prob.a, prob.L, bcs=prob.bcs, petsc_options_prefix="learned_",
                        petsc_options={
    "ksp_type": "cg", "ksp_rtol": 1e-6,
    "pc_type": "python", "pc_python_type": "nlss_fenicsx.petsc.TwoGridPC",
    "nlss_coarse": "nlss", "nlss_model": "my_model.pt"})  # K, sweeps, rank from the model
attach_node_order(problem.A, V)  # the network sees the nodes in the mesh's input order
problem.solve()
print("iterations", check_converged(problem))
