# The two commands a newcomer needs:
#   make demo   run the main job (broker + SSNet workers + LArCV1 client) on the shipped sample data, and draw an event
#   make test   lint, type check and every test (what CI runs)
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PY_SOURCES := common data/src broker worker client tests bench scripts examples

.PHONY: demo test venv lint typecheck pytest pytest39 images containers clean

venv: $(VENV)/.stamp

$(VENV)/.stamp: scripts/bootstrap.sh requirements-dev.txt */pyproject.toml
	scripts/bootstrap.sh
	touch $@

# The demo: the shipped file through SSNet workers (tiny model, default CPU engine), then a picture of its first event
# with the network's scores over the wire image.  It replaces its own earlier output.
demo: venv
	$(BIN)/ssnet-local --force --output out/ssnet_demo_ssnet.root
	$(BIN)/ssnet-larcv1 show data/demo/ssnet_demo.root --overlay out/ssnet_demo_ssnet.root --force \
	    -o out/ssnet_demo_event.png

test: lint typecheck images pytest pytest39

lint: venv
	$(BIN)/ruff check $(PY_SOURCES)

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The container images (docker/build.sh), which tests/container runs (compose stacks, the fidelity tests in the
# worker image).  Under CI=true `containers` sets everything up first; elsewhere the images are built when a
# Docker engine answers, and the container tests skip, saying so, when none does.
IMAGES := broker client worker prometheus
images: venv
ifeq ($(CI),true)
	$(MAKE) containers
else
	@if docker info >/dev/null 2>&1; then PYTHON=$(BIN)/python docker/build.sh $(IMAGES); \
	else echo "images: no Docker engine answers here: the container tests (tests/container) will be skipped"; fi
endif

# Where no registry is reachable (this project's CI): install and start the Docker engine (Debian's docker.io,
# Compose v2 from trixie; needs root), make the Debian base images locally (debootstrap + docker import), then
# build the images.  Each step skips what is already there.  The multi-node Slurm test (tests/cluster/
# test_multinode.py) also needs CLUSTER_IMAGES (Apptainer and the simulated cluster's node, on Debian sid) and the
# SIF images singularity/build.sh makes from the Docker images with that Apptainer (rebuilt only when those changed;
# gzip level 1 here: half the build time of the default level 9 for 9 % more bytes, and the same runtime support).
CLUSTER_IMAGES := apptainer slurm-node
containers: venv
	scripts/docker-engine.sh
	scripts/base-images.sh bullseye bookworm sid
	PYTHON=$(BIN)/python docker/build.sh $(IMAGES) $(CLUSTER_IMAGES)
	singularity/build.sh --cpu --if-changed -- --mksquashfs-args '-Xcompression-level 1'

# ssnet_common and ssnet_worker must run on Python 3.9 (the Caffe image): the tests marked py39 run there too
# (tests/conftest.py collects only those under 3.9).
pytest39: venv
	@if [ -x .venv39/bin/python ]; then \
	  .venv39/bin/python -m pytest -q -p no:cacheprovider -m py39 tests/unit tests/integration; \
	else echo "pytest39: no .venv39 (no Python 3.9 on this machine): skipped"; fi

clean:
	rm -rf $(VENV) .venv39 .mypy_cache .ruff_cache .pytest_cache
