# calcirad: the two commands a new user needs are `make demo` and `make test`.
# Everything installs into .venv with the exact versions of constraints.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := resources/demo
N      ?= 36
SEED   ?= 0
JOBS   ?= 2
CONFIG ?= config/config.yaml
OUT    ?= .
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

PHANTOM_SOURCES := $(shell find src/calcirad/phantom -name '*.py' -o -name '*.yaml' 2>/dev/null)

.PHONY: demo test run install lint clean dciodvfy bench

## install: create .venv and install calcirad with the workflow and test tools
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	# pyradiomics 3.0.1 compiles C extensions against numpy and ships no wheel for this Python:
	# numpy must be there first, and the build must see it (no build isolation).
	$(PIP) numpy
	$(PIP) --no-build-isolation pyradiomics
	$(PIP) -e ".[workflow,test]"
	touch $@

## the built-in synthetic cohort (rewritten only when the generator changes)
$(DEMO)/samples.tsv: $(PHANTOM_SOURCES) | $(VENV)/.installed
	rm -rf $(DEMO).tmp
	$(BIN)/calcirad phantom --n $(N) --seed $(SEED) --out $(DEMO).tmp --jobs $(JOBS)
	rm -rf $(DEMO)
	mv $(DEMO).tmp $(DEMO)

## demo: install, write the synthetic cohort, run the workflow, build the report, print the table
demo: $(VENV)/.installed $(DEMO)/samples.tsv
	$(BIN)/snakemake --profile profiles/local
	$(BIN)/snakemake --profile profiles/local --report results/report.html
	$(BIN)/calcirad summary --results results

## run: your own cohort, e.g. make run CONFIG=my.yaml OUT=my_run/
run: $(VENV)/.installed
	$(BIN)/snakemake --profile profiles/local --configfile $(abspath $(CONFIG)) --directory $(OUT)
	$(BIN)/snakemake --profile profiles/local --configfile $(abspath $(CONFIG)) --directory $(OUT) \
		--report $(abspath $(OUT))/results/report.html
	$(BIN)/calcirad summary --results $(OUT)/results

## test: the test suite (unit tests, end-to-end Snakemake runs, a real one-node SLURM)
test: $(VENV)/.installed dciodvfy
	$(BIN)/python -m pytest

## bench: the benchmark of issue 10 (bench/README.md; not part of `make test`; hours at full size).
## Cohorts and runs are cached in $$CALCIRAD_BENCH_DIR (default ~/.cache/calcirad-bench);
## e.g. make bench BENCH_ARGS="--cohorts 12 --resume"
bench: $(VENV)/.installed
	$(BIN)/python -c "import pyinstrument" 2>/dev/null || $(PIP) pyinstrument
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## dciodvfy (Debian's dicom3tools) validates the phantom's DICOM; its test skips, saying why,
## where it cannot be installed (not root, no apt)
dciodvfy:
	@command -v dciodvfy >/dev/null || apt-get install -y -q dicom3tools >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dicom3tools >/dev/null 2>&1) || \
		echo "dciodvfy not installed: its test will skip"

## lint: ruff, snakefmt and snakemake --lint
lint: $(VENV)/.installed
	$(BIN)/ruff check src tests workflow/scripts bench
	$(BIN)/ruff format --check src tests workflow/scripts bench
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs benchmarks .snakemake
