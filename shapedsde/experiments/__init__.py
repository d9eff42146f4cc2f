"""Experiments built on the library: the figures and the stability map.

Figures (`shapedsde figures`; `make_figures` writes them all, each module one figure,
computed, plotted and captioned in that order):

1. `figure1_paper`: the paper's Figure 1 setting (m = 2, rho0 = 0.2, n = 200, d = 150,
   gamma = 1/sqrt(8), tau0 = 1, SDE step 0.01, 2^12 samples);
1n. `figure1_normalised`: the same comparison with shaped pre-RMSNorm and post-RMSNorm
   attention added (`shapedsde.normalised`), networks and SDEs;
2. `figure2_density`: final-layer rho density of shaped attention at several widths
   against the SDE, with a wrong-SDE control;
3. `figure3_transformer`: the same for the shaped Transformer block and 4-head attention;
4. `figure4_rank_collapse`: the unshaped baselines and ablations against shaped attention;
5. `figure5_law_distance`: figure 2's KS distances against width, log-log, with an
   n^{-1/2} guide.

Stability (`shapedsde stability`): `stability_scales` (how gamma and tau0 scale the
attention terms), `stability_stats` (statistics of V_T with standard errors),
`stability_grid` (the map over (gamma, tau0)), `stability_spot` (finite networks against
the SDE at one point) and `stability_report` (the run behind the command).

Training (`shapedsde train`): `training` trains small causal shaped Transformers at
points (gamma, tau0), with unshaped and pre-LN baselines, on an in-context Markov-chain
task (docs/trainability.md, "Tested by training"); import it as
`shapedsde.experiments.training` (not re-exported here).

Every random stream is a child of one root seed (`shapedsde.seeds`); every law
comparison is `shapedsde.verification.engine.compare_law`. Finite networks use
`shapedsde.finite.simulate`: the exact-in-law V chain where a block has one
(`method="auto"`: single-head attention and the baselines, O(m^2) per layer instead of
O(n^2)); the Transformer block and multi-head attention draw every weight.
"""

from ._common import FIGURES, NAMES, PAPER, TITLES, FigureOutput, initial_cov
from .figure1_normalised import figure1_normalised
from .figure1_paper import figure1
from .figure2_density import POWERED, figure2
from .figure3_transformer import figure3
from .figure4_rank_collapse import figure4
from .figure5_law_distance import figure5, plot_law_distance
from .make import FUNCS, SIZES, make_figures, parse_only, write_readme
from .stability_grid import StabilityMap, stability_map
from .stability_report import run_stability
from .stability_scales import (
    EXPECTED_EXPONENTS,
    MAP_BLOCKS,
    attention_free,
    attention_part,
    coefficient_scales,
    equicorrelated,
    fit_exponents,
)
from .stability_spot import SpotCheck, spot_check
from .stability_stats import counter_stats, path_statistics, summarize

__all__ = ["EXPECTED_EXPONENTS", "FIGURES", "FUNCS", "MAP_BLOCKS", "NAMES", "PAPER", "POWERED",
           "SIZES", "TITLES", "FigureOutput", "SpotCheck", "StabilityMap", "attention_free",
           "attention_part", "coefficient_scales", "counter_stats", "equicorrelated",
           "figure1", "figure1_normalised", "figure2", "figure3", "figure4", "figure5",
           "fit_exponents",
           "initial_cov", "make_figures", "parse_only", "path_statistics", "plot_law_distance",
           "run_stability", "spot_check", "stability_map", "summarize", "write_readme"]
