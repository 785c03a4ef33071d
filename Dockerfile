# syntax=docker/dockerfile:1
# One image for the operator, the gateway and the steps (`conveyor operator|gateway|step`).
#   CPU:  docker build -t conveyor:0.1.0 .
#   GPU:  docker build --build-arg VARIANT=gpu -t conveyor:0.1.0-gpu .   (onnxruntime-gpu on a CUDA + cuDNN base)
#   Examples: docker build --target examples -t conveyor-examples:0.1.0 .   (the same image plus the examples' demo
#         model builders, conveyor_examples, and scikit-learn; the examples' model steps name it with `image:`)
#   No Docker engine: sudo scripts/build-image.sh   (buildah, a local Debian base as CPU_BASE; loads both into a node
#         of scripts/cluster.sh as conveyor:dev and conveyor-examples:dev)
# The default target (the last stage) is the production image: no scikit-learn, no demo models.
# Both meet requires-python >= 3.11 (tests/packaging/test_python_floor.py checks the bases named here).
# Dependencies are installed from pyproject.toml before the sources are copied: a source change rebuilds only the layers
# from `COPY README.md` on.
ARG VARIANT=cpu
ARG CPU_BASE=python:3.11-slim-bookworm
# CUDA 12 + cuDNN 9 (runs on drivers >= 525): onnxruntime-gpu 1.19-1.26 on PyPI are built for exactly that; from 1.27
# on they are CUDA 13 builds (drivers >= 580), which would fall back to the CPU here. Move both together.
ARG GPU_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG ONNXRUNTIME_GPU="onnxruntime-gpu>=1.19,<1.27"
# TensorRT 10 for CUDA 12, the major those onnxruntime-gpu builds link against (`device: tensorrt`; without it the
# TensorRT provider cannot load and the step runs CUDA, saying so in its log).
ARG TENSORRT_LIBS="tensorrt-cu12-libs>=10,<11"

FROM ${CPU_BASE} AS base-cpu

FROM ${GPU_BASE} AS base-gpu
# The CUDA images carry no Python: Ubuntu 24.04's python3 is 3.12 (22.04's 3.10 is below requires-python).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /usr/bin/python3 /usr/local/bin/python

FROM base-${VARIANT} AS deps
ARG VARIANT
ARG ONNXRUNTIME_GPU
ARG TENSORRT_LIBS
# Build-time only, and unset unless given: scripts/build-image.sh points it at a pip.conf (this machine's index and CA
# bundle) that it mounts for the RUN steps; neither the file nor the setting is in the image.
ARG PIP_CONFIG_FILE
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

# Dependencies first, in layers that depend on pyproject.toml alone, so a source change reuses them: the build
# backend and [project].dependencies, read from pyproject.toml.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt \
 && if [ "$VARIANT" = "gpu" ]; then \
      pip uninstall -y onnxruntime && pip install "$ONNXRUNTIME_GPU" "onnxconverter-common>=1.14" "$TENSORRT_LIBS" \
      && find /opt/venv -name 'libnvinfer.so.*' -printf '%h\n' | sort -u > /etc/ld.so.conf.d/conveyor-tensorrt.conf \
      && ldconfig && python -c "import ctypes; ctypes.CDLL('libnvinfer.so.10')"; \
    fi \
 && python -c "import onnxruntime as ort; print('onnxruntime', ort.__version__, ort.get_available_providers())"

# The `examples` extra (scikit-learn) as wheels, for the examples target only: this stage depends on pyproject.toml
# alone, so a source change installs them again from here, without the package index.
FROM deps AS examples-wheels
ARG PIP_CONFIG_FILE
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(p['project']['optional-dependencies']['examples']))" > /tmp/examples.txt \
 && pip wheel --wheel-dir /wheels -r /tmp/examples.txt \
 && mv /tmp/examples.txt /wheels/requirements.txt

FROM deps AS conveyor
# Sources only (see .dockerignore); a regular (non-editable) install of the project alone, then the sources go.
# examples/ is not copied: setuptools finds no conveyor_examples, so this image has no demo model builders.
COPY README.md ./
COPY runtime runtime
COPY operator operator
COPY benchmarks benchmarks
RUN pip install --no-deps --no-build-isolation . \
 && rm -rf /src

# Non-root; pods mount an emptyDir at the working directory and /tmp (the root filesystem is read-only).
RUN groupadd --gid 10001 conveyor \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/conveyor --create-home --shell /usr/sbin/nologin conveyor
WORKDIR /var/lib/conveyor
# numpy's OpenBLAS would start one idle thread per node core at import (63 on a 64-core node); steps size their
# own ONNX Runtime and hook threads from the container's CPU budget instead.
ENV HOME=/var/lib/conveyor \
    OPENBLAS_NUM_THREADS=1 \
    OMP_NUM_THREADS=1
USER 10001:10001
EXPOSE 9000 9090 8000 8001
CMD ["conveyor", "--help"]

# The examples image: the production image plus scikit-learn (from the wheels above, no index) and the examples'
# package, conveyor_examples (the demo model builders that `model.build` names), put beside the installed project.
# The wheels are mounted under /tmp, which pods cover with an emptyDir (the empty mount point a layer keeps is out
# of sight).
FROM conveyor AS examples
USER 0:0
COPY examples/conveyor_examples /tmp/conveyor_examples
RUN --mount=type=bind,from=examples-wheels,source=/wheels,target=/tmp/wheels \
    pip install --no-index --find-links /tmp/wheels -r /tmp/wheels/requirements.txt \
 && mv /tmp/conveyor_examples "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/" \
 && python -c "import conveyor_examples.digits, sklearn; print('scikit-learn', sklearn.__version__)"
# The examples' manifests (models are built at first run, never shipped).
COPY examples /opt/conveyor/examples
USER 10001:10001

# The default target: the production image.
FROM conveyor
