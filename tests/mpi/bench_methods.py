"""Under mpiexec: run_method on the PETSc path, and the serial-only paths refused."""


def main() -> None:
    from nlss_fenicsx import meshes, pdes
    from nlss_fenicsx._fenicsx import MPI
    from nlss_fenicsx.bench.methods import MethodSpec, run_method

    comm = MPI.COMM_WORLD
    system = pdes.assemble(pdes.sample("diffusion",
                                       meshes.jittered_square(8, seed=0, comm=comm), rng=0))
    for name in ("svd", "sine", "jacobi", "gamg", "icc", "cholesky"):
        rec = run_method(system, MethodSpec(name, rank=6, K=8))
        if comm.rank == 0:
            print(f"solved {name} {rec.iterations} {rec.rel_residual:.3e}", flush=True)
    for spec in (MethodSpec("svd", rank=6, K=8, path="scipy"), MethodSpec("pyamg")):
        try:
            run_method(system, spec)
        except ValueError as err:
            print(f"refused {err}", flush=True)


if __name__ == "__main__":  # a script for mpiexec, not a module to import
    main()
