"""The stability run behind `shapedsde stability`: the map over (gamma, tau0), the spot
checks at chosen points and widths, and a summary, written to one folder as
<name>.{json,npz,png,pdf}, <name>_spot.json and <name>_summary.txt."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import _io
from .. import _validation as val
from ..seeds import child_seed
from .stability_grid import stability_map
from .stability_scales import check_grid, equicorrelated, map_block
from .stability_spot import spot_check
from .stability_stats import EIG_THRESHOLD, RHO_THRESHOLD

#: Defaults of the options left unset, for a full run and for --quick.
DEFAULTS = {"gammas": [0.2, 0.35, 0.5, 0.7, 1.0],
            "tau0s": [0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0],
            "paths": 4000, "widths": [64, 128], "nets": 2000, "spot": []}
QUICK = {"gammas": [0.35, 0.7, 1.0], "tau0s": [0.35, 0.7, 1.4], "paths": 300, "widths": [32],
         "nets": 300, "spot": [(0.7, 0.7)]}


def run_stability(out: str | Path, *, block: str = "attention", quick: bool = False,
                  T: float = 1.0, m: int = 3, rho0: float = 0.2, seed: int = 0,
                  device: str = "cpu", steps: int | None = None, reference: bool = True,
                  eig_threshold: float = EIG_THRESHOLD, rho_threshold: float = RHO_THRESHOLD,
                  name: str | None = None, spot_paths: int | None = None,
                  progress: bool = False, block_params: dict[str, Any] | None = None,
                  gammas: Sequence[float] | None = None, tau0s: Sequence[float] | None = None,
                  paths: int | None = None, spot: Sequence[tuple[float, float]] | None = None,
                  widths: Sequence[int] | None = None, nets: int | None = None
                  ) -> tuple[list[str], list[Path]]:
    """Run the map and the spot checks (spot point k at every width, seeded by
    child_seed(seed, 3 + k)); returns (summary lines, files written). Options left None
    take `QUICK` or `DEFAULTS`.

    Every option is checked before any work (a bad spot width or --name fails in a
    second, not after the map); the files are written together at the end
    (`_io.write_files`), so a run that fails leaves an earlier result set as it was."""
    given = dict(gammas=gammas, tau0s=tau0s, paths=paths, spot=spot, widths=widths, nets=nets)
    opt = {k: (v if v is not None else (QUICK if quick else DEFAULTS)[k])
           for k, v in given.items()}
    params = dict(block_params or {})
    V0 = equicorrelated(m, rho0)
    m = V0.shape[0]
    out = Path(out)
    norm_tail = (f"_{params['norm']}_{params.get('norm_at') or 'post'}"
                 if params.get("norm") is not None else "")
    name = name or f"stability_{block}_m{m}{norm_tail}"
    _io.child(out, name, "--name")  # the name itself: '..' would make '...json'
    files = [_io.child(out, f"{name}{tail}", "--name")
             for tail in (".json", ".npz", ".png", ".pdf", "_spot.json", "_summary.txt")]
    _io.writable_folder(out, f"the output folder {out}")
    for path in files:
        if path.is_dir():
            raise ValueError(f"{path} is a directory; remove it or choose another --name")
    check_grid("gammas", opt["gammas"], upper=1.0)
    check_grid("tau0s", opt["tau0s"])
    opt["paths"] = val.check_positive_int("paths", opt["paths"])
    if spot_paths is not None:
        spot_paths = val.check_positive_int("spot_paths", spot_paths)
    if opt["spot"]:
        opt["nets"] = val.check_positive_int("nets", opt["nets"])
        for n in opt["widths"]:
            if val.check_positive_int("width", n) < m:
                raise ValueError(f"spot-check width {n} must be >= m = {m} tokens")
            for g, t in opt["spot"]:
                map_block(block, float(g), float(t), **params).check_width(int(n))
    thresholds = dict(eig_threshold=eig_threshold, rho_threshold=rho_threshold)
    smap = stability_map(block, opt["gammas"], opt["tau0s"], T=T, V0=V0, paths=opt["paths"],
                         seed=seed, device=device, progress=progress, steps=steps,
                         reference=reference, **thresholds, **params)
    lines, spots = [smap.summary()], []
    for k, (g, t) in enumerate(opt["spot"]):
        for n in opt["widths"]:
            sc = spot_check(block, g, t, T=T, V0=V0, width=n, nets=opt["nets"],
                            paths=opt["paths"] if spot_paths is None else spot_paths,
                            seed=child_seed(seed, 3 + k), device=device, progress=progress,
                            steps=steps, **thresholds, **params)
            spots.append(sc.to_dict())
            lines.append(sc.summary())
    written = {**smap.files(out / name), **smap.plot_files(out / name)}
    if spots:
        written[out / f"{name}_spot.json"] = (_io.dumps(spots) + "\n").encode()
    written[out / f"{name}_summary.txt"] = ("\n".join(lines) + "\n").encode()
    # An earlier run's spot checks are not this run's: removed with the same write.
    _io.write_files(written, remove=[out / f"{name}_spot.json"] if not spots else ())
    return lines, list(written)
