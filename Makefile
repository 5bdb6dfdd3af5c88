# spinppo: `make run` trains, `make test` runs the suite. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NP ?= $(shell nproc)
STAMP := $(VENV)/.spinppo-installed

.PHONY: install run test lint format bench clean

install: $(STAMP)

# torch==2.13.0 first: it is the local CPU build; an unpinned torch would pull gigabytes of CUDA.
$(STAMP): setup.py pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,mpich]"
	$(PY) -m pip check
	@touch $@

# PPO on Walker2d for 1M steps (the benchmarked settings, a few minutes on 2 cores): it ends walking, with
# its learning curve (curve.png) and a replay video (replay.mp4) in the run directory.
run: install
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(PY) -m spinppo.run ppo --config configs/mujoco/Walker2d.yaml --cpu $(NP) \
		--datestamp --pictures

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q --durations=15

bench: install
	$(PY) scripts/bench_mpi_avg_grads.py
	$(PY) scripts/bench_update_step.py
	$(PY) scripts/bench_throughput.py --epochs 6
	$(PY) scripts/bench_rank_balance.py --runs 1

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
