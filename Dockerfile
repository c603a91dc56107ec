# megatron-lst on NVIDIA's PyTorch image, which already carries CUDA, transformer-engine and apex.
# Tags: megatron-lst:<version>-ngc25.09 (this base), megatron-lst:latest (newest release).
#   docker build -t megatron-lst:0.1.0-ngc25.09 .
#   docker run --gpus all --ipc=host megatron-lst:0.1.0-ngc25.09 \
#       torchrun --nproc-per-node 8 pretrain_lst.py --config examples/configs/1b.yaml ...
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.09-py3
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --gid 1000 lst && useradd --uid 1000 --gid lst --create-home lst
WORKDIR /opt/megatron-lst
COPY --chown=lst:lst . .

# The same editable install CI runs (Makefile), with the DeepSpeed extra. setup.py asks for a torch
# range, so the image's own CUDA torch, transformer-engine and apex are kept. .dockerignore keeps
# local environments, run outputs and .git out of the build context. The pybind11 extensions are
# compiled here, at build time.
RUN pip install --no-cache-dir "pybind11>=2.11" \
    && pip install --no-cache-dir --no-build-isolation -e ".[deepspeed]" \
    && python setup.py build_ext --inplace

USER 1000:1000
HEALTHCHECK --interval=5m --timeout=60s CMD ["python", "-c", "import megatron_lst, megatron_lst._patching, megatron_lst._indexed_builder; print(megatron_lst.__version__)"]
CMD ["python", "pretrain_lst.py", "--help"]
